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

from torch import nn

from slimfuse.config import Family
from slimfuse.pipeline.edit import EditStage, run_edit
from slimfuse.pipeline.stages import Context, stage
from slimfuse.pruning.api import PRUNING
from slimfuse.pruning.config import PruneConfig
from slimfuse.training.recovery import Edit


class PruneStage(EditStage):
    family: ClassVar[Family] = PruneConfig
    edit: ClassVar[Edit] = PRUNING


@stage(PruneStage)
def prune_stage(ctx: Context, cfg: PruneStage) -> nn.Module:
    """Prune (magnitude, threshold, channels or transformer FFN/heads), then recover."""
    return run_edit(ctx, cfg)
