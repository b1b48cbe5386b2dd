"""Compact storage of sparse weights in bundles (values + a packed bitmask).

After unstructured pruning most weights are zero, but a dense safetensors file still spends 4
bytes on each. :func:`make_compact` installs a state-dict hook on the model so that every
listed weight is stored as its non-zero values (``<key>.__values``) plus one bit per weight
(``<key>.__bitmask``, ``numpy.packbits``) whenever that is smaller, and a load pre-hook that
decodes them. It records a ``sparse`` edit, so ``slimfuse.load`` installs the same hooks on the
rebuilt model before the strict weight load. The encoding is lossless.

:func:`storage_report` gives the honest numbers: dense bytes, non-zeros, encoded bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.measuring import count_params, state_bytes
from slimfuse.models.source import record
from slimfuse.models.weights import BITMASK, VALUES

_HOOKED = "_slimfuse_sparse_keys"
_dense_only = False


def encode(t: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """``{values, bitmask}`` for ``t``, or ``None`` when dense storage is not larger."""
    flat = t.detach().reshape(-1).cpu()
    nz = flat != 0
    nnz = int(nz.sum())
    encoded = nnz * flat.element_size() + (flat.numel() + 7) // 8
    if encoded >= flat.numel() * flat.element_size():
        return None
    bits = np.packbits(nz.numpy().astype(np.uint8))
    return {"values": flat[nz].clone(), "bitmask": torch.from_numpy(bits)}


def decode(values: torch.Tensor, bitmask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    n = like.numel()
    nz = torch.from_numpy(np.unpackbits(bitmask.numpy())[:n].astype(bool))
    out = torch.zeros(n, dtype=values.dtype)
    out[nz] = values
    return out.view(like.shape)


def _save_hook(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
    if _dense_only:
        return
    for key in getattr(module, _HOOKED, ()):
        full = prefix + key
        t = state.get(full)
        if t is None:
            continue
        enc = encode(t)
        if enc is None:
            continue
        del state[full]
        state[full + VALUES] = enc["values"]
        state[full + BITMASK] = enc["bitmask"]


def _load_hook(module: nn.Module, state: dict[str, Any], prefix: str, *_args: Any) -> None:
    params = dict(module.named_parameters())
    for key in getattr(module, _HOOKED, ()):
        full = prefix + key
        if full + VALUES in state and full + BITMASK in state:
            values = state.pop(full + VALUES)
            bits = state.pop(full + BITMASK)
            state[full] = decode(values, bits, params[key])


def install(model: nn.Module, keys: list[str]) -> nn.Module:
    """Store the parameters named ``keys`` (state-dict names) compactly from now on."""
    known = dict(model.named_parameters())
    missing = [k for k in keys if k not in known]
    if missing:
        raise ModelError(f"sparse edit names parameters the model lacks: {missing[:5]}")
    first = not hasattr(model, _HOOKED)
    merged = sorted(set(getattr(model, _HOOKED, [])) | set(keys))
    object.__setattr__(model, _HOOKED, merged)
    if first:
        model.register_state_dict_post_hook(_save_hook)
        model.register_load_state_dict_pre_hook(_load_hook)
    return model


def make_compact(model: nn.Module, module_names: list[str]) -> nn.Module:
    """Store the ``weight`` of the named modules compactly and record the ``sparse`` edit."""
    keys = [f"{n}.weight" for n in module_names]
    install(model, keys)
    record(model, edit={"kind": "sparse", "tensors": keys})
    return model


def apply_sparse(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: the rebuilt model decodes (and keeps encoding) the listed weights."""
    return install(model, list(edit["tensors"]))


@contextlib.contextmanager
def dense_state() -> Iterator[None]:
    """Within this block, ``state_dict()`` gives plain dense tensors."""
    global _dense_only
    old, _dense_only = _dense_only, True
    try:
        yield
    finally:
        _dense_only = old


def storage_report(model: nn.Module) -> dict[str, int]:
    """Dense bytes, non-zero parameters and encoded bytes of the model's safetensors weights."""
    with dense_state():
        dense = state_bytes(model)
    params, nonzero = count_params(model)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "dense_bytes": dense,
        "encoded_bytes": state_bytes(model),
    }
