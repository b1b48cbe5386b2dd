"""The ``prune`` recipe stage.

Unstructured (``sparsity``, schedule ``agp`` or ``oneshot``), structured (``channels``, with an
``importance`` criterion) or transformer (``ffn`` / ``heads``) pruning of the current model (or
an earlier stage's, by ``model: <stage name>``), followed by ``finetune_epochs`` of recovery::

    - stage: prune
      name: pruned
      channels: 0.5
      importance: l1
      finetune_epochs: 10
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from slimfuse.pipeline.stages import Context, StageConfig, stage


class PruneStage(StageConfig):
    model: str | None = None  # an earlier stage's name; default: the current model
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    threshold: float | None = Field(default=None, ge=0.0)  # one-shot: drop |w| <= threshold
    channels: float | None = Field(default=None, ge=0.0, lt=1.0)
    ffn: float | None = Field(default=None, ge=0.0, lt=1.0)
    heads: float | None = Field(default=None, ge=0.0, lt=1.0)
    schedule: Literal["agp", "oneshot"] = "agp"
    importance: Literal["l1", "l2", "bn", "taylor", "activation"] = "l1"
    targets: list[str] | None = None
    ignore: list[str] = Field(default_factory=list)
    global_pruning: bool | None = None
    iterative_steps: int = Field(default=1, ge=1)
    unsupported: Literal["error", "skip"] = "error"
    finetune_epochs: int = Field(default=5, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=100, ge=1)
    recovery: Literal["finetune", "distill"] = "finetune"

    def check(self) -> None:
        from slimfuse.pruning.api import check_request

        keys = ("sparsity", "threshold", "channels", "ffn", "heads", "schedule", "importance")
        keys += ("targets", "ignore", "global_pruning", "iterative_steps", "unsupported")
        check_request(**{k: getattr(self, k) for k in keys}, finetune_epochs=self.finetune_epochs)


@stage(PruneStage)
def prune_stage(ctx: Context, cfg: PruneStage) -> nn.Module:
    """Prune (unstructured, channels or transformer heads/FFN), then recover by fine-tuning."""
    from slimfuse.pruning.api import prune

    return prune(
        ctx.model_named(cfg.model),
        ctx.data,
        sparsity=cfg.sparsity,
        threshold=cfg.threshold,
        channels=cfg.channels,
        ffn=cfg.ffn,
        heads=cfg.heads,
        schedule=cfg.schedule,
        importance=cfg.importance,
        targets=cfg.targets,
        ignore=cfg.ignore,
        global_pruning=cfg.global_pruning,
        iterative_steps=cfg.iterative_steps,
        unsupported=cfg.unsupported,
        finetune_epochs=cfg.finetune_epochs,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        recovery=cfg.recovery,
        task=ctx.task,
        seed=ctx.seed,
        quiet=ctx.quiet,
        checkpoint_dir=ctx.checkpoint_dir,
    )
