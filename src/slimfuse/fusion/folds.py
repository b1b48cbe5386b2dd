"""K-fold splits with a clear error when the data is too small for K folds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from torch.utils.data import Subset

from slimfuse.data import Data
from slimfuse.errors import FusionError


def check_folds(y: np.ndarray, k: int, what: str) -> None:
    """``k`` stratified folds need ``k`` samples in all and of every class present."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise FusionError(f"cv={k!r}: expected an integer number of folds >= 2 or 'prefit'")
    n = len(y)
    if n < k:
        raise FusionError(f"{k} folds need at least {k} samples; the {what} has {n}")
    classes, counts = np.unique(y, return_counts=True)
    low = int(np.argmin(counts))
    if counts[low] < k:
        raise FusionError(
            f"{k} folds need at least {k} samples of every class; in the {what} ({n} samples) "
            f"class {classes[low]} has {counts[low]}"
        )


def kfold(y: np.ndarray, k: int, seed: int = 0, what: str = "training data") -> list:
    """Stratified ``[(train_idx, test_idx)] * k`` over labels ``y`` (shuffled with ``seed``)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    check_folds(y, k, what)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(y)), y)]


def with_train_subset(data: Data, indices: np.ndarray) -> Data:
    """``data`` whose train split is only ``indices`` of it (val and test unchanged)."""
    return replace(data, train=Subset(data.train, [int(i) for i in indices]))


def labels(data: Data, split: str = "train") -> np.ndarray:
    return np.asarray(data.arrays(split)[1])
