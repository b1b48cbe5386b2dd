"""Distillation losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from slimfuse.distillation.losses import LOSSES, LossContext, kd_term
from slimfuse.tasks import get_task


def _softmax(xs: list[float], t: float) -> list[float]:
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_kd_equals_hand_computed_value() -> None:
    s, t, label, temp, alpha = [1.0, 0.0, -1.0], [2.0, 1.0, 0.0], 0, 2.0, 0.7
    p_t, p_s = _softmax(t, temp), _softmax(s, temp)
    kl = sum(a * math.log(a / b) for a, b in zip(p_t, p_s, strict=True))
    ce = -math.log(_softmax(s, 1.0)[label])
    expected = alpha * temp**2 * kl + (1 - alpha) * ce

    ctx = LossContext(task=get_task("classification"), temperature=temp, alpha=alpha)
    got = LOSSES.get("kd")(torch.tensor([s]), torch.tensor([t]), torch.tensor([label]), ctx)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_kd_t_squared_scaling() -> None:
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    for temp in (1.0, 2.0, 5.0):
        p_t = torch.softmax(t / temp, -1)
        kl = (p_t * (p_t.log() - torch.log_softmax(s / temp, -1))).sum(-1).mean()
        assert float(kd_term(s, t, temp)) == pytest.approx(float(kl) * temp**2, rel=1e-5)
    # at high T the T^2 factor keeps the term near (1/2K) * mean squared logit difference
    # (Hinton et al., eq. 4 with zero-mean logits): it does not vanish as T grows
    s0, t0 = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    approx = float(((s0 - t0) ** 2).sum(-1).mean()) / (2 * 5)
    assert float(kd_term(s0, t0, 100.0)) == pytest.approx(approx, rel=0.02)


def test_alpha_one_ignores_labels_and_zero_is_plain_task_loss() -> None:
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    task = get_task("classification")
    soft = LOSSES.get("kd")(s, t, y, LossContext(task=task, alpha=1.0))
    assert float(soft) == pytest.approx(float(kd_term(s, t, 4.0)), rel=1e-6)
    hard = LOSSES.get("kd")(s, t, y, LossContext(task=task, alpha=0.0))
    assert float(hard) == pytest.approx(float(torch.nn.functional.cross_entropy(s, y)), rel=1e-6)


def test_mse_and_cosine_losses() -> None:
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    task = get_task("embedding")
    mse = LOSSES.get("mse")(s, t, None, LossContext(task=task, alpha=1.0))
    assert float(mse) == pytest.approx(1.0)
    # orthogonal: 1 - cos = 1; mse = 1
    cos = LOSSES.get("cosine")(s, t, None, LossContext(task=task, alpha=0.5))
    assert float(cos) == pytest.approx(0.5 * 1.0 + 0.5 * 1.0)
    assert float(LOSSES.get("cosine")(t, t, None, LossContext(task=task))) == pytest.approx(0.0)


def test_cosine_hint_metric_ignores_scale_and_masks_padding() -> None:
    from slimfuse.distillation.losses import hint_term

    torch.manual_seed(0)
    t = torch.randn(2, 5, 8)
    s = 10.0 * t  # same direction, another scale
    s[1, 3:] = torch.randn(2, 8)  # differs only at padded positions
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    task = get_task("embedding")
    ctx = LossContext(task=task, hints=[(s, t, torch.nn.Identity())], mask=mask)
    ctx.hint_metric = "cosine"
    assert float(hint_term(ctx)) == pytest.approx(0.0, abs=1e-6)
    ctx.hint_metric = "mse"
    assert float(hint_term(ctx)) > 1.0


@pytest.mark.parametrize("name", ["kd", "mse", "cosine"])
def test_per_token_outputs_count_only_real_tokens(name) -> None:
    """Outputs ``(B, S, D)`` with a token mask: the loss is the one over the real tokens, and
    nothing at a padded position changes it."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 6), torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    task = get_task("embedding" if name == "cosine" else "classification")
    ctx = LossContext(task=task, temperature=2.0, alpha=0.5 if name == "cosine" else 1.0, mask=mask)
    fn = LOSSES.get(name)
    got = fn(s, t, None, ctx)
    s2, t2 = s.clone(), t.clone()
    s2[1, 3:], t2[1, 3:] = 100 * torch.randn(2, 6), torch.randn(2, 6)
    torch.testing.assert_close(fn(s2, t2, None, ctx), got)
    real = mask.bool()
    rows = LossContext(task=task, temperature=2.0, alpha=ctx.alpha)  # one row per real token
    torch.testing.assert_close(got, fn(s[real], t[real], None, rows))
    # one output per sample: the mask is not theirs, nothing changes
    flat = LossContext(task=task, temperature=2.0, alpha=ctx.alpha, mask=mask)
    torch.testing.assert_close(fn(s[:, 0], t[:, 0], None, flat), fn(s[:, 0], t[:, 0], None, rows))
