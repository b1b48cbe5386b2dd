"""The ``fuse`` verb: one call from trained members to a fused model.

Methods (registry :data:`FUSE_METHODS`): ``mean``, ``weighted``, ``vote``, ``soft-vote``,
``stack``, ``head``. Options go to the method's class (``space``, ``weights``, ``cv``, ``meta``,
``features``, ``on``, ``hidden``, ``config``)::

    fused = slimfuse.fuse([("a", m1), ("b", m2), ("c", m3)], method="weighted", data=data)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from slimfuse.errors import ConfigError, FusionError
from slimfuse.fusion.common import Members, as_pairs
from slimfuse.registry import Registry

FUSE_METHODS: Registry[Any] = Registry(
    "fusion method",
    lazy={
        "mean": "slimfuse.fusion.api:_mean",
        "weighted": "slimfuse.fusion.api:_weighted",
        "vote": "slimfuse.fusion.api:_vote",
        "soft-vote": "slimfuse.fusion.api:_soft_vote",
        "stack": "slimfuse.fusion.api:_stack",
        "head": "slimfuse.fusion.api:_head",
    },
)


def _need(data: Any, method: str) -> Any:
    if data is None:
        raise FusionError(f"method {method!r} learns from data: expected data=")
    return data


def _mean(pairs: list, data: Any, task: Any, **kw: Any) -> nn.Module:
    from slimfuse.fusion.ensemble import MeanFusion

    return MeanFusion(pairs, **kw)


def _weighted(pairs: list, data: Any, task: Any, **kw: Any) -> nn.Module:
    from slimfuse.fusion.weighted import WeightedFusion

    return WeightedFusion(pairs, **kw).fit(_need(data, "weighted"), task=task)


def _vote(pairs: list, data: Any, task: Any, **kw: Any) -> nn.Module:
    from slimfuse.fusion.vote import VoteFusion

    return VoteFusion(pairs, voting="hard", **kw)


def _soft_vote(pairs: list, data: Any, task: Any, **kw: Any) -> nn.Module:
    from slimfuse.fusion.vote import VoteFusion

    return VoteFusion(pairs, voting="soft", **kw)


def _stack(pairs: list, data: Any, task: Any, **kw: Any) -> nn.Module:
    from slimfuse.fusion.stacking import StackingFusion

    return StackingFusion(pairs, **kw).fit(_need(data, "stack"), task=task)


def _head(pairs: list, data: Any, task: Any, *, config: Any = None, **kw: Any) -> nn.Module:
    from slimfuse.fusion.head import HeadFusion

    return HeadFusion(pairs, **kw).fit(_need(data, "head"), config=config, task=task)


# the options (a ``fuse`` stage's keys, ``slimfuse fuse``'s flags) that each method reads
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "mean": ("space", "weights"),
    "weighted": ("space", "weights", "shrink", "cv"),
    "vote": ("weights",),
    "soft-vote": ("weights",),
    "stack": ("cv", "features", "meta_c", "with_val"),
    "head": ("on", "hidden"),
}
OPTIONS: tuple[str, ...] = tuple(sorted({k for keys in METHOD_OPTIONS.values() for k in keys}))


def check_options_apply(method: str, given: Iterable[str]) -> None:
    """Refuse an option the user set (``given``) that ``method`` does not read."""
    unused = sorted(set(given) - set(METHOD_OPTIONS.get(method, ())))
    if unused:
        users = [m for m, keys in METHOD_OPTIONS.items() if unused[0] in keys]
        raise ConfigError(
            f"option {unused[0]} does not apply to method {method!r}; it is for {', '.join(users)}"
        )
    learning = sorted({"shrink", "cv"} & set(given))
    if method == "weighted" and "weights" in given and learning:
        raise ConfigError(
            f"option {learning[0]} applies to learned weights, but weights were given: expected "
            "one of them"
        )


def method_options(
    method: str, settings: Any, train_config: Any, given: Iterable[str] = ()
) -> dict[str, Any]:
    """``fuse``'s options for ``method``, read off a ``fuse`` stage (the CLI builds one too).

    ``given`` names the options the user set: one that ``method`` does not read is an error,
    not silently dropped. ``train_config`` trains the folds of stacking and of weighted
    fusion with ``cv=K``, and the head.
    """
    check_options_apply(method, given)
    s = settings
    if method == "mean":
        return {"space": s.space, "weights": s.weights}
    if method == "weighted":
        return {
            "space": s.space,
            "weights": s.weights,
            "shrink": s.shrink,
            "cv": s.cv,
            "train_config": train_config,
        }
    if method in ("vote", "soft-vote"):
        return {"weights": s.weights}
    if method == "stack":
        return {
            "cv": s.cv,
            "features": s.features,
            "train_config": train_config,
            "C": s.meta_c,
            "with_val": s.with_val,
        }
    if method == "head":
        return {"on": s.on, "hidden": s.hidden, "config": train_config}
    return {}


def fuse(
    members: Members,
    method: str = "mean",
    *,
    data: Any = None,
    task: Any = "classification",
    **options: Any,
) -> nn.Module:
    """Fuse trained ``(name, model)`` members into one module with ``method``."""
    from slimfuse.models.source import record

    fn = FUSE_METHODS.get(method)
    pairs = as_pairs(members)
    try:
        fused = fn(pairs, data, task, **options)
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise FusionError(f"method {method!r}: {exc}") from exc
    record(fused, lineage={"stage": "fuse", "method": method, "members": [n for n, _ in pairs]})
    return fused
