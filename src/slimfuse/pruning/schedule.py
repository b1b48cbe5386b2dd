"""Sparsity schedules: the cubic gradual schedule of Zhu & Gupta (2017), and one-shot.

Gradual pruning raises the sparsity from ``s_i`` to ``s_f`` over ``n`` pruning steps spaced
``Δt`` optimizer steps apart, starting at step ``t0``::

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n Δt))³

so that many weights go early (when there are many redundant ones) and few at the end. Between
pruning steps the network fine-tunes through the one training loop; :class:`AGPCallback` updates
the masks on schedule and re-applies them after every optimizer step::

    cb = AGPCallback(model, final_sparsity=0.9)
    slimfuse.train(model, data, callbacks=[cb])
    finalize(model, cb.masks)

:func:`prune_magnitude` is the ``magnitude`` method of :func:`slimfuse.prune`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.pruning.config import Magnitude
from slimfuse.pruning.unstructured import (
    MaskCallback,
    Masks,
    check_sparsity,
    finalize,
    magnitude_masks,
    prune_unstructured,
    select_weights,
)
from slimfuse.targeting import Selector
from slimfuse.training import Callback, trainable_copy

if TYPE_CHECKING:
    from slimfuse.pruning.api import Job

Schedule = Literal["agp", "oneshot"]
SCHEDULES: tuple[str, ...] = ("agp", "oneshot")


def cubic_sparsity(
    step: int, *, initial: float, final: float, start: int, n: int, every: int
) -> float:
    """Zhu & Gupta's s_t at optimizer step ``step`` (held constant outside [t0, t0 + nΔt])."""
    if step <= start:
        return initial
    span = n * every
    done = min((step - start) // every * every, span)
    return final + (initial - final) * (1.0 - done / span) ** 3


class AGPCallback(Callback):
    """Automated gradual pruning during training: cubic schedule, masks kept after each step.

    ``begin``/``end`` are fractions of the training run's optimizer steps in which the sparsity
    rises (the rest fine-tunes at ``final_sparsity``); ``prune_every`` is Δt in steps;
    ``min_density`` is global pruning's floor per layer (:func:`magnitude_masks`).
    """

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float,
        *,
        initial_sparsity: float = 0.0,
        begin: float = 0.0,
        end: float = 0.5,
        prune_every: int | None = None,
        targets: Selector | Iterable[Selector] | None = None,
        ignore: Selector | Iterable[Selector] | None = None,
        global_pruning: bool = True,
        min_density: float = 0.0,
    ) -> None:
        check_sparsity(final_sparsity)
        check_sparsity(initial_sparsity)
        if not 0.0 <= begin < end <= 1.0:
            raise ConfigError(
                f"schedule window begin={begin}, end={end}: expected 0 <= begin < end <= 1"
            )
        if initial_sparsity > final_sparsity:
            raise ConfigError(
                f"initial sparsity {initial_sparsity} > final {final_sparsity}: expected a rising schedule"
            )
        self.final = final_sparsity
        self.initial = initial_sparsity
        self.begin, self.end = begin, end
        self.prune_every = prune_every
        self.global_pruning = global_pruning
        self.min_density = min_density
        self.modules = select_weights(model, targets, ignore)
        self.masks: Masks = magnitude_masks(self.modules, sparsity=0.0)
        self.history: list[tuple[int, float]] = []
        self._start = 0
        self._n = 1
        self._every = 1

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        if total_steps < 1:
            raise ConfigError("gradual pruning needs at least one training step (epochs >= 1)")
        start = int(self.begin * total_steps)
        stop = max(start + 1, int(self.end * total_steps))
        every = self.prune_every or max(1, (stop - start) // 20)
        self._start, self._every = start, every
        self._n = max(1, (stop - start) // every)
        self._update(0)

    def target_at(self, step: int) -> float:
        return cubic_sparsity(
            step,
            initial=self.initial,
            final=self.final,
            start=self._start,
            n=self._n,
            every=self._every,
        )

    def _update(self, step: int) -> None:
        s = self.target_at(step)
        if not self.history or s > self.history[-1][1]:
            self.masks = magnitude_masks(
                self.modules,
                sparsity=s,
                global_pruning=self.global_pruning,
                previous=self.masks,
                min_density=self.min_density,
            )
            self.history.append((step, s))
        self.masks.apply()

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step >= self._start and (step - self._start) % self._every == 0:
            self._update(step)
        else:
            self.masks.apply()


def prune_magnitude(model: nn.Module, cfg: Magnitude, job: Job) -> nn.Module:
    """The ``magnitude`` method: a copy of ``model`` with the smallest weights zeroed, gradually
    during recovery (AGP) or at once (then recovery keeps the zeros), the masks folded in."""
    model = trainable_copy(model)
    if cfg.sparsity_schedule == "agp":
        cb = AGPCallback(
            model,
            cfg.sparsity,
            targets=cfg.targets,
            ignore=cfg.ignore,
            global_pruning=cfg.global_pruning,
            min_density=cfg.floor,
        )
        job.recover(model, [cb], "prune agp")
        masks = cb.masks
    else:
        masks = prune_unstructured(
            model,
            sparsity=cfg.sparsity,
            targets=cfg.targets,
            ignore=cfg.ignore,
            global_pruning=cfg.global_pruning,
            min_density=cfg.floor,
        )
        job.recover(model, [MaskCallback(masks)], "prune finetune")
    return finalize(model, masks)
