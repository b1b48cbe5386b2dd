"""Quantized bundles reload in a fresh process; the recipe stage and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.quantization import QuantConfig, quantize
from tests.helpers import run_cli

CHECK = """
import sys, torch, slimfuse
m = slimfuse.load(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
print(float(m(x).double().sum()))
print(type(m).__name__)
"""


@pytest.mark.parametrize("mode", ["static", "weight-only"])
def test_bundle_reloads_and_runs_in_fresh_process(tmp_path, trained_cnn, mnist1d, mode) -> None:
    cfg = QuantConfig(mode=mode, bits=4) if mode == "weight-only" else QuantConfig(mode=mode)
    q = quantize(
        trained_cnn,
        cfg,
        calibration=mnist1d.loader("train", batch_size=64) if mode == "static" else None,
    )
    folder = slimfuse.save(q, tmp_path / mode)
    x = mnist1d.example_input(16)
    torch.save(x, tmp_path / "x.pt")
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(folder), str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    total, kind = out.stdout.split()
    with torch.no_grad():
        expected = float(q(x).double().sum())
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert kind == ("QuantizedModel" if mode == "static" else type(trained_cnn).__name__)
    meta = json.loads((folder / "slimfuse.json").read_text())
    assert meta["model"]["edits"][-1]["kind"] == (
        "quantized_graph" if mode == "static" else "weight_only"
    )


def test_export_of_quantized_model_writes_the_int8_graph(tmp_path, trained_cnn, mnist1d) -> None:
    q = quantize(trained_cnn, QuantConfig(mode="static"), calibration=mnist1d.loader("train"))
    path = slimfuse.export(q, mnist1d.example_input(1), tmp_path / "q.onnx")
    assert path.read_bytes() == q.graph_bytes()
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_quantize_stage_in_a_recipe(tmp_path) -> None:
    recipe = """
data: mnist1d
threads: 1
measure_engines: [onnxruntime]
stages:
  - stage: train
    model: mnist1d_cnn
    epochs: 2
  - stage: quantize
    name: int8
    mode: static
    calibration: entropy
    calibration_batches: 2
"""
    result = slimfuse.run(recipe, tmp_path / "run", quiet=True)
    rows = {r["stage"]: r for r in result["stages"]}
    assert rows["int8"]["onnx_bytes"] < rows["train"]["onnx_bytes"]
    assert abs(rows["int8"]["metric_value"] - rows["train"]["metric_value"]) < 0.05
    again = slimfuse.load(tmp_path / "run" / "int8")
    assert again(torch.zeros(1, 40)).shape == (1, 10)


def test_cli_quantize_and_its_errors(tmp_path, trained_cnn) -> None:
    src = slimfuse.save(trained_cnn, tmp_path / "cnn")
    ok = run_cli(
        "quantize", "--model", str(src), "--data", "mnist1d", "--mode", "weight-only",
        "--bits", "4", "--out", str(tmp_path / "int4"), "--quiet",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "weight SQNR (dB): conv1" in ok.stdout
    bad = run_cli(
        "quantize", "--model", "gru", "--data", "mnist1d", "--mode", "weight-only",
        "--bits", "4", "--targets", "type:GRU", "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "slimfuse quantize: error: int4 weight-only asked for layer 'gru' (GRU); int4 takes "
        "Linear, Conv1d and Conv2d layers: drop it from the targets or add it to ignore"
    ]


def test_cli_mixed_precision_shows_progress_and_a_missed_budget(tmp_path) -> None:
    from slimfuse.cli import main

    assert main(["train", "--model", "mlp", "--data", "mnist1d", "--epochs", "3",
                 "--out", str(tmp_path / "m"), "--quiet"]) == 0  # fmt: skip
    run = run_cli(
        "quantize", "--model", str(tmp_path / "m"), "--data", "mnist1d", "--mode", "static",
        "--max-drop", "0", "--calibration-batches", "2", "--held-out-batches", "8",
        "--out", str(tmp_path / "q"),
    )  # fmt: skip  # checked on the whole validation split (400 samples); static int8 of this
    # 3-epoch MLP still drops 3 of them with only one layer int8 (dynamic drops none there)
    assert run.returncode == 0, run.stderr
    err = run.stderr.splitlines()
    assert [line.split(":")[0] for line in err if line.startswith("sensitivity")] == [
        "sensitivity 1/3 net.0",
        "sensitivity 2/3 net.2",
        "sensitivity 3/3 net.4",
    ]
    assert any(line.startswith("mixed precision: all int8, drop") for line in err)
    assert "max-drop 0.0 not met: drop 0.0" in run.stdout  # with 2 of 3 fp32, still a drop
    assert "with 2 of 3 layer(s) kept fp32" in run.stdout


def test_gru_int4_error_in_python() -> None:
    from slimfuse.errors import UnsupportedLayerError
    from slimfuse.models.source import ModelSpec, set_spec

    model = set_spec(nn.Sequential(nn.Linear(3, 3)), ModelSpec("t"))
    with pytest.raises(UnsupportedLayerError, match="found no layer to quantize"):
        quantize(model, QuantConfig(mode="weight-only", ignore=("0",)))


def test_an_int8_graph_runs_and_teaches_but_is_not_trained_pruned_merged_or_requantized(
    tmp_path, trained_cnn, mnist1d, capsys
) -> None:
    import copy

    from slimfuse.errors import ExportError, ModelError
    from slimfuse.fusion import MeanFusion
    from slimfuse.measuring import count_macs, count_params

    q = quantize(trained_cnn, QuantConfig(mode="static"), calibration=mnist1d.loader("train"))
    x = mnist1d.example_input(4)
    again = copy.deepcopy(q)  # after a call: the ONNX Runtime session stays behind
    torch.testing.assert_close(again(x), q(x))
    refused = "needs float weights, but the model is an int8 ONNX Runtime graph"
    with pytest.raises(ModelError, match=f"^training {refused}"):
        slimfuse.train(q, mnist1d, config=slimfuse.TrainConfig(epochs=1, quiet=True))
    with pytest.raises(ModelError, match=f"^pruning {refused}"):
        slimfuse.prune(q, {"channels": 0.5}, mnist1d)
    with pytest.raises(ModelError, match=f"^merging member 'q' {refused}"):
        slimfuse.merge([("q", q), ("f", trained_cnn)], data=mnist1d)
    with pytest.raises(ModelError, match=f"^quantizing {refused}"):
        quantize(q, QuantConfig(mode="dynamic"), example_inputs=x[:1])
    from slimfuse.distillation.students import build_student

    with pytest.raises(ModelError, match=f"^a student built from the teacher {refused}"):
        build_student(q, x[:1], width=0.5)
    # a fusion member: it runs and counts, but one ONNX graph cannot hold it
    fused = MeanFusion([("int8", q), ("fp32", trained_cnn)])
    assert count_params(fused) == (2 * count_params(trained_cnn)[0],) * 2
    assert count_macs(fused, x[:1]) == 2 * count_macs(trained_cnn, x[:1])
    with pytest.raises(ExportError, match=r"'members\.int8' in it is an int8 ONNX Runtime graph"):
        slimfuse.export(fused, x[:1], tmp_path / "f.onnx")
    # `eval` measures what it can: the torch row, and says why there is no ONNX Runtime one
    from slimfuse.cli import main

    slimfuse.save(fused, tmp_path / "fused")
    capsys.readouterr()
    assert main(["eval", "--model", str(tmp_path / "fused"), "--data", "mnist1d"]) == 0
    shown = capsys.readouterr()
    assert shown.err.startswith("slimfuse eval: warning: no ONNX Runtime row: cannot export")
    assert "| eval | torch |" in shown.out and "onnxruntime" not in shown.out
