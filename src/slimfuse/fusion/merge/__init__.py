"""Weight-space merging of same-architecture models: uniform soup, greedy soup, TIES.

``slimfuse.merge(models, Greedy(), data)``: config in, merged model out. Each method
(:data:`~slimfuse.fusion.config.MergeConfig`) has a handler in :data:`HANDLERS`
(``fn(pairs, config, job) -> (model, info)``); add one with ``@HANDLERS.register("name")`` and
its config to the family::

    soup = slimfuse.merge([("ft0", m0), ("ft1", m1), ("ft2", m2)], Greedy(), data)
    ties = slimfuse.merge(variants, Ties(density=0.3), data, parent=base)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.fusion.common import Members, as_pairs
from slimfuse.fusion.config import AnyMergeConfig, MergeConfig
from slimfuse.fusion.merge.common import MergeJob
from slimfuse.models.leakage import check_members_split, check_same_split
from slimfuse.models.source import check_float_model, record, task_of
from slimfuse.registry import Registry
from slimfuse.tasks import Task

Handler = Callable[[list[tuple[str, nn.Module]], Any, MergeJob], tuple[nn.Module, dict[str, Any]]]

# method -> "module:function(pairs, config, job) -> (model, info)"
HANDLERS: Registry[Handler] = Registry(
    "merge method",
    lazy={
        "uniform": "slimfuse.fusion.merge.soups:uniform_soup",
        "greedy": "slimfuse.fusion.merge.soups:greedy_soup",
        "ties": "slimfuse.fusion.merge.ties:ties_merge",
    },
)


def merge(
    models: Members,
    config: AnyMergeConfig | dict[str, Any] | None = None,
    data: Any = None,
    *,
    parent: nn.Module | None = None,
    task: str | Task | None = None,
) -> nn.Module:
    """Merge the weights of same-architecture models into a new model of that architecture.

    - ``config``: a :data:`~slimfuse.fusion.config.MergeConfig` (``Greedy()``, ``Ties(...)``, a
      dict with ``method``; ``None``: ``Greedy()``).
    - ``data``: validation data (greedy soup; a uniform soup's scores) and training batches to
      re-estimate BatchNorm statistics.
    - ``parent``: TIES only: the model the variants were fine-tuned from.
    - ``task``: defaults to the one the first model records, else classification.

    Models that record a split of ``data`` other than its own are refused (one line).
    The models given are not changed. The method's details (chosen ingredients, scores) go to
    the model's lineage and to ``model.merge_info``.
    """
    cfg = MergeConfig.parse({} if config is None else config)
    handler = HANDLERS.get(cfg.method)
    pairs = as_pairs(models)
    if parent is not None and cfg.method != "ties":
        raise ConfigError(
            f"parent= applies to method 'ties' (the model its variants were fine-tuned from); "
            f"got method {cfg.method!r}"
        )
    for name, m in [*pairs, *([("parent", parent)] if parent is not None else [])]:
        check_float_model(m, f"merging member {name!r}", "merge the float models, then quantize")
    check_members_split(pairs, data)  # one trained on another split of the data: refused
    if parent is not None:
        check_same_split(parent, data, "the parent")
    job = MergeJob(data=data, task=task or task_of(pairs[0][1]), parent=parent)
    model, info = handler(pairs, cfg, job)
    record(model, lineage={"stage": "merge", **info})
    object.__setattr__(model, "merge_info", info)
    return model
