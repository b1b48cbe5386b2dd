"""Weight-only int8 / int4: SQNR floors, packing, zero weights, bad layer types, bundles."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.errors import UnsupportedLayerError
from slimfuse.measuring import count_params
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize, sqnr_db
from slimfuse.quantization.weight_only import pack, quantize_groups, unpack


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    return set_spec(model, ModelSpec(source="test"))


@pytest.mark.parametrize(("bits", "floor"), [(8, 35.0), (4, 15.0)])
@pytest.mark.parametrize("shape", [(256, 128), (96, 200), (10, 33)])
def test_sqnr_floor_on_random_layers(bits: int, floor: float, shape: tuple[int, int]) -> None:
    torch.manual_seed(shape[0])
    w = torch.randn(shape) * torch.rand(shape[0], 1) * 3  # channels of different scales
    q, scales = quantize_groups(w, bits, 32)
    deq = (unpack(pack(q, bits), bits) * scales.unsqueeze(2)).reshape(shape[0], -1)[:, : shape[1]]
    assert sqnr_db(w, deq) >= floor


def test_all_zero_weights_give_finite_positive_scales() -> None:
    q, scales = quantize_groups(torch.zeros(8, 64), 4, 32)
    assert torch.isfinite(scales).all() and (scales > 0).all()
    assert (q == 0).all()
    layer = nn.Linear(64, 8)
    nn.init.zeros_(layer.weight)
    model = set_spec(nn.Sequential(layer), ModelSpec(source="test"))
    out = quantize(model, QuantConfig(mode="weight-only", bits=4))
    assert torch.isfinite(out(torch.randn(1, 64))).all()


def test_int4_pack_roundtrip() -> None:
    q = torch.randint(-8, 8, (5, 3, 32), dtype=torch.int8)
    packed = pack(q, 4)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 3, 16)
    assert torch.equal(unpack(packed, 4), q.float())


def test_weight_only_keeps_outputs_and_batch_size_one() -> None:
    model = _mlp()
    x = torch.randn(1, 64)
    q8 = quantize(model, QuantConfig(mode="weight-only", bits=8))
    assert q8 is not model and isinstance(model[0], nn.Linear)  # the input model is unchanged
    assert sqnr_db(model(x), q8(x)) > 30
    assert min(q8.quant_sqnr_db.values()) >= 35


def test_int4_on_a_recurrent_layer_is_refused() -> None:
    model = set_spec(nn.Sequential(nn.GRU(4, 8)), ModelSpec(source="test"))
    with pytest.raises(
        UnsupportedLayerError, match=r"int4 weight-only asked for layer '0' \(GRU\)"
    ):
        quantize(model, QuantConfig(mode="weight-only", bits=4, targets=("type:GRU",)))


def test_int4_bundle_is_packed_and_reloads(tmp_path, mnist1d) -> None:
    model = slimfuse.build_model("mlp", data=mnist1d, hidden=(256, 256))
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    folder = slimfuse.save(q, tmp_path / "int4")
    fp32 = slimfuse.save(model, tmp_path / "fp32")
    ratio = (folder / "model.safetensors").stat().st_size / (
        fp32 / "model.safetensors"
    ).stat().st_size
    assert ratio < 0.2  # 4 bits + one fp32 scale per 32 weights: 5/32 plus padding
    again = slimfuse.load(folder)
    x = mnist1d.example_input(3)
    torch.testing.assert_close(again(x), q(x))
    total, nonzero = count_params(again)  # the packed weights count as the weights they are
    assert total == count_params(model)[0] and 0.8 * total < nonzero < total


def test_int4_onnx_file_keeps_the_packed_weights(tmp_path) -> None:
    """The exporter must not fold the packed weights into floats (a larger file than fp32)."""
    import onnx

    from slimfuse.exporting import export_onnx

    model = _mlp()
    q = quantize(model, QuantConfig(mode="weight-only", bits=4))
    x = torch.randn(1, 64)
    fp32 = export_onnx(model, x, tmp_path / "fp32.onnx").stat().st_size
    int4 = export_onnx(q, x, tmp_path / "int4.onnx")  # parity-checked in ONNX Runtime
    assert int4.stat().st_size < 0.4 * fp32
    stored = {i.name: i.data_type for i in onnx.load(str(int4)).graph.initializer}
    assert stored["0.qweight"] == onnx.TensorProto.UINT8
