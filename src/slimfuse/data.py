"""Data sources: built-in sets, ``.npz``, ``.csv`` and user factories, validated up front.

``load_data(spec)`` returns a :class:`Data` with deterministic train / val / test splits.
Specs:

- ``mnist1d``: MNIST-1D generated offline (4000 train / 1000 test, length 40, 10 classes)
- ``digits``: scikit-learn's 8x8 digits, flattened to 64 features
- ``path.npz``: arrays ``X`` and ``y`` (optionally ``X_test`` / ``y_test``)
- ``path.csv``: numeric feature columns and a label column (``label_column``, default ``label``)
- ``file.py:fn`` or ``module:fn``: a factory returning ``(train, val, test)`` or a dict with those
  keys, each a ``DataLoader``, a ``Dataset`` or an ``(X, y)`` pair

Every problem is found before any training and reported as one :class:`DataError` line.
Data that cannot train is refused (see :func:`check_splits`): an empty split, a train split of
fewer than 2 samples, classification labels of one class in the train split, an empty label
cell in a CSV. A validation split too small to choose the best epoch on is warned about when
training chooses on it.
"""

from __future__ import annotations

import csv
import functools
import importlib
import math
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from slimfuse.errors import DataError, SlimfuseWarning
from slimfuse.trust import import_callable, trusting

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


def load_data(
    spec: str | Data,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    label_column: str = "label",
    trust_code: bool | None = None,
) -> Data:
    """Resolve a data spec (see the module docstring) into validated splits.

    A factory (``file.py:fn``, ``module:fn``) is code: it runs only with ``trust_code=True``
    (see :mod:`slimfuse.trust`)."""
    if isinstance(spec, Data):
        return spec
    if not isinstance(spec, str) or not spec:
        raise DataError(
            f"data source {spec!r}: expected mnist1d, digits, a .npz, a .csv or file.py:fn"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction}: expected a number in (0, 1)")
    if spec in BUILTIN:
        return BUILTIN[spec](seed=seed, val_fraction=val_fraction)
    path = Path(spec)
    if path.suffix == ".npz":
        x, y, x_test, y_test = _read_npz(path)
    elif path.suffix == ".csv":
        x, y = _read_csv(path, label_column)
        x_test = y_test = None
    elif ":" in spec:
        with trusting(trust_code):
            return _from_factory(spec)
    else:
        raise DataError(
            f"data source {spec!r}: expected mnist1d, digits, a .npz or .csv file, or file.py:fn"
        )
    return from_arrays(
        x,
        y,
        x_test,
        y_test,
        name=path.name,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )


def from_arrays(
    x: Any,
    y: Any,
    x_test: Any = None,
    y_test: Any = None,
    *,
    name: str = "arrays",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
) -> Data:
    """Build validated, deterministically split :class:`Data` from arrays."""
    x, y = _check_xy(x, y, name)
    if x_test is None:
        n_test = max(1, round(len(x) * test_fraction))
        if len(x) - n_test < 2:
            raise DataError(f"{name}: {len(x)} samples are too few to split off a test set")
        order = np.random.default_rng(seed).permutation(len(x))
        x_test, y_test = x[order[:n_test]], y[order[:n_test]]
        x, y = x[order[n_test:]], y[order[n_test:]]
    else:
        x_test, y_test = _check_xy(x_test, y_test, f"{name} (test)")
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
    order = np.random.default_rng(seed + 1).permutation(len(x))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def ds(xa: np.ndarray, ya: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(xa), torch.from_numpy(ya))

    classification = y.dtype == np.int64
    num_classes = int(max(y.max(), y_test.max())) + 1 if classification else None
    check_splits(
        name,
        {"train": len(train_idx), "val": len(val_idx), "test": len(x_test)},
        y[train_idx] if classification and y.ndim == 1 else None,
        num_classes,
    )
    return Data(
        name=name,
        train=ds(x[train_idx], y[train_idx]),
        val=ds(x[val_idx], y[val_idx]),
        test=ds(x_test, y_test),
        num_classes=num_classes,
        input_shape=tuple(x.shape[1:]),
    )


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


