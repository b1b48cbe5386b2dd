"""The ``ratio`` method: every targeted layer keeps ``ratio`` of its weights, which is also
``ratio`` of its FLOPs (both factors run at the layer's positions). The rank is the largest
whose factors hold at most that share (rank 1 at least); a layer it would not make smaller is
left alone and reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from slimfuse.lowrank.config import Ratio
from slimfuse.lowrank.layers import decompose
from slimfuse.lowrank.plan import Choice, Layer, apply, candidates
from slimfuse.training import trainable_copy

if TYPE_CHECKING:
    from slimfuse.lowrank.api import Job


def ratio_rank(layer: Layer, ratio: float) -> int:
    """The largest rank whose factors hold at most ``ratio`` of the layer's weights (>= 1)."""
    return max(1, int(ratio * layer.weights + 1e-9) // (layer.rows + layer.cols))


def factorize_ratio(model: nn.Module, cfg: Ratio, job: Job) -> nn.Module:
    small = trainable_copy(model)
    layers, alone = candidates(small, cfg)
    choices = {}
    for layer in layers:
        r = ratio_rank(layer, cfg.ratio)
        dec = decompose(layer.module) if r <= layer.breakeven else None
        kept = r * (layer.rows + layer.cols) / layer.weights
        choices[layer.name] = Choice(r, f"{kept:.3f} of its weights", dec)
    report = apply(small, layers, choices, alone, method="ratio", ratio=cfg.ratio)
    object.__setattr__(small, "lowrank_info", {"method": "ratio", "layers": report})
    return small
