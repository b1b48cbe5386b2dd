"""The ``quantize`` recipe stage: its keys are a :data:`~slimfuse.quantization.config.QuantConfig`'s
(and the training keys, for ``qat``)::

    - stage: quantize
      name: int8
      mode: static            # auto (default) | dynamic | static | weight-only | qat | shared
      calibration: percentile # minmax | percentile | entropy
      ignore: ["re:.*linear"]
      max_drop: 0.003         # mixed precision: keep sensitive layers fp32 (accuracy drop budget)

Without ``mode``, ``auto`` picks dynamic int8 for a transformer encoder and static otherwise, as
``slimfuse.quantize`` and ``slimfuse quantize`` do; the bundle's lineage records the mode that ran.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from slimfuse.api import quantize
from slimfuse.config import Family
from slimfuse.pipeline.stages import Context, FamilyStage, stage
from slimfuse.quantization.config import QuantConfig


class QuantizeStage(FamilyStage):
    family: ClassVar[Family] = QuantConfig
    model: str | None = Field(
        None, description="an earlier stage's name (default: the current model)"
    )


@stage(QuantizeStage)
def quantize_stage(ctx: Context, cfg: QuantizeStage) -> nn.Module:
    """Quantize: int8 dynamic/static or QAT (ONNX Runtime graph), or weight-only int8/int4."""
    return quantize(
        ctx.model_named(cfg.model),
        cfg.method,
        ctx.data,
        train=cfg.train_config(ctx),
        task=ctx.task.name,
        seed=ctx.seed,
    )
