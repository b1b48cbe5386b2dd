"""Structural edits and their recovery: what the pruning and low-rank verbs share.

An :class:`Edit` is one such verb's family of configs, its handlers (one per method) and the
words its errors use; :meth:`Edit.start` does the set-up both verbs run before their handler
(the config parsed, a float model, recovery's :class:`~slimfuse.config.TrainConfig` checked
against the config, data for the epochs, the distillation objective) and returns the
:class:`Job` the handler gets. :meth:`Job.recover` trains the edited model with the one loop:
``recovery="finetune"`` on the task loss, ``recovery="distill"`` from a frozen copy of the
original model through the objective ``teacher_objective(teacher, task)`` makes. A technique
family imports no other technique: its caller passes the objective (:func:`slimfuse.prune`
and :func:`slimfuse.factorize` pass the distillation family's).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

from torch import nn

from slimfuse.config import Config, Family, TrainConfig
from slimfuse.data import Data
from slimfuse.errors import ConfigError
from slimfuse.models.source import check_float_model, task_of
from slimfuse.registry import Registry
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback, freeze, train

Recovery = Literal["finetune", "distill"]
# teacher (a frozen copy of the original model), task -> a ``(model, batch) -> loss`` objective
TeacherObjective = Callable[[nn.Module, Task], Any]


class EditOptions(TypedDict, total=False):
    """The keywords of an edit's verb besides the model, its config and the data."""

    train: TrainConfig | None  # recovery's training (default: the family's, no epochs)
    task: str | Task | None  # default: the one the model records, else classification
    example_inputs: Any  # the input a method traces or counts FLOPs on (default: one sample)
    inputs: Any  # a method's calibration / importance batches (default: from the data)
    teacher_objective: TeacherObjective | None  # recovery 'distill''s objective
    checkpoint_dir: str | Path | None  # recovery's checkpoints
    # recovery's loop callbacks (a search's watch), run after the method's own
    callbacks: Sequence[Callback]


@dataclass
class Job:
    """What a method's handler gets besides the caller's model (left unchanged) and its config."""

    data: Data | None  # recovery's training data; the methods' example input and batches
    task: Task
    train: TrainConfig  # recovery's training (epochs 0: none)
    example_inputs: Any  # the input to trace / count FLOPs on (default: one data sample)
    inputs: Any  # calibration or importance batches (default: from the data)
    teacher: nn.Module | None  # the original model, for recovery 'distill'
    teacher_objective: TeacherObjective | None
    checkpoint_dir: str | Path | None
    recovery: Recovery = "finetune"
    callbacks: Sequence[Callback] = ()  # the caller's, on every recovery run

    def recover(
        self, model: nn.Module, callbacks: Sequence[Callback] = (), description: str = "recover"
    ) -> None:
        """Recovery epochs on ``model``, in place (none when ``train.epochs`` is 0 or there is
        no data); ``recovery='distill'`` distils from a frozen copy of :attr:`teacher`."""
        if not self.train.epochs or self.data is None:
            return
        objective = None
        if self.recovery == "distill":
            assert self.teacher is not None and self.teacher_objective is not None  # Edit.start
            objective = self.teacher_objective(freeze(copy.deepcopy(self.teacher)), self.task)
        train(
            model,
            self.data,
            self.task,
            self.train,
            objective=objective,
            callbacks=[*callbacks, *self.callbacks],
            checkpoint_dir=self.checkpoint_dir,
            description=description,
        )


Handler = Callable[[nn.Module, Any, Job], nn.Module]


@dataclass(frozen=True)
class Edit:
    """One structural edit: its configs (``family``, whose ``trains`` are recovery's
    defaults), a handler per method, the checks across a config and its recovery training,
    and the words its errors use."""

    family: Family
    handlers: Registry[Handler]
    check: Callable[[Any, TrainConfig], None]  # run before any model or data is touched
    verb: str  # the public verb that passes the distillation objective: slimfuse.<verb>
    noun: str  # what a quantized model cannot have done to it: "pruning"
    after: str  # "fine-tuning after <after> needs data"
    hint: str  # what to do instead with a quantized model

    def start(
        self,
        model: nn.Module,
        config: Config | dict[str, Any],
        data: Data | None = None,
        *,
        train: TrainConfig | None = None,
        task: str | Task | None = None,
        example_inputs: Any = None,
        inputs: Any = None,
        teacher_objective: TeacherObjective | None = None,
        checkpoint_dir: str | Path | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> tuple[Any, Handler, Job]:
        """The method's config, its handler and the job, every check passed (one line each)."""
        cfg = self.family.parse(config)
        method = getattr(cfg, self.family.key)
        handler = self.handlers.get(method)
        check_float_model(model, self.noun, self.hint)
        train = train or TrainConfig(**self.family.trains[method], quiet=True)
        if not isinstance(train, TrainConfig):
            raise ConfigError(f"train= expects a TrainConfig; got {type(train).__name__}")
        self.check(cfg, train)
        if train.epochs and data is None:
            raise ConfigError(f"fine-tuning after {self.after} needs data")
        recovery = getattr(cfg, "recovery", "finetune")
        if recovery == "distill" and teacher_objective is None:
            raise ConfigError(
                "recovery 'distill' needs a distillation objective (teacher_objective=); use "
                f"slimfuse.{self.verb}, which passes the distillation family's"
            )
        job = Job(
            data=data,
            task=get_task(task or task_of(model)),
            train=train,
            example_inputs=example_inputs,
            inputs=inputs,
            teacher=model if recovery == "distill" else None,  # recovery distils from a copy
            teacher_objective=teacher_objective,
            checkpoint_dir=checkpoint_dir,
            recovery=recovery,
            callbacks=tuple(callbacks),
        )
        return cfg, handler, job
