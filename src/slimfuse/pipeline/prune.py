"""The ``prune`` recipe stage: its keys are a :data:`~slimfuse.pruning.config.PruneConfig`'s and
recovery's training keys. The amount given picks the method (or ``method: magnitude |
threshold | channels | transformer``); ``model: <stage name>`` prunes an earlier stage's model::

    - stage: prune
      name: pruned
      channels: 0.5           # or sparsity: 0.9 | threshold: 0.02 | ffn: 0.5, heads: 0.25
      importance: l1
      epochs: 10              # recovery (default 0: none)
      lr: 0.003
      recovery: distill       # from the unpruned model (default: finetune)
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from slimfuse.api import prune
from slimfuse.config import Family
from slimfuse.pipeline.stages import Context, FamilyStage, stage
from slimfuse.pruning.config import PruneConfig, check_recovery


class PruneStage(FamilyStage):
    family: ClassVar[Family] = PruneConfig
    model: str | None = Field(
        None, description="an earlier stage's name (default: the current model)"
    )

    def check(self) -> None:
        train = self.family.training(self.method, self._train)
        assert train is not None  # every method recovers with the one loop
        check_recovery(self.method, train)


@stage(PruneStage)
def prune_stage(ctx: Context, cfg: PruneStage) -> nn.Module:
    """Prune (magnitude, threshold, channels or transformer FFN/heads), then recover."""
    return prune(
        ctx.model_named(cfg.model),
        cfg.method,
        ctx.data,
        train=cfg.train_config(ctx),
        task=ctx.task,
        checkpoint_dir=ctx.checkpoint_dir,
    )
