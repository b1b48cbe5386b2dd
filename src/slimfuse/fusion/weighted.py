"""Weighted fusion: member weights on the simplex, learned on held-out predictions or given.

``fit`` minimises the log-loss of the fused prediction over weights constrained to the simplex
(``w >= 0``, ``sum w = 1``): in ``space="probs"`` the loss of the mixture ``sum_i w_i p_i(x)``,
in ``space="logits"`` the cross-entropy of ``softmax(sum_i w_i z_i(x))``. Both are convex in
``w``; scipy's SLSQP solves them from the members' cached predictions. For regression
(``task="regression"``, ``space="logits"``: the weighted mean of the predictions) the loss is
the squared error in standardized target units (each target divided by its standard deviation).

What the weights are fitted on (``cv``, as in stacking): ``"prefit"`` (the default), the
members' predictions of the validation split, which they never trained on; ``cv=K``, the
out-of-fold predictions of the training split (:func:`~slimfuse.fusion.folds.out_of_fold`):
every member is rebuilt from its source and retrained per fold with ``train_config`` (give it
the members' own training settings), K times the members' training for weights measured on
the whole training set instead of a few hundred validation samples. The fold models share a
member's architecture and training, not its weights: ``cv=K`` weighs what each kind of member
is worth, which is what separates members of unequal skill, and members of one kind get
near-uniform weights from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import FuseJob, Members, is_regression, target_std
from slimfuse.fusion.config import Weighted
from slimfuse.fusion.ensemble import MeanFusion, fused_space
from slimfuse.fusion.folds import check_cv, held_out_predictions, kfold
from slimfuse.training import TrainConfig


def _sample_errors(fused: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Regression: each sample's squared error summed over targets, in standardized units."""
    return ((fused - y.double().reshape(fused.shape)) / scale).pow(2).sum(-1)


def _log_loss(
    fused: torch.Tensor, y: torch.Tensor, space: str, scale: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean log-loss of the fused prediction (a probability mixture, or summed logits);
    regression (``scale``, the targets' standard deviations): the standardized squared error."""
    if scale is not None:
        return _sample_errors(fused, y, scale).mean()
    if space == "probs":
        return -torch.log(fused.gather(1, y[:, None]).clamp_min(1e-12)).mean()
    return F.cross_entropy(fused, y)


def _loss_and_grad(
    w: np.ndarray,
    outputs: torch.Tensor,
    y: torch.Tensor,
    space: str,
    scale: torch.Tensor | None = None,
) -> tuple[float, np.ndarray]:
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    loss = _log_loss(torch.einsum("n,nsc->sc", wt, outputs.double()), y, space, scale)
    loss.backward()
    assert wt.grad is not None
    return float(loss.detach()), wt.grad.numpy().copy()


def simplex_log_loss_weights(
    outputs: torch.Tensor,
    y: torch.Tensor,
    space: str = "probs",
    scale: torch.Tensor | None = None,
) -> tuple[np.ndarray, float]:
    """Weights on the simplex minimising the log-loss; ``outputs`` are raw member logits
    (regression, ``scale`` given: predictions, and the standardized squared error)."""
    n = outputs.shape[0]
    feats = outputs.double().softmax(-1) if space == "probs" else outputs.double()
    y = y if scale is not None else y.long()
    w0 = np.full(n, 1.0 / n)
    res = minimize(
        _loss_and_grad,
        w0,
        args=(feats, y, space, scale),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones(n)}],
        options={"maxiter": 200, "ftol": 1e-10},
    )
    w = np.clip(res.x, 0.0, None)
    w = w / w.sum()
    loss = _loss_and_grad(w, feats, y, space, scale)[0]
    start = _loss_and_grad(w0, feats, y, space, scale)[0]
    if not loss <= start:  # SLSQP stopped early (or at NaN): never return worse than uniform
        return w0, start
    return w, loss


