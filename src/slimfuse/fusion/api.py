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
from slimfuse.errors import ConfigError, FusionError
from slimfuse.fusion.common import FuseJob, Members, as_pairs, is_regression
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
    train: TrainConfig | dict[str, Any] | None = None,
    task: str | Task | None = None,
) -> nn.Module:
    """Fuse trained members into one module as ``config`` says; the members are not changed.

    - ``members``: ``(name, model)`` pairs (or models, named ``m0``, ``m1``, ...).
    - ``config``: a :data:`~slimfuse.fusion.config.FuseConfig` (``Weighted(cv=5)``, a dict with
      ``method``; ``None``: ``Mean()``), dispatched to the handler registered for its method
      (:data:`HANDLERS`).
    - ``data``: what the learning methods (``weighted``, ``stack``, ``head``) fit on.
    - ``train``: the one loop's settings for a method that trains (``weighted`` and ``stack``
      with ``cv=K`` retrain every member per fold; ``head``): a ``TrainConfig``, or a mapping of
      settings over the defaults. Defaults: for the folds, each member's own training settings
      where every member records them (``slimfuse train``, ``train-members``: in its spec's
      lineage; a mapping's ``seed`` then seeds only the fold splits, each member keeps its
      own), else 10 epochs at lr 1e-3, as for a head. Its seed also seeds the fold splits.
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
    task = task or task_of(pairs[0][1])
    if is_regression(task) and cfg.method in ("vote", "soft-vote"):
        raise FusionError(
            f"method {cfg.method!r} votes for classes; regression fuses predictions: expected "
            "mean, weighted, stack or head"
        )
    seed = 0
    if cfg.trains and not isinstance(train, TrainConfig):
        changes = dict(train or {})
        seed = int(changes.get("seed", 0))
        train = training_defaults(pairs, cfg, changes)
    elif isinstance(train, TrainConfig):
        seed = train.seed
    job = FuseJob(data=data, task=task, train=train, seed=seed)  # type: ignore[arg-type]
    copies = [(name, copy.deepcopy(model)) for name, model in pairs]
    fused = handler(copies, cfg, job)
    lineage: dict[str, Any] = {
        "stage": "fuse",
        "method": cfg.method,
        "members": [n for n, _ in pairs],
        "config": cfg.to_dict(),
    }
    if isinstance(train, TrainConfig):
        lineage["train"] = train.to_dict()
    elif train is not None:
        lineage["train"] = [c.to_dict() for c in train]
    record(fused, lineage=lineage)
    spec = spec_of(fused)
    if spec is not None and data is not None:
        spec.split = split_record(data)
    return fused


def recorded_training(model: nn.Module) -> TrainConfig | None:
    """The training settings ``model`` records (the last ``train`` or ``train-members`` entry of
    its spec's lineage), or ``None``; settings of another version that no longer apply are
    left out."""
    spec = spec_of(model)
    for entry in reversed(spec.lineage if spec is not None else []):
        if entry.get("stage") in ("train", "train-members") and isinstance(
            entry.get("config"), dict
        ):
            keys = {k: v for k, v in entry["config"].items() if k in TrainConfig.model_fields}
            try:
                return TrainConfig.from_dict(keys)
            except ConfigError:
                return None
    return None


def training_defaults(
    pairs: list[tuple[str, nn.Module]], config: Any, changes: dict[str, Any]
) -> TrainConfig | list[TrainConfig]:
    """What a fusion method that trains uses when given no ``TrainConfig``: for members
    retrained per fold (``cv=K``), each member's recorded training settings with ``changes``
    (not their seeds) where all record them, else the fuse defaults (10 epochs at lr 1e-3)
    with ``changes``; ``quiet`` unless ``changes`` says otherwise."""
    if getattr(config, "cv", "prefit") != "prefit":
        own = [recorded_training(m) for _, m in pairs]
        if all(c is not None for c in own):
            keep = {k: v for k, v in changes.items() if k != "seed"}
            return [c.replace(**{"quiet": True, **keep}) for c in own]  # type: ignore[union-attr]
    return TrainConfig.from_dict({**FUSE_TRAINING, "quiet": True, **changes})


def fit_summary(model: nn.Module) -> str | None:
    """One line on what a fusion learned (the weights, the meta-learner's choice), as the CLI
    prints it and a recipe logs it; ``None`` for a method that learns nothing."""
    names = getattr(model, "names", [])
    if hasattr(model, "weights_"):
        shown = ", ".join(f"{n} {w:.3f}" for n, w in zip(names, model.weights_, strict=True))
        shrink = getattr(model, "shrink_", None)
        return (
            f"weights: {shown}"
            + ("" if shrink is None else f" (shrink {shrink:.2f})")
            + f"; fitted on {model.fit_samples_} "
            + ("validation samples" if model.cv == "prefit" else "out-of-fold predictions")
        )
    if hasattr(model, "meta_samples_"):
        regression = getattr(model, "task_", "") == "regression"
        score = "R2 (standardized)" if regression else "accuracy"
        c = getattr(model, "C_", None)
        if c == 0:
            line = "meta-learner: none, the members' mean (no C beat it on held-out data)"
        else:
            line = "meta-learner: " + ("ridge" if regression else "logistic regression")
            line += "" if c is None else f", C {c:g}"
        line += f"; fitted on {model.meta_samples_} predictions; held-out {score} "
        line += f"{model.cv_score_:.4f}"
        curve = getattr(model, "C_curve_", None)
        if curve and c != 0 and 0.0 in curve:
            line += f" (the mean: {curve[0.0][1]:.4f})"
        return line
    return None
