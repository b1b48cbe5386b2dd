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

from torch import nn

from slimfuse.config import Family
from slimfuse.lowrank.api import FACTORIZATION
from slimfuse.lowrank.config import LowRankConfig
from slimfuse.pipeline.edit import EditStage, run_edit
from slimfuse.pipeline.stages import Context, stage
from slimfuse.training.recovery import Edit


class FactorizeStage(EditStage):
    family: ClassVar[Family] = LowRankConfig
    edit: ClassVar[Edit] = FACTORIZATION


@stage(FactorizeStage)
def factorize_stage(ctx: Context, cfg: FactorizeStage) -> nn.Module:
    """Low-rank factorization (energy, ratio or a FLOPs / parameter budget), then recover."""
    return run_edit(ctx, cfg)
