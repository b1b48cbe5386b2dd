"""Tabular data: features standardized by the model itself (statistics of the train split,
saved, exported, kept by every stage), stratified splits that follow ``split_seed`` only, and
members or teachers trained on another split refused."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.data import from_arrays, load_data
from slimfuse.errors import DataError, SlimfuseWarning
from slimfuse.models.source import standardized
from slimfuse.pruning import Channels
from slimfuse.quantization.config import QuantConfig
from slimfuse.training import TrainConfig

SCALES = np.logspace(-2, 3, 13)  # feature scales from 0.01 to 1000


def write_wine(path: Path) -> Path:
    """scikit-learn's wine set (178 samples, 3 classes) with features rescaled by 0.01..1000."""
    from sklearn.datasets import load_wine

    d = load_wine()
    x = d.data * SCALES
    lines = [",".join([*(f"f{i}" for i in range(13)), "label"])]
    lines += [
        ",".join([*(f"{v:.7g}" for v in r), str(c)]) for r, c in zip(x, d.target, strict=True)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def wine_csv(tmp_path_factory) -> Path:
    return write_wine(tmp_path_factory.mktemp("wine") / "wine.csv")


@pytest.fixture(scope="module")
def wine(wine_csv):
    return load_data(str(wine_csv))


def fit(data, seed: int = 0, epochs: int = 40, **kw):
    torch.manual_seed(seed)
    model = slimfuse.build_model("mlp", data=data, hidden=[32], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlimfuseWarning)  # wine's validation split is small
        slimfuse.train(model, data, config=TrainConfig(epochs=epochs, lr=1e-2, quiet=True))
    return model


def accuracy(model, data) -> float:
    return slimfuse.evaluate(model, data.loader("test"), "classification")


@pytest.fixture(scope="module")
def wine_mlp(wine):
    return fit(wine)


def test_statistics_come_from_the_train_split_and_inputs_stay_raw(wine):
    x_train = wine.arrays("train")[0].astype(np.float64)
    stats = wine.meta["standardize"]
    np.testing.assert_allclose(stats["mean"], x_train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], x_train.std(0), rtol=1e-6)
    assert wine.arrays("test")[0].max() > 100  # the data gives raw inputs


def test_constant_column_is_only_centred():
    x = np.c_[np.random.default_rng(0).normal(size=(60, 2)), np.full(60, 7.0)]
    data = from_arrays(x, np.arange(60) % 2, standardize=True)
    assert data.meta["standardize"]["std"][2] == 1.0
    model = slimfuse.build_model("mlp", data=data)
    assert torch.isfinite(model(data.example_input(4))).all()


def test_defaults_on_for_files_off_for_builtins_and_flag(wine_csv, digits):
    assert "standardize" not in digits.meta
    assert "standardize" not in load_data(str(wine_csv), standardize=False).meta
    assert not hasattr(slimfuse.build_model("mlp", data=digits), "input_mean")


def test_standardized_model_learns_the_scaled_features(wine, wine_mlp):
    assert accuracy(wine_mlp, wine) >= 0.9


def test_bundle_round_trip_and_onnx_on_raw_inputs(wine, wine_mlp, tmp_path):
    slimfuse.save(wine_mlp, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "slimfuse.json").read_text())
    assert meta["model"]["standardize"] == {"shape": [13]}
    back = slimfuse.load(tmp_path / "b")
    assert torch.equal(back.input_mean, wine_mlp.input_mean)
    assert torch.equal(back.input_std, wine_mlp.input_std)
    x = torch.from_numpy(wine.arrays("test")[0])
    assert torch.equal(back(x), wine_mlp(x))
    path = slimfuse.export(back, wine.example_input(1), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, back(x).detach().numpy(), atol=1e-4)


def test_prune_and_quantize_keep_the_statistics(wine, wine_mlp, tmp_path):
    x = torch.from_numpy(wine.arrays("test")[0])
    pruned = slimfuse.prune(wine_mlp, Channels(channels=0.5), wine)
    assert pruned.net[0].out_features == 16
    assert torch.equal(pruned.input_mean, wine_mlp.input_mean)
    slimfuse.save(pruned, tmp_path / "p")
    assert torch.equal(slimfuse.load(tmp_path / "p")(x), pruned(x))
    q = slimfuse.quantize(wine_mlp, QuantConfig(mode="static"), wine)
    slimfuse.save(q, tmp_path / "q")
    q_back = slimfuse.load(tmp_path / "q")  # an int8 ONNX graph that takes the raw inputs
    same = (q_back(x).argmax(1) == wine_mlp(x).argmax(1)).float().mean().item()
    assert same >= 0.9


