from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import slimfuse
from slimfuse.cli import main
from tests.helpers import ROOT, TRAIN_MLP, run_cli


def test_import_slimfuse_and_cli_stay_light():
    """``slimfuse --help`` (the parser of every command) imports no torch: it answers at once."""
    heavy = "('torch', 'transformers', 'onnxruntime', 'onnx', 'sklearn', 'scipy', 'matplotlib')"
    code = (
        "import sys, slimfuse, slimfuse.cli; slimfuse.cli.build_parser()\n"
        f"heavy = [m for m in {heavy} if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_env_prints_versions_and_cpu_flags(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch 2." in out and "avx512_vnni=" in out


def test_train_eval_export_round_trip(tmp_path, capsys):
    out = tmp_path / "m"
    assert main([*TRAIN_MLP, "--quiet", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    assert (
        main(
            [
                "eval",
                "--model",
                str(out),
                "--data",
                "digits",
                "--json",
                "--out",
                str(tmp_path / "metrics.json"),
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out.split("\n", 2)[-1])
    assert {r["engine"] for r in rows} == {"torch", "onnxruntime"}
    assert (
        main(["export", "--model", str(out), "--data", "digits", "--out", str(tmp_path / "m.onnx")])
        == 0
    )
    assert "max abs diff" in capsys.readouterr().out


PRUNE_MLP = ["prune", "--model", "mlp", "--data", "digits", "--out", "x"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["eval", "--model", "mnist1d_cnn", "--data", "nope.csv"],
            "data file 'nope.csv' not found",
        ),
        (
            ["eval", "--model", "mnist1d_cnn", "--kw", "in_length=40", "--data", "digits"],
            "inputs of shape (64,) per sample do not fit the model",
        ),
        (["eval", "--model", "resnet", "--data", "digits"], "unknown model 'resnet'"),
        (
            ["train", "--model", "mlp", "--data", "digits", "--lr", "-1", "--out", "x"],
            "--lr -1: Input should be greater than 0",
        ),
        (["run", "missing.yaml", "--out", "x"], "recipe 'missing.yaml' not found"),
        (
            [*PRUNE_MLP, "--sparsity", "0.5", "--importance", "taylor"],
            "--importance does not apply to --method 'magnitude'; it is for channels, transformer",
        ),
        (
            [*PRUNE_MLP, "--sparsity", "0.5", "--iterative-steps", "3"],
            "--iterative-steps does not apply to --method 'magnitude'; it is for channels",
        ),
        (
            [
                "quantize",
                "--model",
                "mlp",
                "--data",
                "digits",
                "--out",
                "x",
                "--mode",
                "dynamic",
                "--calibration",
                "entropy",
            ],
            "--calibration does not apply to --mode 'dynamic'; it is for static, qat",
        ),
        (
            ["merge", "--member", "a", "b", "--data", "digits", "--out", "x", "--density", "0.5"],
            "--density does not apply to --method 'greedy'; it is for ties",
        ),
        (
            ["eval", "--model", "mlp", "--data", "digits", "--out", "."],
            "--out . is a folder: expected the path of a metrics .json file to write",
        ),
        (
            ["export", "--model", "mlp", "--data", "digits", "--out", "."],
            "--out . is a folder: expected the path of an .onnx file to write",
        ),
    ],
)
def test_bad_input_one_line_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


TRAINING_COMMANDS = {
    "train": ["--model", "mlp"],
    "distill": ["--teacher", "t", "--student", "mlp"],
    "fuse": ["--member", "a", "b", "--method", "head"],
}


@pytest.mark.parametrize("command", sorted(TRAINING_COMMANDS))
def test_training_flags_build_the_config_a_recipe_would(command):
    from slimfuse.cli import build_parser
    from slimfuse.cli.common import train_config_arg
    from slimfuse.pipeline.stages import TrainingStageConfig

    keys = dict(epochs=3, batch_size=7, lr=0.5, optimizer="sgd", weight_decay=0.1)
    keys.update(schedule="constant", patience=2, group_by_length=True)
    argv = [command, "--data", "digits", "--out", "x", "--quiet", "--group-by-length"]
    argv += TRAINING_COMMANDS[command]
    argv += ["--epochs", "3", "--batch-size", "7", "--lr", "0.5", "--optimizer", "sgd"]
    argv += ["--weight-decay", "0.1", "--schedule", "constant", "--patience", "2"]
    args = build_parser().parse_args(argv)
    expect = TrainingStageConfig(**keys).to_train_config(seed=args.seed, quiet=True)
    assert train_config_arg(args) == expect and expect.schedule == "constant"


def test_fuse_training_defaults_are_the_fuse_stage_defaults():
    from types import SimpleNamespace

    from slimfuse.cli import build_parser
    from slimfuse.cli.fuse import fuse_config_from_flags
    from slimfuse.pipeline.fuse import FuseStage

    argv = ["fuse", "--member", "a", "--data", "digits", "--out", "x", "--quiet"]
    argv += ["--method", "head"]
    args = build_parser().parse_args(argv)
    stage = FuseStage.parse({"method": "head"})
    expect = stage.train_config(SimpleNamespace(seed=args.seed, quiet=True))
    cfg, got = fuse_config_from_flags(args)
    assert cfg == stage.method and got == expect and (expect.epochs, expect.lr) == (10, 1e-3)


def test_debug_shows_the_traceback():
    proc = run_cli("eval", "--model", "mnist1d_cnn", "--data", "nope.csv", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_torchrun_ddp_matches_single_process(tmp_path):
    common = [
        "--model",
        "mlp",
        "--data",
        "digits",
        "--epochs",
        "40",
        "--lr",
        "0.003",
        "--quiet",
        "--seed",
        "0",
        "--batch-size",
        "64",
    ]
    single = run_cli("train", *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        "-m",
        "slimfuse",
        "train",
        *common,
        "--out",
        str(tmp_path / "ddp"),
    ]
    ddp = subprocess.run(
        torchrun,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    acc = {}
    for name in ("one", "ddp"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        acc[name] = metrics["stages"][0]["metric_value"]
    assert acc["one"] > 0.9
    assert abs(acc["one"] - acc["ddp"]) <= 0.01, acc
    # the two processes take the steps of one process with the whole batch: the same weights
    # up to float summation order (measured: 1.8e-4 after 40 epochs)
    one, two = (slimfuse.load(tmp_path / n).state_dict() for n in ("one", "ddp"))
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=2e-3, rtol=0)


def test_task_defaults_to_the_one_the_model_records():
    import argparse

    from slimfuse.cli.common import resolve_task
    from tests.helpers import TINY_BERT

    encoder = slimfuse.build_model("hf_encoder", config=TINY_BERT)
    mlp = slimfuse.build_model("mlp", in_features=4, num_classes=3)
    assert resolve_task(argparse.Namespace(task=None), encoder) == "embedding"
    assert resolve_task(argparse.Namespace(task=None), mlp) == "classification"
    given = argparse.Namespace(task="regression")
    assert resolve_task(given, encoder) == "regression" and given.task == "regression"


def test_a_closed_stdout_pipe_ends_quietly():
    """``slimfuse ... | head -1``: the reader goes away; no traceback, the shell's SIGPIPE code."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "slimfuse", "env"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the command has printed anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
