"""The :class:`Data` splits and the checks every source goes through."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from slimfuse.errors import DataError, SlimfuseWarning

SPLITS = ("train", "val", "test")

MIN_TRAIN = 2  # fewer training samples: nothing to learn from (and no batch statistics)
MIN_VAL = 20  # fewer validation samples: a metric in steps of 5% or more, too coarse to choose on


@dataclass
class Data:
    """Train / val / test datasets plus what the rest of slimfuse needs to know about them."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int | None = None
    input_shape: tuple[int, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def loader(
        self,
        split: str,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            self.split(split),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
        )

    def example_input(self, batch: int = 1, split: str = "test") -> torch.Tensor:
        """The first ``batch`` inputs of a split, repeated if the split is smaller."""
        ds = self.split(split)
        return default_collate([ds[i % len(ds)] for i in range(batch)])[0]

    def arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A whole split as numpy ``(X, y)``."""
        ds = self.split(split)
        if isinstance(ds, TensorDataset):
            x, y = ds.tensors[:2]
            return x.numpy(), y.numpy()
        xs, ys = zip(*(ds[i][:2] for i in range(len(ds))), strict=True)
        return (
            torch.stack([torch.as_tensor(x) for x in xs]).numpy(),
            torch.stack([torch.as_tensor(y) for y in ys]).numpy(),
        )

    def describe(self) -> str:
        sizes = " / ".join(f"{len(self.split(s))} {s}" for s in SPLITS)
        classes = f", {self.num_classes} classes" if self.num_classes else ""
        return f"{self.name}: {sizes}, input {tuple(self.input_shape)}{classes}"


def from_arrays(
    x: Any,
    y: Any,
    x_test: Any = None,
    y_test: Any = None,
    *,
    name: str = "arrays",
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    standardize: bool = False,
    stratify: bool | None = None,
    seed: int | None = None,
    task: str | None = None,
) -> Data:
    """Build validated, deterministically split :class:`Data` from arrays.

    - ``split_seed``: the splits follow it and nothing else (``seed`` is its older name).
    - ``stratify``: train / val / test keep the class proportions (``None``: for class labels
      of one dimension; a class too rare to split stays in the larger part).
    - ``standardize``: fit per-feature mean and std on the train split into
      ``meta["standardize"]`` (:func:`slimfuse.data.preprocessing.fit_standardize`); the inputs
      stay raw, a model built for this data standardizes them itself. Real-valued targets
      (regression) likewise: per-target mean and std of the train split in
      ``meta["standardize_targets"]``; the targets stay raw, a model built for the data
      outputs them in their own units (:func:`slimfuse.data.preprocessing.standardize_targets`).
    - ``task``: ``"regression"`` keeps whole-number targets as numbers (without it, integer
      values read as class labels); ``"classification"`` requires class labels.

    The split is recorded in ``meta["split"]`` (:func:`split_record`).
    """
    if seed is not None:
        split_seed = seed
    x, y = _check_xy(x, y, name, task)
    classification = y.dtype == np.int64
    if stratify and not (classification and y.ndim == 1):
        raise DataError(f"{name}: stratify needs class labels (integers, one per sample)")
    stratified = (classification and y.ndim == 1) if stratify is None else bool(stratify)
    if x_test is None:
        n_test = max(1, round(len(x) * test_fraction))
        if len(x) - n_test < 2:
            raise DataError(f"{name}: {len(x)} samples are too few to split off a test set")
        rng = np.random.default_rng(split_seed)
        test_idx, rest = _take(len(x), y if stratified else None, n_test, rng)
        x_test, y_test = x[test_idx], y[test_idx]
        x, y = x[rest], y[rest]
    else:
        x_test, y_test = _check_xy(x_test, y_test, f"{name} (test)", task)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{name}: test inputs have shape {x_test.shape[1:]} but train inputs {x.shape[1:]}"
            )
    n_val = max(1, round(len(x) * val_fraction))
    if len(x) - n_val < MIN_TRAIN:
        raise DataError(
            f"{name}: {len(x)} samples are too few to split off validation: the train split "
            f"would have {len(x) - n_val}; expected at least {MIN_TRAIN}"
        )
    val_idx, train_idx = _take(
        len(x), y if stratified else None, n_val, np.random.default_rng(split_seed + 1)
    )

    def ds(xa: np.ndarray, ya: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(xa), torch.from_numpy(ya))

    num_classes = int(max(y.max(), y_test.max())) + 1 if classification else None
    check_splits(
        name,
        {"train": len(train_idx), "val": len(val_idx), "test": len(x_test)},
        y[train_idx] if classification and y.ndim == 1 else None,
        num_classes,
    )
    data = Data(
        name=name,
        train=ds(x[train_idx], y[train_idx]),
        val=ds(x[val_idx], y[val_idx]),
        test=ds(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
    )
    data.meta["split"] = _record(
        name,
        split_seed,
        {"train": len(train_idx), "val": len(val_idx), "test": len(x_test)},
        fingerprint(x[val_idx], y[val_idx]),
        fingerprint(x_test, y_test),
    )
    if standardize:
        from slimfuse.data.preprocessing import fit_standardize

        data.meta["standardize"] = fit_standardize(x[train_idx])
        if not classification:
            data.meta["standardize_targets"] = fit_standardize(
                y[train_idx].reshape(len(train_idx), -1)
            )
    if not classification:
        data.meta["targets"] = int(np.prod(y.shape[1:], dtype=np.int64))
    return data


def _take(
    n: int, labels: np.ndarray | None, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``(taken, rest)``: ``n_take`` of ``n`` sample indices drawn with ``rng``; with ``labels``,
    per class in proportion (:func:`_stratified`)."""
    if labels is None:
        order = rng.permutation(n)
        return order[:n_take], order[n_take:]
    return _stratified(labels, n_take, rng)


def _stratified(
    labels: np.ndarray, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Per class in proportion (largest remainders, ties drawn at random); every class keeps
    at least one sample in the rest, so a class too rare to split stays there; both parts
    shuffled."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * n_take / len(labels)
    take = np.minimum(np.floor(quota).astype(np.int64), counts - 1)
    room = counts - 1 - take
    # the samples still to place go to the classes with the largest remainders (ties: random)
    order = np.lexsort((rng.permutation(len(classes)), -(quota - take)))
    short = n_take - int(take.sum())
    while short > 0 and room.sum() > 0:
        for c in order:
            if short == 0:
                break
            if room[c] > 0:
                take[c] += 1
                room[c] -= 1
                short -= 1
    taken, rest = [], []
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(inverse == c))
        taken.append(idx[: take[c]])
        rest.append(idx[take[c] :])
    t, r = np.concatenate(taken), np.concatenate(rest)
    if short > 0:  # fewer samples than classes could give: the rest comes from anywhere
        r = rng.permutation(r)
        t, r = np.concatenate([t, r[:short]]), r[short:]
    return rng.permutation(t), rng.permutation(r)


def fingerprint(x: Any, y: Any) -> str:
    """12 hex characters of the sha256 of a split's inputs and labels (their bytes, in order)."""
    h = hashlib.sha256()
    for a in (x, y):
        arr = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:12]


