"""The foundation's stages: ``train``, ``eval`` and ``export``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.models.source import build_model, record
from slimfuse.pipeline.stages import Context, StageConfig, TrainingStageConfig, stage
from slimfuse.training import train


class TrainStage(TrainingStageConfig):
    model: str | None = None  # a fresh model to train; default: the current model
    model_kwargs: dict = Field(default_factory=dict)


@stage(TrainStage)
def train_stage(ctx: Context, cfg: TrainStage) -> nn.Module:
    """Train a model (a fresh one from `model`, or the current one) with the one loop."""
    if cfg.model is not None:
        model = build_model(cfg.model, data=ctx.data, **cfg.model_kwargs)
    else:
        model = ctx.model_named(None)
    tc = cfg.train_config(ctx)
    result = train(
        model,
        ctx.data,
        ctx.task,
        tc,
        checkpoint_dir=ctx.checkpoint_dir,
        resume=ctx.resuming,
        description=ctx.stage_name,
    )
    record(
        model,
        lineage={
            "stage": "train",
            "name": ctx.stage_name,
            "config": tc.to_dict(),
            "best_val": result.best_metric,
            "epochs_run": result.epochs_run,
        },
    )
    return model


class EvalStage(StageConfig):
    pass


@stage(EvalStage)
def eval_stage(ctx: Context, cfg: EvalStage) -> None:
    """Measure the current model again (no change)."""
    ctx.model_named(None)
    return None


class ExportStage(StageConfig):
    format: Literal["onnx", "ort", "pte"] = Field(
        "onnx",
        description="onnx (ONNX Runtime), ort (ONNX Runtime Mobile) or pte (ExecuTorch, "
        "XNNPACK): the file is <out>/model.<format>",
    )
    int8: bool = Field(
        False, description="pte only: int8 through PT2E, calibrated on the training data"
    )
    opset: int | None = None  # the model's own choice (export_onnx), else 18
    atol: float = 1e-4

    def check(self) -> None:
        if self.int8 and self.format != "pte":
            raise ConfigError(
                f"int8 is for format pte (ExecuTorch); for {self.format} put a quantize stage "
                "before the export"
            )
        if self.opset is not None and self.format == "pte":
            raise ConfigError("opset is for onnx and ort exports, not pte")


@stage(ExportStage)
def export_stage(ctx: Context, cfg: ExportStage) -> None:
    """Export the current model to ``<out>/model.<format>`` with a parity check (an int8
    ``.pte``: run once at two batch sizes)."""
    from slimfuse.deploy import export

    model = ctx.model_named(None)
    kwargs: dict[str, Any] = {"atol": cfg.atol}
    if cfg.format != "pte":
        kwargs["opset"] = cfg.opset
    else:
        kwargs.update(int8=cfg.int8, calibration=ctx.data if cfg.int8 else None)
    export(
        model,
        ctx.data.example_input(1),
        ctx.out / f"model.{cfg.format}",
        format=cfg.format,
        **kwargs,
    )
    return None
