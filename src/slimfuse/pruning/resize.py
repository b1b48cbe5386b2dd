"""The ``resize`` structural edit: record the shapes a pruning pass left, rebuild them on load.

Structured pruning slices parameters and updates size attributes (``out_channels``,
``in_features``, ``num_features``, a transformer attention's ``num_attention_heads`` ...). This
module takes a snapshot of those before pruning, records what changed as one edit in the model's
spec, and :func:`apply_resize` (declared in :data:`slimfuse.models.edits.EDITS`) gives a freshly
built model the same shapes, so that ``slimfuse.load`` rebuilds a pruned model without pickle::

    {"kind": "resize", "modules": {"layers.0.conv1": {"attrs": {"out_channels": 32, ...},
                                                      "shapes": {"weight": [32, 64, 3]}}}}
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.models.source import record

# size attributes that structured pruning changes, on whichever module has them
SIZE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_channels",
    "num_groups",
    "embedding_dim",
    "num_attention_heads",
    "attention_head_size",
    "all_head_size",
    "hidden_size",
    "input_size",
)

Snapshot = dict[str, dict[str, Any]]


def _attrs(module: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in SIZE_ATTRS:
        v = module.__dict__.get(a)
        if isinstance(v, bool):
            continue
        if isinstance(v, int):
            out[a] = v
        elif isinstance(v, tuple) and all(isinstance(i, int) for i in v):
            out[a] = list(v)
    return out


def _shapes(module: nn.Module) -> dict[str, list[int]]:
    tensors = {**dict(module.named_parameters(recurse=False)), **module._buffers}
    return {k: list(v.shape) for k, v in tensors.items() if v is not None}


def snapshot(model: nn.Module) -> Snapshot:
    """Size attributes and direct parameter/buffer shapes of every module, by name."""
    return {n: {"attrs": _attrs(m), "shapes": _shapes(m)} for n, m in model.named_modules()}


def changes(before: Snapshot, model: nn.Module) -> Snapshot:
    """The modules whose size attributes or tensor shapes differ from ``before``."""
    after = snapshot(model)
    return {n: s for n, s in after.items() if before.get(n) != s}


def record_resize(model: nn.Module, before: Snapshot, **info: Any) -> Snapshot:
    """Record a ``resize`` edit for what changed since ``before``; returns the changes."""
    changed = changes(before, model)
    if changed:
        record(model, edit={"kind": "resize", "modules": changed, **info})
    return changed


def _size_value(value: Any) -> bool:
    ints = value if isinstance(value, list) else [value]
    return all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 24 for v in ints)


def _checked_shape(key: str, shape: Any, state: dict[str, torch.Tensor]) -> list[int]:
    """A recorded shape, which must be the one the weights file holds for ``key`` (a file's
    sizes are not trusted); a tensor the file does not hold (a non-persistent buffer) is
    bounded instead."""
    if not isinstance(shape, list) or not _size_value(shape):
        raise ModelError(f"resize edit of {key!r}: shape {str(shape)[:40]} is not a list of sizes")
    if key in state:
        if list(state[key].shape) != shape:
            raise ModelError(
                f"resize edit of {key!r}: shape {shape}, but the weights file holds "
                f"{list(state[key].shape)}"
            )
    elif math.prod(shape) > 1 << 26:
        raise ModelError(f"resize edit of {key!r}: shape {shape} is larger than any it records")
    return shape


def apply_resize(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: give ``model``'s modules the recorded sizes (weights are loaded afterwards)."""
    modules = dict(model.named_modules())
    for name, entry in edit["modules"].items():
        module = modules.get(name)
        if module is None:
            raise ModelError(f"resize edit names module {name!r}, which the rebuilt model lacks")
        for attr, value in entry.get("attrs", {}).items():
            if attr not in SIZE_ATTRS or not _size_value(value):
                raise ModelError(
                    f"resize edit of {name!r}: {attr}={str(value)[:40]} is not a size this "
                    "edit sets"
                )
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for pname, shape in entry.get("shapes", {}).items():
            old = getattr(module, pname, None)
            if old is None:
                continue
            key = f"{name}.{pname}" if name else pname
            shape = _checked_shape(key, shape, state)
            new = torch.zeros(shape, dtype=old.dtype)
            if pname in module._parameters:
                module._parameters[pname] = nn.Parameter(new, requires_grad=old.requires_grad)
            else:
                module._buffers[pname] = new
        if hasattr(module, "scaling") and "attention_head_size" in entry.get("attrs", {}):
            module.scaling = entry["attrs"]["attention_head_size"] ** -0.5
    return model
