"""`slimfuse distill`, the `distill` recipe stage (a teacher -> assistant -> student chain), the verb."""

from __future__ import annotations

import json
import re

import pytest
import torch

import slimfuse
from slimfuse.cli import main


@pytest.fixture(scope="module")
def teacher_bundle(tmp_path_factory, trained_cnn):
    return slimfuse.save(trained_cnn, tmp_path_factory.mktemp("t") / "teacher")


def test_cli_distill_writes_a_reloadable_student(tmp_path, teacher_bundle, capsys) -> None:
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(teacher_bundle), "--teacher", str(teacher_bundle)]
    args += [str(teacher_bundle)]  # a list after one --teacher adds to it
    args += ["--student", "mnist1d_cnn", "--kw", "channels=6", "--data", "mnist1d"]
    args += ["--epochs", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert "distilled 3 teacher(s)" in capsys.readouterr().out
    student = slimfuse.load(out)
    assert student.conv1.out_channels == 6
    lineage = json.loads((out / "slimfuse.json").read_text())["model"]["lineage"]
    assert lineage[-1]["stage"] == "distill" and lineage[-1]["teachers"] == 3


def test_cli_bad_input_is_one_line(tmp_path, teacher_bundle, capsys) -> None:
    base = ["distill", "--data", "mnist1d", "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*base, "--student", "mnist1d_cnn"]) == 2
    assert "no --teacher given; expected at least one teacher model" in capsys.readouterr().err
    bad_t = [*base, "--teacher", str(teacher_bundle), "--student", "mnist1d_cnn"]
    assert main([*bad_t, "--temperature", "0"]) == 2
    assert (
        capsys.readouterr().err.strip().endswith("--temperature 0: Input should be greater than 0")
    )
    assert not (tmp_path / "x").exists()
    assert main([*base, "--teacher", str(teacher_bundle)]) == 2
    err = capsys.readouterr().err
    assert (
        "give either a student model or student_from_teacher" in err and len(err.splitlines()) == 1
    )


def test_recipe_chain_teacher_assistant_student(tmp_path) -> None:
    recipe = """
data: digits
task: classification
seed: 0
measure_engines: [torch]
stages:
  - stage: train
    name: teacher
    model: mlp
    model_kwargs: {hidden: [64, 64]}
    epochs: 8
  - stage: distill
    name: assistant
    teachers: [teacher]
    student_from_teacher: {width: 0.5}
    epochs: 2
  - stage: distill
    name: student
    teachers: [assistant, teacher]
    student: mlp
    student_kwargs: {hidden: [16]}
    epochs: 8
    temperature: 2.0
"""
    result = slimfuse.run(recipe, tmp_path / "run", quiet=True)
    names = [r["stage"] for r in result["stages"]]
    assert names == ["teacher", "assistant", "student"]
    params = {r["stage"]: r["params"] for r in result["stages"]}
    assert params["student"] < params["assistant"] < params["teacher"]
    acc = {r["stage"]: r["metric_value"] for r in result["stages"]}
    assert acc["student"] > 0.5  # 10 classes: far above chance
    back = slimfuse.load(tmp_path / "run" / "assistant")
    x = torch.rand(3, 64)
    assert back(x).shape == (3, 10)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--loss", "mse", "--temperature", "2"],
            "--temperature does not apply to --loss 'mse'; it is for kd, hint",
        ),
        (
            ["--loss", "cosine", "--temperature", "8"],
            "--temperature does not apply to --loss 'cosine'; it is for kd, hint",
        ),
        (["--hint-metric", "cosine"], "hint_metric does not apply without hints"),
        (
            ["--ensemble-space", "logits"],
            "ensemble_space does not apply to one teacher; it is for an ensemble",
        ),
    ],
)
def test_cli_refuses_an_option_the_loss_does_not_read(
    tmp_path, teacher_bundle, capsys, flags, message
) -> None:
    argv = ["distill", "--data", "mnist1d", "--out", str(tmp_path / "x"), "--quiet"]
    argv += ["--teacher", str(teacher_bundle), "--student", "mnist1d_cnn", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_cli_flags_are_the_configs_fields() -> None:
    from slimfuse.cli import build_parser
    from slimfuse.distillation.config import DistillConfig, Hint
    from slimfuse.training import TrainConfig

    argv = ["distill", "--teacher", "a", "b", "--student", "mlp", "--data", "digits"]
    argv += ["--out", "x", "--loss", "hint", "--hint", "conv2=conv3", "0=1", "--hint", "a.b=c"]
    argv += ["--hint-weight", "0.5", "--no-cache", "--ensemble-weights", "1", "3", "--epochs", "2"]
    args = build_parser().parse_args(argv)
    cfg, train = DistillConfig.from_flags(args, seed=args.seed, quiet=True)
    hints = {"conv2": "conv3", "0": "1", "a.b": "c"}
    assert cfg == Hint(hints=hints, hint_weight=0.5, cache=False, ensemble_weights=(1, 3))
    assert train == TrainConfig(epochs=2, seed=args.seed, quiet=True)
    assert args.teacher == ["a", "b"]


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            "loss: mse, temperature: 2",
            "temperature does not apply to loss 'mse'; it is for kd, hint",
        ),
        (
            "loss: cosine, temperature: 8",
            "temperature does not apply to loss 'cosine'; it is for kd, hint",
        ),
        ("hint_weight: 0.5", "hint_weight does not apply without hints"),
        ("teachers: [t], ensemble_space: logits", "ensemble_space does not apply to one teacher"),
        ("loss: kl", "loss 'kl': expected one of kd, mse, cosine, hint"),
        (
            "student_kwargs: {channels: 4}, student: null, student_from_teacher: {depth: 1}",
            "student_kwargs does not apply to student_from_teacher",
        ),
        ("student_from_teacher: {depth: 1}", "give either a student model or student_from_teacher"),
    ],
)
def test_recipe_refuses_an_option_the_loss_does_not_read(keys, message) -> None:
    from slimfuse.errors import ConfigError
    from slimfuse.pipeline.recipe import parse_recipe

    text = f"stages: [{{stage: distill, student: mlp, {keys}}}]"
    with pytest.raises(ConfigError, match=re.escape(f"stage 'distill' (distill): {message}")):
        parse_recipe(text)


