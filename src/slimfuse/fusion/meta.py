"""Stacking's default meta-learner: logistic regression anchored at the members' mean logits.

``z(x) = mean_i z_i(x) + W f(x) + b``, where ``z_i`` are the members' logits and ``f`` the
meta-features (their probabilities side by side). ``W`` and ``b`` minimise the cross-entropy
with scikit-learn's L2 penalty ``|W|^2 / (2 C n)`` (intercept not penalised), so a strong
penalty leaves the mean of logits, and the data has to earn every departure from it. A plain
logistic regression starts from nothing instead: on a few thousand out-of-fold predictions of
near-equal members it fits noise and lands below the plain average. ``C`` is chosen from a grid
by K-fold held-out log-loss, as ``LogisticRegressionCV`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

C_GRID = (0.01, 0.1, 1.0, 10.0)


def fit_anchored(
    features: torch.Tensor, anchor: torch.Tensor, y: torch.Tensor, C: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of ``anchor + features @ W.T + b`` by L-BFGS (float64), penalty ``|W|^2/(2Cn)``."""
    x, a = features.double(), anchor.double()
    y = y.long()
    w = torch.zeros(a.shape[1], x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(a.shape[1], dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * C * len(y))
    opt = torch.optim.LBFGS(
        [w, b],
        max_iter=500,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a + x @ w.T + b, y) + penalty * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def choose_c(
    features: torch.Tensor,
    anchor: torch.Tensor,
    y: torch.Tensor,
    folds: list,
    grid: tuple[float, ...] = C_GRID,
) -> tuple[float, dict[float, tuple[float, float]]]:
    """The ``C`` of ``grid`` with the lowest held-out log-loss over ``folds``.

    Returns it and the curve ``{C: (held-out log-loss, held-out accuracy)}``.
    """
    curve = {}
    for c in grid:
        loss, hits = 0.0, 0
        for tr, te in folds:
            tr, te = torch.as_tensor(tr), torch.as_tensor(te)
            w, b = fit_anchored(features[tr], anchor[tr], y[tr], c)
            z = anchor[te] + features[te] @ w.T + b
            loss += float(F.cross_entropy(z, y[te].long(), reduction="sum"))
            hits += int((z.argmax(1) == y[te]).sum())
        curve[c] = (loss / len(y), hits / len(y))
    best = min(grid, key=lambda c: (curve[c][0], c))
    return best, curve
