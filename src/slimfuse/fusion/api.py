"""``slimfuse.fuse(members, Weighted(cv=5), data)``: config in, fused model out; one handler
per method.

Methods (:data:`~slimfuse.fusion.config.FuseConfig`): ``mean``, ``weighted``, ``vote``,
``soft-vote``, ``stack``, ``head``; each method's settings are its config's fields::

    fused = slimfuse.fuse([("a", m1), ("b", m2), ("c", m3)], Weighted(), data)
    fused = slimfuse.fuse(members, {"method": "head", "on": "features"}, data,
                          train=TrainConfig(epochs=20, lr=1e-3))
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.data import split_record
from slimfuse.errors import ConfigError
from slimfuse.fusion.common import FuseJob, Members, as_pairs
from slimfuse.fusion.config import FUSE_TRAINING, AnyFuseConfig, FuseConfig, not_training
from slimfuse.models.leakage import check_members_split
from slimfuse.models.source import record, spec_of, task_of
from slimfuse.registry import Registry
from slimfuse.tasks import Task

Handler = Callable[[list[tuple[str, nn.Module]], Any, FuseJob], nn.Module]

# method -> "module:function(members, config, job) -> fused model"; add one with
# HANDLERS.register (and its config to the family)
HANDLERS: Registry[Handler] = Registry(
    "fusion method",
    lazy={
        "mean": "slimfuse.fusion.ensemble:fuse_mean",
        "weighted": "slimfuse.fusion.weighted:fuse_weighted",
        "vote": "slimfuse.fusion.vote:fuse_vote",
        "soft-vote": "slimfuse.fusion.vote:fuse_soft_vote",
        "stack": "slimfuse.fusion.stacking:fuse_stack",
        "head": "slimfuse.fusion.head:fuse_head",
    },
)


def fuse(
    members: Members,
    config: AnyFuseConfig | dict[str, Any] | None = None,
    data: Any = None,
    *,
    train: TrainConfig | None = None,
    task: str | Task | None = None,
) -> nn.Module:
    """Fuse trained members into one module as ``config`` says; the members are not changed.

    - ``members``: ``(name, model)`` pairs (or models, named ``m0``, ``m1``, ...).
    - ``config``: a :data:`~slimfuse.fusion.config.FuseConfig` (``Weighted(cv=5)``, a dict with
      ``method``; ``None``: ``Mean()``), dispatched to the handler registered for its method
      (:data:`HANDLERS`).
    - ``data``: what the learning methods (``weighted``, ``stack``, ``head``) fit on.
    - ``train``: the one loop's settings for a method that trains (``weighted`` and ``stack``
      with ``cv=K`` retrain every member per fold; ``head``); default 10 epochs at lr 1e-3.
      Its seed also seeds the fold splits.
    - ``task``: defaults to the one the first member records, else classification.

    Members that record a split of ``data`` other than its own are refused (one line): the
    fused model's scores would include samples they trained on.

    The fused model holds copies of the members (frozen: no gradients, eval mode), so the
    caller's models keep their mode, ``requires_grad`` and weights; the copies cost one more
    copy of every member's weights.
    """
    cfg = FuseConfig.parse({} if config is None else config)
    handler = HANDLERS.get(cfg.method)
    pairs = as_pairs(members)
    check_members_split(pairs, data)  # a member trained on another split of the data: refused
    if train is not None and not cfg.trains:
        raise ConfigError(not_training(cfg, "train="))
    if cfg.trains and train is None:
        train = TrainConfig(**FUSE_TRAINING, quiet=True)
    job = FuseJob(
        data=data,
        task=task or task_of(pairs[0][1]),
        train=train,
        seed=train.seed if train is not None else 0,
    )
    copies = [(name, copy.deepcopy(model)) for name, model in pairs]
    fused = handler(copies, cfg, job)
    lineage: dict[str, Any] = {
        "stage": "fuse",
        "method": cfg.method,
        "members": [n for n, _ in pairs],
        "config": cfg.to_dict(),
    }
    if train is not None:
        lineage["train"] = train.to_dict()
    record(fused, lineage=lineage)
    spec = spec_of(fused)
    if spec is not None and data is not None:
        spec.split = split_record(data)
    return fused
