"""`slimfuse distill`, the `distill` recipe stage (a teacher -> assistant -> student chain), the verb."""

from __future__ import annotations

import json

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
    assert capsys.readouterr().err.strip().endswith("temperature 0.0: expected a number > 0")
    assert main([*bad_t, "--loss", "mse", "--temperature", "2"]) == 2
    err = capsys.readouterr().err
    assert "temperature=2.0 does not apply to loss 'mse'" in err and len(err.splitlines()) == 1
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


def test_public_verb(mnist1d, trained_cnn) -> None:
    from slimfuse.training import TrainConfig

    student = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=4)
    out = slimfuse.distill(
        student, trained_cnn, mnist1d, train_config=TrainConfig(epochs=1, quiet=True)
    )
    assert out is student and not out.training
