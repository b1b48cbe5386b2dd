"""Checks the recipe runner makes on every stage's model before it is measured and saved.

**Sparsity is kept.** A model pruned without structure records, per tensor, how many of its
weights are zero (the ``sparse`` edit: ``tensors``, ``zeros``, ``numel``; a fused model's
members record their own). After every stage, :func:`check_sparsity` counts the zeros of each
recorded tensor in the stage's model, in whatever form it now has: a float weight, the packed
weights of a ``weight-only`` layer (dequantized), or the int8 weights of an ONNX Runtime graph
(``static``, ``dynamic``, ``qat``: the quantized initializer, zero where it equals its zero
point). A stage that leaves fewer zeros than recorded is an error naming the stage and the
layers (:class:`SparsityLostError`).

Why an error and not the masks re-applied: the training loop already re-applies every layer's
mask after every step (:func:`slimfuse.training.apply_constraints`), so a stage that still lost
zeros changed weights outside it (a weight average of differently pruned models, a quantizer
that does not keep zero exact), and its model's measurements and choices (a greedy soup's
ingredients, calibrated ranges, an int8 graph that holds no masks) were made on the denser
weights: zeroing them afterwards would save a model the stage never evaluated.

A tensor that a later structural edit changed (channels removed, blocks dropped) is checked
only where the record was renewed for the new shapes; a tensor the stage's model no longer
holds in any of these forms is not checked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.models.source import spec_of


class SparsityLostError(ModelError):
    """A stage lowered the recorded sparsity of a model's weights."""


def recorded_zeros(model: nn.Module) -> dict[str, tuple[int, int | None]]:
    """``{state-dict name: (zeros, numel)}`` that ``model``'s specs (and its members') record
    as sparse, the latest record of each tensor; records that a later structural edit made
    stale (``resize`` of their module, ``keep_blocks`` under their path) are left out."""
    out: dict[str, tuple[int, int | None]] = {}
    for name, module in model.named_modules():
        spec = spec_of(module)
        if spec is None:
            continue
        prefix = f"{name}." if name else ""
        latest: dict[str, tuple[int, int | None]] = {}
        for edit in spec.edits:
            kind = edit.get("kind")
            if kind == "sparse" and isinstance(edit.get("zeros"), dict):
                numel = edit.get("numel") if isinstance(edit.get("numel"), dict) else {}
                for key, zeros in edit["zeros"].items():
                    if isinstance(zeros, int):
                        n = numel.get(key)
                        latest[key] = (zeros, n if isinstance(n, int) else None)
            elif kind == "resize" and isinstance(edit.get("modules"), dict):
                touched = set(edit["modules"])
                latest = {k: v for k, v in latest.items() if k.rpartition(".")[0] not in touched}
            elif kind == "keep_blocks" and isinstance(edit.get("path"), str):
                under = edit["path"] + "."
                latest = {k: v for k, v in latest.items() if not k.startswith(under)}
        out.update({prefix + k: v for k, v in latest.items()})
    return out


