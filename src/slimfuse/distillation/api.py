"""The ``distill`` verb: train a copy of a student to match one or several teachers.

All training goes through :func:`slimfuse.training.train` with the distillation
:func:`~slimfuse.distillation.objectives.objective`, so resume, signals, progress, early stopping
and DDP under ``torchrun`` are the loop's::

    student = slimfuse.distill(student, [t1, t2, t3], KD(temperature=4), data,
                               train=TrainConfig(epochs=60))

The caller's models are not changed: the student trained is a copy (or a new model built from
the first teacher, :class:`~slimfuse.distillation.config.StudentFromTeacher`), the teachers run
as frozen copies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.data import Data, load_data
from slimfuse.distillation.config import AnyDistillConfig, DistillConfig, StudentFromTeacher
from slimfuse.distillation.objectives import objective
from slimfuse.distillation.students import Shrink, build_student
from slimfuse.errors import ConfigError
from slimfuse.models.leakage import check_members_split, check_same_split
from slimfuse.models.source import record, task_of
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback, TrainResult
from slimfuse.training import train as train_loop  # ``train`` is the verb's keyword


@dataclass
class DistillResult:
    """The trained student and the training loop's summary."""

    student: nn.Module
    train: TrainResult
    cache_hits: int = 0
    cache_misses: int = 0


def _teacher_list(teachers: nn.Module | Sequence[nn.Module]) -> list[nn.Module]:
    if isinstance(teachers, nn.Module):
        return [teachers]
    out = list(teachers or [])
    if not out:
        raise ConfigError("the teacher list is empty; expected at least one teacher model")
    return out


def _student(
    student: nn.Module | StudentFromTeacher | dict[str, Any],
    teachers: list[nn.Module],
    data: Data,
    shrink: Shrink | None,
) -> nn.Module:
    """The model to train: a copy of ``student``, or one built from the first teacher."""
    if isinstance(student, dict):
        student = StudentFromTeacher.from_dict(student, "student_from_teacher")
    if isinstance(student, StudentFromTeacher):
        first = teachers[0]
        if isinstance(first, tuple):  # a (name, model) pair
            first = first[1]
        return build_student(
            first,
            data.example_input(2, split="train"),
            **student.model_dump(exclude_unset=True),
            shrink=shrink,
        )
    if not isinstance(student, nn.Module):
        raise ConfigError(
            f"student is {type(student).__name__}; expected an nn.Module or a "
            "StudentFromTeacher (depth=, keep=, width=)"
        )
    return copy.deepcopy(student)


def distill_run(
    student: nn.Module | StudentFromTeacher | dict[str, Any],
    teachers: nn.Module | Sequence[nn.Module],
    config: AnyDistillConfig | dict[str, Any] | None,
    data: Data | str,
    *,
    train: TrainConfig | None = None,
    task: str | Task | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    shrink: Shrink | None = None,
    description: str = "distill",
) -> DistillResult:
    """Like :func:`distill`, returning the loop's summary and the cache statistics too."""
    cfg = DistillConfig.parse({} if config is None else config)
    teacher_list = _teacher_list(teachers)
    data = load_data(data)
    # a teacher trained on another split of the data knows the student's test samples
    check_members_split(teacher_list, data, "teacher")
    if isinstance(student, nn.Module):
        check_same_split(student, data, "the student")
    model = _student(student, teacher_list, data, shrink)
    task_ = get_task(task if task is not None else task_of(model))
    obj = objective(
        teacher_list,
        task_,
        cfg,
        student=model,
        example_inputs=data.example_input(2, split="train"),
    )
    module = obj.trainable(model)
    tc = train or TrainConfig()
    try:
        result = train_loop(
            module,
            data,
            task_,
            tc,
            objective=obj,
            callbacks=callbacks,
            evaluate_fn=evaluate_fn,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            description=description,
        )
    finally:
        obj.close()
    model.eval()
    record(
        model,
        lineage={
            "stage": "distill",
            "teachers": len(teacher_list),
            "config": cfg.to_dict(),
            "train": tc.to_dict(),
            "best_val": result.best_metric,
            "epochs_run": result.epochs_run,
        },
    )
    hits = obj.cache.hits if obj.cache is not None else 0
    misses = obj.cache.misses if obj.cache is not None else 0
    return DistillResult(model, result, hits, misses)


def distill(
    student: nn.Module | StudentFromTeacher | dict[str, Any],
    teachers: nn.Module | Sequence[nn.Module],
    config: AnyDistillConfig | dict[str, Any] | None,
    data: Data | str,
    *,
    train: TrainConfig | None = None,
    task: str | Task | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    shrink: Shrink | None = None,
) -> nn.Module:
    """Train a copy of ``student`` to match ``teachers``; returns the trained copy (eval mode).

    - ``student``: a model (it is copied: the caller's keeps its weights and mode), or a
      :class:`~slimfuse.distillation.config.StudentFromTeacher` (or its dict: ``{"depth": 3}``)
      to build one from the first teacher; ``width`` needs ``shrink`` (``slimfuse.distill``
      passes structured pruning's).
    - ``teachers``: a model or a list of models (an ensemble, averaged as ``config`` says); they
      run as frozen copies, the caller's keep their mode and ``requires_grad``. A teacher (or
      student) that records a split of ``data`` other than its own is refused (one line).
    - ``config``: a :data:`~slimfuse.distillation.config.DistillConfig` (``KD(...)``, a dict
      with ``loss``; ``None``: ``KD()``).
    - ``data``: a :class:`~slimfuse.data.Data` or its name; ``train``: the one loop's
      :class:`~slimfuse.config.TrainConfig` (default ``TrainConfig()``); ``task`` defaults to
      the one the student records.
    - ``checkpoint_dir`` / ``resume`` / ``callbacks`` / ``evaluate_fn``: as
      :func:`slimfuse.train`.
    """
    return distill_run(
        student,
        teachers,
        config,
        data,
        train=train,
        task=task,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=callbacks,
        evaluate_fn=evaluate_fn,
        shrink=shrink,
    ).student
