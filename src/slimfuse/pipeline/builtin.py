"""The foundation's stages: ``train``, ``eval`` and ``export``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from slimfuse.exporting import export_onnx
from slimfuse.models.source import build_model, record
from slimfuse.pipeline.stages import Context, StageConfig, stage
from slimfuse.training import TrainConfig, train


class TrainStage(StageConfig):
    model: str | None = None  # a fresh model to train; default: the current model
    model_kwargs: dict = Field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 100
    lr: float = 1e-2
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    patience: int | None = None
    seed: int | None = None

    def train_config(self, ctx: Context) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            optimizer=self.optimizer,
            weight_decay=self.weight_decay,
            schedule=self.schedule,
            patience=self.patience,
            seed=ctx.seed if self.seed is None else self.seed,
            quiet=ctx.quiet,
        )


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
        resume=ctx.resume and (ctx.checkpoint_dir / "checkpoint.pt").is_file(),
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
    opset: int = 18
    atol: float = 1e-4


@stage(ExportStage)
def export_stage(ctx: Context, cfg: ExportStage) -> None:
    """Export the current model to `<out>/model.onnx` with a parity check."""
    model = ctx.model_named(None)
    export_onnx(
        model, ctx.data.example_input(1), ctx.out / "model.onnx", opset=cfg.opset, atol=cfg.atol
    )
    return None
