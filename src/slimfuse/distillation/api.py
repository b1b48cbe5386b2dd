"""The ``distill`` verb: train a student to match one or several frozen teachers.

All training goes through :func:`slimfuse.training.train` with the distillation
:func:`~slimfuse.distillation.objectives.objective`, so resume, signals, progress, early stopping
and DDP under ``torchrun`` are the loop's::

    student = slimfuse.distill(student, [t1, t2, t3], data, train_config=TrainConfig(epochs=60))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from torch import nn

from slimfuse.data import Data, load_data
from slimfuse.distillation.objectives import objective
from slimfuse.models.source import record, task_of
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback, TrainConfig, TrainResult, train


@dataclass(frozen=True)
class DistillConfig:
    """How to distil: the loss, its temperature and mix, hints, the ensemble and the cache."""

    loss: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    hints: Mapping[str, str] = field(default_factory=dict)
    hint_weight: float = 1.0
    hint_metric: Literal["mse", "cosine"] = "mse"
    ensemble_space: Literal["probs", "logits"] = "probs"
    ensemble_weights: Sequence[float] | None = None
    cache: bool = True
    max_cache_mb: float = 1024.0
    mixup: float = 0.0  # > 0: the teacher labels mixup blends of the inputs (function matching)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hints"] = dict(self.hints)
        return d


@dataclass
class DistillResult:
    """The trained student and the training loop's summary."""

    student: nn.Module
    train: TrainResult
    cache_hits: int = 0
    cache_misses: int = 0


def _task_of(student: nn.Module, task: str | Task | None) -> Task:
    if task is not None:
        return get_task(task)
    return get_task(task_of(student))


def distill_run(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module],
    data: Data | str,
    task: str | Task | None = None,
    config: DistillConfig | None = None,
    *,
    train_config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    evaluate_fn: Callable[[nn.Module], float] | None = None,
    description: str = "distill",
) -> DistillResult:
    """Like :func:`distill`, returning the loop's summary and the cache statistics too."""
    cfg = config or DistillConfig()
    data = load_data(data)
    task_ = _task_of(student, task)
    obj = objective(
        teacher,
        task_,
        loss=cfg.loss,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        hints=cfg.hints,
        hint_weight=cfg.hint_weight,
        hint_metric=cfg.hint_metric,
        ensemble_space=cfg.ensemble_space,
        ensemble_weights=cfg.ensemble_weights,
        cache=cfg.cache,
        max_cache_mb=cfg.max_cache_mb,
        mixup=cfg.mixup,
        student=student,
        example_inputs=data.example_input(2, split="train"),
    )
    module = obj.trainable(student)
    tc = train_config or TrainConfig()
    try:
        result = train(
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
    student.eval()
    n_teachers = 1 if isinstance(teacher, nn.Module) else len(list(teacher))
    record(
        student,
        lineage={
            "stage": "distill",
            "teachers": n_teachers,
            "config": cfg.to_dict(),
            "train": tc.to_dict(),
            "best_val": result.best_metric,
            "epochs_run": result.epochs_run,
        },
    )
    hits = obj.cache.hits if obj.cache is not None else 0
    misses = obj.cache.misses if obj.cache is not None else 0
    return DistillResult(student, result, hits, misses)


def distill(
    student: nn.Module,
    teacher: nn.Module | Sequence[nn.Module],
    data: Data | str,
    task: str | Task | None = None,
    config: DistillConfig | None = None,
    *,
    train_config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    evaluate_fn: Callable[[nn.Module], float] | None = None,
) -> nn.Module:
    """Train ``student`` in place to match ``teacher`` (a model or a list: an ensemble); returns it."""
    return distill_run(
        student,
        teacher,
        data,
        task,
        config,
        train_config=train_config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        callbacks=callbacks,
        evaluate_fn=evaluate_fn,
    ).student