def test_own_module_warned_or_wrapped(wine):
    mine = torch.nn.Sequential(torch.nn.Linear(13, 3))
    with pytest.warns(SlimfuseWarning, match="unstandardized"):
        slimfuse.load_model(mine, data=wine)
    standardized(mine, wine)
    x = wine.example_input(4)
    expected = mine[0]((x - wine_mean(wine)) / wine_std(wine))
    torch.testing.assert_close(mine(x), expected)
    assert len(mine) == 1  # no module added: a Sequential still runs its own layers only


def wine_mean(data) -> torch.Tensor:
    return torch.tensor(data.meta["standardize"]["mean"], dtype=torch.float32)


def wine_std(data) -> torch.Tensor:
    return torch.tensor(data.meta["standardize"]["std"], dtype=torch.float32)


def test_weights_without_statistics_leave_inputs_raw(wine, tmp_path):
    """Weights trained elsewhere (no ``input_mean`` / ``input_std``): the model takes the raw
    inputs they were trained on, and says so."""
    trained = fit(wine, epochs=1)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("input_")}
    torch.save(state, tmp_path / "w.pt")
    with pytest.warns(SlimfuseWarning, match="unstandardized"):
        model = slimfuse.load_model("mlp", data=wine, weights=tmp_path / "w.pt", hidden=[32])
    assert not hasattr(model, "input_mean")


def test_stratified_splits_keep_class_proportions():
    y = np.r_[np.zeros(500), np.ones(300), np.full(200, 2), [3]].astype(np.int64)
    x = np.random.default_rng(0).normal(size=(len(y), 4))
    data = from_arrays(x, y, split_seed=5)
    for split, n in (("train", 720), ("val", 80), ("test", 200)):
        counts = np.bincount(data.arrays(split)[1], minlength=4)
        assert abs(counts.sum() - n) <= 1
        np.testing.assert_allclose(counts[:3] / counts.sum(), [0.5, 0.3, 0.2], atol=0.01)
    assert np.bincount(data.arrays("train")[1], minlength=4)[3] == 1  # too rare: stays in train
    plain = from_arrays(x, y, split_seed=5, stratify=False)
    assert not np.array_equal(plain.arrays("test")[1], data.arrays("test")[1])


def test_split_follows_split_seed_only(wine_csv):
    a, b, c = (load_data(str(wine_csv), split_seed=s) for s in (0, 0, 1))
    assert a.meta["split"] == b.meta["split"]
    assert a.meta["split"]["test"] != c.meta["split"]["test"]
    assert np.array_equal(a.arrays("test")[0], b.arrays("test")[0])


def run_train(wine_csv: Path, out: Path, *flags: str) -> dict:
    args = ["train", "--model", "mlp", "--kw", "hidden=[8]", "--data", str(wine_csv)]
    assert main([*args, "--epochs", "1", "--quiet", "--out", str(out), *flags]) == 0
    return json.loads((out / "slimfuse.json").read_text())["model"]


def test_cli_seed_does_not_move_the_split_split_seed_does(wine_csv, tmp_path):
    s0 = run_train(wine_csv, tmp_path / "s0", "--seed", "0")
    s1 = run_train(wine_csv, tmp_path / "s1", "--seed", "1")
    p3 = run_train(wine_csv, tmp_path / "p3", "--split-seed", "3")
    raw = run_train(wine_csv, tmp_path / "raw", "--no-standardize")
    assert s0["split"] == s1["split"] and s0["split"]["split_seed"] == 0
    assert p3["split"]["split_seed"] == 3 and p3["split"]["test"] != s0["split"]["test"]
    assert s0["standardize"] == {"shape": [13]} and raw["standardize"] is None

    # members trained on another split: fuse / merge / distill refuse them, one line, exit 2
    for cmd in (
        ["fuse", "--member", str(tmp_path / "s0"), str(tmp_path / "p3"), "--method", "mean"],
        ["merge", "--member", str(tmp_path / "s0"), str(tmp_path / "p3"), "--method", "uniform"],
        ["distill", "--teacher", str(tmp_path / "p3"), "--student", "mlp", "--epochs", "1"],
    ):
        err = cli_error(cmd, wine_csv, tmp_path)
        assert "p3'" in err  # the member's name, the teacher's folder
        assert f"split wine.csv seed 3 (test {p3['split']['test']}" in err
        assert f"the data here is split seed 0 (test {s0['split']['test']}" in err
        assert "would leak" in err and "--split-seed 3" in err
    # the same command on the members' split runs
    assert main([*FUSE_MEAN(tmp_path, "s0", "s1"), "--data", str(wine_csv), "--quiet"]) == 0


