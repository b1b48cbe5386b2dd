from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.errors import ExportError
from slimfuse.exporting import OrtRunner, check_parity, export_onnx
from slimfuse.measuring import count_macs, count_params, measure


@pytest.mark.parametrize("name", ["mnist1d_cnn", "resnet1d", "gru", "mlp"])
def test_onnx_parity_at_batch_1_and_64(name, mnist1d, tmp_path):
    model = slimfuse.build_model(name, data=mnist1d).eval()
    path = export_onnx(model, mnist1d.example_input(1), tmp_path / "m.onnx")
    diff = check_parity(model, path, mnist1d.example_input(1), batches=(1, 64))
    assert diff <= 1e-4
    runner = OrtRunner(path)
    assert runner(mnist1d.example_input(64)).shape == (64, 10)


def test_the_file_holds_no_exporter_debug_info(mnist1d, tmp_path):
    """No stack traces (with this machine's source paths) or FX nodes in a deployable file."""
    import onnx

    model = slimfuse.build_model("resnet1d", data=mnist1d).eval()
    path = export_onnx(model, mnist1d.example_input(1), tmp_path / "m.onnx")
    assert all(not n.metadata_props for n in onnx.load(str(path)).graph.node)
    assert str(Path(slimfuse.__file__).parent).encode() not in path.read_bytes()
    kept = export_onnx(model, mnist1d.example_input(1), tmp_path / "k.onnx", keep_scopes=True)
    keys = {p.key for n in onnx.load(str(kept)).graph.node for p in n.metadata_props}
    assert keys == {"pkg.torch.onnx.name_scopes"}  # what quantization maps nodes by


def test_torchscript_fallback_path_also_passes(mnist1d, tmp_path):
    model = slimfuse.build_model("mnist1d_cnn", data=mnist1d).eval()
    path = export_onnx(model, mnist1d.example_input(1), tmp_path / "m.onnx", dynamo=False)
    assert check_parity(model, path, mnist1d.example_input(1)) <= 1e-4


class Noisy(torch.nn.Module):
    """Eager output that no exported graph can match: parity must fail loudly."""

    def forward(self, x):
        return x + torch.rand_like(x)


def test_parity_failure_is_loud(tmp_path):
    with pytest.raises(
        ExportError, match=r"ONNX Runtime differs from PyTorch by .* at batch 1 \(allowed 0.0001\)"
    ):
        export_onnx(Noisy(), torch.zeros(1, 4), tmp_path / "n.onnx")
    assert not (tmp_path / "n.onnx").exists()


class Unexportable(torch.nn.Module):
    def forward(self, x):
        return torch.from_numpy(np.sort(x.detach().numpy()))


def test_a_model_that_leaves_torch_is_caught(tmp_path):
    with pytest.raises(
        ExportError, match=r"the exported graph takes 0 inputs but the model takes 1"
    ):
        export_onnx(Unexportable(), torch.zeros(1, 4), tmp_path / "u.onnx")


def test_export_failure_names_both_exporters(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' to ONNX is not supported")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(
        ExportError,
        match=r"export of MLP failed: dynamo: .*aten::frobnicate.*; torchscript: .*aten::frobnicate",
    ):
        export_onnx(
            slimfuse.build_model("mlp", in_features=4, num_classes=2),
            torch.zeros(1, 4),
            tmp_path / "u.onnx",
        )


def test_counts():
    lin = torch.nn.Linear(10, 3)
    with torch.no_grad():
        lin.weight[0].zero_()
    assert count_params(lin) == (33, 23)
    assert count_macs(lin, torch.zeros(1, 10)) == 30


def test_measure_rows_follow_the_schema(trained_cnn, mnist1d):
    rows = measure(trained_cnn, mnist1d, stage="cnn", budget_s=0.1)
    assert [r["engine"] for r in rows] == ["torch", "onnxruntime"]
    keys = {
        "stage",
        "bundle",
        "engine",
        "metric",
        "metric_value",
        "params",
        "nonzero_params",
        "size_bytes",
        "onnx_bytes",
        "macs",
        "latency_ms_b1",
        "latency_ms_b64",
        "latency_ms_b1_p90",
        "latency_ms_b64_p90",
        "threads",
    }
    for r in rows:
        assert keys <= r.keys()
        assert r["latency_ms_b1"] > 0 and r["latency_ms_b64"] >= r["latency_ms_b1"] * 0.5
        assert r["params"] == 5210 and r["macs"] > 0 and r["onnx_bytes"] > 0
    assert abs(rows[0]["metric_value"] - rows[1]["metric_value"]) < 2e-3  # same model, two engines


def test_measure_an_onnx_file(trained_cnn, mnist1d, tmp_path):
    path = export_onnx(trained_cnn, mnist1d.example_input(1), tmp_path / "m.onnx")
    (row,) = measure(path, mnist1d, budget_s=0.1)
    assert row["engine"] == "onnxruntime" and row["params"] is None
    assert row["metric_value"] == pytest.approx(
        slimfuse.evaluate(trained_cnn, mnist1d.loader("test")), abs=2e-3
    )


def test_an_ensemble_of_encoders_exports_at_the_encoders_opset():
    from slimfuse.exporting import OPSET, default_opset
    from slimfuse.fusion.ensemble import MeanFusion
    from tests.helpers import TINY_BERT

    encoders = [slimfuse.build_model("hf_encoder", config=TINY_BERT) for _ in range(2)]
    assert default_opset(encoders[0]) == 23 > OPSET
    fused = MeanFusion([("a", encoders[0]), ("b", encoders[1])], space="logits")
    assert default_opset(fused) == 23
    assert default_opset(slimfuse.build_model("mlp", in_features=4, num_classes=3)) == OPSET


def test_metrics_killed_mid_write_keep_the_previous_file(tmp_path, monkeypatch):
    import json
    from pathlib import Path

    from slimfuse.measuring import write_metrics

    path = write_metrics(tmp_path / "metrics.json", [{"stage": "a"}], "classification", "accuracy")
    real = Path.write_text

    def killed(self, text, *args, **kwargs):  # half the text reaches the disk, then the kill
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        write_metrics(path, [{"stage": "a"}, {"stage": "b"}], "classification", "accuracy")
    monkeypatch.undo()
    assert json.loads(path.read_text())["stages"] == [{"stage": "a"}]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
