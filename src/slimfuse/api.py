"""The public verbs, wired across technique families.

A technique uses another only through what its caller passes: QAT's ``distill``, pruning's and
low-rank factorization's ``recovery: distill`` take a distillation objective as an argument,
and distillation's width students take a channel-removing ``shrink``. These verbs are the callers that pass the other
family's, so ``slimfuse.quantize``, ``slimfuse.prune``, ``slimfuse.factorize`` and
``slimfuse.distill`` need nothing more from the user.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimfuse.distillation.api import DistillResult
from slimfuse.distillation.api import distill as _distill
from slimfuse.distillation.api import distill_run as _distill_run
from slimfuse.distillation.objectives import objective
from slimfuse.lowrank.api import factorize as _factorize
from slimfuse.pruning.api import prune as _prune
from slimfuse.pruning.structured import prune_structured
from slimfuse.quantization.api import quantize as _quantize
from slimfuse.tasks import Task, get_task


def teacher_objective(teacher: nn.Module, task: str | Task) -> Any:
    """Distillation from a frozen ``teacher`` with the output loss that goes with the task (kd
    for classification, cosine for embeddings, mse otherwise; the distillation family's
    defaults): QAT's ``distill`` and pruning's ``recovery: distill``."""
    task = get_task(task)
    loss = {"classification": "kd", "embedding": "cosine"}.get(task.name, "mse")
    return objective(teacher, task, loss=loss)


def quantize(model: nn.Module, config: Any, data: Any = None, **kwargs: Any) -> nn.Module:
    """:func:`slimfuse.quantization.api.quantize` with QAT's teacher objective wired in."""
    kwargs.setdefault("teacher_objective", teacher_objective)
    return _quantize(model, config, data, **kwargs)


quantize.__doc__ = (quantize.__doc__ or "") + "\n\n" + (_quantize.__doc__ or "")


def prune(model: nn.Module, config: Any, data: Any = None, **kwargs: Any) -> nn.Module:
    """:func:`slimfuse.pruning.api.prune` with recovery's distillation objective wired in."""
    kwargs.setdefault("teacher_objective", teacher_objective)
    return _prune(model, config, data, **kwargs)


prune.__doc__ = (prune.__doc__ or "") + "\n\n" + (_prune.__doc__ or "")


def factorize(model: nn.Module, config: Any, data: Any = None, **kwargs: Any) -> nn.Module:
    """:func:`slimfuse.lowrank.api.factorize` with recovery's distillation objective wired in."""
    kwargs.setdefault("teacher_objective", teacher_objective)
    return _factorize(model, config, data, **kwargs)


factorize.__doc__ = (factorize.__doc__ or "") + "\n\n" + (_factorize.__doc__ or "")


def shrink_width(
    model: nn.Module, example_inputs: Any, *, ratio: float, importance: str = "l1"
) -> nn.Module:
    """Structured pruning's channel removal, for students built narrower than their teacher."""
    return prune_structured(model, example_inputs, ratio=ratio, importance=importance, inplace=True)


def distill(student: Any, teachers: Any, config: Any, data: Any, **kwargs: Any) -> nn.Module:
    """:func:`slimfuse.distillation.api.distill` with the width students' shrink wired in
    (``StudentFromTeacher(width=...)``: structured pruning)."""
    kwargs.setdefault("shrink", shrink_width)
    return _distill(student, teachers, config, data, **kwargs)


distill.__doc__ = (distill.__doc__ or "") + "\n\n" + (_distill.__doc__ or "")


def distill_run(
    student: Any, teachers: Any, config: Any, data: Any, **kwargs: Any
) -> DistillResult:
    """:func:`distill` returning the training loop's summary and the cache statistics too."""
    kwargs.setdefault("shrink", shrink_width)
    return _distill_run(student, teachers, config, data, **kwargs)
