"""Choosing the best epoch on small validation splits: ties in the metric go to the lower
validation loss, then the later epoch; restore_best, patience and best_by from the library,
the command line and a recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.data import from_arrays
from slimfuse.errors import SlimfuseWarning
from slimfuse.pipeline.run import run_recipe
from slimfuse.tasks import scores
from slimfuse.training import TrainConfig, train
from tests.helpers import TRAIN_MLP


@pytest.fixture(scope="module")
def cancer():
    """scikit-learn's breast cancer set: 455 training rows, so a validation split of 46."""
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    return from_arrays(x, y, name="breast_cancer", standardize=True)


def test_a_saturated_metric_is_decided_by_the_validation_loss(cancer):
    assert len(cancer.val) == 46
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=cancer)
    cfg = TrainConfig(epochs=12, lr=1e-3, batch_size=32, quiet=True)
    result = train(model, cancer, config=cfg)
    hist = result.history
    top = max(h["accuracy"] for h in hist)
    tied = [h for h in hist if h["accuracy"] == top]
    assert len(tied) >= 2  # 46 samples: the accuracy stops telling epochs apart
    chosen = min(tied, key=lambda h: (h["val_loss"], -h["epoch"]))
    # the first epoch to reach the top (what a strict "better" keeps) is not the best of them
    assert result.best_epoch == chosen["epoch"] != tied[0]["epoch"]
    assert result.best_loss == chosen["val_loss"] < tied[0]["val_loss"]
    # the model ends with that epoch's weights
    again = scores(model, cancer.loader("val"), "classification")
    assert again["accuracy"] == top and again["loss"] == pytest.approx(chosen["val_loss"])


def _scripted(values):
    """An evaluate_fn returning ``(metric, loss)`` pairs in turn, remembering each epoch's
    weights."""
    seen = []
    it = iter(values)

    def fn(model):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(it)

    return fn, seen


def test_ties_go_to_the_lower_loss_then_the_later_epoch_and_patience_counts_strict_gains(digits):
    values = [(0.9, 0.5), (1.0, 0.4), (1.0, 0.3), (1.0, 0.35), (1.0, 0.3), (0.9, 0.1)]
    model = slimfuse.build_model("mlp", data=digits, hidden=[8])
    fn, seen = _scripted(values)
    cfg = TrainConfig(epochs=6, patience=2, quiet=True)
    res = train(model, digits, config=cfg, evaluate_fn=fn)
    # epoch 5 ties epoch 3 in metric and loss: the later one is taken, but it is no gain, so
    # patience runs out there (epochs 4 and 5 without a strictly better one)
    assert (res.epochs_run, res.best_epoch, res.best_metric, res.best_loss) == (5, 5, 1.0, 0.3)
    assert all(torch.equal(v, seen[4][k]) for k, v in model.state_dict().items())
    # best_by loss: the loss alone decides
    model = slimfuse.build_model("mlp", data=digits, hidden=[8])
    fn, _ = _scripted(values)
    res = train(
        model, digits, config=TrainConfig(epochs=6, best_by="loss", quiet=True), evaluate_fn=fn
    )
    assert (res.best_epoch, res.best_metric) == (6, 0.9)
    # a metric alone (no loss): a tie goes to the later epoch
    model = slimfuse.build_model("mlp", data=digits, hidden=[8])
    it = iter([0.5, 0.8, 0.8, 0.7])
    res = train(
        model, digits, config=TrainConfig(epochs=4, quiet=True), evaluate_fn=lambda m: next(it)
    )
    assert (res.best_epoch, res.best_metric, res.best_loss) == (3, 0.8, None)


def test_a_tiny_validation_split_is_warned_about_with_its_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = from_arrays(x, y, name="tiny")
    model = slimfuse.build_model("mlp", data=data, hidden=[4])
    with pytest.warns(SlimfuseWarning, match=r"tiny: the validation split has 5 samples"):
        train(model, data, config=TrainConfig(epochs=2, quiet=True))


def _train_config(bundle) -> dict:
    meta = json.loads((bundle / "slimfuse.json").read_text())
    return next(e for e in reversed(meta["model"]["lineage"]) if "config" in e)["config"]


def test_restore_best_patience_and_best_by_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "m"
    argv = [*TRAIN_MLP, "--quiet", "--out", str(out), "--epochs", "3"]
    argv += ["--no-restore-best", "--patience", "1", "--best-by", "loss"]
    assert main(argv) == 0
    cfg = _train_config(out)
    assert (cfg["restore_best"], cfg["patience"], cfg["best_by"]) == (False, 1, "loss")
    assert main([*TRAIN_MLP, "--quiet", "--out", str(tmp_path / "d")]) == 0
    cfg = _train_config(tmp_path / "d")
    assert (cfg["restore_best"], cfg["patience"], cfg["best_by"]) == (True, None, "metric")
    with pytest.raises(SystemExit) as exc:
        main([*TRAIN_MLP, "--quiet", "--out", str(tmp_path / "x"), "--best-by", "acc"])
    assert exc.value.code == 2 and "--best-by: invalid choice: 'acc'" in capsys.readouterr().err


def test_restore_best_patience_and_best_by_from_a_recipe(tmp_path):
    recipe = """
data: digits
measure_engines: [torch]
stages:
  - {stage: train, name: one, model: mlp, model_kwargs: {hidden: [16]}, epochs: 2,
     restore_best: false, patience: 1, best_by: loss}
  - {stage: train-members, name: many, model: mlp, model_kwargs: {hidden: [8]}, n: 2,
     epochs: 1, restore_best: false, patience: 3}
"""
    run_recipe(recipe, tmp_path, quiet=True)
    cfg = _train_config(tmp_path / "one")
    assert (cfg["restore_best"], cfg["patience"], cfg["best_by"]) == (False, 1, "loss")
    meta = json.loads((tmp_path / "many" / "slimfuse.json").read_text())
    for member in meta["model"]["kwargs"]["members"]:
        rec = next(e for e in member["spec"]["lineage"] if e["stage"] == "train-members")
        assert (rec["config"]["restore_best"], rec["config"]["patience"]) == (False, 3)


def test_a_recipe_logs_what_stacking_chose(tmp_path, caplog):
    recipe = """
data: digits
measure_engines: [torch]
stages:
  - {stage: train-members, name: many, model: mlp, model_kwargs: {hidden: [8]}, n: 2, epochs: 1}
  - {stage: fuse, name: stack, method: stack}
"""
    with caplog.at_level("INFO", logger="slimfuse.fusion"):
        run_recipe(recipe, tmp_path, quiet=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "slimfuse.fusion"]
    assert any(
        line.startswith("stack: meta-learner: ") and "held-out accuracy" in line for line in lines
    ), lines