SHRINK_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def cv_shrinkage(
    outputs: torch.Tensor,
    y: torch.Tensor,
    space: str,
    folds: int,
    seed: int = 0,
    scale: torch.Tensor | None = None,
) -> tuple[float, dict[float, tuple[float, float]]]:
    """How far to pull the fitted weights toward uniform, chosen by K-fold held-out error.

    For each fold, weights are fitted (log-loss) on the other folds; the mixture
    ``(1 - a) * w + a * uniform`` is scored on the held-out fold for every ``a`` in the grid.
    The choice follows the one-standard-error rule: the largest ``a`` (closest to uniform) whose
    held-out errors exceed the fewest by at most one standard error of that paired difference
    (``sqrt`` of the number of samples the two mixtures disagree on being right). Learned
    weights must beat uniform by more than noise to be used: with members of equal skill the
    optimum is uniform, and any weights fitted to a few hundred samples only add variance.
    Error, not log-loss, decides: in probability space the log-loss optimum piles onto one
    member (the mixture's loss is ruled by the few samples every member gets wrong), which
    costs accuracy. Returns ``a`` and the curve ``{a: (errors, mean log-loss)}``.

    Regression (``scale``: the targets' standard deviations) scores each sample's squared error
    in standardized units instead, with the standard error of the paired per-sample
    differences; the curve is then ``{a: (summed squared error, mean squared error)}``.
    """
    if scale is not None:
        return _cv_shrinkage_regression(outputs, y, folds, seed, scale)
    n = outputs.shape[0]
    uniform = np.full(n, 1.0 / n)
    feats = outputs.double().softmax(-1) if space == "probs" else outputs.double()
    wrong = {a: torch.zeros(len(y), dtype=torch.bool) for a in SHRINK_GRID}
    losses = {a: 0.0 for a in SHRINK_GRID}
    splits = kfold(y.numpy(), folds, seed, what="validation data")
    for tr, te in splits:
        w, _ = simplex_log_loss_weights(outputs[:, tr], y[tr], space)
        yt = y[te].long()
        for a in SHRINK_GRID:
            mix = (1 - a) * w + a * uniform
            fused = torch.einsum("n,nsc->sc", torch.from_numpy(mix), feats[:, te])
            wrong[a][torch.as_tensor(te)] = fused.argmax(1) != yt
            losses[a] += float(_log_loss(fused, yt, space)) * len(te)
    total = sum(len(te) for _, te in splits)
    curve = {a: (int(wrong[a].sum()), losses[a] / total) for a in SHRINK_GRID}
    best = min(curve, key=lambda a: (curve[a][0], -a))
    within = [
        a
        for a in SHRINK_GRID
        if curve[a][0] - curve[best][0] <= int((wrong[a] ^ wrong[best]).sum()) ** 0.5
    ]
    return max(within), curve  # type: ignore[return-value]


def _cv_shrinkage_regression(
    outputs: torch.Tensor, y: torch.Tensor, folds: int, seed: int, scale: torch.Tensor
) -> tuple[float, dict[float, tuple[float, float]]]:
    n = outputs.shape[0]
    uniform = np.full(n, 1.0 / n)
    feats = outputs.double()
    err = {a: torch.zeros(len(y), dtype=torch.float64) for a in SHRINK_GRID}
    for tr, te in kfold(y.numpy(), folds, seed, what="validation data"):
        w, _ = simplex_log_loss_weights(outputs[:, tr], y[tr], "logits", scale)
        for a in SHRINK_GRID:
            mix = torch.from_numpy((1 - a) * w + a * uniform)
            fused = torch.einsum("n,nsc->sc", mix, feats[:, te])
            err[a][torch.as_tensor(te)] = _sample_errors(fused, y[te], scale)
    curve = {a: (float(err[a].sum()), float(err[a].mean())) for a in SHRINK_GRID}
    best = min(curve, key=lambda a: (curve[a][0], -a))
    within = []
    for a in SHRINK_GRID:
        d = err[a] - err[best]
        se = float(((d - d.mean()).pow(2).sum()) ** 0.5)
        if curve[a][0] - curve[best][0] <= se + 1e-12:
            within.append(a)
    return max(within), curve


