"""Smoothing activation outliers into the weights before int8: SmoothQuant and slimfuse's variant.

For a Linear ``y = x W^T``, a per-input-channel scale ``s`` gives ``y = (x / s) (W s)^T``: the
same function, but the activation that int8 quantizes per tensor has flatter channels, and the
weight (quantized per output channel) absorbs the range. Two ways to choose ``s`` (``method``):

- ``smoothquant``, as published (Xiao et al., 2023): ``s_j = max|x_j|^a / max|W_:,j|^(1-a)``
  (``a``: the migration strength, 0.5 in the paper).
- ``outlier`` (the default: it measured better on all-MiniLM-L6-v2, see docs/quantization.md): the
  weights are ignored and only channels above the input's 90th-percentile channel maximum
  move, ``s_j = max(1, max|x_j| / q90)^a``.

Linears that read one tensor (an attention block's query, key and value) share one ``s`` (for
``smoothquant``, the largest ``max|W_:,j|`` over them): they are smoothed as one group.

Where that tensor is a LayerNorm's output that nothing but the group reads (found by running one
calibration batch under a ``TorchFunctionMode`` that records every op reading it), ``1 / s`` is
folded into the LayerNorm's weight and bias: smoothing then costs nothing at run time (pre-LN
blocks: GPT, OPT, LLaMA-style). Elsewhere (in a post-LN block such as BERT's the residual reads
the LayerNorm output too; a GELU) ``1 / s`` stays as one elementwise multiply in front of the
matmul (:class:`SmoothedLinear`), which costs time; so with a fidelity budget (``max_drop``)
:func:`smooth_within` smooths only the fewest such groups, the most sensitive to int8 first,
whose int8 model meets it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from slimfuse.quantization.calibration import observe_inputs
from slimfuse.quantization.config import Dynamic, Static
from slimfuse.quantization.ptq import prepare, ptq
from slimfuse.quantization.sensitivity import emulated_sensitivity, log
from slimfuse.tasks import forward

Method = Literal["outlier", "smoothquant"]

# what reading a tensor's metadata calls: it does not depend on the values
_METADATA = frozenset(
    [
        "shape",
        "size",
        "dim",
        "ndim",
        "dtype",
        "device",
        "layout",
        "is_floating_point",
        "is_complex",
        "numel",
        "nelement",
        "__len__",
        "stride",
        "is_contiguous",
        "storage_offset",
        "element_size",
        "requires_grad",
        "is_leaf",
        "grad_fn",
        "names",
        "is_cuda",
        "is_sparse",
        "is_quantized",
        "is_nested",
        "get_device",
        "data_ptr",
    ]
)


class SmoothedLinear(nn.Module):
    """``linear(x * inv_scale)`` with the weight already multiplied by the scale."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.linear = linear
        with torch.no_grad():
            linear.weight.mul_(scale.unsqueeze(0))
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def _func_name(func: Any) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property: Tensor.shape
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


def _in_place(name: str) -> bool:
    """``x.add_(...)``, ``x += ...``: returns the tensor it changed."""
    return name.startswith("__i") or (name.endswith("_") and not name.startswith("__"))


class _Readers(TorchFunctionMode):
    """Records, for each LayerNorm output, every op that reads its values (one forward pass)."""

    def __init__(self, linears: set[str]) -> None:
        super().__init__()
        self.linears = linears
        self.running: list[str] = []  # the Linear modules being run, innermost last
        self.owner: dict[int, str] = {}  # id of a LayerNorm output -> the LayerNorm's name
        self.held: list[torch.Tensor] = []  # those outputs, held: no id reused in the pass
        self.calls: dict[str, int] = {}
        self.readers: dict[str, list[str | None]] = {}  # LayerNorm -> Linear name, or None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor) and _func_name(func) in _METADATA:
            return out
        for t in tree_leaves((args, kwargs)):
            norm = self.owner.get(id(t)) if isinstance(t, torch.Tensor) else None
            if norm is None or (out is t and not _in_place(_func_name(func))):
                continue  # not watched, or passed through unchanged (dropout in eval)
            inside = self.running[-1] if self.running else None
            linear = func is torch.nn.functional.linear and args and args[0] is t
            self.readers[norm].append(inside if linear and inside in self.linears else None)
        return out

    def left(self) -> None:
        """A Linear's forward ended (a hook: returns nothing, so the output stays)."""
        self.running.pop()

    def layernorm_done(self, name: str, out: torch.Tensor) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        self.owner[id(out)] = name
        self.held.append(out)
        self.readers.setdefault(name, [])


