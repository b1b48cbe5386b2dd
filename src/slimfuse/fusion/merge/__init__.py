"""Weight-space merging of same-architecture models: uniform soup, greedy soup, TIES.

Methods live in :data:`MERGE_METHODS` (``fn(pairs, *, data, task, parent, **options) ->
(model, info)``); add one with ``@MERGE_METHODS.register("name")``. :func:`merge` is the verb::

    soup = slimfuse.merge([("ft0", m0), ("ft1", m1), ("ft2", m2)], method="greedy", data=data)
"""

from __future__ import annotations

from typing import Any

from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.fusion.common import Members, as_pairs
from slimfuse.registry import Registry

MERGE_METHODS: Registry[Any] = Registry(
    "merge method",
    lazy={
        "uniform": "slimfuse.fusion.merge.soups:uniform_soup",
        "greedy": "slimfuse.fusion.merge.soups:greedy_soup",
        "ties": "slimfuse.fusion.merge.ties:ties_merge",
    },
)


# the options only TIES reads, at their defaults
TIES_OPTIONS: dict[str, Any] = {"parent": None, "density": 0.2, "scale": 1.0}


def check_merge_options(method: str, **options: Any) -> None:
    """Refuse a TIES option set away from its default with another method (not dropped)."""
    if method == "ties":
        return
    for name, value in options.items():
        if value != TIES_OPTIONS[name]:
            raise ConfigError(f"option {name} does not apply to method {method!r}; it is for ties")


def merge(
    members: Members,
    method: str = "uniform",
    *,
    data: Any = None,
    task: Any = "classification",
    parent: nn.Module | None = None,
    **options: Any,
) -> nn.Module:
    """Merge the weights of same-architecture models; returns a model of that architecture.

    ``data`` gives validation data (greedy soup) and training batches to re-estimate BatchNorm
    statistics. The method's details (chosen ingredients, scores) go to the model's lineage and
    to ``model.merge_info``.
    """
    from slimfuse.models.source import check_float_model, record

    fn = MERGE_METHODS.get(method)
    pairs = as_pairs(members)
    for name, m in [*pairs, *([("parent", parent)] if parent is not None else [])]:
        check_float_model(m, f"merging member {name!r}", "merge the float models, then quantize")
    model, info = fn(pairs, data=data, task=task, parent=parent, **options)
    record(model, lineage={"stage": "merge", **info})
    object.__setattr__(model, "merge_info", info)
    return model