def _int8_zeros(graph_module: nn.Module) -> tuple[dict[str, tuple[int, int]], list[Any]]:
    """The quantized weights of an int8 graph: ``{float weight name: (zeros, numel)}`` for the
    ``<name>_quantized`` initializers (zero where the value equals its zero point), and the
    other int8 initializers of rank >= 2 (weights whose names the graph passes did not keep,
    BatchNorm folded into them: zero where 0, slimfuse's int8 weights being symmetric)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(graph_module.graph_bytes())  # type: ignore[operator]
    inits = {t.name: t for t in proto.graph.initializer}
    named, used = {}, set()
    for iname, tensor in inits.items():
        if not iname.endswith("_quantized"):
            continue
        key = iname[: -len("_quantized")]
        q = numpy_helper.to_array(tensor)
        zp_name = f"{key}_zero_point"
        zp = numpy_helper.to_array(inits[zp_name]) if zp_name in inits else q.dtype.type(0)
        used |= {iname, zp_name}
        if zp.size > 1 and len(set(zp.reshape(-1).tolist())) > 1:
            axis = 0 if q.shape[0] == zp.size else q.ndim - 1
            shape = [1] * q.ndim
            shape[axis] = zp.size
            zp = zp.reshape(shape)
        elif zp.size >= 1:
            zp = zp.reshape(-1)[0]
        named[key] = (int((q == zp).sum()), int(q.size))
    others = []
    for iname, tensor in inits.items():
        if iname in used or tensor.data_type not in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
            continue
        q = numpy_helper.to_array(tensor)
        if q.ndim >= 2:
            others.append(q)
    return named, others


def _owner_tensor(model: nn.Module, key: str) -> torch.Tensor | None:
    """The float tensor ``key`` of ``model``: a parameter or buffer, or a packed layer's
    dequantized weight; ``None`` when the model no longer has it in either form."""
    owner_name, _, attr = key.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        return None
    t = getattr(owner, attr, None)
    if isinstance(t, torch.Tensor):
        return t.detach()
    dequantized = getattr(owner, "dequantized", None)  # weight-only: packed int8/int4
    if attr == "weight" and callable(dequantized):
        return dequantized().detach()
    return None


@torch.no_grad()
def actual_zeros(
    model: nn.Module, recorded: dict[str, tuple[int, int | None]]
) -> dict[tuple[str, ...], tuple[int, int]]:
    """``{(key,): (zeros, numel)}`` for the ``recorded`` tensors that ``model`` still holds. An
    int8 graph that did not keep some names (BatchNorm folded in) has those tensors matched by
    size to its other int8 weights and counted together: ``{(key, key, ...): (zeros, numel)}``."""
    graphs = {n: m for n, m in model.named_modules() if getattr(m, "int8_graph", False)}
    parsed: dict[str, tuple[dict[str, tuple[int, int]], list[Any]]] = {}
    unnamed: dict[str, list[str]] = {}
    out: dict[tuple[str, ...], tuple[int, int]] = {}
    for key in recorded:
        graph = next((g for g in graphs if not g or key.startswith(g + ".")), None)
        if graph is None:
            t = _owner_tensor(model, key)
            if t is not None:
                out[(key,)] = (int(t.numel() - torch.count_nonzero(t)), int(t.numel()))
            continue
        if graph not in parsed:
            parsed[graph] = _int8_zeros(graphs[graph])
        found = parsed[graph][0].get(key[len(graph) + 1 :] if graph else key)
        if found is not None:
            out[(key,)] = found
        else:
            unnamed.setdefault(graph, []).append(key)
    for graph, keys in unnamed.items():
        pool = list(parsed[graph][1])
        zeros = numel = 0
        matched = []
        for key in keys:
            q = next((a for a in pool if a.size == recorded[key][1]), None)
            if q is None:
                continue
            pool = [a for a in pool if a is not q]
            zeros, numel = zeros + int((q == 0).sum()), numel + int(q.size)
            matched.append(key)
        if matched:
            out[tuple(matched)] = (zeros, numel)
    return out


def check_sparsity(model: nn.Module, stage: str, kind: str) -> dict[str, Any]:
    """Fail with one line if ``model`` (stage ``stage`` of kind ``kind``) has fewer zeros in a
    recorded sparse tensor than recorded; returns ``{"checked": n, "sparsity": {key: s}}``."""
    recorded = recorded_zeros(model)
    if not recorded:
        return {"checked": 0, "sparsity": {}}
    lost, seen = [], {}
    for keys, (now, n) in actual_zeros(model, recorded).items():
        zeros = sum(recorded[k][0] for k in keys)
        numels = [recorded[k][1] for k in keys]
        if any(x is not None for x in numels) and n != sum(x or 0 for x in numels):
            continue  # another shape: a structural change that did not renew the record
        label = keys[0] if len(keys) == 1 else f"{len(keys)} layers of the int8 graph"
        seen[label] = now / n if n else 0.0
        if now < zeros:
            lost.append(f"{label} {100 * zeros / n:.1f}% -> {100 * now / n:.1f}%")
    if lost:
        shown = ", ".join(lost[:6]) + (f" (and {len(lost) - 6} more)" if len(lost) > 6 else "")
        raise SparsityLostError(
            f"stage {stage!r} ({kind}) lowered the recorded sparsity of {len(lost)} "
            f"layer{'s' if len(lost) > 1 else ''}: {shown}; pruned weights were changed outside "
            "the training loop's masks (expected every recorded zero kept)"
        )
    return {"checked": len(seen), "sparsity": seen}
