"""SmoothQuant-style scaling: move activation outliers into the weights before int8.

For a Linear ``y = x W^T``, per input channel ``j``: ``s_j = max|x_j|^a / max|W_:,j|^(1-a)``,
then ``y = (x / s) (W s)^T``: the same function, but the activation that int8 quantizes per
tensor has flatter channels, and the weight (quantized per output channel) absorbs the range.
Where the scaling cannot be folded into a preceding op (post-LayerNorm residuals, GELU), the
``1 / s`` stays as one elementwise multiply in front of the matmul.

Linears that read the same tensor (an attention block's query, key and value) get the same
scale, so they share one multiply and one run-time quantization of that input: they are smoothed
as one group. Those multiplies cost time, so with a fidelity budget (``max_drop``)
:func:`smooth_within` smooths only the fewest groups, the most sensitive to int8 first, whose
int8 model meets it.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.quantization.calibration import observe_inputs
from slimfuse.quantization.config import Dynamic, Static
from slimfuse.quantization.ptq import prepare, ptq
from slimfuse.quantization.sensitivity import emulated_sensitivity, log


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


@torch.no_grad()
def smooth(
    model: nn.Module,
    inputs: list[Any],
    alpha: float = 0.5,
    names: list[str] | None = None,
    min_ratio: float = 4.0,
    quantile: float = 0.9,
) -> nn.Module:
    """A copy of ``model`` with the selected Linear layers smoothed (``alpha`` migration strength).

    Only layers whose input has outlier channels (largest channel max over median channel max
    at least ``min_ratio``) are smoothed: elsewhere it would only add a multiply. The copy
    records ``smoothed_layers`` and ``smoothing_groups`` (the smoothed layers grouped by the
    input tensor they share, in model order).
    """
    model = copy.deepcopy(model).eval()
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
    smoothed = []
    for name, m in linears.items():
        a = amax.get(name)
        if a is None or a.numel() < 2:
            continue
        if float(a.max()) < min_ratio * float(a.median().clamp_min(1e-8)):
            continue
        ref = torch.quantile(a.float(), quantile).clamp_min(1e-5)
        s = (a / ref).clamp_min(1.0).pow(alpha)  # only outlier channels move into the weights
        model.set_submodule(name, SmoothedLinear(m, s))
        smoothed.append(name)
    groups: dict[int, list[str]] = {}
    for name in smoothed:
        groups.setdefault(source[name], []).append(name)
    object.__setattr__(model, "smoothed_layers", smoothed)
    object.__setattr__(model, "smoothing_groups", list(groups.values()))
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
    (layers sharing an input form one group: one multiply), ranked by their int8 sensitivity
    (the summed drop of their layers, each quantized alone in a PyTorch emulation); each tried
    count is quantized as ``cfg`` says and scored with ``metric`` on the calibration inputs.
    When even smoothing every group misses the budget, all are smoothed (mixed precision then
    keeps layers fp32); with no candidate at all there is nothing to search (``met``: None).
    Returns the model and a record of the search.
    """
    alpha = float(cfg.smoothquant)
    min_ratio = cfg.smooth_min_ratio
    groups = smooth(model, inputs, alpha, min_ratio=min_ratio).smoothing_groups
    if not groups:  # no input has outliers: nothing to search (mixed precision takes over)
        return model, {"groups": [], "tried": {}, "smoothed": 0, "met": None}
    rows = emulated_sensitivity(
        model,
        [n for g in groups for n in g],
        inputs,
        metric,
        cfg.mode != "dynamic",
        cfg.per_channel,
        cfg.weight_qmax,
    )
    drop_of = {r["layer"]: r["drop"] for r in rows}
    order = sorted(groups, key=lambda g: -sum(drop_of[n] for n in g))  # stable: ties by position
    base = metric(model)
    plain = cfg.replace(max_drop=None)
    drops: dict[int, float] = {}

    def names(k: int) -> list[str]:
        return [n for g in order[:k] for n in g]

    def meets(k: int) -> bool:
        m = smooth(model, inputs, alpha, names=names(k), min_ratio=min_ratio)
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
        "tried": {str(n): d for n, d in sorted(drops.items())},
        "smoothed": chosen,
        "met": k is not None,
    }
    return smooth(model, inputs, alpha, names=names(chosen), min_ratio=min_ratio), record