def FUSE_MEAN(tmp_path: Path, *names: str) -> list[str]:
    members = [str(tmp_path / n) for n in names]
    return ["fuse", "--member", *members, "--method", "mean", "--out", str(tmp_path / "f")]


def cli_error(cmd: list[str], wine_csv: Path, tmp_path: Path) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([*cmd, "--data", str(wine_csv), "--quiet", "--out", str(tmp_path / "x")])
    lines = err.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1, err.getvalue()
    return lines[0]


def test_library_verbs_refuse_another_split(wine_csv, wine, wine_mlp):
    other = load_data(str(wine_csv), split_seed=2)
    for call in (
        lambda: slimfuse.fuse([("a", wine_mlp)], None, other),
        lambda: slimfuse.merge([("a", wine_mlp), ("b", wine_mlp)], {"method": "uniform"}, other),
        lambda: slimfuse.distill(wine_mlp, [wine_mlp], None, other),
    ):
        with pytest.raises(DataError, match="would leak"):
            call()
    fused = slimfuse.fuse([("a", wine_mlp), ("b", wine_mlp)])  # no data: records no split
    with pytest.raises(DataError, match=r"member 0 \('f'\) \(its member 'a'\)"):
        slimfuse.fuse([("f", fused)], None, other)
    plain = torch.nn.Sequential(torch.nn.Linear(13, 3))  # records no split: not checked
    slimfuse.fuse([("p", plain)], None, other)


def test_builtin_mnist1d_val_split_moves_test_stays(mnist1d):
    other = load_data("mnist1d", split_seed=1)
    assert other.meta["split"]["test"] == mnist1d.meta["split"]["test"]
    assert other.meta["split"]["val"] != mnist1d.meta["split"]["val"]
    counts = np.bincount(mnist1d.arrays("val")[1])
    assert counts.max() - counts.min() <= 2  # 400 val samples of 10 balanced classes


def test_recipe_split_seed_and_standardize_keys(wine_csv, tmp_path):
    from slimfuse.errors import ConfigError
    from slimfuse.pipeline.recipe import parse_recipe

    stage = "stages: [{stage: train, model: mlp, model_kwargs: {hidden: [8]}, epochs: 1, measure: false}]"
    recipe = f"data: {wine_csv}\nsplit_seed: 2\nmeasure_engines: [torch]\n{stage}\n"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlimfuseWarning)
        slimfuse.run(recipe, tmp_path / "a", quiet=True)
        slimfuse.run(recipe + "data_kwargs: {standardize: false}\n", tmp_path / "b", quiet=True)
    a, b = (
        json.loads((tmp_path / r / "train" / "slimfuse.json").read_text())["model"] for r in "ab"
    )
    assert a["split"]["split_seed"] == 2 and a["standardize"] == {"shape": [13]}
    assert b["split"] == a["split"] and b["standardize"] is None
    with pytest.raises(ConfigError, match="split follows split_seed"):
        parse_recipe(f"data: {wine_csv}\ndata_kwargs: {{seed: 1}}\n{stage}\n")


def test_copies_and_pickles_keep_the_standardization(wine, wine_mlp):
    import copy
    import io

    x = wine.example_input(4)
    buffer = io.BytesIO()
    torch.save(wine_mlp, buffer)  # a whole-model pickle, as a user's own script may write
    buffer.seek(0)
    for other in (copy.deepcopy(wine_mlp), torch.load(buffer, weights_only=False)):
        assert type(other) is type(wine_mlp) and torch.equal(other(x), wine_mlp(x))
