"""Small tabular sets: slimfuse's fused MLPs against scikit-learn's stacking, on the same splits.

Every classification and regression set scikit-learn ships without a download: iris, wine,
breast_cancer, digits (classification); diabetes, linnerud (regression, linnerud with three
targets). Each is split once by ``slimfuse.data.from_arrays(..., standardize=True,
split_seed=0)`` (stratified for classes; 20% test, 10% of the rest validation); both sides see
the same test samples, and scikit-learn fits on train + validation (slimfuse chooses its best
epochs and fits its fusions on the validation split and on folds of train).

- slimfuse: 5 ``mlp`` members (one hidden layer of 100, as ``MLPClassifier``'s default; seeds
  0-4, the model standardizes its inputs and, for regression, its targets), then their
  ``mean``, ``weighted`` (weights fitted on out-of-fold predictions of train, ``cv=5``) and
  ``stack`` (``cv=5``: every member retrained per fold, the anchored meta-learner with its C by
  held-out accuracy / squared error and the one-standard-error rule);
- scikit-learn: ``StackingClassifier`` / ``StackingRegressor`` (``cv=5``) over 5
  ``StandardScaler + MLPClassifier((100,))`` / ``MLPRegressor`` members (targets standardized
  too, ``TransformedTargetRegressor``; linnerud one stacking per target: a stacking regressor
  takes one target), and a scaled ``LogisticRegression`` / ``RidgeCV`` baseline.

Target: slimfuse's best fusion >= scikit-learn's best on every set, within one test sample for
classification (1 / n_test) and within 0.01 of R² for regression. Writes
``results/tabular.md`` and ``.json``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tabular.py
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

import slimfuse
from quantize_common import RESULTS, cpu_flags, table
from slimfuse.data import Data, from_arrays
from slimfuse.errors import SlimfuseWarning
from slimfuse.fusion import WeightedFusion, train_members
from slimfuse.tasks import scores

N_MEMBERS = 5
HIDDEN = [100]
TRAIN = slimfuse.TrainConfig(epochs=100, lr=1e-3, batch_size=32, quiet=True)
SETS = {
    "iris": ("load_iris", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "digits": ("load_digits", "classification"),
    "diabetes": ("load_diabetes", "regression"),
    "linnerud": ("load_linnerud", "regression"),
}
R2_SLACK = 0.01


def load(name: str) -> tuple[Data, str]:
    import sklearn.datasets

    loader, task = SETS[name]
    x, y = getattr(sklearn.datasets, loader)(return_X_y=True)
    return from_arrays(x, y, name=name, standardize=True, split_seed=0, task=task), task


def score(model: Any, data: Data, task: str) -> float:
    s = scores(model, data.loader("test"), task)
    return s["accuracy"] if task == "classification" else s["r2"]


def run_slimfuse(data: Data, task: str) -> dict[str, Any]:
    members = train_members(
        "mlp", data, n=N_MEMBERS, config=TRAIN, task=task, model_kwargs={"hidden": HIDDEN}
    ).pairs
    out: dict[str, Any] = {"members": [score(m, data, task) for _, m in members]}
    out["mean"] = score(slimfuse.fuse(members, {"method": "mean"}, data, task=task), data, task)
    stack = slimfuse.fuse(members, {"method": "stack", "cv": 5}, data, task=task)
    out["stack"] = score(stack, data, task)
    out["stack_C"] = stack.C_
    # weights fitted on the same out-of-fold predictions (the stack's fold models are the
    # ones cv=5 weights would train: same settings, same seeds)
    y = torch.from_numpy(data.arrays("train")[1])
    pairs = [(n, m) for n, m in members]
    space = "logits" if task == "regression" else "probs"
    weighted = WeightedFusion(pairs, space=space).fit_weights(stack.oof_outputs_, y, task=task)
    out["weighted"] = score(weighted, data, task)
    out["weights"] = [round(float(w), 3) for w in weighted.weights_]
    return out


def run_sklearn(data: Data, task: str) -> dict[str, Any]:
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.ensemble import StackingClassifier, StackingRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, ys = zip(*(data.arrays(s) for s in ("train", "val")), strict=True)
    x, y = np.concatenate(xs), np.concatenate(ys)
    xt, yt = data.arrays("test")
    hidden = tuple(HIDDEN)
    if task == "classification":
        members = [
            (f"m{i}", make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=hidden, max_iter=1000, random_state=i)))
            for i in range(N_MEMBERS)
        ]  # fmt: skip
        stack: Any = StackingClassifier(members, cv=5)
        base: Any = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        fitted = {"stack": stack.fit(x, y), "baseline": base.fit(x, y)}
        return {k: float(m.score(xt, yt)) for k, m in fitted.items()}

    def mlp(i: int) -> Any:
        net = MLPRegressor(hidden_layer_sizes=hidden, max_iter=2000, random_state=i)
        net = make_pipeline(StandardScaler(), net)
        return TransformedTargetRegressor(net, transformer=StandardScaler())

    def stack_fit_predict(target: np.ndarray) -> np.ndarray:
        stack = StackingRegressor([(f"m{i}", mlp(i)) for i in range(N_MEMBERS)], cv=5)
        return stack.fit(x, target).predict(xt)

    # a stacking regressor takes one target: one per target (MultiOutputRegressor's way)
    if y.ndim > 1:
        pred = np.stack([stack_fit_predict(y[:, j]) for j in range(y.shape[1])], axis=1)
    else:
        pred = stack_fit_predict(y)
    base = make_pipeline(StandardScaler(), RidgeCV())
    return {
        "stack": float(r2_score(yt, pred)),
        "baseline": float(r2_score(yt, base.fit(x, y).predict(xt))),
    }


def main() -> None:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    rows = []
    for name in sys.argv[1:] or SETS:
        t = time.perf_counter()
        data, task = load(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SlimfuseWarning)  # the tiny validation splits
            ours = run_slimfuse(data, task)
        t_ours = time.perf_counter() - t
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLP convergence warnings of the tiny sets
            theirs = run_sklearn(data, task)
        n_test = len(data.test)
        slack = 1.0 / n_test if task == "classification" else R2_SLACK
        best_ours = max(ours[k] for k in ("mean", "weighted", "stack"))
        best_theirs = max(theirs.values())
        met = best_ours >= best_theirs - slack - 1e-12
        results[name] = {
            "task": task,
            "sizes": {s: len(data.split(s)) for s in ("train", "val", "test")},
            "slimfuse": ours,
            "sklearn": theirs,
            "best_slimfuse": best_ours,
            "best_sklearn": best_theirs,
            "slack": slack,
            "met": met,
            "seconds": {
                "slimfuse": round(t_ours, 1),
                "sklearn": round(time.perf_counter() - t - t_ours, 1),
            },
        }
        pct = (lambda v: f"{100 * v:.1f}%") if task == "classification" else (lambda v: f"{v:.3f}")
        rows.append(
            [
                name,
                "accuracy" if task == "classification" else "R²",
                "/".join(str(len(data.split(s))) for s in ("train", "val", "test")),
                pct(float(np.mean(ours["members"]))),
                pct(ours["mean"]),
                pct(ours["weighted"]),
                f"{pct(ours['stack'])} (C {ours['stack_C']:g})",
                pct(theirs["stack"]),
                pct(theirs["baseline"]),
                f"{'met' if met else '**not met**'} ({best_ours - best_theirs:+.3f}; slack "
                f"{slack:.3f})",
            ]
        )
        print(name, results[name], flush=True)
    seconds = time.perf_counter() - t0
    md = [
        "# Small tabular sets: slimfuse fusion vs scikit-learn stacking",
        "",
        f"CPU: {cpu_flags()}; one thread; {seconds:.0f} s in all.",
        "",
        "One split per set (`from_arrays(..., standardize=True, split_seed=0)`: stratified for",
        "classes, 20% test, 10% of the rest validation; train/val/test sizes below); scikit-learn",
        "fits on train + validation. slimfuse: 5 `mlp`s (hidden 100, seeds 0-4; 100 epochs, AdamW",
        "lr 1e-3, batch 32, best epoch by validation accuracy / MSE, ties by loss), their mean,",
        "weights and anchored stacking fitted on 5-fold out-of-fold predictions of train (C 0: the",
        "stack fell back to the mean). scikit-learn: `StackingClassifier` / `StackingRegressor`",
        "(cv 5) over 5 `StandardScaler` + `MLPClassifier((100,))` / `MLPRegressor` (targets",
        "standardized too; linnerud per target) and a scaled `LogisticRegression` / `RidgeCV`.",
        "Target: slimfuse's best fusion >= scikit-learn's best within one test sample",
        "(classification) or 0.01 of R² (regression).",
        "",
        table(
            [
                "set",
                "metric",
                "train/val/test",
                "slimfuse members (mean)",
                "mean",
                "weighted",
                "stack",
                "sklearn stacking",
                "sklearn linear",
                "target",
            ],
            rows,
        ),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tabular.md").write_text("\n".join(md))
    (RESULTS / "tabular.json").write_text(
        json.dumps(
            {"cpu": cpu_flags(), "seconds": round(seconds, 1), "sets": results},
            indent=2,
        )
        + "\n"
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
