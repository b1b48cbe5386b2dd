"""Standardization that travels with the model, measured on scikit-learn's wine set.

The 13 wine features are multiplied by scales from 0.01 to 1000 (log-spaced) and written to a
CSV, the form a user's table comes in. An ``mlp`` (the zoo's default: hidden 100, 100) is
trained with the default settings (``slimfuse train --model mlp --data wine.csv``: 30 epochs,
AdamW at lr 1e-2, batch 100) for five initialisation seeds on five splits, three ways:

- before: raw features, a plain random split (what slimfuse did before);
- stratified, raw: the stratified split alone, features left raw (``--no-standardize``);
- after: the defaults now (stratified split, the model standardizes its inputs).

scikit-learn's ``StandardScaler`` + ``MLPClassifier(100, 100)`` on the same splits is the
reference. Writes ``results/standardize_wine.md`` and ``.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/standardize_wine.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import slimfuse
from quantize_common import RESULTS, cpu_flags, table
from slimfuse.data import Data
from slimfuse.errors import SlimfuseWarning

SCALES = np.logspace(-2, 3, 13)
SPLITS = range(5)
SEEDS = range(5)
VARIANTS = {
    "before: raw features, random split": {"standardize": False, "stratify": False},
    "stratified split, raw features": {"standardize": False},
    "after: the defaults (stratified, standardized)": None,  # load_data's defaults
}


def write_csv(path: Path) -> Path:
    from sklearn.datasets import load_wine

    d = load_wine()
    x = d.data * SCALES
    lines = [",".join([*(f"f{i}" for i in range(13)), "label"])]
    lines += [
        ",".join([*(f"{v:.7g}" for v in r), str(c)]) for r, c in zip(x, d.target, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def load(csv: Path, split_seed: int, kw: dict | None) -> Data:
    """``load_data``'s defaults (``kw`` None), else the CSV read as ``load_data`` reads it and
    split by ``from_arrays`` with ``kw`` (``stratify``, ``standardize``)."""
    from slimfuse.data import from_arrays
    from slimfuse.data.sources import _read_csv

    if kw is None:
        return slimfuse.load_data(str(csv), split_seed=split_seed)
    x, y = _read_csv(csv, "label")
    return from_arrays(x, y, name=csv.name, split_seed=split_seed, **kw)


def mlp_accuracy(data: Data, seed: int) -> float:
    torch.manual_seed(seed)  # as `slimfuse train --seed`
    model = slimfuse.build_model("mlp", data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlimfuseWarning)  # 14 validation samples
        slimfuse.train(model, data, config=slimfuse.TrainConfig(seed=seed, quiet=True))
    return slimfuse.evaluate(model, data.loader("test"), "classification")


def sklearn_accuracy(data: Data, seed: int) -> float:
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = data.arrays("train")
    clf = make_pipeline(
        StandardScaler(), MLPClassifier((100, 100), max_iter=1000, random_state=seed)
    )
    clf.fit(x, y)
    xt, yt = data.arrays("test")
    return float(clf.score(xt, yt))


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        csv = write_csv(Path(tmp) / "wine.csv")
        results: dict[str, list[float]] = {}
        for name, kw in VARIANTS.items():
            results[name] = [mlp_accuracy(load(csv, s, kw), seed) for s in SPLITS for seed in SEEDS]
        results["scikit-learn StandardScaler + MLPClassifier(100, 100)"] = [
            sklearn_accuracy(load(csv, s, None), seed) for s in SPLITS for seed in SEEDS
        ]
    rows = []
    for name, accs in results.items():
        rows.append(
            [
                name,
                f"{100 * statistics.mean(accs):.1f}%",
                f"{100 * statistics.stdev(accs):.1f}",
                f"{100 * min(accs):.1f}% - {100 * max(accs):.1f}%",
            ]
        )
    seconds = time.perf_counter() - t0
    md = [
        "# Standardization on wine with features scaled 0.01 .. 1000",
        "",
        f"CPU: {cpu_flags()}; one thread; {seconds:.0f} s in all.",
        "",
        "scikit-learn's wine set (178 samples, 13 features, 3 classes), each feature multiplied",
        "by one of 13 log-spaced scales from 0.01 to 1000, written as a CSV. An `mlp` (hidden",
        "100, 100) trained with the defaults of `slimfuse train` (30 epochs, AdamW lr 1e-2, batch",
        f"100); test accuracy over {len(SPLITS)} split seeds x {len(SEEDS)} initialisation seeds",
        "(36 test samples per split).",
        "",
        table(["variant", "mean test accuracy", "std (points)", "range"], rows),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "standardize_wine.md").write_text("\n".join(md))
    (RESULTS / "standardize_wine.json").write_text(
        json.dumps(
            {
                "cpu": cpu_flags(),
                "seconds": round(seconds, 1),
                "split_seeds": list(SPLITS),
                "seeds": list(SEEDS),
                "accuracy": results,
            },
            indent=2,
        )
        + "\n"
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
