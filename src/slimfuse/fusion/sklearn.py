"""scikit-learn classifiers inside fused models.

A fitted *linear* classifier (``coef_`` and ``intercept_``: LogisticRegression, RidgeClassifier,
LinearSVC, SGDClassifier, LinearDiscriminantAnalysis, ...) becomes a :class:`LinearClassifier`
torch layer whose output is the decision function (for a multinomial logistic regression,
``softmax(output)`` is ``predict_proba``), so it trains, saves and exports with the rest.
Any other fitted classifier is wrapped by :class:`SklearnClassifier`, which calls
``predict_proba`` in numpy: it runs and measures in PyTorch, but cannot be saved as a bundle or
exported to ONNX (a clear :class:`~slimfuse.errors.ExportError` says so).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import ExportError, FusionError
from slimfuse.models.source import ModelSpec, set_spec


class LinearClassifier(nn.Module):
    """``x @ coef.T + intercept`` (binary problems give ``[0, z]``, so softmax matches)."""

    def __init__(self, in_features: int, n_classes: int, binary: bool = False) -> None:
        super().__init__()
        self.binary = binary
        self.n_outputs = n_classes
        self.linear = nn.Linear(in_features, 1 if binary else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        if self.binary:
            return torch.cat([torch.zeros_like(z), z], dim=-1)
        return z


def is_linear(estimator: Any) -> bool:
    coef = getattr(estimator, "coef_", None)
    return coef is not None and getattr(estimator, "intercept_", None) is not None


def linear_to_torch(estimator: Any) -> LinearClassifier:
    """A fitted linear scikit-learn classifier as a torch layer (with a bundle spec)."""
    if not is_linear(estimator):
        raise FusionError(
            f"{type(estimator).__name__} has no coef_/intercept_: expected a fitted linear classifier"
        )
    coef = np.asarray(estimator.coef_, dtype=np.float32)
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float32))
    n_classes = len(estimator.classes_)
    binary = coef.shape[0] == 1 and n_classes == 2
    layer = LinearClassifier(coef.shape[1], n_classes, binary)
    with torch.no_grad():
        layer.linear.weight.copy_(torch.from_numpy(coef))
        layer.linear.bias.copy_(torch.from_numpy(intercept))
    spec = ModelSpec(
        source="fused",
        kwargs={
            "method": "sklearn_linear",
            "members": [],
            "in_features": int(coef.shape[1]),
            "n_classes": n_classes,
            "binary": binary,
        },
        num_classes=n_classes,
    )
    return set_spec(layer, spec)


def _build(members: list, *, in_features: int, n_classes: int, binary: bool) -> nn.Module:
    return LinearClassifier(in_features, n_classes, binary)


class SklearnClassifier(nn.Module):
    """Any fitted scikit-learn classifier behind a module call: output ``log(predict_proba)``."""

    def __init__(self, estimator: Any) -> None:
        super().__init__()
        if not hasattr(estimator, "predict_proba"):
            raise FusionError(
                f"{type(estimator).__name__} has no predict_proba: expected a fitted classifier"
            )
        self.estimator = estimator
        self.n_outputs = len(estimator.classes_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            self._refuse()
        try:
            arr = x.detach().flatten(1).cpu().numpy().astype(np.float64)
        except (RuntimeError, NotImplementedError):  # a fake tensor: torch.export is tracing
            self._refuse()
        p = self.estimator.predict_proba(arr)
        return torch.from_numpy(np.log(np.clip(p, 1e-12, None))).to(torch.float32)

    def _refuse(self) -> None:
        raise ExportError(
            f"{type(self.estimator).__name__} is not linear and cannot join an ONNX graph: "
            "expected a linear scikit-learn classifier (coef_, intercept_)"
        )

    def export_onnx(self, path: Any, example_inputs: Any, opset: int, atol: float) -> Any:
        self._refuse()


def SklearnMember(estimator: Any) -> nn.Module:
    """A fitted scikit-learn classifier as a fusion member: a torch layer when it is linear."""
    if is_linear(estimator):
        return linear_to_torch(estimator)
    return SklearnClassifier(estimator)