@torch.no_grad()
def layernorm_readers(model: nn.Module, inputs: Any, linears: list[str]) -> dict[str, list[str]]:
    """LayerNorms whose output only ``linears`` read (each once, as their input): name -> them.

    One forward pass of ``inputs`` under a ``TorchFunctionMode``: every torch op that reads the
    values of a LayerNorm's output is recorded (a residual add, a view, a mean...), except ops
    that pass the tensor through unchanged (dropout in eval) and metadata reads (its shape). A
    LayerNorm called more than once, without an affine weight, or whose output is also the
    model's output, is left out.
    """
    names = set(linears)
    mode = _Readers(names)
    modules = dict(model.named_modules())
    handles = []
    for name, m in modules.items():
        if isinstance(m, nn.LayerNorm):
            handles.append(
                m.register_forward_hook(lambda _m, _a, out, n=name: mode.layernorm_done(n, out))
            )
        elif name in names:
            handles.append(
                m.register_forward_pre_hook(lambda _m, _a, n=name: mode.running.append(n))
            )
            handles.append(m.register_forward_hook(lambda *_: mode.left()))
    try:
        with mode:
            out = forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
    returned = {mode.owner.get(id(t)) for t in tree_leaves(out) if isinstance(t, torch.Tensor)}
    found = {}
    for norm, readers in mode.readers.items():
        ln = modules[norm]
        if (
            mode.calls[norm] != 1
            or norm in returned
            or ln.weight is None
            or not readers
            or None in readers
            or len(set(readers)) != len(readers)
        ):
            continue
        if all(modules[r].in_features == ln.weight.numel() for r in readers):
            found[norm] = sorted(readers)  # type: ignore[arg-type]
    return found


def _same_function(a: nn.Module, b: nn.Module, inputs: Any, tol: float = 1e-3) -> bool:
    """Whether ``a`` and ``b`` give the same outputs on ``inputs`` (relative error <= ``tol``)."""

    def flat(m: nn.Module) -> torch.Tensor:
        leaves = tree_leaves(forward(m.eval(), inputs))
        return torch.cat([t.float().flatten() for t in leaves if isinstance(t, torch.Tensor)])

    ref, got = flat(a), flat(b)
    return float((got - ref).norm()) <= tol * float(ref.norm()) + 1e-12


def _scale(
    model: nn.Module,
    group: list[str],
    amax: torch.Tensor,
    alpha: float,
    method: Method,
    quantile: float,
) -> torch.Tensor:
    """The per-input-channel scale ``s`` of a group of Linears reading one tensor."""
    if method == "outlier":
        ref = torch.quantile(amax.float(), quantile).clamp_min(1e-5)
        return (amax / ref).clamp_min(1.0).pow(alpha)  # only outlier channels move
    w = torch.stack([model.get_submodule(n).weight.abs().amax(0) for n in group]).amax(0)
    s = amax.clamp_min(1e-5).pow(alpha) / w.clamp_min(1e-5).pow(1.0 - alpha)
    return s.clamp_min(1e-5)


@torch.no_grad()
def smooth(
    model: nn.Module,
    inputs: list[Any],
    alpha: float = 0.5,
    names: list[str] | None = None,
    min_ratio: float = 4.0,
    quantile: float = 0.9,
    method: Method = "outlier",
    fold: bool = True,
) -> nn.Module:
    """A copy of ``model`` with the selected Linear layers smoothed (``alpha`` migration strength).

    Only layers whose input has outlier channels (largest channel max over median channel max
    at least ``min_ratio``) are smoothed. ``fold``: fold ``1 / s`` into the LayerNorm before a
    group where only the group reads its output (:func:`layernorm_readers`), else a multiply.
    The copy records ``smoothed_layers``, ``smoothing_groups`` (the smoothed layers grouped by
    the input tensor they share, in model order) and ``smoothing_folded`` (LayerNorm -> the
    group whose ``1 / s`` it took).
    """
    original, model = model, copy.deepcopy(model).eval()
    linears = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and (names is None or n in names)
    }
    amax: dict[str, torch.Tensor] = {}
    source: dict[str, int] = {}  # layer -> id of its input tensor in the first batch
    alive: dict[int, torch.Tensor] = {}  # held through the first batch: no id reused

    def observe(name: str, x: torch.Tensor) -> None:
        a = x.abs().reshape(-1, x.shape[-1]).amax(0)
        amax[name] = torch.maximum(amax[name], a) if name in amax else a
        if name not in source:
            source[name] = id(x)
            alive.setdefault(id(x), x)

    # alive: a batch's inputs are held until every layer has met them (no id reused)
    observe_inputs(model, list(linears), inputs, observe, after_batch=alive.clear)
    groups: dict[int, list[str]] = {}
    for name in linears:
        a = amax.get(name)
        if a is None or a.numel() < 2:
            continue
        if float(a.max()) < min_ratio * float(a.median().clamp_min(1e-8)):
            continue
        groups.setdefault(source[name], []).append(name)
    smoothed = [n for g in groups.values() for n in g]
    foldable = layernorm_readers(model, inputs[0], smoothed) if fold and smoothed else {}
    into = {tuple(g): norm for norm, g in foldable.items()}
    folded: dict[str, list[str]] = {}
    for group in groups.values():
        s = _scale(model, group, amax[group[0]], alpha, method, quantile)
        norm = into.get(tuple(sorted(group)))
        if norm is not None:
            ln = model.get_submodule(norm)
            ln.weight.div_(s)
            if ln.bias is not None:
                ln.bias.div_(s)
            for name in group:
                linears[name].weight.mul_(s.unsqueeze(0))
            folded[norm] = group
        else:
            for name in group:
                model.set_submodule(name, SmoothedLinear(linears[name], s))
    if folded and not _same_function(original, model, inputs[0]):  # a reader we missed
        log.warning("smoothing: folding 1/s into %s changed the model; not folded", list(folded))
        return smooth(original, inputs, alpha, names, min_ratio, quantile, method, fold=False)
    object.__setattr__(model, "smoothed_layers", smoothed)
    object.__setattr__(model, "smoothing_groups", list(groups.values()))
    object.__setattr__(model, "smoothing_folded", folded)
    return model


