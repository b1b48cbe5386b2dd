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
from typing import TYPE_CHECKING, Any

from torch import nn

from slimfuse.data import Data
from slimfuse.errors import SlimfuseWarning
from slimfuse.measuring import count_params
from slimfuse.pruning.config import AnyPruneConfig, PruneConfig, check_recovery
from slimfuse.registry import Registry
from slimfuse.training.recovery import Edit, EditOptions, Handler, Job

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["HANDLERS", "PRUNING", "Job", "prune"]

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

PRUNING = Edit(
    PruneConfig,
    HANDLERS,
    check_recovery,
    verb="prune",
    noun="pruning",
    after="pruning",
    hint="prune the float model, then quantize the pruned one",
)


def prune(
    model: nn.Module,
    config: AnyPruneConfig | dict[str, Any],
    data: Data | None = None,
    **options: Unpack[EditOptions],
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
    cfg, handler, job = PRUNING.start(model, config, data, **options)
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
