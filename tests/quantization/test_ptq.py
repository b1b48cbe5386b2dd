"""Dynamic and static int8 through ONNX Runtime, on a real trained CNN."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.errors import ConfigError, DataError, ExportError
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize
from slimfuse.quantization.runtime import QuantizedModel
from tests.helpers import TINY_BERT, bert_tokens


@pytest.fixture(scope="module")
def calib(mnist1d):
    return mnist1d.loader("train", batch_size=64)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_int8_keeps_accuracy(trained_cnn, mnist1d, calib, method: str) -> None:
    test = mnist1d.loader("test", batch_size=500)
    base = slimfuse.evaluate(trained_cnn, test)
    q = quantize(trained_cnn, QuantConfig(mode="static", calibration=method), calibration=calib)
    assert isinstance(q, QuantizedModel)
    assert abs(slimfuse.evaluate(q, test) - base) < 0.03
    assert all(r["precision"] == "int8" for r in q.info["layers"])


def _int8_weights(q: QuantizedModel) -> list[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(q.graph_bytes()).graph
    arrays = [numpy_helper.to_array(i) for i in graph.initializer]
    return [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]


@pytest.mark.parametrize("reduce_range", [True, False])
def test_reduce_range_sets_the_weight_bits(trained_cnn, calib, reduce_range: bool) -> None:
    cfg = QuantConfig(mode="static", reduce_range=reduce_range)
    q = quantize(trained_cnn, cfg, calibration=calib)
    peak = max(int(np.abs(w.astype(np.int32)).max()) for w in _int8_weights(q))
    assert peak == (64 if reduce_range else 127)
    assert q.info["reduce_range"] is reduce_range


def test_reduce_range_default_follows_the_cpu(monkeypatch) -> None:
    from slimfuse import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2"}))
    assert QuantConfig().reduced_range and QuantConfig().weight_qmax == 64
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    assert not QuantConfig().reduced_range and QuantConfig().weight_qmax == 127
    assert QuantConfig(reduce_range=True).reduced_range


def test_dynamic_int8_lists_what_stayed_fp32(trained_cnn, mnist1d) -> None:
    q = quantize(trained_cnn, QuantConfig(mode="dynamic"), example_inputs=mnist1d.example_input(1))
    assert all(r["precision"] == "int8" for r in q.info["layers"])  # Gemm rewritten as MatMul
    gru = slimfuse.build_model("gru", data=mnist1d)
    q = quantize(gru, QuantConfig(mode="dynamic"), example_inputs=mnist1d.example_input(1))
    rows = {r["layer"]: r for r in q.info["layers"]}
    assert rows["fc"]["precision"] == "int8"
    assert rows["gru"] == {
        "layer": "gru",
        "type": "GRU",
        "precision": "fp32",
        "reason": "GRU has no int8 dynamic kernel in ONNX Runtime",
    }
    x = mnist1d.example_input(4)
    torch.testing.assert_close(q(x), gru(x).detach(), atol=0.02, rtol=0.05)


def test_ignore_selector_keeps_layer_fp32_with_reason(trained_cnn, calib) -> None:
    q = quantize(
        trained_cnn, QuantConfig(mode="static", ignore=("re:conv[23]",)), calibration=calib
    )
    rows = {r["layer"]: r for r in q.info["layers"]}
    assert rows["conv2"]["precision"] == "fp32"
    assert rows["conv2"]["reason"] == "excluded by ignore selector 're:conv[23]'"
    assert rows["conv1"]["precision"] == "int8"


def test_unknown_selector_is_an_error(trained_cnn, calib) -> None:
    with pytest.raises(ConfigError, match="matches no module"):
        quantize(trained_cnn, QuantConfig(mode="static", ignore=("conv9",)), calibration=calib)


def test_batch_size_one_and_forward_loop(trained_cnn, mnist1d) -> None:
    x = mnist1d.example_input(32)

    def loop(model: nn.Module) -> None:
        for i in range(0, 32, 8):
            model(x[i : i + 8])

    q = quantize(trained_cnn, QuantConfig(mode="static"), calibration=loop)
    one = q(mnist1d.example_input(1))
    assert one.shape == (1, 10) and torch.isfinite(one).all()


def test_size_and_measure_rows(mnist1d, calib) -> None:
    model = slimfuse.build_model("mlp", data=mnist1d, hidden=(256, 256))
    q = quantize(model, QuantConfig(mode="static"), calibration=calib)
    rows = slimfuse.measure(q, mnist1d, engines=["onnxruntime"], budget_s=0.05)
    params = sum(p.numel() for p in model.parameters())
    assert rows[0]["params"] == params
    assert rows[0]["onnx_bytes"] < 0.3 * 4 * params  # int8 weights + scales + graph


class _Explodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not run")


def test_empty_calibration_fails_before_any_compute() -> None:
    model = set_spec(_Explodes(), ModelSpec(source="test"))
    with pytest.raises(DataError, match=r"calibration data is empty \(0 batches\)"):
        quantize(model, QuantConfig(mode="static"), calibration=[])
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(0, 4)))
    with pytest.raises(DataError, match="calibration data is empty"):
        quantize(model, QuantConfig(mode="static"), calibration=empty)


def test_nan_or_inf_in_calibration_data(trained_cnn) -> None:
    bad = torch.randn(8, 40)
    bad[3, 5] = float("nan")
    with pytest.raises(DataError, match=r"calibration batch 2: input 'input' has 1 NaN/Inf"):
        quantize(trained_cnn, QuantConfig(mode="static"), calibration=[torch.randn(8, 40), bad])
    inf = torch.full((2, 40), float("inf"))
    with pytest.raises(DataError, match="NaN/Inf value"):
        quantize(trained_cnn, QuantConfig(mode="static"), calibration=[(inf, torch.zeros(2))])


def test_static_needs_calibration() -> None:
    model = set_spec(nn.Sequential(nn.Linear(4, 2)), ModelSpec(source="test"))
    with pytest.raises(ConfigError, match="needs calibration data"):
        quantize(model, QuantConfig(mode="static"))


class _Zeta(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.zeta(self.fc(x), torch.tensor(2.0))


def test_export_failure_names_the_op() -> None:
    model = set_spec(_Zeta(), ModelSpec(source="test"))
    with pytest.raises(ExportError, match="no ONNX translation for op aten::special_zeta"):
        quantize(model, QuantConfig(mode="dynamic"), example_inputs=torch.randn(1, 8))


def test_bad_config_values() -> None:
    with pytest.raises(ConfigError, match="bits does not apply to mode 'static'; it is for weight"):
        QuantConfig(mode="static", bits=4)
    with pytest.raises(ConfigError, match="calibration 'mse': Input should be 'minmax'"):
        QuantConfig(calibration="mse")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(mode="dynamic", calibration="entropy"),
            "calibration does not apply to mode 'dynamic'; it is for static, qat",
        ),
        (dict(mode="static", epochs=3), "epochs does not apply to mode 'static'; it is for qat"),
        (
            dict(mode="qat", max_drop=0.01),
            "max_drop does not apply to mode 'qat'; it is for dynamic, static",
        ),
        (
            dict(mode="qat", bits=4, calibration="percentile"),
            "calibration does not apply to qat with bits 4 (int4 is weight-only)",
        ),
        (
            dict(mode="weight-only", per_channel=False),
            "per_channel does not apply to mode 'weight-only'; it is for dynamic, static, qat",
        ),
        (
            dict(mode="static", group_size=64),
            "group_size does not apply to mode 'static'; it is for weight-only, qat",
        ),
        (dict(mode="qat", group_size=64), "group_size applies to int4 (bits 4); got bits 8"),
        (
            dict(mode="static", percentile=99.9),
            "percentile 99.9 applies only with calibration 'percentile'; got calibration 'minmax'",
        ),
        (dict(mode="qat", epochs=3), "epochs: training settings go in a TrainConfig"),
    ],
)
def test_a_setting_the_mode_does_not_read_cannot_be_written(settings, message) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        QuantConfig(**settings)


def test_a_config_round_trips_and_is_typed_per_mode() -> None:
    from slimfuse.quantization import QAT, Static

    cfg = QuantConfig(mode="static", calibration="entropy", ignore=["re:.*fc"])
    assert type(cfg) is Static and cfg == Static(calibration="entropy", ignore=("re:.*fc",))
    assert QuantConfig.parse(cfg.to_dict()) == cfg
    assert "calibration" not in QAT(bits=4).model_fields_set
    with pytest.raises(ConfigError, match="unknown setting"):
        Static(calibraton="entropy")


def test_transformer_attention_exports_fused_and_stays_fp32() -> None:
    """A BERT encoder exports at opset 23 (one Attention op per layer); int8 leaves that op fp32."""
    import onnx

    torch.manual_seed(0)
    model = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    batches = [bert_tokens(8, 12, seed=seed, pad_from=9) for seed in (1, 2)]
    example = {k: v[:1] for k, v in batches[0].items()}
    q = quantize(
        model,
        QuantConfig(mode="dynamic", smoothquant=1.0),
        calibration=batches,
        example_inputs=example,
    )
    nodes = onnx.load_from_string(q.graph_bytes()).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("Attention") == 2 and "QAttention" not in ops and "Softmax" not in ops
    linears = [r for r in q.info["layers"] if r["type"] == "Linear" and "pooler" not in r["layer"]]
    assert len(linears) == 12 and all(r["precision"] == "int8" for r in linears)
    with torch.no_grad():
        ref = model(**batches[1])
    cos = torch.nn.functional.cosine_similarity(q(**batches[1]), ref, dim=-1)
    assert float(cos.min()) > 0.99