def test_recipe_stage_keys_are_the_configs_and_the_training_keys() -> None:
    from slimfuse.distillation.config import KD
    from slimfuse.pipeline.distill import DistillStage

    stage = DistillStage.parse(
        {
            "teachers": ["ensemble"],
            "student": "mnist1d_cnn",
            "epochs": 150,
            "temperature": 4,
            "alpha": 0.9,
        }
    )
    assert stage.method == KD(temperature=4, alpha=0.9)
    assert stage._train == {"epochs": 150}
    assert stage.to_dict()["temperature"] == 4.0 and stage.to_dict()["epochs"] == 150


def test_public_verb_trains_a_copy_and_leaves_the_callers_models(mnist1d, trained_cnn) -> None:
    from slimfuse.distillation import KD
    from slimfuse.training import TrainConfig

    torch.manual_seed(0)
    student = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=4).train()
    other = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=6)
    teachers = [trained_cnn.train(), other.eval()]  # one in train mode, one in eval mode
    student.conv1.weight.requires_grad_(False)  # the caller's choices stay as they are
    state = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    before = [state(m) for m in (student, *teachers)]
    grads = [[p.requires_grad for p in m.parameters()] for m in (student, *teachers)]
    out = slimfuse.distill(
        student, teachers, KD(temperature=2), mnist1d, train=TrainConfig(epochs=1, quiet=True)
    )
    assert out is not student and not out.training
    assert not torch.equal(out.conv2.weight, student.conv2.weight)  # the copy trained
    assert torch.equal(out.conv1.weight, student.conv1.weight)  # frozen in the copy too
    assert [student.training, trained_cnn.training, other.training] == [True, True, False]
    for m, b, g in zip((student, *teachers), before, grads, strict=True):
        assert all(torch.equal(b[k], v) for k, v in m.state_dict().items())
        assert [p.requires_grad for p in m.parameters()] == g
    trained_cnn.eval()
