"""Weight-only Linear layers export as ONNX Runtime's ``MatMulNBits`` on the bundle's packed weights.

Before, the ONNX file decoded the packed weights with float ops on constants, which ONNX Runtime
folded back into fp32 weights at load: the file was small, the compute fp32. Now every Linear
layer is one ``com.microsoft::MatMulNBits`` node whose ``B`` is the bundle's ``qweight`` byte for
byte (int4) or ``qweight + 128`` (int8, once an accuracy level asks for it), and the export's
parity check against PyTorch still holds. Convolutions keep the float decoding.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import slimfuse
from slimfuse.exporting import OrtRunner, export_onnx
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize

DECODE_OPS = {"Floor", "Div", "Sub", "Mul", "Reshape", "Slice", "Concat", "Unsqueeze"}


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return set_spec(model, ModelSpec(source="test"))


def _nbits_nodes(path) -> tuple[list, dict[str, np.ndarray]]:
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return nodes, inits


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_int4_linear_layers_are_matmulnbits_on_the_packed_weights(tmp_path) -> None:
    model = _mlp()
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    x = torch.randn(1, 64)
    path = export_onnx(q, x, tmp_path / "int4.onnx")  # parity with PyTorch <= 1e-4, batch 1 and 64
    nodes, inits = _nbits_nodes(path)
    assert len(nodes) == 2 and all(n.domain == "com.microsoft" for n in nodes)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert not ops & DECODE_OPS  # no float decoding left in the graph
    for node, layer in zip(nodes, (q[0], q[2]), strict=True):
        a = _attrs(node)
        assert (a["K"], a["N"], a["bits"], a["block_size"]) == (
            layer.shape[1],
            layer.shape[0],
            4,
            32,
        )
        assert "accuracy_level" not in a  # unset: fp32 input, PyTorch's numbers
        assert np.array_equal(inits[node.input[1]], layer.qweight.numpy())  # the bundle's bytes
        assert np.array_equal(inits[node.input[2]], layer.scales.numpy())
    xs = torch.randn(32, 64)
    torch.testing.assert_close(OrtRunner(path)(xs), q(xs), atol=1e-5, rtol=1e-5)


def test_int8_linear_layers_use_8_bit_matmulnbits_once_asked(tmp_path) -> None:
    """8-bit MatMulNBits with fp32 input ran at 0.49x of fp32 on MiniLM (batch 1): by default
    int8 keeps the float decoding; an accuracy level (1: fp32 input, 4: int8 input) asks for it."""
    from slimfuse.quantization import nbits

    if not nbits.ort_supports(8):
        pytest.skip("this ONNX Runtime has no 8-bit MatMulNBits on the CPU")
    model = _mlp(1)
    q = quantize(model, QuantConfig(mode="weight-only", bits=8))
    x = torch.randn(1, 64)
    fp32 = export_onnx(model, x, tmp_path / "fp32.onnx").stat().st_size
    assert not _nbits_nodes(export_onnx(q, x, tmp_path / "default.onnx"))[0]
    assert nbits.set_accuracy_level(q, 1) == 2
    path = export_onnx(q, x, tmp_path / "int8.onnx")  # fp32 input: parity <= 1e-4
    nodes, inits = _nbits_nodes(path)
    assert [(_attrs(n)["bits"], _attrs(n)["accuracy_level"]) for n in nodes] == [(8, 1), (8, 1)]
    first = nodes[0].input[1]
    want = (q[0].qweight.to(torch.int16) + 128).to(torch.uint8).numpy()
    assert np.array_equal(inits[first], want)  # unsigned codes, zero point 128
    assert path.stat().st_size < 0.4 * fp32


def test_a_bundle_reloads_and_exports_the_same_node(tmp_path, mnist1d) -> None:
    model = slimfuse.build_model("mlp", data=mnist1d)
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    again = slimfuse.load(slimfuse.save(q, tmp_path / "int4"))
    x = mnist1d.example_input(1)
    a = export_onnx(q, x, tmp_path / "a.onnx")
    b = export_onnx(again, x, tmp_path / "b.onnx")
    (na, ia), (nb, ib) = _nbits_nodes(a), _nbits_nodes(b)
    assert len(na) == len(nb) == 3
    for u, v in zip(na, nb, strict=True):
        assert np.array_equal(ia[u.input[1]], ib[v.input[1]])


def test_convolutions_keep_the_float_decoding(tmp_path, mnist1d) -> None:
    """Only Linear layers have an n-bit kernel: the CNN's convolutions decode as before, its
    linear layer is MatMulNBits, and the file keeps the packed convolution weights."""
    torch.manual_seed(0)
    model = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    path = export_onnx(q, mnist1d.example_input(1), tmp_path / "cnn.onnx")
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("Conv") == 3
    stored = {i.name: i.data_type for i in graph.initializer}
    assert all(stored[f"conv{i}.qweight"] == onnx.TensorProto.UINT8 for i in (1, 2, 3))


def test_group_sizes_matmulnbits_cannot_take_fall_back(tmp_path) -> None:
    """MatMulNBits needs a power-of-two block of >= 16: group size 24 keeps the float decoding."""
    model = _mlp(2)
    q = quantize(model, QuantConfig(mode="weight-only", bits=4, group_size=24))
    path = export_onnx(q, torch.randn(1, 64), tmp_path / "g24.onnx")
    assert not _nbits_nodes(path)[0]


def test_accuracy_level_4_is_set_on_request_and_stays_close(tmp_path) -> None:
    """``accuracy_level=4`` (int8 input, integer dot products) is an export setting: the numbers
    move off PyTorch's by the input's int8 rounding, so its parity is checked at that scale."""
    from slimfuse.quantization import nbits

    model = _mlp(3)
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    assert nbits.set_accuracy_level(q, 4) == 2
    x = torch.randn(64, 64)
    path = export_onnx(q, x[:1], tmp_path / "acc4.onnx", atol=0.1)
    nodes, _ = _nbits_nodes(path)
    assert [_attrs(n)["accuracy_level"] for n in nodes] == [4, 4]
    got, want = OrtRunner(path)(x), q(x)
    cos = torch.nn.functional.cosine_similarity(got, want.detach(), dim=-1)
    assert float(cos.min()) > 0.999
    with pytest.raises(ValueError, match="accuracy_level"):
        nbits.set_accuracy_level(q, 5)


def test_the_torchscript_exporter_keeps_the_float_decoding(tmp_path) -> None:
    model = _mlp(4)
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    path = export_onnx(q, torch.randn(1, 64), tmp_path / "ts.onnx", dynamo=False)
    assert not _nbits_nodes(path)[0]  # parity-checked like any export


def test_cli_export_accuracy_level(tmp_path, capsys) -> None:
    """``export --accuracy-level 4`` writes MatMulNBits with int8 input blocks (parity checked at
    the wider default tolerance); a model without weight-only layers is refused in one line."""
    from slimfuse.cli import main

    m, q = str(tmp_path / "m"), str(tmp_path / "q")
    assert main(["train", "--model", "mlp", "--data", "digits", "--epochs", "2", "--quiet",
                 "--out", m]) == 0  # fmt: skip
    assert main(["quantize", "--model", m, "--data", "digits", "--mode", "weight-only",
                 "--bits", "4", "--quiet", "--out", q]) == 0  # fmt: skip
    out = tmp_path / "q4.onnx"
    assert main(["export", "--model", q, "--data", "digits", "--out", str(out),
                 "--accuracy-level", "4"]) == 0  # fmt: skip
    levels = [
        [a.i for a in n.attribute if a.name == "accuracy_level"]
        for n in onnx.load(str(out)).graph.node
        if n.op_type == "MatMulNBits"
    ]
    assert levels and all(lv == [4] for lv in levels)
    capsys.readouterr()
    assert main(["export", "--model", m, "--data", "digits", "--out", str(tmp_path / "f.onnx"),
                 "--accuracy-level", "4"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has none" in err[0]
