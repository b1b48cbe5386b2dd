"""Built-in data sets, generated or read offline (already scaled: not standardized by default)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from slimfuse.data.core import Data, from_arrays


@functools.lru_cache(maxsize=1)
def _mnist1d_raw() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # generated locally from the package's templates with its fixed seed: no download
    raw = make_dataset(get_dataset_args())
    return {k: raw[k] for k in ("x", "y", "x_test", "y_test")}


def _mnist1d(split_seed: int = 0, val_fraction: float = 0.1, **kwargs: Any) -> Data:
    raw = _mnist1d_raw()
    return from_arrays(
        raw["x"],
        raw["y"],
        raw["x_test"],
        raw["y_test"],
        name="mnist1d",
        split_seed=split_seed,
        val_fraction=val_fraction,
        **kwargs,
    )


def _digits(split_seed: int = 0, val_fraction: float = 0.1, **kwargs: Any) -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    return from_arrays(
        d.data / 16.0,
        d.target,
        name="digits",
        split_seed=split_seed,
        val_fraction=val_fraction,
        **kwargs,
    )


BUILTIN: dict[str, Callable[..., Data]] = {"mnist1d": _mnist1d, "digits": _digits}
