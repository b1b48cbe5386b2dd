"""Data sources: built-in sets, ``.npz``, ``.csv`` and user factories, validated up front.

``load_data(spec)`` returns a :class:`Data` with train / val / test splits drawn from
``split_seed`` (stratified for class labels) and, for ``.csv`` / ``.npz`` files, the train
split's per-feature statistics for the models built for it to standardize with. Specs:

- ``mnist1d``: MNIST-1D generated offline (4000 train / 1000 test, length 40, 10 classes)
- ``digits``: scikit-learn's 8x8 digits, flattened to 64 features
- ``path.npz``: arrays ``X`` and ``y`` (optionally ``X_test`` / ``y_test``)
- ``path.csv``: numeric feature columns and a label column (``label_column``, default ``label``)
- text for encoders: ``notes.txt`` / ``.md`` (a paragraph per line), a folder of them (paragraphs
  between blank lines), ``notes.jsonl`` (a ``text`` field per line) or ``pydocs`` (Python's
  documentation); see :mod:`slimfuse.data.text`
- ``file.py:fn`` or ``module:fn``: a factory returning ``(train, val, test)`` or a dict with those
  keys, each a ``DataLoader``, a ``Dataset`` or an ``(X, y)`` pair

Every problem is found before any training and reported as one :class:`DataError` line.
Data that cannot train is refused (see :func:`check_splits`): an empty split, a train split of
fewer than 2 samples, classification labels of one class in the train split, an empty label
cell in a CSV. A validation split too small to choose the best epoch on is warned about when
training chooses on it.
"""

from __future__ import annotations

from pathlib import Path

from slimfuse.data.builtin import BUILTIN
from slimfuse.data.core import (
    MIN_TRAIN,
    MIN_VAL,
    SPLITS,
    Data,
    check_fits,
    check_splits,
    check_val_size,
    fingerprint,
    from_arrays,
    split_record,
)
from slimfuse.data.preprocessing import fit_standardize
from slimfuse.data.sources import _from_factory, _read_csv, _read_npz
from slimfuse.data.text import is_text, is_text_source, load_text, text_corpus
from slimfuse.errors import DataError
from slimfuse.trust import trusting

__all__ = [
    "BUILTIN",
    "MIN_TRAIN",
    "MIN_VAL",
    "SPLITS",
    "Data",
    "check_fits",
    "check_splits",
    "check_val_size",
    "fingerprint",
    "fit_standardize",
    "from_arrays",
    "is_text",
    "load_data",
    "split_record",
    "text_corpus",
]


def load_data(
    spec: str | Data,
    *,
    split_seed: int = 0,
    standardize: bool | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    label_column: str = "label",
    trust_code: bool | None = None,
    max_length: int | None = None,
    seed: int | None = None,
    task: str | None = None,
) -> Data:
    """Resolve a data spec (see the module docstring) into validated splits.

    - ``split_seed``: the train / val / test split follows it (stratified for class labels),
      not the training seed (``seed`` is its older name).
    - ``standardize``: fit per-feature mean and std on the train split (``meta["standardize"]``)
      for the models built for this data to standardize their raw inputs with
      (:mod:`slimfuse.data.preprocessing`); ``None``: on for ``.csv`` and ``.npz`` files, off
      for the built-in sets (already scaled), text and factories. For real-valued targets of
      ``.csv`` / ``.npz`` files (regression) the targets' mean and std too.
    - ``task``: ``"regression"`` reads a file's whole-number targets as amounts, not classes
      (:func:`from_arrays`).

    A factory (``file.py:fn``, ``module:fn``) is code: it runs only with ``trust_code=True``
    (see :mod:`slimfuse.trust`). ``max_length``: tokens per paragraph of text data (default 128)."""
    if seed is not None:
        split_seed = seed
    if isinstance(spec, Data):
        return spec
    if not isinstance(spec, str) or not spec:
        raise DataError(
            f"data source {spec!r}: expected mnist1d, digits, a .npz, a .csv, text or file.py:fn"
        )
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction {val_fraction}: expected a number in (0, 1)")
    if is_text_source(spec):
        return load_text(
            spec,
            split_seed=split_seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            max_length=max_length,
        )
    if max_length is not None:
        raise DataError(f"max_length applies to text data; {spec!r} is not text")
    if spec in BUILTIN:
        return BUILTIN[spec](
            split_seed=split_seed, val_fraction=val_fraction, standardize=bool(standardize)
        )
    path = Path(spec)
    if path.suffix == ".npz":
        x, y, x_test, y_test = _read_npz(path)
    elif path.suffix == ".csv":
        x, y = _read_csv(path, label_column)
        x_test = y_test = None
    elif ":" in spec:
        with trusting(trust_code):
            data = _from_factory(spec)
        if standardize and "standardize" not in data.meta:
            data.meta["standardize"] = fit_standardize(data.arrays("train")[0])
        return data
    else:
        raise DataError(
            f"data source {spec!r}: expected mnist1d, digits, a .npz or .csv file, text "
            "(.txt, .md, .jsonl, a folder, pydocs) or file.py:fn"
        )
    return from_arrays(
        x,
        y,
        x_test,
        y_test,
        name=path.name,
        split_seed=split_seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        standardize=standardize is not False,
        task=task if task in ("classification", "regression") else None,
    )
