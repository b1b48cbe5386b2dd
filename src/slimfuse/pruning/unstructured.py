"""Unstructured magnitude pruning: zero the smallest weights and keep them zero while training.

Weights with ``|w|`` below a threshold τ are dropped (set to zero) and a binary mask remembers
which. The threshold comes from a target ``sparsity`` (the fraction of weights to drop), per
layer or global (one τ across all targeted layers), or is given directly as ``threshold``.
:class:`MaskCallback` re-applies the masks after every optimizer step of the one training loop,
so fine-tuning cannot revive dropped weights; :func:`finalize` folds the masks into the weights
and makes them part of the model: each pruned layer keeps its mask, which the training loop
re-applies after every step of any later training, and the bundle records the zeros and stores
the sparse weights compactly (:mod:`slimfuse.pruning.sparse`)::

    masks = prune_unstructured(model, sparsity=0.9)
    slimfuse.train(model, data, callbacks=[MaskCallback(masks)])
    finalize(model, masks)            # zeros in the weights, kept from now on; compact bundle

:func:`prune_threshold` is the ``threshold`` method of :func:`slimfuse.prune`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.models.source import record
from slimfuse.pruning.config import Threshold
from slimfuse.pruning.sparse import make_compact, set_mask, storage_report
from slimfuse.targeting import Selector, select_modules
from slimfuse.training import Callback, trainable_copy

if TYPE_CHECKING:
    from slimfuse.pruning.api import Job

PRUNABLE: tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
)


def check_sparsity(sparsity: float) -> float:
    if (
        isinstance(sparsity, bool)
        or not isinstance(sparsity, (int, float))
        or not 0.0 <= sparsity < 1.0
    ):
        raise ConfigError(f"sparsity {sparsity!r}: expected a number in [0, 1)")
    return float(sparsity)


@dataclass
class Masks:
    """Binary masks (1 = keep) for the ``weight`` of named modules of one model."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict, repr=False)

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the masked weights (in place)."""
        for name, mask in self.masks.items():
            self.modules[name].weight.mul_(mask)

    def sparsity(self) -> float:
        """Fraction of masked-out weights over all masked layers."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def per_layer(self) -> dict[str, float]:
        return {n: 1.0 - float(m.float().mean()) for n, m in self.masks.items()}


def select_weights(
    model: nn.Module,
    targets: Selector | Iterable[Selector] | None = None,
    ignore: Selector | Iterable[Selector] | None = None,
) -> dict[str, nn.Module]:
    """Targeted modules that have a ``weight`` to prune (default: every conv and linear)."""
    chosen = select_modules(model, targets, ignore, default_types=PRUNABLE, what="pruning target")
    out = {}
    for name, m in chosen.items():
        w = getattr(m, "weight", None)
        if isinstance(w, nn.Parameter) and w.dim() >= 1:
            out[name] = m
    if not out:
        raise ConfigError(
            f"no prunable weights in {type(model).__name__} for targets {targets!r}; "
            "expected conv or linear layers"
        )
    return out


def _droppable(scores: torch.Tensor, min_density: float) -> torch.Tensor:
    """Flat indices of the weights a layer may lose: all but its ``ceil(min_density * n)``
    largest scores."""
    n = scores.numel()
    if min_density <= 0:
        return torch.arange(n)
    cap = n - math.ceil(min_density * n)
    return torch.argsort(scores.flatten(), stable=True)[:cap]


def _kth_smallest(values: torch.Tensor, k: int) -> float:
    if k <= 0:
        return -1.0  # below every |w|: nothing is dropped
    return float(torch.kthvalue(values.flatten().float(), k).values)


