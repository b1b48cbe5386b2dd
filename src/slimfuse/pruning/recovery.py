"""Recovery after pruning: fine-tune with the one training loop, the loss is pluggable.

``recovery="finetune"`` trains on the task loss; ``recovery="distill"`` uses the unpruned model
as teacher through :func:`slimfuse.distillation.objectives` (imported lazily; when the
distillation family is not installed, plain fine-tuning is used and a warning says so).
"""

from __future__ import annotations

import copy
import importlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from slimfuse.data import Data
from slimfuse.errors import ConfigError, SlimfuseWarning
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback, TrainConfig, TrainResult, train

Recovery = Literal["finetune", "distill"]
RECOVERIES: tuple[str, ...] = ("finetune", "distill")


def distill_objective(
    teacher: nn.Module, task: Task, temperature: float = 4.0, alpha: float = 0.9
) -> Any:
    """The distillation family's objective, or ``None`` when it is not available."""
    try:
        mod = importlib.import_module("slimfuse.distillation")
        make = mod.objective
    except (ImportError, AttributeError):
        warnings.warn(
            "recovery 'distill' needs slimfuse.distillation; fine-tuning instead",
            SlimfuseWarning,
            stacklevel=3,
        )
        return None
    loss = (
        "cosine" if task.name == "embedding" else ("kd" if task.name == "classification" else "mse")
    )
    return make(teacher, task, loss=loss, temperature=temperature, alpha=alpha)


def recover(
    model: nn.Module,
    data: Data,
    task: str | Task = "classification",
    config: TrainConfig | None = None,
    *,
    recovery: Recovery = "finetune",
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    description: str = "recover",
) -> TrainResult:
    """Fine-tune a pruned ``model`` in place (optionally distilling from ``teacher``)."""
    if recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r}: expected one of {', '.join(RECOVERIES)}")
    task = get_task(task)
    objective = None
    if recovery == "distill":
        if teacher is None:
            raise ConfigError("recovery 'distill' needs the unpruned model as teacher")
        objective = distill_objective(copy.deepcopy(teacher).eval(), task, temperature, alpha)
    return train(
        model,
        data,
        task,
        config or TrainConfig(epochs=5, lr=1e-3),
        objective=objective,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        description=description,
    )
