"""Regression end to end: standardized targets that travel with the model, MSE / MAE / R² in
the targets' units, fusion by mean, weights and anchored ridge stacking, bundles and ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.data import from_arrays
from slimfuse.errors import FusionError
from slimfuse.fusion import train_members
from slimfuse.fusion.stacking import StackingFusion
from slimfuse.tasks import scores
from slimfuse.training import TrainConfig

TRAIN = TrainConfig(epochs=40, lr=3e-3, batch_size=32, quiet=True)


@pytest.fixture(scope="module")
def diabetes():
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)  # whole-number targets: amounts, not classes
    return from_arrays(x, y, name="diabetes", standardize=True, task="regression")


@pytest.fixture(scope="module")
def members(diabetes):
    kw = {"hidden": [32]}
    return train_members(
        "mlp", diabetes, n=3, config=TRAIN, task="regression", model_kwargs=kw
    ).pairs


def test_targets_are_standardized_inside_the_model_and_reported_in_their_units(diabetes, members):
    assert diabetes.num_classes is None and diabetes.meta["targets"] == 1
    stats = diabetes.meta["standardize_targets"]
    y_train = diabetes.arrays("train")[1]
    assert stats["mean"][0] == pytest.approx(y_train.mean()) and stats["std"][0] > 50
    model = members[0][1]
    assert slimfuse.models.source.spec_of(model).task == "regression"
    x, y = diabetes.arrays("test")
    pred = model(torch.from_numpy(x)).detach().numpy().ravel()
    assert abs(pred.mean() - y.mean()) < 30  # the targets' units (about 150), not standardized
    s = scores(model, diabetes.loader("test"), "regression")
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    assert s["mse"] == pytest.approx(mean_squared_error(y, pred), rel=1e-4)
    assert s["mae"] == pytest.approx(mean_absolute_error(y, pred), rel=1e-4)
    assert s["r2"] == pytest.approx(r2_score(y, pred), abs=1e-4) and s["r2"] > 0.3
    row = slimfuse.measure(model, diabetes, "regression", engines=["torch"], budget_s=0.01)[0]
    assert row["metric"] == "mse" and row["metric_value"] == pytest.approx(s["mse"])
    assert row["r2"] == pytest.approx(s["r2"]) and row["mae"] == pytest.approx(s["mae"])


def test_regression_fusion_mean_weighted_and_ridge_stacking(diabetes, members, tmp_path):
    loader = diabetes.loader("test")
    alone = [scores(m, loader, "regression")["r2"] for _, m in members]
    mean = slimfuse.fuse(members, {"method": "mean"}, diabetes, task="regression")
    assert mean.space == "logits"  # the mean prediction, not a mean of probabilities
    r2_mean = scores(mean, loader, "regression")["r2"]
    assert r2_mean >= min(alone)
    weighted = slimfuse.fuse(members, {"method": "weighted"}, diabetes, task="regression")
    assert abs(weighted.weights_.sum() - 1) < 1e-6 and scores(weighted, loader, "regression")
    stack = slimfuse.fuse(members, {"method": "stack"}, diabetes, task="regression")
    assert isinstance(stack, StackingFusion) and stack.task_ == "regression"
    assert stack.features == "logits" and set(stack.C_curve_) >= {0.0}
    r2_stack = scores(stack, loader, "regression")["r2"]
    assert r2_stack > 0.3
    # save / load / export: the same predictions, in the targets' units
    x = diabetes.example_input(16)
    back = slimfuse.load(slimfuse.save(stack, tmp_path / "stack"))
    torch.testing.assert_close(back(x), stack(x))
    path = slimfuse.export(back, x, tmp_path / "stack.onnx")
    rows = slimfuse.measure(path, diabetes, "regression", budget_s=0.01)
    assert rows[0]["engine"] == "onnxruntime"
    assert rows[0]["r2"] == pytest.approx(r2_stack, abs=1e-4)
    with pytest.raises(FusionError, match=r"^method 'vote' votes for classes"):
        slimfuse.fuse(members, {"method": "vote"}, diabetes, task="regression")
    with pytest.raises(FusionError, match=r"^space 'probs' averages probabilities"):
        slimfuse.fuse(members, {"method": "mean", "space": "probs"}, diabetes, task="regression")


def test_ridge_stacking_falls_back_to_the_mean_and_learns_a_correction_when_it_pays():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(240, 2, generator=g) * torch.tensor([50.0, 2.0]) + torch.tensor([150.0, 5.0])
    noise = torch.tensor([10.0, 0.4])  # the same share of each target's spread
    noisy = torch.stack([y + torch.randn(240, 2, generator=g) * noise for _ in range(3)])
    pairs = [(f"m{i}", torch.nn.Linear(2, 2)) for i in range(3)]
    stack = StackingFusion(pairs, features="logits").fit_meta(noisy, y, task="regression")
    assert stack.C_ == 0.0  # equal, independent errors: the mean is as good as it gets
    biased = noisy.clone()
    biased[0] = biased[0] * 0.5 + 40  # one member off by a scale: a correction pays
    stack = StackingFusion(pairs, features="logits").fit_meta(biased, y, task="regression")
    assert stack.C_ > 0 and stack.cv_score_ > stack.C_curve_[0.0][1] + 0.05


def test_multi_output_targets_train_fuse_and_export(tmp_path):
    from sklearn.datasets import load_linnerud

    x, y = load_linnerud(return_X_y=True)  # 20 samples, 3 targets in their own units
    data = from_arrays(x, y, name="linnerud", standardize=True, val_fraction=0.25)
    assert data.meta["targets"] == 3 and len(data.meta["standardize_targets"]["std"]) == 3
    cfg = TrainConfig(epochs=30, lr=3e-3, batch_size=8, quiet=True)
    with pytest.warns(slimfuse.errors.SlimfuseWarning, match="validation split has 4 samples"):
        members = train_members("mlp", data, n=2, config=cfg, task="regression").pairs
    out = members[0][1](data.example_input(4))
    assert out.shape == (4, 3)
    with pytest.warns(slimfuse.errors.SlimfuseWarning):  # so do the fold models
        stack = slimfuse.fuse(
            members, {"method": "stack", "cv": 3, "meta_cv": 3}, data, task="regression"
        )
    assert stack.meta_samples_ == len(data.train)
    # the fold models standardize with their own folds' statistics (a rebuild holds
    # placeholders): their out-of-fold predictions are in the targets' units
    y_train = data.arrays("train")[1]
    oof = stack.oof_outputs_.mean(0).numpy()
    assert np.all(np.abs(oof.mean(0) - y_train.mean(0)) < y_train.std(0))
    # the folds retrained each member with its own recorded training settings
    assert [c["epochs"] for c in stack.slimfuse_spec.lineage[-1]["train"]] == [30, 30]
    s = scores(stack, data.loader("test"), "regression")
    assert np.isfinite([s["mse"], s["mae"], s["r2"]]).all()
    back = slimfuse.load(slimfuse.save(stack, tmp_path / "s"))
    xb = data.example_input(4)
    torch.testing.assert_close(back(xb), stack(xb))
    slimfuse.export(back, xb, tmp_path / "s.onnx")


def test_a_regression_csv_from_the_command_line(tmp_path, capsys):
    import json

    from sklearn.datasets import load_diabetes

    from slimfuse.cli import main

    x, y = load_diabetes(return_X_y=True)
    rows = [",".join([*(f"f{i}" for i in range(10)), "target"])]
    rows += [",".join([*(f"{v:.6g}" for v in r), f"{t:g}"]) for r, t in zip(x, y, strict=True)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = ["--data", str(tmp_path / "d.csv"), "--label-column", "target", "--task", "regression"]
    out = tmp_path / "m"
    assert (
        main(["train", "--model", "mlp", *data, "--epochs", "20", "--quiet", "--out", str(out)])
        == 0
    )
    assert "test mse " in capsys.readouterr().out
    assert main(["eval", "--model", str(out), *data, "--engine", "onnxruntime", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert row["metric"] == "mse" and 0.2 < row["r2"] < 1 and row["mae"] > 10  # its own units
    # the bundle records its task: its whole-number targets read as amounts without --task
    plain = data[:-2]
    assert main(["eval", "--model", str(out), *plain, "--engine", "onnxruntime", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["metric_value"] == row["metric_value"]
