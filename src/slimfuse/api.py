"""The public verbs, wired across technique families.

A technique uses another only through what its caller passes: QAT's ``distill`` and pruning's
``recovery: distill`` take a distillation objective as an argument. These verbs are the callers
that pass the distillation family's, so ``slimfuse.quantize`` and ``slimfuse.prune`` need
nothing more from the user.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimfuse.distillation.objectives import objective
from slimfuse.quantization.api import quantize as _quantize


def teacher_objective(teacher: nn.Module, task: str) -> Any:
    """Knowledge distillation from a frozen ``teacher`` (the task's default loss)."""
    return objective(teacher, task)


def quantize(model: nn.Module, config: Any, data: Any = None, **kwargs: Any) -> nn.Module:
    """:func:`slimfuse.quantization.api.quantize` with QAT's teacher objective wired in."""
    kwargs.setdefault("teacher_objective", teacher_objective)
    return _quantize(model, config, data, **kwargs)


quantize.__doc__ = (quantize.__doc__ or "") + "\n\n" + (_quantize.__doc__ or "")
