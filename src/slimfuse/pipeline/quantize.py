"""The ``quantize`` recipe stage::

- stage: quantize
  name: int8
  mode: static            # dynamic | static | weight-only | qat
  calibration: percentile # minmax | percentile | entropy
  ignore: ["re:.*linear"]
  max_drop: 0.003         # mixed precision: keep sensitive layers fp32 (accuracy drop budget)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field
from torch import nn

from slimfuse.pipeline.stages import Context, StageConfig, stage

if TYPE_CHECKING:
    from slimfuse.quantization.config import QuantConfig


class QuantizeStage(StageConfig):
    model: str | None = None  # an earlier stage's name; default: the current model
    mode: Literal["dynamic", "static", "weight-only", "qat"] = "static"
    bits: Literal[8, 4] = 8
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"
    percentile: float = Field(default=99.999, gt=50, le=100)
    per_channel: bool = True
    reduce_range: bool | None = None  # None: 7-bit weights where the CPU lacks VNNI
    targets: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    max_drop: float | None = Field(default=None, ge=0)
    smoothquant: float | None = Field(default=None, ge=0, le=1)
    group_size: int = Field(default=32, ge=2)
    calibration_batches: int = Field(default=8, ge=1)
    batch_size: int = Field(default=64, ge=1)
    qat_epochs: int = Field(default=5, ge=0)
    qat_lr: float = Field(default=1e-3, gt=0)
    distill: bool = False

    def quant_config(self) -> QuantConfig:
        from slimfuse.quantization.config import QuantConfig

        return QuantConfig.from_dict(
            self.model_dump(exclude={"model", "batch_size"})
            | {"targets": self.targets, "ignore": self.ignore}
        )

    def check(self) -> None:
        self.quant_config().check_applies()


@stage(QuantizeStage)
def quantize_stage(ctx: Context, cfg: QuantizeStage) -> nn.Module:
    """Quantize: int8 dynamic/static or QAT (ONNX Runtime graph), or weight-only int8/int4."""
    from slimfuse.quantization.api import quantize

    qc = cfg.quant_config()
    loader = ctx.data.loader("train", batch_size=cfg.batch_size, shuffle=True, seed=ctx.seed)
    return quantize(
        ctx.model_named(cfg.model),
        qc,
        calibration=loader if qc.mode != "weight-only" else None,
        data=ctx.data,
        task=ctx.task.name,
    )
