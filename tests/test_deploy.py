"""Deploy targets for phones: ExecuTorch programs (.pte, XNNPACK fp32 and PT2E int8) run through
executorch.runtime, and ONNX Runtime Mobile's .ort format, checked against PyTorch."""

from __future__ import annotations

import sys

import pytest
import torch

import slimfuse
from slimfuse.cli.main import main
from slimfuse.deploy import export, runner
from slimfuse.errors import ExportError, ModelError
from slimfuse.measuring import measure
from tests.helpers import TINY_BERT, bert_tokens

MOBILE = "ExecuTorch export needs the mobile extra: pip install 'slimfuse[mobile]'"


def _needs_executorch() -> None:
    pytest.importorskip(
        "executorch.runtime", reason="the mobile extra (executorch) is not installed"
    )


@pytest.fixture(scope="module")
def programs(trained_cnn, mnist1d, tmp_path_factory):
    """The trained CNN as an fp32 and an int8 ExecuTorch program (lowered once for the module)."""
    _needs_executorch()
    d = tmp_path_factory.mktemp("pte")
    x = mnist1d.example_input(1)
    fp32 = slimfuse.export(trained_cnn, x, d / "cnn.pte")
    int8 = export(trained_cnn, x, d / "cnn-int8.pte", int8=True, calibration=mnist1d)
    return fp32, int8


@pytest.mark.slow
def test_pte_fp32_matches_pytorch(programs, trained_cnn, mnist1d):
    run = runner(programs[0])
    assert run.input_names == ["input"] and run.max_batch == 64
    x = mnist1d.example_input(150)  # past the program's largest batch: run in chunks
    for batch in (1, 64, 150):
        got, ref = run(x[:batch]), trained_cnn(x[:batch])
        assert got.shape == ref.shape
        assert float((got - ref).abs().max().detach()) <= 1e-4


@pytest.mark.slow
def test_pte_int8_keeps_accuracy_and_is_smaller(programs, trained_cnn, mnist1d):
    fp32, int8 = programs
    test = mnist1d.loader("test", batch_size=256)
    ref = slimfuse.evaluate(trained_cnn, test)
    got = slimfuse.evaluate(runner(int8), test)
    assert abs(got - ref) <= 0.01, (got, ref)
    assert int8.stat().st_size < 0.75 * fp32.stat().st_size


@pytest.mark.slow
def test_measure_with_engine_executorch(programs, trained_cnn, mnist1d):
    fp32, int8 = programs
    rows = measure(
        trained_cnn,
        mnist1d,
        engines=["onnxruntime", "executorch"],
        pte_path=int8,
        budget_s=0.05,
    )
    assert [r["engine"] for r in rows] == ["onnxruntime", "executorch"]
    ort_row, et_row = rows
    assert et_row["file_bytes"] == int8.stat().st_size and et_row["params"] == 5210
    assert et_row["latency_ms_b1"] > 0 and et_row["latency_ms_b64"] > 0
    assert abs(et_row["metric_value"] - ort_row["metric_value"]) <= 0.01
    (row,) = measure(fp32, mnist1d, budget_s=0.05)  # a file alone: its engine from the suffix
    assert row["engine"] == "executorch" and row["params"] is None
    assert row["metric_value"] == pytest.approx(ort_row["metric_value"], abs=2e-3)


def test_ort_export_loads_and_matches(trained_cnn, mnist1d, tmp_path):
    x = mnist1d.example_input(1)
    path = export(trained_cnn, x, tmp_path / "cnn.ort")
    assert path.read_bytes()[4:8] == b"ORTM"
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xb = mnist1d.example_input(64)
    got = torch.from_numpy(session.run(None, {"input": xb.numpy()})[0])
    assert float((got - trained_cnn(xb)).abs().max()) <= 1e-4
    (row,) = measure(path, mnist1d, budget_s=0.05)
    assert row["engine"] == "onnxruntime" and row["file_bytes"] == path.stat().st_size
    assert row["metric_value"] == pytest.approx(
        slimfuse.evaluate(trained_cnn, mnist1d.loader("test")), abs=2e-3
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("x.pte", "not an ExecuTorch program"),
        ("x.ort", "not an ONNX Runtime .ort file"),
        ("x.onnx", "not an ONNX model"),
    ],
)
def test_a_file_that_is_not_what_it_says_is_one_line(name, message, mnist1d, tmp_path):
    if name.endswith(".pte"):
        _needs_executorch()
    bad = tmp_path / name
    bad.write_bytes(b"0123456789 not a model at all")
    with pytest.raises(ModelError, match=message) as err:
        measure(bad, mnist1d, budget_s=0.05)
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ModelError, match=message):
        runner(bad)


def test_without_executorch_one_line(trained_cnn, mnist1d, tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m.split(".")[0] == "executorch"] + ["executorch"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import executorch...` fails
    with pytest.raises(ExportError) as err:
        export(trained_cnn, mnist1d.example_input(1), tmp_path / "m.pte")
    assert str(err.value) == MOBILE
    code = main(
        ["export", "--model", "mnist1d_cnn", "--data", "mnist1d", "--out", str(tmp_path / "m.pte")]
    )
    out = capsys.readouterr().err.strip()
    assert code == 2 and out.endswith(MOBILE) and len(out.splitlines()) == 1


def test_pte_int8_of_an_encoder_is_dynamic(tmp_path, caplog):
    """A transformer encoder's int8 program quantizes its linear layers dynamically (static
    ranges cannot hold its outlier activations: all-MiniLM-L6-v2 0.870 mean cosine static,
    0.999 dynamic, benchmarks/deploy_mobile.py): no calibration data needed, output close."""
    _needs_executorch()
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    x = bert_tokens(8, 16)
    with caplog.at_level("INFO", logger="slimfuse.deploy.pte"):
        path = export(model, {k: v[:1] for k, v in x.items()}, tmp_path / "enc.pte", int8=True)
    assert "dynamic int8" in caplog.text
    got, ref = runner(path)(**x), model(**x)
    assert float(torch.nn.functional.cosine_similarity(got, ref).min()) > 0.99


def test_an_int8_onnx_graph_cannot_become_a_program(trained_cnn, mnist1d, tmp_path):
    from slimfuse.quantization import Static

    q = slimfuse.quantize(trained_cnn, Static(calibration_batches=2), mnist1d)
    with pytest.raises(ModelError, match="export the float model with --int8") as err:
        export(q, mnist1d.example_input(1), tmp_path / "q.pte")
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "m.ort", "--int8"], "--int8 is for --format pte"),
        (["--out", "m.tflite"], "cannot tell the format from the suffix '.tflite'"),
        (["--out", "."], "--out . is a folder: expected the path of an .onnx file"),
        (
            ["--out", ".", "--format", "pte"],
            "--out . is a folder: expected the path of a .pte file",
        ),
    ],
)
def test_export_command_bad_input(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "--model", "mnist1d_cnn", "--data", "mnist1d", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_export_command_writes_an_ort_file(tmp_path, capsys):
    out = tmp_path / "m.ort"
    assert main(["export", "--model", "mnist1d_cnn", "--data", "mnist1d", "--out", str(out)]) == 0
    assert "ONNX Runtime Mobile (.ort)" in capsys.readouterr().out
    assert out.read_bytes()[4:8] == b"ORTM"
