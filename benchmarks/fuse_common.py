"""Shared pieces of the fusion benchmarks: members as scikit-learn estimators, table helpers."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from slimfuse.hardware import describe_cpu

RESULTS = Path(__file__).parent / "results"


class TorchClassifier(ClassifierMixin, BaseEstimator):
    """A trained torch classifier as a scikit-learn estimator (``fit`` only records classes)."""

    def __init__(self, module: Any = None, n_classes: int = 10) -> None:
        self.module = module
        self.n_classes = n_classes

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchClassifier:
        self.classes_ = np.arange(self.n_classes)
        return self

    @torch.no_grad()
    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self.module.eval()
        return self.module(torch.as_tensor(X, dtype=torch.float32)).softmax(-1).numpy()

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


def frozen(module: Any, n_classes: int = 10) -> Any:
    """The member wrapped as a prefit (frozen) scikit-learn estimator."""
    from sklearn.frozen import FrozenEstimator

    return FrozenEstimator(TorchClassifier(module, n_classes).fit(None, None))


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def cpu_line() -> str:
    return f"{describe_cpu()}, torch {torch.__version__}, 1 thread"


def write(name: str, text: str, raw: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(raw, indent=2, default=float) + "\n")
    print(text)
    return path


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"