def fewest(n: int, ok: Callable[[int], bool]) -> int | None:
    """The smallest ``k`` in ``0..n`` with ``ok(k)`` (assumed monotone): doubling, then bisection.

    About ``2 log2(n)`` calls; ``None`` when not even ``ok(n)`` holds.
    """
    if ok(0):
        return 0
    lo, hi = 0, 1  # ok(lo) is False
    while hi < n and not ok(hi):
        lo, hi = hi, min(2 * hi, n)
    if hi >= n and (hi > n or not ok(n)):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def smoothing_of(cfg: Dynamic | Static) -> dict[str, Any]:
    """:func:`smooth`'s settings from a config."""
    return {
        "alpha": float(cfg.smoothquant or 0.0),
        "min_ratio": cfg.smooth_min_ratio,
        "method": cfg.smooth_method,
    }


@torch.no_grad()
def smooth_within(
    model: nn.Module,
    inputs: list[Any],
    example_inputs: Any,
    cfg: Dynamic | Static,
    metric: Callable[[nn.Module], float],
) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the fewest layer groups smoothed whose int8 model keeps ``cfg.max_drop``.

    Candidates are the groups of layers with outlier channels that :func:`smooth` would take
    (layers sharing an input form one group: one multiply). Groups whose ``1 / s`` folds into a
    LayerNorm cost nothing and are always smoothed; the others are ranked by their int8
    sensitivity (the summed drop of their layers, each quantized alone in a PyTorch emulation),
    and each tried count is quantized as ``cfg`` says and scored with ``metric`` (the caller
    measures it on held-out inputs, not on ``inputs``, which set the scales and ranges).
    When even smoothing every group misses the budget, all are smoothed (mixed precision then
    keeps layers fp32); with no candidate at all there is nothing to search (``met``: None).
    Returns the model and a record of the search.
    """
    how = smoothing_of(cfg)
    full = smooth(model, inputs, **how)
    groups = full.smoothing_groups
    if not groups:  # no input has outliers: nothing to search (mixed precision takes over)
        return model, {"groups": [], "free": [], "tried": {}, "smoothed": 0, "met": None}
    free = [g for g in groups if g in full.smoothing_folded.values()]
    costly = [g for g in groups if g not in free]
    rows = emulated_sensitivity(
        model,
        [n for g in costly for n in g],
        inputs,
        metric,
        cfg.mode != "dynamic",
        cfg.per_channel,
        cfg.weight_qmax,
    )
    drop_of = {r["layer"]: r["drop"] for r in rows}
    order = sorted(costly, key=lambda g: -sum(drop_of[n] for n in g))  # stable: ties by position
    base = metric(model)
    plain = cfg.replace(max_drop=None)
    drops: dict[int, float] = {}

    def names(k: int) -> list[str]:
        return [n for g in free + order[:k] for n in g]

    def meets(k: int) -> bool:
        m = smooth(model, inputs, names=names(k), **how)
        with tempfile.TemporaryDirectory(prefix="slimfuse-smooth-") as tmp:
            q = ptq(prepare(m, inputs, example_inputs, Path(tmp)), plain)
            drops[k] = base - metric(q)
        log.info(
            "smoothing %d of %d inputs: drop %.5f (budget %.5f)",
            k,
            len(order),
            drops[k],
            cfg.max_drop,
        )
        return drops[k] <= cfg.max_drop

    k = fewest(len(order), meets)
    chosen = len(order) if k is None else k
    record = {
        "groups": order,
        "free": free,
        "tried": {str(n): d for n, d in sorted(drops.items())},
        "smoothed": chosen,
        "met": k is not None,
    }
    return smooth(model, inputs, names=names(chosen), **how), record
