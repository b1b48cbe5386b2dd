"""Recovery after pruning: fine-tune with the one training loop, the loss is pluggable.

``recovery="finetune"`` trains on the task loss; ``recovery="distill"`` uses the unpruned model
as teacher through the objective that ``teacher_objective(teacher, task)`` makes: pruning
imports no other technique, its caller passes one (:func:`slimfuse.prune` passes the
distillation family's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.data import Data
from slimfuse.errors import ConfigError
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback, TrainResult, train

Recovery = Literal["finetune", "distill"]
RECOVERIES: tuple[str, ...] = ("finetune", "distill")
# teacher (a frozen copy of the unpruned model), task -> a ``(model, batch) -> loss`` objective
TeacherObjective = Callable[[nn.Module, Task], Any]


def check_teacher_objective(teacher_objective: TeacherObjective | None) -> TeacherObjective:
    """The objective ``recovery='distill'`` needs; a one-line error without one."""
    if teacher_objective is None:
        raise ConfigError(
            "recovery 'distill' needs a distillation objective (teacher_objective=); use "
            "slimfuse.prune, which passes the distillation family's"
        )
    return teacher_objective


def recover(
    model: nn.Module,
    data: Data,
    task: str | Task = "classification",
    config: TrainConfig | None = None,
    *,
    recovery: Recovery = "finetune",
    teacher: nn.Module | None = None,
    teacher_objective: TeacherObjective | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | Path | None = None,
    description: str = "recover",
) -> TrainResult:
    """Fine-tune a pruned ``model`` in place (``recovery='distill'``: distilling from
    ``teacher``, left unchanged, with the objective ``teacher_objective`` makes)."""
    if recovery not in RECOVERIES:
        raise ConfigError(f"recovery {recovery!r}: expected one of {', '.join(RECOVERIES)}")
    task = get_task(task)
    objective = None
    if recovery == "distill":
        make = check_teacher_objective(teacher_objective)
        if teacher is None:
            raise ConfigError("recovery 'distill' needs the unpruned model as teacher")
        objective = make(copy.deepcopy(teacher).eval(), task)
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
