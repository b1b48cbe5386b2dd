"""train-members / fuse / merge / mutual stages, the CLI commands, export parity, teachers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.data import from_arrays
from slimfuse.errors import ConfigError, FusionError
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.head import HeadFusion
from slimfuse.fusion.members import train_members
from slimfuse.fusion.stacking import StackingFusion
from slimfuse.fusion.vote import VoteFusion
from slimfuse.fusion.weighted import WeightedFusion
from slimfuse.training import TrainConfig

RECIPE = """
data: mnist1d
measure_engines: [torch]
stages:
  - stage: train-members
    name: members
    model: mnist1d_cnn
    model_kwargs: {channels: 8}
    n: 2
    epochs: 1
  - stage: fuse
    members: members
    method: weighted
  - stage: merge
    members: members
    method: uniform
  - stage: mutual
    model: mnist1d_cnn
    model_kwargs: {channels: 8}
    epochs: 1
"""


@pytest.mark.filterwarnings("ignore:the uniform soup")  # its members share no parent
def test_recipe_stages_and_bundles(tmp_path, mnist1d):
    result = slimfuse.run(RECIPE, tmp_path / "run", quiet=True)
    assert [r["stage"] for r in result["stages"]] == ["members", "fuse", "merge", "mutual"]
    x = mnist1d.example_input(4)
    for name, kind in [("members", MeanFusion), ("fuse", MeanFusion), ("mutual", MeanFusion)]:
        model = slimfuse.load(tmp_path / "run" / name)
        assert isinstance(model, kind) and len(model.names) == 2
        assert model(x).shape == (4, 10)
    merged = slimfuse.load(tmp_path / "run" / "merge")
    assert merged.conv1.weight.shape == (8, 1, 5)


def test_kfold_members_and_too_little_data():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 4
    data = from_arrays(x, y, x[:4], y[:4], val_fraction=0.25)
    cfg = TrainConfig(epochs=1, quiet=True)
    out = train_members("mlp", data, kfold=3, config=cfg)
    assert [n for n, _ in out.pairs] == ["fold0", "fold1", "fold2"]
    held = np.sort(np.concatenate(out.fold_indices))
    assert np.array_equal(held, np.arange(30))
    with pytest.raises(
        FusionError,
        match=r"^10 folds need at least 10 samples of every class; in the training data "
        r"\(30 samples\) class \d has [6-9]$",
    ):
        train_members("mlp", data, kfold=10, config=cfg)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, members):
    root = tmp_path_factory.mktemp("members")
    return [str(slimfuse.save(m, root / n)) for n, m in members[:2]]


def test_cli_fuse_and_merge(bundles, tmp_path, capsys):
    args = ["--data", "mnist1d", "--quiet"]
    fuse = ["fuse", "--member", bundles[0], "--member", bundles[1], *args]
    assert main([*fuse, "--method", "soft-vote", "--out", str(tmp_path / "f")]) == 0
    assert isinstance(slimfuse.load(tmp_path / "f"), VoteFusion)
    assert main([*fuse, "--weights", "1", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["slimfuse fuse: error: 1 weights for 2 members: expected one weight per member"]
    assert main([*fuse, "--method", "weighted", "--shrink", "1", "--out", str(tmp_path / "w")]) == 0
    np.testing.assert_allclose(slimfuse.load(tmp_path / "w").weights.numpy(), [0.5, 0.5])
    names = [Path(b).name for b in bundles]
    shown = f"weights: {names[0]} 0.500, {names[1]} 0.500 (shrink 1.00)"
    assert capsys.readouterr().out.splitlines()[0] == f"{shown}; fitted on 400 validation samples"
    # cross-validated weights: both members retrained on 2 folds of train, one epoch each
    cv = ["--method", "weighted", "--cv", "2", "--epochs", "1", "--out", str(tmp_path / "c")]
    assert main([*fuse, *cv]) == 0
    assert re.match(
        r"weights: .*; fitted on 3600 out-of-fold predictions\n", capsys.readouterr().out
    )
    given = [
        "--method",
        "weighted",
        "--weights",
        "1",
        "1",
        "--cv",
        "2",
        "--out",
        str(tmp_path / "x"),
    ]
    assert main([*fuse, *given]) == 2
    assert capsys.readouterr().err.strip() == (
        "slimfuse fuse: error: cv 2 learns the weights, but weights were given: expected one of them"
    )
    assert main([*fuse, "--method", "stack", "--meta-c", "0.5", "--out", str(tmp_path / "s")]) == 0
    assert isinstance(slimfuse.load(tmp_path / "s"), StackingFusion)
    assert re.match(
        r"meta-learner: logistic regression, C 0\.5; fitted on 400 predictions; held-out "
        r"accuracy 0\.\d{4}\n",
        capsys.readouterr().out,
    )
    assert main([*fuse, "--method", "stack", "--with-val", "--out", str(tmp_path / "v")]) == 2
    assert "with_val adds the validation predictions" in capsys.readouterr().err
    merge = ["merge", "--member", *bundles, *args]  # one --member with a list works too
    assert main([*merge, "--method", "uniform", "--out", str(tmp_path / "m")]) == 0
    shown = capsys.readouterr()
    assert shown.out.startswith(f"merged {', '.join(names)} (uniform, 2 of 2); val 0.")
    # members trained from different inits: one line on stderr, no file/line/source of a warning
    assert shown.err.startswith("slimfuse merge: warning: the uniform soup scores 0.")
    assert "UserWarning" not in shown.err
    assert main([*merge, "--method", "greedy", "--out", str(tmp_path / "g")]) == 0
    assert re.match(r"merged \S+.* \(greedy, [12] of 2\); val 0\.\d{4}\n", capsys.readouterr().out)
    assert main(["fuse", *args, "--out", str(tmp_path / "e")]) == 2
    assert "no members given" in capsys.readouterr().err
    assert main([*merge, "--method", "ties", "--out", str(tmp_path / "t")]) == 2
    assert "--method ties needs --parent MODEL" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fuse", "merge", "distill"])
def test_a_member_that_does_not_fit_the_data_is_named(command, bundles, tmp_path, capsys):
    models = (
        ["--teacher", *bundles, "--student", "mlp"]
        if command == "distill"
        else ["--member", *bundles]
    )
    argv = [command, *models, "--data", "digits", "--out", str(tmp_path / "x"), "--quiet"]
    assert main(argv) == 2
    role = "teacher" if command == "distill" else "member"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"slimfuse {command}: error: digits: inputs have shape (64,) per sample but "
        f"{role} {bundles[0]!r} expects (40,)"
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--method", "mean", "--cv", "5"],
            "--cv does not apply to --method 'mean'; it is for weighted, stack",
        ),
        (
            ["--method", "stack", "--weights", "1", "2"],
            "--weights does not apply to --method 'stack'; it is for mean, weighted, vote, soft-vote",
        ),
        (
            ["--method", "weighted", "--on", "features"],
            "--on does not apply to --method 'weighted'; it is for head",
        ),
        (
            ["--method", "vote", "--epochs", "3"],
            "--epochs does not apply to --method 'vote'; it is for weighted, stack, head",
        ),
        (
            ["--method", "weighted", "--epochs", "3"],
            "--epochs applies to the methods that train: weighted and stack with --cv K (every "
            "member retrained per fold), head; got --method 'weighted' with --cv prefit",
        ),
        (
            ["--method", "head", "--hidden", "-1"],
            "--hidden -1: Input should be greater than or equal to 0",
        ),
    ],
)
def test_a_flag_the_method_does_not_read_is_an_error(flags, message, bundles, capsys):
    argv = ["fuse", "--member", *bundles, "--data", "mnist1d", "--out", "x", *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"slimfuse fuse: error: {message}"]


def test_a_recipe_key_the_method_does_not_read_is_an_error(tmp_path):
    text = RECIPE.split("  - stage: merge")[0].replace(
        "method: weighted", "method: mean\n    hidden: 8"
    )
    with pytest.raises(
        ConfigError,
        match=r"^recipe: stage 'fuse' \(fuse\): hidden does not apply to method 'mean'; "
        r"it is for head$",
    ):
        slimfuse.run(text, tmp_path / "run", quiet=True)


INPUT_IS_OUT = {
    "fuse": ["--member", "B", "B1"],
    "merge": ["--member", "B1", "B"],
    "distill": ["--teacher", "B", "--student", "mlp"],
    "train": ["--model", "B"],
    "prune": ["--model", "B", "--channels", "0.5"],
    "quantize": ["--model", "B"],
}


@pytest.mark.parametrize("command", sorted(INPUT_IS_OUT))
def test_out_may_not_replace_an_input_bundle(command, bundles, tmp_path, capsys):
    import shutil

    bundle = shutil.copytree(bundles[0], tmp_path / "b")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    given = [{"B": str(bundle), "B1": bundles[1]}.get(a, a) for a in INPUT_IS_OUT[command]]
    assert main([command, *given, "--data", "mnist1d", "--out", str(bundle), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"slimfuse {command}: error: --out {bundle} is the input bundle {str(bundle)!r}: "
        "writing there would replace it; expected another folder"
    ]
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before


def test_every_fused_model_exports_with_parity(members, mnist1d, tmp_path):
    from slimfuse.exporting import check_parity

    cfg = TrainConfig(epochs=1, lr=1e-3, quiet=True)
    fused = {
        "mean-probs": MeanFusion(members),
        "mean-logits": MeanFusion(members, space="logits"),
        "weighted": WeightedFusion(members).fit(mnist1d),
        "hard-vote": VoteFusion(members),
        "soft-vote": VoteFusion(members, voting="soft"),
        "stack": StackingFusion(members).fit(mnist1d),
        "head": HeadFusion(members, on="both").fit(mnist1d, config=cfg),
    }
    x = mnist1d.example_input(1)
    for name, model in fused.items():
        # the TorchScript exporter keeps this test fast; test_ensemble and the benchmark's cost
        # table export through the default (dynamo) path
        path = slimfuse.export(model, x, tmp_path / f"{name}.onnx", dynamo=False)
        assert check_parity(model, path, mnist1d.example_input(200)) <= 1e-4, name


def test_a_fused_model_is_a_distillation_teacher(members, mnist1d):
    teacher = StackingFusion(members).fit(mnist1d)
    student = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=4)
    before = student.conv1.weight.clone()
    trained = slimfuse.distill(
        student, teacher, None, mnist1d, train=TrainConfig(epochs=1, quiet=True)
    )
    assert not torch.equal(before, trained.conv1.weight)
