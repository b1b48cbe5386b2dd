"""The ``energy`` method: per layer, the fewest singular values that keep ``energy`` of the sum
of their squares (the layer's weight, no data). A layer whose rank would not make it smaller is
left alone and reported."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from slimfuse.lowrank.config import Energy
from slimfuse.lowrank.layers import decompose
from slimfuse.lowrank.plan import Choice, apply, candidates
from slimfuse.training import trainable_copy

if TYPE_CHECKING:
    from slimfuse.lowrank.api import Job


def energy_rank(s: torch.Tensor, energy: float) -> int:
    """The fewest leading singular values whose squares sum to ``energy`` of the total."""
    sq = s.double() ** 2
    total = float(sq.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    return min(
        int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype))) + 1, len(s)
    )


def factorize_energy(model: nn.Module, cfg: Energy, job: Job) -> nn.Module:
    small = trainable_copy(model)
    layers, alone = candidates(small, cfg)
    choices = {}
    for layer in layers:
        dec = decompose(layer.module)
        r = energy_rank(dec.s, cfg.energy)
        kept = float((dec.s[:r] ** 2).sum() / (dec.s**2).sum().clamp(min=1e-300))
        choices[layer.name] = Choice(r, f"energy {kept:.4f}", dec, {"energy": round(kept, 6)})
    report = apply(small, layers, choices, alone, method="energy", energy=cfg.energy)
    object.__setattr__(small, "lowrank_info", {"method": "energy", "layers": report})
    return small
