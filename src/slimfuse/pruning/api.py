"""``slimfuse.prune(model, Channels(channels=0.5), data)``: config in, model out; one handler
per method.

- :class:`~slimfuse.pruning.config.Magnitude` (``sparsity=0.9``): magnitude masks, raised on
  the cubic AGP schedule during recovery or all at once (``sparsity_schedule="oneshot"``, then
  recovery with the masks kept); the masks stay with the pruned layers (the training loop
  keeps the zeros in any later training), the spec records them and the bundle stores the
  sparse weights compactly (:mod:`~slimfuse.pruning.sparse`). Global pruning keeps at least
  ``min_density`` of each layer. :class:`~slimfuse.pruning.config.Threshold` (``threshold=τ``) drops every
  ``|w| <= τ`` (one-shot).
- :class:`~slimfuse.pruning.config.Channels` (``channels=0.5``): structured removal of
  channels / neurons (``importance`` l1, l2, bn, taylor), optionally ``iterative_steps`` of
  prune → recover, then recovery.
- :class:`~slimfuse.pruning.config.Transformer` (``ffn=0.5, heads=0.25``): FFN neurons and
  attention heads of a BERT-style encoder.

Recovery trains with the one loop for ``train.epochs`` (a :class:`~slimfuse.config.TrainConfig`;
default none); ``recovery="distill"`` uses the unpruned model as teacher through the caller's
``teacher_objective``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.data import Data
from slimfuse.errors import ConfigError, SlimfuseWarning
from slimfuse.measuring import count_params
from slimfuse.models.source import check_float_model, task_of
from slimfuse.pruning.config import PRUNE_TRAINING, AnyPruneConfig, PruneConfig, check_recovery
from slimfuse.pruning.recovery import (
    Recovery,
    TeacherObjective,
    check_teacher_objective,
    recover,
)
from slimfuse.registry import Registry
from slimfuse.tasks import Task, get_task
from slimfuse.training import Callback


@dataclass
class Job:
    """What a method's handler gets besides the caller's model (left unchanged) and its config."""

    data: Data | None  # recovery's training data; example inputs, Taylor and activation batches
    task: Task
    train: TrainConfig  # recovery's training (epochs 0: none)
    example_inputs: Any  # channels: inputs to trace the model with (default: one data sample)
    inputs: Any  # transformer: token batches for importance 'activation' (default: from data)
    teacher: nn.Module | None  # the unpruned model, for recovery 'distill'
    teacher_objective: TeacherObjective | None
    checkpoint_dir: str | Path | None
    recovery: Recovery = "finetune"

    def recover(
        self, model: nn.Module, callbacks: Sequence[Callback] = (), description: str = "recover"
    ) -> None:
        """Recovery epochs on ``model``, in place (none when ``train.epochs`` is 0)."""
        if self.train.epochs and self.data is not None:
            recover(
                model,
                self.data,
                self.task,
                self.train,
                recovery=self.recovery,
                teacher=self.teacher,
                teacher_objective=self.teacher_objective,
                callbacks=callbacks,
                checkpoint_dir=self.checkpoint_dir,
                description=description,
            )


Handler = Callable[[nn.Module, Any, Job], nn.Module]

# method -> "module:function(model, config, job) -> new model"; add one with HANDLERS.register
HANDLERS: Registry[Handler] = Registry(
    "pruning method",
    lazy={
        "magnitude": "slimfuse.pruning.schedule:prune_magnitude",
        "threshold": "slimfuse.pruning.unstructured:prune_threshold",
        "channels": "slimfuse.pruning.structured:prune_channels",
        "transformer": "slimfuse.pruning.transformer:prune_encoder",
    },
)


def prune(
    model: nn.Module,
    config: AnyPruneConfig | dict[str, Any],
    data: Data | None = None,
    *,
    train: TrainConfig | None = None,
    task: str | Task | None = None,
    example_inputs: Any = None,
    inputs: Any = None,
    teacher_objective: TeacherObjective | None = None,
    checkpoint_dir: str | Path | None = None,
) -> nn.Module:
    """Prune ``model`` as ``config`` says, recover, and return the new model (the input is not
    changed: neither its weights nor its training mode).

    - ``config``: a :data:`~slimfuse.pruning.config.PruneConfig` (``Channels(channels=0.5)``, a
      dict such as ``{"channels": 0.5}``); dispatched to the handler of its method (:data:`HANDLERS`).
    - ``data``: recovery's training data, and the example input (channels), Taylor importance's
      batches and activation importance's token batches.
    - ``train``: recovery's :class:`~slimfuse.config.TrainConfig` (default
      :data:`~slimfuse.pruning.config.PRUNE_TRAINING`: no epochs).
    - ``task``: defaults to the one the model records, else classification.
    - ``example_inputs`` (channels: what the model is traced with; default one sample of
      ``data``), ``inputs`` (transformer, importance ``activation``: token batches; default four
      batches of ``data``).
    - ``teacher_objective(teacher, task)``: the distillation objective of ``recovery="distill"``
      (``slimfuse.prune`` passes the distillation family's).

    Pruning that removes nothing (no weight zeroed, no channel removed: every layer ignored,
    a ratio too small to take one channel) warns (``SlimfuseWarning``; an error with the
    CLI's ``--strict``).
    """
    cfg = PruneConfig.parse(config)
    handler = HANDLERS.get(cfg.method)
    check_float_model(model, "pruning", "prune the float model, then quantize the pruned one")
    train = train or TrainConfig(**PRUNE_TRAINING, quiet=True)
    if not isinstance(train, TrainConfig):
        raise ConfigError(f"train= expects a TrainConfig; got {type(train).__name__}")
    check_recovery(cfg, train)
    if train.epochs and data is None:
        raise ConfigError("fine-tuning after pruning needs data")
    distill = cfg.recovery == "distill"
    if distill:
        check_teacher_objective(teacher_objective)
    job = Job(
        data=data,
        task=get_task(task or task_of(model)),
        train=train,
        example_inputs=example_inputs,
        inputs=inputs,
        teacher=model if distill else None,  # recovery distils from a copy
        teacher_objective=teacher_objective,
        checkpoint_dir=checkpoint_dir,
        recovery=cfg.recovery,
    )
    before = count_params(model)
    pruned = handler(model, cfg, job)
    after = count_params(pruned)
    if after[0] >= before[0] and after[1] >= before[1]:
        warnings.warn(
            f"pruning removed nothing: {before[0]:,} parameters, {before[1]:,} non-zero before "
            "and after (are the targeted layers ignored, or the ratio too small for one channel?)",
            SlimfuseWarning,
            stacklevel=2,
        )
    return pruned