def _check_xy(x: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
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
    if ya.dtype.kind in "iub" or (ya.dtype.kind == "f" and ya.ndim == 1 and _integral(ya)):
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


def _read_npz(path: Path) -> tuple[Any, Any, Any, Any]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; expected an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        raise DataError(
            f"{path.name}: cannot read without pickle ({exc}); expected plain arrays"
        ) from exc
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{path.name}: has arrays {sorted(arrays)} but no {', '.join(missing)}; expected X and y"
        )
    return arrays["X"], arrays["y"], arrays.get("X_test"), arrays.get("y_test")


def _read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} not found; expected an existing .csv file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path.name}: byte {exc.start} is not UTF-8 text; expected a UTF-8 .csv file"
        ) from exc
    except csv.Error as exc:
        raise DataError(f"{path.name}: not a readable .csv file ({exc})") from exc
    if not rows:
        raise DataError(f"{path.name}: the file is empty; expected a header and rows")
    header, body = [h.strip() for h in rows[0][1]], [(n, r) for n, r in rows[1:] if r]
    if label_column not in header:
        raise DataError(
            f"{path.name}: no label column {label_column!r}; columns are {', '.join(header)}"
        )
    if not body:
        raise DataError(f"{path.name}: the data set is empty; expected at least one row")
    li = header.index(label_column)
    features, labels = [], []
    for n, row in body:
        if len(row) != len(header):
            raise DataError(
                f"{path.name}: line {n} has {len(row)} fields, the header {len(header)}"
            )
        values = []
        for col, cell in enumerate(row):
            if col == li:
                continue
            if not cell.strip():
                raise DataError(
                    f"{path.name}: line {n}, column {header[col]!r}: empty cell; "
                    "expected a number in every feature column"
                )
            try:
                values.append(float(cell))
            except ValueError:
                raise DataError(
                    f"{path.name}: line {n}, column {header[col]!r}: {cell!r} is not numeric; "
                    "expected numbers in every feature column"
                ) from None
        if not row[li].strip():
            raise DataError(
                f"{path.name}: line {n}: empty label in column {label_column!r}; "
                "expected a label in every row"
            )
        features.append(values)
        labels.append(row[li].strip())
    try:
        y: np.ndarray = np.asarray([float(v) for v in labels])
    except ValueError:
        classes = {c: i for i, c in enumerate(sorted(set(labels)))}
        if len(classes) == 1:
            raise DataError(
                f"{path.name}: labels hold one class ({labels[0]!r}) in {len(labels)} rows; "
                "expected at least two"
            ) from None
        y = np.asarray([classes[v] for v in labels], dtype=np.int64)
    return np.asarray(features, dtype=np.float64), y


def _from_factory(spec: str) -> Data:
    fn = import_callable(spec, what="data factory", error=DataError)[0]
    out = fn()
    if isinstance(out, Data):
        return out
    if isinstance(out, dict):
        missing = [s for s in SPLITS if s not in out]
        if missing:
            raise DataError(f"{spec}: returned keys {sorted(out)}; expected train, val, test")
        parts = [out[s] for s in SPLITS]
    elif isinstance(out, Sequence) and len(out) == 3:
        parts = list(out)
    else:
        raise DataError(f"{spec}: returned {type(out).__name__}; expected (train, val, test)")
    sets = [_as_dataset(p, f"{spec} [{s}]") for p, s in zip(parts, SPLITS, strict=True)]
    x0, y0 = sets[0][0][:2]
    y0 = torch.as_tensor(y0)
    classification = y0.dtype in (torch.int64, torch.int32)
    num_classes = None
    train_labels = None
    if classification:
        labels = [[int(torch.as_tensor(ds[i][1])) for i in range(len(ds))] for ds in sets]
        num_classes = 1 + max(max(ys) for ys in labels)
        train_labels = labels[0]
    check_splits(
        spec,
        {s: len(ds) for s, ds in zip(SPLITS, sets, strict=True)},  # type: ignore[arg-type]
        train_labels,
        num_classes,
    )
    return Data(
        name=spec,
        train=sets[0],
        val=sets[1],
        test=sets[2],
        num_classes=num_classes,
        input_shape=tuple(torch.as_tensor(x0).shape),
    )


