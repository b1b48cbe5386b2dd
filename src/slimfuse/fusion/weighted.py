"""Weighted fusion: member weights on the simplex, learned on validation data or given.

``fit`` minimises the validation log-loss of the fused prediction over weights constrained to
the simplex (``w >= 0``, ``sum w = 1``): in ``space="probs"`` the loss of the mixture
``sum_i w_i p_i(x)``, in ``space="logits"`` the cross-entropy of ``softmax(sum_i w_i z_i(x))``.
Both are convex in ``w``; scipy's SLSQP solves them from the members' cached predictions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import Members
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.predict import as_loader, collect


def _loss_and_grad(
    w: np.ndarray, outputs: torch.Tensor, y: torch.Tensor, space: str
) -> tuple[float, np.ndarray]:
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    outputs = outputs.double()
    if space == "probs":
        p = torch.einsum("n,nsc->sc", wt, outputs)
        loss = -torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    else:
        loss = F.cross_entropy(torch.einsum("n,nsc->sc", wt, outputs), y)
    loss.backward()
    assert wt.grad is not None
    return float(loss.detach()), wt.grad.numpy().copy()


def simplex_log_loss_weights(
    outputs: torch.Tensor, y: torch.Tensor, space: str = "probs"
) -> tuple[np.ndarray, float]:
    """Weights on the simplex minimising the log-loss; ``outputs`` are raw member logits."""
    from scipy.optimize import minimize

    n = outputs.shape[0]
    feats = outputs.double().softmax(-1) if space == "probs" else outputs.double()
    y = y.long()
    w0 = np.full(n, 1.0 / n)
    res = minimize(
        _loss_and_grad,
        w0,
        args=(feats, y, space),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(n)}],
        options={"maxiter": 200, "ftol": 1e-10},
    )
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum()
    return w, _loss_and_grad(w, feats, y, space)[0]


class WeightedFusion(MeanFusion):
    """A :class:`MeanFusion` whose weights are learned by :meth:`fit` (or given).

    Learned attributes (scikit-learn style): ``weights_`` (numpy, on the simplex) and
    ``log_loss_`` (the validation log-loss at those weights).
    """

    def __init__(
        self,
        members: Members,
        *,
        space: Literal["probs", "logits"] = "probs",
        weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__(members, space=space, weights=weights)
        self.given = weights is not None

    def fit(self, data: Data | Any, *, split: str = "val") -> WeightedFusion:
        """Learn the weights on ``data`` (a :class:`Data` split, default ``val``, or a loader)."""
        outputs, y = collect(self.pairs, as_loader(data, split))
        if outputs.shape[1] < 2:
            raise FusionError(
                f"{outputs.shape[1]} validation samples: expected at least 2 to learn weights"
            )
        if self.given:
            w = self.weights.double().numpy()
            loss = _loss_and_grad(
                w, outputs.double().softmax(-1) if self.space == "probs" else outputs, y, self.space
            )[0]
        else:
            w, loss = simplex_log_loss_weights(outputs, y, self.space)
            self.set_weights(w)
        self.weights_ = np.asarray(self.weights.double().numpy())
        self.log_loss_ = float(loss)
        return self