class WeightedFusion(MeanFusion):
    """A :class:`MeanFusion` whose weights are learned by :meth:`fit` (or given).

    ``cv``: fit on the validation split (``"prefit"``, the default) or on the out-of-fold
    predictions of ``cv`` folds of the training split, every member retrained per fold with
    ``train_config`` (see the module's docstring). ``shrink="cv"`` (the default) guards against
    fitting the weights to noise: the fitted weights are pulled toward uniform by the largest
    amount whose ``shrink_folds``-fold held-out errors on the same samples are within one
    standard error of the fewest (:func:`cv_shrinkage`); a number in [0, 1] fixes that amount
    (0: the plain log-loss optimum).

    Learned attributes (scikit-learn style): ``weights_`` (numpy, on the simplex),
    ``log_loss_`` (the log-loss at those weights on the samples fitted on), ``shrink_`` (the
    amount used), ``fit_samples_`` (how many samples the weights were fitted on) and, with
    ``cv=K``, ``oof_outputs_`` (the members' out-of-fold logits) and ``fold_indices_``.
    """

    def __init__(
        self,
        members: Members,
        *,
        space: Literal["probs", "logits"] = "probs",
        weights: Sequence[float] | torch.Tensor | None = None,
        shrink: float | Literal["cv"] = "cv",
        cv: int | Literal["prefit"] = "prefit",
        train_config: TrainConfig | None = None,
        shrink_folds: int = 5,
        seed: int = 0,
    ) -> None:
        super().__init__(members, space=space, weights=weights)
        if shrink != "cv" and not (isinstance(shrink, (int, float)) and 0.0 <= shrink <= 1.0):
            raise FusionError(f"shrink={shrink!r}: expected 'cv' or a number in [0, 1]")
        check_cv(cv)
        self.given = weights is not None
        if self.given and cv != "prefit":
            raise FusionError(
                f"cv={cv!r} retrains the members per fold to learn weights, but weights were "
                "given: expected one of them"
            )
        self.shrink, self.cv, self.shrink_folds, self.seed = shrink, cv, shrink_folds, seed
        self.train_config = train_config or TrainConfig(quiet=True)

    def fit(
        self, data: Data | Any, *, split: str = "val", task: Any = "classification"
    ) -> WeightedFusion:
        """Learn the weights: ``cv="prefit"`` on ``data``'s ``split`` (default ``val``; a
        loader is used as is), ``cv=K`` on out-of-fold predictions of its training split."""
        outputs, y, what = held_out_predictions(self, data, task, split)
        return self.fit_weights(outputs, y, what=what, task=task)

    def fit_weights(
        self,
        outputs: torch.Tensor,
        y: torch.Tensor,
        *,
        what: str = "data",
        task: Any = "classification",
    ) -> WeightedFusion:
        """Fit only the weights, on member logits ``(members, samples, classes)`` and labels
        (regression: predictions ``(members, samples, targets)`` and targets).

        ``fit`` calls it on the validation outputs (prefit) or the out-of-fold ones (``cv=K``);
        call it directly to refit on cached predictions.
        """
        scale = None
        if is_regression(task):
            if self.space != "logits":
                raise FusionError(
                    "space 'probs' averages probabilities; regression averages the members' "
                    "predictions: expected space 'logits'"
                )
            y = torch.as_tensor(y).double()
            scale = target_std(y, outputs.shape[-1])
        else:
            y = torch.as_tensor(y).long()
        if outputs.shape[1] < 2:
            raise FusionError(
                f"{outputs.shape[1]} samples in the {what}: expected at least 2 to learn weights"
            )
        self.fit_samples_ = int(outputs.shape[1])
        feats = outputs.double().softmax(-1) if self.space == "probs" else outputs
        if self.given:
            w = self.weights.double().numpy()
            loss = _loss_and_grad(w, feats, y, self.space, scale)[0]
        else:
            w, _ = simplex_log_loss_weights(outputs, y, self.space, scale)
            if self.shrink == "cv":
                self.shrink_, self.shrink_curve_ = cv_shrinkage(
                    outputs, y, self.space, self.shrink_folds, self.seed, scale
                )
            else:
                self.shrink_ = float(self.shrink)
            w = (1 - self.shrink_) * w + self.shrink_ / len(w)
            loss = _loss_and_grad(w, feats, y, self.space, scale)[0]
            self.set_weights(w)
        self.weights_ = np.asarray(self.weights.double().numpy())
        self.log_loss_ = float(loss)
        return self


def fuse_weighted(
    pairs: list[tuple[str, nn.Module]], config: Weighted, job: FuseJob
) -> WeightedFusion:
    """The ``weighted`` handler of :func:`slimfuse.fuse`: the weights fitted on ``job.data``."""
    fused = WeightedFusion(
        pairs,
        space=fused_space(config, job),
        weights=config.weights,
        shrink=config.shrink,
        cv=config.cv,
        train_config=job.train,
        shrink_folds=config.shrink_folds,
        seed=job.seed,
    )
    return fused.fit(job.needs_data("weighted"), task=job.task)
