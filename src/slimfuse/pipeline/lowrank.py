"""The ``factorize`` recipe stage: its keys are a
:data:`~slimfuse.lowrank.config.LowRankConfig`'s and recovery's training keys. The amount
given picks the method (or ``method: energy | ratio | budget``); ``model: <stage name>``
factorizes an earlier stage's model::

    - stage: factorize
      budget: 0.5             # or energy: 0.9 | ratio: 0.5
      targets: ["re:.*encoder\\.layer\\..*"]
      epochs: 2               # recovery (default 0: none)
      recovery: distill       # from the original model (default: finetune)
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from slimfuse.api import factorize
from slimfuse.config import Family
from slimfuse.lowrank.config import LowRankConfig, check_recovery
from slimfuse.pipeline.stages import Context, FamilyStage, stage


class FactorizeStage(FamilyStage):
    family: ClassVar[Family] = LowRankConfig
    model: str | None = Field(
        None, description="an earlier stage's name (default: the current model)"
    )

    def check(self) -> None:
        train = self.family.training(self.method, self._train)
        assert train is not None  # every method recovers with the one loop
        check_recovery(self.method, train)


@stage(FactorizeStage)
def factorize_stage(ctx: Context, cfg: FactorizeStage) -> nn.Module:
    """Low-rank factorization (energy, ratio or a FLOPs / parameter budget), then recover."""
    return factorize(
        ctx.model_named(cfg.model),
        cfg.method,
        ctx.data,
        train=cfg.train_config(ctx),
        task=ctx.task,
        checkpoint_dir=ctx.checkpoint_dir,
    )
