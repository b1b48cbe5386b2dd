"""``slimfuse.factorize(model, Energy(energy=0.9), data)``: config in, model out; one handler
per method.

- :class:`~slimfuse.lowrank.config.Energy` (``energy=0.9``): per layer, the fewest singular
  values keeping that share of the sum of their squares.
- :class:`~slimfuse.lowrank.config.Ratio` (``ratio=0.5``): every targeted layer keeps that
  share of its weights and FLOPs.
- :class:`~slimfuse.lowrank.config.Budget` (``budget=0.5``): the model's FLOPs (or parameters)
  at that share, ranks by each layer's sensitivity on calibration data.

Each targeted Linear / Conv1d / Conv2d becomes two layers from its truncated SVD (a layer that
would not get smaller is left alone); ``model.lowrank_info["layers"]`` says which, at what
rank, and why the others were left. Recovery trains with the one loop for ``train.epochs``
(default none); ``recovery="distill"`` distils from the original model through the caller's
``teacher_objective`` (``slimfuse.factorize`` passes the distillation family's).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from torch import nn

from slimfuse.data import Data
from slimfuse.errors import SlimfuseWarning
from slimfuse.lowrank.config import AnyLowRankConfig, LowRankConfig, check_recovery
from slimfuse.measuring import count_macs, count_params
from slimfuse.registry import Registry
from slimfuse.training.recovery import Edit, EditOptions, Handler, Job

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["FACTORIZATION", "HANDLERS", "Job", "factorize"]

# method -> "module:function(model, config, job) -> new model"; add one with HANDLERS.register
HANDLERS: Registry[Handler] = Registry(
    "low-rank method",
    lazy={
        "energy": "slimfuse.lowrank.energy:factorize_energy",
        "ratio": "slimfuse.lowrank.ratio:factorize_ratio",
        "budget": "slimfuse.lowrank.budget:factorize_budget",
    },
)

FACTORIZATION = Edit(
    LowRankConfig,
    HANDLERS,
    check_recovery,
    verb="factorize",
    noun="low-rank factorization",
    after="factorization",
    hint="factorize the float model, then quantize",
)


def _macs(model: nn.Module, example: Any) -> int | None:
    """MACs on ``example`` (``None``: no example), the model's train/eval mode kept."""
    if example is None:
        return None
    mode = model.training
    try:
        return count_macs(model, example)
    finally:
        model.train(mode)


def factorize(
    model: nn.Module,
    config: AnyLowRankConfig | dict[str, Any],
    data: Data | None = None,
    **options: Unpack[EditOptions],
) -> nn.Module:
    """Factorize ``model``'s layers as ``config`` says, recover, and return the new model (the
    input is not changed: neither its weights nor its training mode).

    - ``config``: a :data:`~slimfuse.lowrank.config.LowRankConfig` (``Budget(budget=0.5)``, a
      dict such as ``{"energy": 0.9}``); dispatched to its method's handler (:data:`HANDLERS`).
    - ``data``: recovery's training data; budget's calibration samples and example input.
    - ``train``: recovery's :class:`~slimfuse.config.TrainConfig` (default
      :data:`~slimfuse.lowrank.config.LOWRANK_TRAINING`: no epochs).
    - ``example_inputs``: the input whose FLOPs the budget counts (default: one sample of
      ``data``); ``inputs``: budget's calibration batches (default: samples of ``data``).
    - ``teacher_objective(teacher, task)``: the objective of ``recovery="distill"``.

    ``model.lowrank_info``: ``layers`` (one row per targeted layer: factorized at a rank, or
    left alone and why), ``params`` and ``macs`` before and after (MACs on the example input),
    and for a budget what it reached. Factorizing nothing warns (``SlimfuseWarning``).
    """
    cfg, handler, job = FACTORIZATION.start(model, config, data, **options)
    example = job.example_inputs
    if example is None and data is not None:
        example = data.example_input(1)
    before = count_params(model)[0], _macs(model, example)
    small = handler(model, cfg, job)
    info = dict(getattr(small, "lowrank_info", {}))
    if not any(r["status"] == "factorized" for r in info.get("layers", [])):
        warnings.warn(
            "low-rank factorization changed no layer: none of the targeted layers would get "
            "smaller at the rank chosen (see lowrank_info['layers'])",
            SlimfuseWarning,
            stacklevel=2,
        )
    job.recover(small)
    small.eval()
    info["params"] = [before[0], count_params(small)[0]]
    info["macs"] = [before[1], _macs(small, example)]
    object.__setattr__(small, "lowrank_info", info)
    return small
