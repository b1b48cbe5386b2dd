"""The recipe stages that edit a model's structure, then recover (``prune``, ``factorize``):
their keys are the family's config keys, recovery's training keys and ``model`` (an earlier
stage's name); the stage calls the family's verb from :mod:`slimfuse.api`."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field
from torch import nn

from slimfuse import api
from slimfuse.pipeline.stages import Context, FamilyStage
from slimfuse.training.recovery import Edit


class EditStage(FamilyStage):
    """A structural edit's stage: ``edit`` is its family's :class:`~slimfuse.training.recovery.Edit`."""

    edit: ClassVar[Edit]
    model: str | None = Field(
        None, description="an earlier stage's name (default: the current model)"
    )

    def check(self) -> None:
        train = self.family.training(self.method, self._train)
        assert train is not None  # every method recovers with the one loop
        self.edit.check(self.method, train)


def run_edit(ctx: Context, cfg: EditStage) -> nn.Module:
    """The stage's verb on the named (or current) model, then recovery."""
    return getattr(api, cfg.edit.verb)(
        ctx.model_named(cfg.model),
        cfg.method,
        ctx.data,
        train=cfg.train_config(ctx),
        task=ctx.task,
        checkpoint_dir=ctx.checkpoint_dir,
        callbacks=ctx.callbacks,
    )