def _record(
    name: str, split_seed: int | None, sizes: dict[str, int], val: str | None, test: str | None
) -> dict[str, Any]:
    return {"data": name, "split_seed": split_seed, "sizes": sizes, "val": val, "test": test}


def split_record(data: Data) -> dict[str, Any]:
    """What identifies ``data``'s split: ``{"data", "split_seed", "sizes", "val", "test"}``, the
    last two :func:`fingerprint` s of the validation and test samples (``None`` when a split
    does not reduce to arrays). Kept in ``data.meta["split"]``; a model built for the data
    records it, and fusing or distilling compares it (a model trained on another split of
    the same data has seen this split's test samples)."""
    rec = data.meta.get("split")
    if rec is None:
        prints: dict[str, str | None] = {}
        for split in ("val", "test"):
            try:
                prints[split] = fingerprint(*data.arrays(split))
            except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError):
                prints[split] = None  # samples of several fields or shapes: not compared
        sizes = {s: len(data.split(s)) for s in SPLITS}  # type: ignore[arg-type]
        rec = data.meta["split"] = _record(data.name, None, sizes, prints["val"], prints["test"])
    return rec


def check_splits(
    name: str,
    sizes: dict[str, int],
    train_labels: Any = None,
    num_classes: int | None = None,
) -> None:
    """Refuse splits that cannot train (:class:`DataError`): an empty split, a train split of
    fewer than ``MIN_TRAIN`` (2) samples, and ``train_labels`` (the classification labels of
    the train split, if known) of a single class. (A validation split too small to choose the
    best epoch on is warned about where the choice is made: :func:`check_val_size`.)
    """
    for split in SPLITS:
        if split in sizes and sizes[split] == 0:
            raise DataError(f"{name}: the {split} split is empty; expected at least one sample")
    if sizes.get("train", MIN_TRAIN) < MIN_TRAIN:
        raise DataError(
            f"{name}: the train split has {sizes['train']} sample; expected at least {MIN_TRAIN}"
        )
    if train_labels is not None:
        classes = np.unique(np.asarray(train_labels))
        if len(classes) == 1:
            raise DataError(
                f"{name}: labels hold one class ({classes[0]}) in {sizes['train']} training "
                "samples; expected at least two"
            )


