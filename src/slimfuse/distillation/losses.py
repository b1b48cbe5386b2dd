"""Distillation losses, one small function each, in the :data:`LOSSES` registry.

Every loss has the same signature ``fn(student, teacher, target, ctx) -> Tensor`` where
``student`` / ``teacher`` are the two models' outputs on the same batch, ``target`` the batch's
labels (may be ``None``) and ``ctx`` a :class:`LossContext` (temperature, alpha, task, and the
captured hint features with their adapters).

- ``kd``: Hinton et al. (2015): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
  (1 - alpha) * task loss``. The ``T^2`` keeps the soft-target gradients on the same scale
  whatever the temperature.
- ``mse``: ``alpha * mean((s - t)^2) + (1 - alpha) * task loss`` (output matching).
- ``cosine``: for embeddings: ``alpha * (1 - cos(s, t)) + (1 - alpha) * mean((s - t)^2)``.
- ``hint``: FitNets (Romero et al., 2015): the task's output loss (``kd`` for classification,
  ``cosine`` for embeddings, ``mse`` otherwise) plus ``hint_weight`` times the mean squared
  error between each adapted student feature and its teacher feature.

Token-level outputs and features (``(B, S, ...)`` with the batch's attention mask in
``ctx.mask``) are compared on the real tokens only: padded positions count in no loss.

Each built-in loss has its config (:mod:`slimfuse.distillation.config`: ``KD``, ``MSE``,
``Cosine``, ``Hint``, with the settings it reads); a loss added with ``@LOSSES.register("name")``
gets one with every setting, so ``DistillConfig(loss="name", temperature=2)`` works.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.registry import Registry
from slimfuse.tasks import Task


@dataclass
class LossContext:
    """What a loss may use besides the two outputs and the target."""

    task: Task
    temperature: float = 4.0
    alpha: float = 0.9
    hint_weight: float = 1.0
    # (student feature, teacher feature, adapter) per hint pair, for this batch
    hints: list[tuple[torch.Tensor, torch.Tensor, nn.Module]] = field(default_factory=list)
    mask: torch.Tensor | None = None  # token mask (B, S) for sequence features
    hint_metric: str = "mse"  # "mse" (FitNets) or "cosine" (1 - cos per position, scale-free)


LossFn = Callable[[torch.Tensor, torch.Tensor, Any, LossContext], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("distillation loss")


def token_mask(x: torch.Tensor, ctx: LossContext | None) -> torch.Tensor | None:
    """The token mask ``(B, S)`` as weights when ``x`` holds per-token outputs ``(B, S, ...)``
    of the batch the mask belongs to; ``None`` otherwise (one output per sample)."""
    if (
        ctx is None
        or ctx.mask is None
        or x.dim() < 3
        or tuple(x.shape[:2]) != tuple(ctx.mask.shape)
    ):
        return None
    return ctx.mask.to(x.dtype)


def _masked_mean(per_position: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, S, ...)`` values over the real tokens of ``m`` (``(B, S)``) only."""
    extra = per_position[0, 0].numel()
    w = m.reshape(*m.shape, *([1] * (per_position.dim() - 2)))
    return (per_position * w).sum() / (m.sum() * extra).clamp(min=1.0)


