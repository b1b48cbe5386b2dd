"""Rebuild fused models from their bundle spec (the ``"fused"`` entry of the model zoo).

A fused model's spec is ``{"source": "fused", "kwargs": {"method": ..., "members": [{"name",
"spec"}], ...}}``. :func:`build_fused` rebuilds every member from its own spec's source and
kwargs and wraps them with the method's class; if members carry structural edits (a pruned
member), the fused spec holds a ``fusion_members`` edit whose handler applies each member's
edits with its slice of the saved state dict. Then :func:`slimfuse.load` loads the weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.models.edits import apply_edits
from slimfuse.models.source import (
    ModelSpec,
    check_build_size,
    check_kwargs,
    rebuild,
    set_spec,
    spec_of,
)
from slimfuse.registry import Registry
from slimfuse.training import freeze

# method -> "module:function(members, **kwargs) -> nn.Module"
BUILDERS: Registry[Callable[..., nn.Module]] = Registry(
    "fusion method",
    lazy={
        "mean": "slimfuse.fusion.build:_mean",
        "vote": "slimfuse.fusion.vote:_build",
        "stack": "slimfuse.fusion.stacking:_build",
        "head": "slimfuse.fusion.head:_build",
        "sklearn_linear": "slimfuse.fusion.sklearn:_build",
    },
)


def _mean(members: list[tuple[str, nn.Module]], **kw: Any) -> nn.Module:
    return MeanFusion(members, **kw)


def build_member(entry: dict[str, Any]) -> tuple[str, nn.Module]:
    """One member rebuilt from its ``{"name", "spec"}`` entry (structure only, no weights)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ModelError(f"fused member entry {str(entry)[:80]}: expected a name and a spec")
    spec = ModelSpec.from_dict(entry.get("spec"), f"member {entry['name']!r}")
    return entry["name"], set_spec(rebuild(spec), spec)


def build_fused(method: str, members: list[dict[str, Any]], **kwargs: Any) -> nn.Module:
    """The zoo builder for ``source: fused``: the members (each checked as a model source),
    then the method's own part, its keyword arguments checked and its size bounded."""
    if not isinstance(members, list):
        raise ModelError("a fused model needs members: a list")
    builder = BUILDERS.get(method)
    what = f"fused model ({method})"
    kwargs = check_kwargs(builder, kwargs, what, skip=1)
    check_build_size(lambda **kw: builder([build_member(e) for e in members], **kw), kwargs, what)
    return builder([build_member(e) for e in members], **kwargs)


def fusion_members_edit(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: apply each member's own structural edits with its part of the state."""
    members: nn.ModuleDict = model.members  # type: ignore[assignment]
    for name in list(members.keys()):
        sub = members[name]
        spec = spec_of(sub)
        if spec is None or not spec.edits:
            continue
        prefix = f"members.{name}."
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        new = apply_edits(sub, spec.edits, part)
        set_spec(new, spec)
        freeze(new)
        members[name] = new
    return model
