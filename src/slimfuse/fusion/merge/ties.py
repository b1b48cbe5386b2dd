"""TIES merging (Yadav et al., 2023) of fine-tuned variants of one parent model.

For each variant, the task vector ``tau_i = theta_i - theta_parent`` is **trimmed** to its
``density`` fraction of largest magnitudes (per tensor); a sign is **elected** per parameter (the
sign of the summed trimmed vectors); the **disjoint mean** averages only the entries that agree
with the elected sign. The merged model is ``theta_parent + scale * tau_merged``, then BatchNorm
statistics are re-estimated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimfuse.errors import FusionError
from slimfuse.fusion.config import Ties
from slimfuse.fusion.merge.common import MergeJob, build, check_same, states


def trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude; zero the rest."""
    if density >= 1.0 or tau.numel() == 0:
        return tau
    k = max(1, round(density * tau.numel()))
    flat = tau.abs().flatten()
    threshold = flat.kthvalue(flat.numel() - k + 1).values
    return torch.where(tau.abs() >= threshold, tau, torch.zeros_like(tau))


def ties_states(
    parent: dict[str, torch.Tensor],
    variants: Sequence[dict[str, torch.Tensor]],
    density: float = 0.2,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, base in parent.items():
        if not base.is_floating_point():
            out[k] = variants[0][k].clone()
            continue
        taus = torch.stack([trim(v[k].float() - base.float(), density) for v in variants])
        sign = torch.sign(taus.sum(0))
        agree = (torch.sign(taus) == sign) & (taus != 0)
        merged = (taus * agree).sum(0) / agree.sum(0).clamp_min(1)
        out[k] = (base.float() + scale * merged).to(base.dtype)
    return out


def ties_merge(
    pairs: Sequence[tuple[str, nn.Module]], config: Ties, job: MergeJob
) -> tuple[nn.Module, dict[str, Any]]:
    """TIES of the variants' changes from ``job.parent`` (trim, elect sign, disjoint mean)."""
    parent, density, scale = job.parent, config.density, config.scale
    if parent is None:
        raise FusionError(
            "TIES merging needs the parent the variants were fine-tuned from: pass parent=MODEL"
        )
    sts = states(pairs)
    base = {k: v.detach() for k, v in parent.state_dict().items()}
    check_same(pairs[0][0], sts[0], "parent", base)
    merged = ties_states(base, sts, density, scale)
    model = build(pairs[0][1], merged, job.data, job.task, ingredients=[m for _, m in pairs])
    info = {
        "method": "ties",
        "ingredients": [n for n, _ in pairs],
        "density": density,
        "scale": scale,
    }
    return model, info
