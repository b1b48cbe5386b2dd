"""Readers for ``.npz`` and ``.csv`` files and user data factories."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from slimfuse.data.core import SPLITS, Data, _check_xy, check_splits
from slimfuse.errors import DataError
from slimfuse.trust import import_callable


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