def check_val_size(data: Data) -> None:
    """Warn when the validation split is smaller than ``MIN_VAL`` (20) samples or than the
    classes: the best epoch (early stopping, ``restore_best``) would be chosen on a metric that
    moves in steps of 5% or more, or that cannot hold every class."""
    n_val = len(data.val)  # type: ignore[arg-type]
    enough = max(MIN_VAL, data.num_classes or 0)
    if n_val < enough:
        warnings.warn(
            f"{data.name}: the validation split has {n_val} samples; too few to choose the best "
            f"epoch reliably (expected at least {enough}: more data or a larger val_fraction)",
            SlimfuseWarning,
            stacklevel=3,
        )


def _check_xy(x: Any, y: Any, name: str, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    try:
        xa = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name}: inputs are not numeric ({exc}); expected numbers only") from exc
    ya = np.asarray(y)
    if xa.ndim == 0 or len(xa) == 0:
        raise DataError(f"{name}: the data set is empty; expected at least one sample")
    if ya.ndim != 1:
        ya = ya.reshape(len(ya), -1) if ya.ndim > 1 else ya
    if len(xa) != len(ya):
        raise DataError(
            f"{name}: X has {len(xa)} samples but y has {len(ya)}; expected equal lengths"
        )
    if xa.ndim == 1:
        xa = xa[:, None]
    bad = ~np.isfinite(xa)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(
            f"{name}: inputs contain NaN or Inf (first at sample {row}); expected finite values"
        )
    labels = ya.dtype.kind in "iub" or (ya.dtype.kind == "f" and ya.ndim == 1 and _integral(ya))
    if task == "regression" and ya.dtype.kind in "iubf":
        labels = False  # whole numbers that are amounts, not classes
        ya = ya.astype(np.float64)
    elif task == "classification" and not labels:
        raise DataError(
            f"{name}: targets of type {ya.dtype} and shape {ya.shape[1:] or '()'} per sample are "
            "not class labels; expected whole numbers, one per sample"
        )
    if labels:
        if ya.dtype.kind == "f" and not np.isfinite(ya).all():
            raise DataError(f"{name}: labels contain NaN or Inf; expected finite values")
        ya = ya.astype(np.int64)
        if ya.min() < 0:
            raise DataError(f"{name}: class labels must be >= 0, saw {int(ya.min())}")
    elif ya.dtype.kind == "f":
        if not np.isfinite(ya).all():
            raise DataError(f"{name}: labels contain NaN or Inf; expected finite values")
        ya = ya.astype(np.float32)
    else:
        raise DataError(f"{name}: labels of type {ya.dtype} are not numeric; expected numbers")
    return np.ascontiguousarray(xa), ya


def _integral(a: np.ndarray) -> bool:
    finite = a[np.isfinite(a)]
    return (
        bool(len(finite))
        and bool(np.all(finite == np.round(finite)))
        and len(np.unique(finite)) <= 1000
    )


def check_fits(
    model: torch.nn.Module,
    data: Data,
    expected_shape: Sequence[int] | None = None,
    what: str = "the model",
) -> None:
    """Fail with one line if the data's inputs do not fit the model (``what`` names it)."""
    if expected_shape is not None and tuple(expected_shape) != tuple(data.input_shape):
        raise DataError(
            f"{data.name}: inputs have shape {tuple(data.input_shape)} per sample but {what} "
            f"expects {tuple(expected_shape)}"
        )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(data.example_input(2))
    except (RuntimeError, ValueError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{data.name}: inputs of shape {tuple(data.input_shape)} per sample do not fit "
            f"{what} ({first[:200]})"
        ) from exc
    finally:
        model.train(was_training)