@torch.no_grad()
def magnitude_masks(
    modules: dict[str, nn.Module],
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    global_pruning: bool = False,
    previous: Masks | None = None,
    min_density: float = 0.0,
) -> Masks:
    """Masks dropping the smallest ``|w|``: ``sparsity`` per layer (or global), or ``|w| <= threshold``.

    Weights already masked in ``previous`` stay masked (gradual schedules only ever add zeros).
    ``min_density`` (global ``sparsity`` only) is a floor per layer: each keeps at least
    ``ceil(min_density * n)`` of its ``n`` weights, its largest, so no layer collapses; the
    sparsity taken from a layer at its floor comes from the others (where the floors allow).
    """
    if (sparsity is None) == (threshold is None):
        raise ConfigError("give exactly one of sparsity (a fraction in [0, 1)) or threshold (τ)")
    if threshold is not None and not (threshold >= 0):
        raise ConfigError(f"threshold {threshold!r}: expected a number >= 0")
    if sparsity is not None:
        check_sparsity(sparsity)
    if not 0.0 <= min_density < 1.0:
        raise ConfigError(f"min_density {min_density!r}: expected a number in [0, 1)")
    scores: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        s = m.weight.detach().abs()
        if previous is not None and name in previous.masks:
            s = torch.where(previous.masks[name].bool(), s, torch.full_like(s, -1.0))
        scores[name] = s
    masks: dict[str, torch.Tensor] = {}
    if threshold is not None:
        for name, s in scores.items():
            masks[name] = (s > threshold).to(s.dtype)
    elif global_pruning:
        # each layer may lose at most all but ceil(min_density * n) of its weights: the weights
        # dropped are the smallest of the union of every layer's droppable (smallest) ones
        eligible = {n: _droppable(s, min_density) for n, s in scores.items()}
        allv = torch.cat([s.flatten()[eligible[n]] for n, s in scores.items()])
        total = sum(s.numel() for s in scores.values())
        k = min(round(sparsity * total), allv.numel())  # type: ignore[operator]
        tau = _kth_smallest(allv, k)
        for name, s in scores.items():
            keep = s > tau
            if min_density > 0:
                protected = torch.ones(s.numel(), dtype=torch.bool)
                protected[eligible[name]] = False
                keep |= protected.view_as(s)
            masks[name] = keep.to(s.dtype)
    else:
        for name, s in scores.items():
            k = round(sparsity * s.numel())  # type: ignore[operator]
            keep = torch.ones(s.numel(), dtype=s.dtype)
            if k > 0:
                keep[torch.argsort(s.flatten(), stable=True)[:k]] = 0
            masks[name] = keep.view_as(s)
    return Masks(masks, dict(modules))


def prune_unstructured(
    model: nn.Module,
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    targets: Selector | Iterable[Selector] | None = None,
    ignore: Selector | Iterable[Selector] | None = None,
    global_pruning: bool = False,
    min_density: float = 0.0,
) -> Masks:
    """One-shot magnitude pruning in place; returns the masks (apply them during fine-tuning)."""
    masks = magnitude_masks(
        select_weights(model, targets, ignore),
        sparsity=sparsity,
        threshold=threshold,
        global_pruning=global_pruning,
        min_density=min_density,
    )
    masks.apply()
    return masks


class MaskCallback(Callback):
    """Re-applies the masks after every optimizer step (fine-tuning keeps the zeros)."""

    def __init__(self, masks: Masks) -> None:
        self.masks = masks

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        self.masks.apply()

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self.masks.apply()


@torch.no_grad()
def finalize(model: nn.Module, masks: Masks, *, keep: bool = True) -> nn.Module:
    """Fold the masks into the weights (plain tensors with zeros). ``keep`` (the default) makes
    the zeros part of the model: every masked layer keeps its mask (a
    :class:`~slimfuse.pruning.sparse.ZeroMask` that the training loop re-applies after every
    step) and the spec records the ``sparse`` edit (bundles store those weights compactly and
    reload them with their masks)."""
    masks.apply()
    if keep:
        for name, mask in masks.masks.items():
            set_mask(masks.modules[name], mask)
        make_compact(model, list(masks.masks))
    record(
        model,
        lineage={
            "stage": "prune_unstructured",
            "sparsity": round(masks.sparsity(), 6),
            "layers": {n: round(s, 4) for n, s in masks.per_layer().items()},
            "storage": storage_report(model),  # dense bytes, non-zeros, encoded bytes
        },
    )
    return model


def prune_threshold(model: nn.Module, cfg: Threshold, job: Job) -> nn.Module:
    """The ``threshold`` method: a copy of ``model`` with every ``|w| <= threshold`` zeroed
    (one-shot, global), recovery with the zeros kept, the masks folded in."""
    model = trainable_copy(model)
    masks = prune_unstructured(
        model, threshold=cfg.threshold, targets=cfg.targets, ignore=cfg.ignore, global_pruning=True
    )
    job.recover(model, [MaskCallback(masks)], "prune finetune")
    return finalize(model, masks)
