"""Stacking's default meta-learners, anchored at the members' mean.

Classification: ``z(x) = mean_i z_i(x) + W f(x) + b``, where ``z_i`` are the members' logits and
``f`` the meta-features (their probabilities side by side): logistic regression with
scikit-learn's L2 penalty ``|W|^2 / (2 C n)`` (intercept not penalised). Regression:
``y(x) = mean_i y_i(x) + W f(x) + b``, ``f`` the members' predictions, fitted as ridge regression
of the residual ``y - mean`` in standardized target units (penalty ``|W|^2 / C``). Either way a
strong penalty leaves the mean, and the data has to earn every departure from it: a plain
logistic (or linear) regression starts from nothing instead, and on a few thousand held-out
predictions of near-equal members it fits noise and lands below the plain average.

``C`` is chosen by K-fold held-out *accuracy* (regression: squared error) with the
one-standard-error rule toward the mean (:func:`choose_c`): the most regularised ``C`` whose
held-out score is within one standard error of the best, the plain mean (``C = 0``, no
correction) included. So the meta-learner is used only when it beats the mean on held-out data
by more than noise. Log-loss does not decide: on a small split it rewards a sharper meta-learner
that gets no more samples right (and can get fewer right than the mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

C_GRID = (0.01, 0.1, 1.0, 10.0)
MEAN = 0.0  # the "C" of the plain mean: no correction at all


def fit_anchored(
    features: torch.Tensor, anchor: torch.Tensor, y: torch.Tensor, C: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of ``anchor + features @ W.T + b`` by L-BFGS (float64), penalty ``|W|^2/(2Cn)``;
    ``C = 0``: the mean itself (zeros)."""
    if C == MEAN:
        return torch.zeros(anchor.shape[1], features.shape[1]), torch.zeros(anchor.shape[1])
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


def fit_anchored_ridge(
    features: torch.Tensor, anchor: torch.Tensor, y: torch.Tensor, C: float, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of ``anchor + features @ W.T + b`` for regression: ridge regression of the
    residual ``y - anchor`` on the features, both divided by the targets' ``scale`` (one per
    target; feature ``j`` predicts target ``j % targets``), penalty ``|W|^2 / C`` on the summed
    squared error; ``C = 0``: the mean itself. Returned in the targets' own units."""
    k = anchor.shape[1]
    if C == MEAN:
        return torch.zeros(k, features.shape[1]), torch.zeros(k)
    s = scale.double().reshape(-1)
    fs = s.repeat(features.shape[1] // k)
    x = features.double() / fs
    r = (y.double().reshape(anchor.shape) - anchor.double()) / s
    xm, rm = x.mean(0), r.mean(0)
    xc, rc = x - xm, r - rm
    gram = xc.T @ xc + torch.eye(x.shape[1], dtype=torch.float64) / C
    w_std = torch.linalg.solve(gram, xc.T @ rc).T  # (targets, features), standardized units
    b_std = rm - w_std @ xm
    w = w_std * s[:, None] / fs[None, :]
    return w.float(), (b_std * s).float()


def _within_one_se(errors: dict[float, torch.Tensor], lower_is_better: bool = True) -> float:
    """The smallest key (the most regularised; 0 is the mean) whose per-sample errors are within
    one standard error of the best key's (paired: the standard error of the per-sample
    differences' sum)."""
    total = {c: float(e.sum()) for c, e in errors.items()}
    best = min(total, key=lambda c: (total[c], c))
    within = []
    for c, e in errors.items():
        d = (e - errors[best]).double()
        se = math.sqrt(float(d.pow(2).sum()) - float(d.sum()) ** 2 / max(len(d), 1))
        if total[c] - total[best] <= se + 1e-12:
            within.append(c)
    return min(within)


def choose_c(
    features: torch.Tensor,
    anchor: torch.Tensor,
    y: torch.Tensor,
    folds: list,
    grid: tuple[float, ...] = C_GRID,
    *,
    regression: bool = False,
    scale: torch.Tensor | None = None,
    mean: bool = True,
) -> tuple[float, dict[float, tuple[float, float]]]:
    """The ``C`` of ``grid`` (and ``0``, the plain mean, when ``mean``) chosen on ``folds`` by
    held-out accuracy (regression: squared error in standardized units) with the
    one-standard-error rule toward the mean: the most regularised whose held-out errors exceed
    the fewest by at most one standard error of their paired difference (for 0/1 errors about
    the square root of the number of samples that one of the two gets right and the other
    wrong).

    Returns it and the curve ``{C: (held-out loss, held-out score)}``: classification, the
    log-loss and the accuracy; regression, the mean squared error and R² (standardized units).
    """
    candidates = ((MEAN,) if mean else ()) + tuple(grid)
    errors: dict[float, torch.Tensor] = {}
    curve: dict[float, tuple[float, float]] = {}
    if regression:
        assert scale is not None
        yy = y.double().reshape(anchor.shape) / scale.double()
        sst = float((yy - yy.mean(0)).pow(2).sum(1).mean())
    for c in candidates:
        err = torch.zeros(len(y), dtype=torch.float64)
        loss = 0.0
        for tr, te in folds:
            tr, te = torch.as_tensor(tr), torch.as_tensor(te)
            if regression:
                w, b = fit_anchored_ridge(features[tr], anchor[tr], y[tr], c, scale)  # type: ignore[arg-type]
                z = anchor[te] + features[te] @ w.T + b
                e = ((z.double() - y[te].double().reshape(z.shape)) / scale.double()).pow(2)  # type: ignore[union-attr]
                err[te] = e.sum(1)
                loss += float(e.sum())
            else:
                w, b = fit_anchored(features[tr], anchor[tr], y[tr], c)
                z = anchor[te] + features[te] @ w.T + b
                loss += float(F.cross_entropy(z, y[te].long(), reduction="sum"))
                err[te] = (z.argmax(1) != y[te]).double()
        errors[c] = err
        if regression:
            mse = float(err.mean())
            curve[c] = (mse, 1.0 - mse / sst if sst > 0 else 0.0)
        else:
            curve[c] = (loss / len(y), 1.0 - float(err.mean()))
    return _within_one_se(errors), curve
