"""Stacking: a meta-learner trained on the members' out-of-fold predictions.

``cv=K`` (the default is ``"prefit"``): the training data is split into K stratified folds; for
each fold, every member is rebuilt from its source and retrained (with the one training loop)
on the other K-1 folds, then predicts the held-out fold. Every training sample thus gets a
prediction from models that never saw it, and the meta-learner is fitted on those out-of-fold
predictions only. The fused model then uses the members as given (trained on all the data);
``with_val=True`` adds those members' own predictions of the validation split (which they never
trained on) to the meta-learner's data, so it also sees the very models it will combine.

``cv="prefit"`` (scikit-learn's meaning): members are used as given and the meta-learner is
fitted on their predictions on the validation split, which they never trained on; its
out-of-fold accuracy on that split (``meta_cv`` folds) is reported as ``cv_score_``.

The default meta-learner (``meta=None``) is logistic regression on the members' probabilities
*anchored at their mean logits* (:mod:`slimfuse.fusion.meta`): it learns a correction to the
mean-of-logits fusion, with scikit-learn's L2 penalty and ``C`` chosen by ``meta_cv``-fold
held-out accuracy with the one-standard-error rule toward the mean (the plain mean, ``C_ = 0``,
when no ``C`` beats it by more than noise), so that a few hundred noisy meta-samples cannot drag
it below the average. For regression (``task="regression"``) it is ridge regression of the
members' predictions anchored at their mean, chosen the same way on held-out squared error.
Any scikit-learn classifier is accepted instead (``meta=LogisticRegression()`` is the plain
stacking of ``StackingClassifier``; for regression a linear regressor, ``meta=Ridge()``). A
linear one (``coef_``/``intercept_``) becomes a torch layer, so the whole stack trains, saves and
exports to one ONNX graph.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import FuseJob, Members, attach_spec, is_regression, target_std
from slimfuse.fusion.config import Stack
from slimfuse.fusion.ensemble import FusionModule
from slimfuse.fusion.folds import check_cv, held_out_predictions, kfold
from slimfuse.fusion.meta import C_GRID, choose_c, fit_anchored, fit_anchored_ridge
from slimfuse.fusion.predict import collect
from slimfuse.fusion.sklearn import LinearClassifier, SklearnMember, is_linear
from slimfuse.training import TrainConfig

FEATURES = ("probs", "log_probs", "logits")


def member_features(outs: list[torch.Tensor] | torch.Tensor, kind: str) -> torch.Tensor:
    """Meta-learner inputs: the members' outputs side by side ``(samples, members * classes)``."""
    parts = []
    for o in outs:
        if kind == "probs":
            parts.append(o.softmax(-1))
        elif kind == "log_probs":
            parts.append(o.log_softmax(-1))
        else:
            parts.append(o)
    return torch.cat(parts, dim=-1)