def kd_term(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch rows
    (per-token outputs ``(B, S, C)``: over the positions, those where ``mask`` is 0 left out)."""
    t = temperature
    log_p_s = F.log_softmax(student / t, dim=-1)
    log_p_t = F.log_softmax(teacher / t, dim=-1)
    if mask is not None:
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)
        return _masked_mean(kl, mask) * (t * t)
    kl = F.kl_div(
        log_p_s.reshape(-1, student.shape[-1]),
        log_p_t.reshape(-1, teacher.shape[-1]),
        reduction="batchmean",
        log_target=True,
    )
    return kl * (t * t)


def _hard(student: torch.Tensor, target: Any, ctx: LossContext) -> torch.Tensor:
    if target is None or ctx.alpha >= 1.0:
        return student.new_zeros(())
    return ctx.task.loss(student, target)


def _mix(soft: torch.Tensor, student: torch.Tensor, target: Any, ctx: LossContext) -> torch.Tensor:
    if ctx.alpha >= 1.0 or target is None:
        return soft
    return ctx.alpha * soft + (1.0 - ctx.alpha) * _hard(student, target, ctx)


@LOSSES.register("kd")
def kd_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: Any, ctx: LossContext
) -> torch.Tensor:
    """Hinton KD: softened KL at temperature ``T`` times ``T^2``, mixed with the hard loss by alpha."""
    soft = kd_term(student, teacher, ctx.temperature, token_mask(student, ctx))
    return _mix(soft, student, target, ctx)


@LOSSES.register("mse")
def mse_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: Any, ctx: LossContext
) -> torch.Tensor:
    """Squared difference between the outputs, mixed with the hard loss by alpha."""
    return _mix(_mse(student, teacher, token_mask(student, ctx)), student, target, ctx)


def _mse(student: torch.Tensor, teacher: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    if m is None:
        return F.mse_loss(student, teacher)
    return _masked_mean((student - teacher) ** 2, m)


@LOSSES.register("cosine")
def cosine_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: Any, ctx: LossContext
) -> torch.Tensor:
    """Embeddings: ``alpha * (1 - cos) + (1 - alpha) * MSE`` between student and teacher vectors."""
    m = token_mask(student, ctx)
    if m is None:
        cos = 1.0 - F.cosine_similarity(student, teacher, dim=-1).mean()
    else:
        cos = _masked_mean(1.0 - F.cosine_similarity(student, teacher, dim=-1), m)
    return ctx.alpha * cos + (1.0 - ctx.alpha) * _mse(student, teacher, m)


def hint_term(ctx: LossContext) -> torch.Tensor:
    """Mean over hint pairs of ``MSE(adapter(student feature), teacher feature)``.

    With a token mask (sequence features ``(B, S, D)``), padded positions are left out. With
    ``hint_metric="cosine"`` each position (token, or the whole feature of a sample) contributes
    ``1 - cos`` instead, which ignores the very different scales of different layers.
    """
    terms = []
    for s, t, adapter in ctx.hints:
        a = adapter(s)
        if ctx.hint_metric == "cosine":
            dim = -1 if a.dim() == 3 else 1
            d = 1.0 - F.cosine_similarity(a, t, dim=dim) if a.dim() <= 3 else None
            if d is None:
                d = 1.0 - F.cosine_similarity(a.flatten(2), t.flatten(2), dim=1)
            if ctx.mask is not None and d.shape == ctx.mask.shape:
                m = ctx.mask.to(d.dtype)
                terms.append((d * m).sum() / m.sum().clamp(min=1.0))
            else:
                terms.append(d.mean())
            continue
        if ctx.mask is not None and a.dim() == 3 and a.shape[:2] == ctx.mask.shape:
            m = ctx.mask.to(a.dtype).unsqueeze(-1)
            terms.append(((a - t) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1.0))
        else:
            terms.append(F.mse_loss(a, t))
    if not terms:
        raise AssertionError("hint_term called without hint pairs")
    return torch.stack(terms).mean()


def output_loss_for(task: Task) -> str:
    """The output loss that goes with hints for a task."""
    return {"classification": "kd", "embedding": "cosine"}.get(task.name, "mse")


@LOSSES.register("hint")
def hint_loss(
    student: torch.Tensor, teacher: torch.Tensor, target: Any, ctx: LossContext
) -> torch.Tensor:
    """FitNets: the task's output loss plus ``hint_weight`` times the adapted feature MSE."""
    base = LOSSES.get(output_loss_for(ctx.task))(student, teacher, target, ctx)
    return base + ctx.hint_weight * hint_term(ctx)