def _as_dataset(part: Any, name: str) -> Dataset:
    if isinstance(part, DataLoader):
        part = part.dataset
    if isinstance(part, tuple) and len(part) == 2:
        x, y = _check_xy(*part, name)
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    if isinstance(part, Dataset):
        if len(part) == 0:  # type: ignore[arg-type]
            raise DataError(f"{name}: the data set is empty; expected at least one sample")
        return part
    raise DataError(f"{name}: got {type(part).__name__}; expected a DataLoader, Dataset or (X, y)")


# -- built-in sets -------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mnist1d_raw() -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    # generated locally from the package's templates with its fixed seed: no download
    raw = make_dataset(get_dataset_args())
    return {k: raw[k] for k in ("x", "y", "x_test", "y_test")}


def _mnist1d(seed: int = 0, val_fraction: float = 0.1) -> Data:
    raw = _mnist1d_raw()
    return from_arrays(
        raw["x"],
        raw["y"],
        raw["x_test"],
        raw["y_test"],
        name="mnist1d",
        seed=seed,
        val_fraction=val_fraction,
    )


def _digits(seed: int = 0, val_fraction: float = 0.1) -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    return from_arrays(d.data / 16.0, d.target, name="digits", seed=seed, val_fraction=val_fraction)


BUILTIN: dict[str, Callable[..., Data]] = {"mnist1d": _mnist1d, "digits": _digits}


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


def text_corpus(seed: int = 0, held_out: float = 0.2, min_chars: int = 80) -> dict[str, list[str]]:
    """Real English text that ships with Python, split into ``train`` and ``test`` paragraphs.

    Paragraphs come from the documentation topics in ``pydoc_data`` and the docstrings of
    standard-library modules. The split is by document, so no paragraph of a held-out topic
    leaks into training.
    """

    from pydoc_data.topics import topics  # 700 KB of text: read only when the corpus is asked for

    docs: list[list[str]] = []
    for key in sorted(topics):
        docs.append(_paragraphs(topics[key], min_chars))
    for mod_name in _STDLIB_DOC_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:  # pragma: no cover - platform-specific modules
            continue
        texts = [mod.__doc__ or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            doc = getattr(obj, "__doc__", None)
            if (
                callable(obj)
                and getattr(obj, "__module__", None) == mod_name
                and isinstance(doc, str)
            ):
                texts.append(doc)
        docs.append([p for t in texts for p in _paragraphs(t, min_chars)])
    docs = [d for d in docs if d]
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_test = max(1, math.floor(len(docs) * held_out))
    test = list(dict.fromkeys(p for d in docs[:n_test] for p in d))
    held = set(test)  # topics repeat paragraphs: none of the held-out text may appear in train
    train = list(dict.fromkeys(p for d in docs[n_test:] for p in d if p not in held))
    return {"train": train, "test": test}


def _paragraphs(text: str, min_chars: int) -> list[str]:
    out = []
    for block in text.split("\n\n"):
        para = " ".join(block.split())
        if len(para) >= min_chars:
            out.append(para[:2000])
    return out


_STDLIB_DOC_MODULES = [
    "abc",
    "argparse",
    "ast",
    "asyncio",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email",
    "enum",
    "fnmatch",
    "fractions",
    "functools",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "math",
    "mimetypes",
    "operator",
    "os",
    "pathlib",
    "pickle",
    "pprint",
    "queue",
    "random",
    "re",
    "sched",
    "secrets",
    "shlex",
    "shutil",
    "socket",
    "sqlite3",
    "ssl",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "timeit",
    "tokenize",
    "traceback",
    "types",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
]