class StackingFusion(FusionModule):
    """Members' predictions -> meta-learner. ``fit`` learns ``meta_`` and returns self.

    ``C``: the anchored default's inverse penalty, ``"cv"`` (chosen from ``C_GRID`` and the
    plain mean by ``meta_cv`` folds, :func:`~slimfuse.fusion.meta.choose_c`) or a number;
    ignored when ``meta`` is given. ``with_val`` (``cv=K``
    only): fit the meta-learner on the out-of-fold predictions *and* the members' predictions
    of the validation split.

    Learned attributes: ``meta_`` (the fitted scikit-learn estimator, or the default's torch
    layer), ``C_`` (0: the plain mean) and ``C_curve_`` (the default: ``{C: (held-out loss,
    held-out score)}``, 0 included), ``oof_outputs_`` (members' out-of-fold logits),
    ``oof_features_`` and ``fold_indices_`` (``cv=K``), ``meta_samples_`` (how many samples the
    meta-learner was fitted on), ``cv_score_`` (held-out accuracy of the meta-learner on those
    samples, over ``meta_cv`` folds; regression: R² in standardized units), ``task_``.
    """

    def __init__(
        self,
        members: Members,
        *,
        meta: Any = None,
        cv: int | Literal["prefit"] = "prefit",
        features: Literal["probs", "log_probs", "logits"] = "probs",
        train_config: TrainConfig | None = None,
        meta_cv: int = 5,
        C: float | Literal["cv"] = "cv",
        with_val: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(members)
        if features not in FEATURES:
            raise FusionError(f"features {features!r}: expected one of {', '.join(FEATURES)}")
        check_cv(cv)
        if C != "cv" and not (isinstance(C, (int, float)) and C > 0):
            raise FusionError(f"C={C!r}: expected 'cv' or a number > 0")
        if with_val and cv == "prefit":
            raise FusionError(
                "with_val=True adds validation predictions to out-of-fold ones: expected cv=K "
                "(cv='prefit' already fits on the validation split)"
            )
        self.meta = meta
        self.anchored = meta is None
        self.C = C
        self.with_val = with_val
        self.cv = cv
        self.features = features
        self.train_config = train_config or TrainConfig(quiet=True)
        self.meta_cv = meta_cv
        self.seed = seed
        self.meta_layer: nn.Module | None = None

    # -- fitting --------------------------------------------------------------------------

    def fit(self, data: Data, *, task: Any = "classification") -> StackingFusion:
        """Fit the meta-learner (``cv=K``: on out-of-fold predictions of the training data)."""
        self._check_task(task)
        outs, y, what = held_out_predictions(self, data, task)
        if self.cv == "prefit":
            return self.fit_meta(outs, y, what=what, task=task)
        self.oof_features_ = member_features(list(outs), self.features).numpy()
        if self.with_val:
            val, yv = collect(self.pairs, data.loader("val", batch_size=256), task)
            outs, y = torch.cat([outs, val.to(outs.dtype)], 1), torch.cat([y, yv.to(y.dtype)])
            return self.fit_meta(outs, y, what="training and validation data", task=task)
        return self.fit_meta(outs, y, what=what, task=task)

    def _check_task(self, task: Any) -> None:
        if is_regression(task) and self.features != "logits":
            raise FusionError(
                f"features {self.features!r} are probabilities; regression stacks the members' "
                "predictions: expected features 'logits'"
            )

    def fit_meta(
        self,
        outputs: torch.Tensor,
        y: torch.Tensor,
        *,
        what: str = "meta-learner data",
        task: Any = "classification",
    ) -> StackingFusion:
        """Fit only the meta-learner, on member logits ``(members, samples, classes)`` and labels
        (regression: member predictions ``(members, samples, targets)`` and targets).

        ``fit`` calls it on the validation outputs (prefit) or the out-of-fold ones (``cv=K``);
        call it directly to refit on cached predictions.
        """
        self._check_task(task)
        self.task_ = "regression" if is_regression(task) else "classification"
        x = member_features(list(outputs), self.features)
        y = torch.as_tensor(y)
        y = y.float() if self.task_ == "regression" else y.long()
        folds = kfold(y.numpy(), self.meta_cv, self.seed, what=what)
        self.meta_samples_ = len(y)
        if self.anchored:
            self._fit_anchored(outputs, x, y, folds)
        else:
            self._fit_sklearn(x.numpy(), y.numpy(), folds)
        lin = self.meta_layer
        if isinstance(lin, LinearClassifier):
            attach_spec(
                self,
                self.pairs,
                "stack",
                features=self.features,
                meta_in=lin.linear.in_features,
                n_classes=lin.n_outputs,
                binary=lin.binary,
                anchored=self.anchored,
            )
        return self

    def _fit_anchored(
        self, outputs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, folds: list
    ) -> None:
        anchor = outputs.float().mean(0)
        regression = self.task_ == "regression"
        scale = target_std(y, anchor.shape[1]) if regression else None
        kw: dict[str, Any] = {"regression": regression, "scale": scale}
        if self.C == "cv":
            self.C_, self.C_curve_ = choose_c(x, anchor, y, folds, C_GRID, **kw)
            self.cv_score_ = self.C_curve_[self.C_][1]
        else:
            self.C_ = float(self.C)
            curve = choose_c(x, anchor, y, folds, (self.C_,), mean=False, **kw)[1]
            self.cv_score_ = curve[self.C_][1]
        if regression:
            w, b = fit_anchored_ridge(x, anchor, y, self.C_, scale)  # type: ignore[arg-type]
        else:
            w, b = fit_anchored(x, anchor, y, self.C_)
        layer = LinearClassifier(x.shape[1], anchor.shape[1])
        with torch.no_grad():
            layer.linear.weight.copy_(w)
            layer.linear.bias.copy_(b)
        self.meta_layer = layer
        object.__setattr__(self, "meta_", layer)  # the same layer, not a second submodule

    def _fit_sklearn(self, x: np.ndarray, y: np.ndarray, folds: list) -> None:
        if self.task_ == "regression":
            return self._fit_sklearn_regressor(x, y, folds)
        hits = []
        for tr, te in folds:
            m = clone(self.meta).fit(x[tr], y[tr])
            hits.append(m.predict(x[te]) == y[te])
        self.cv_score_ = float(np.concatenate(hits).mean())
        self.meta_ = clone(self.meta).fit(x, y)
        self.meta_layer = SklearnMember(self.meta_)

    def _fit_sklearn_regressor(self, x: np.ndarray, y: np.ndarray, folds: list) -> None:
        from sklearn.metrics import r2_score

        pred = np.zeros(y.shape, dtype=np.float64)
        for tr, te in folds:
            pred[te] = clone(self.meta).fit(x[tr], y[tr]).predict(x[te]).reshape(pred[te].shape)
        self.cv_score_ = float(r2_score(y, pred))
        self.meta_ = clone(self.meta).fit(x, y)
        if not is_linear(self.meta_):
            raise FusionError(
                f"{type(self.meta_).__name__} has no coef_/intercept_: regression stacking "
                "expected a linear regressor (Ridge, LinearRegression, ...)"
            )
        coef = np.atleast_2d(np.asarray(self.meta_.coef_, dtype=np.float32))
        bias = np.atleast_1d(np.asarray(self.meta_.intercept_, dtype=np.float32))
        layer = LinearClassifier(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            layer.linear.weight.copy_(torch.from_numpy(coef))
            layer.linear.bias.copy_(torch.from_numpy(bias))
        self.meta_layer = layer

    # -- inference ------------------------------------------------------------------------

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.meta_layer is None:
            raise FusionError("this StackingFusion is not fitted: call fit(data) first")
        outs = self.member_outputs(x, *args, **kwargs)
        z = self.meta_layer(member_features(outs, self.features))
        if self.anchored:
            z = z + torch.stack(outs).mean(0)
        return z


def _build(
    members: list[tuple[str, nn.Module]],
    *,
    features: str,
    meta_in: int,
    n_classes: int,
    binary: bool,
    anchored: bool = False,
) -> nn.Module:
    fused = StackingFusion(members, features=features)  # type: ignore[arg-type]
    fused.anchored = anchored
    fused.meta_layer = LinearClassifier(meta_in, n_classes, binary)
    return fused


def fuse_stack(pairs: list[tuple[str, nn.Module]], config: Stack, job: FuseJob) -> StackingFusion:
    """The ``stack`` handler of :func:`slimfuse.fuse`: the default (anchored) meta-learner
    fitted on ``job.data`` (another scikit-learn meta-learner: :class:`StackingFusion`)."""
    features = config.features
    if is_regression(job.task) and "features" not in config.model_fields_set:
        features = "logits"  # regression stacks the members' predictions themselves
    fused = StackingFusion(
        pairs,
        cv=config.cv,
        features=features,  # type: ignore[arg-type]
        train_config=job.train,
        meta_cv=config.meta_cv,
        C=config.meta_c,
        with_val=config.with_val,
        seed=job.seed,
    )
    return fused.fit(job.needs_data("stack"), task=job.task)
