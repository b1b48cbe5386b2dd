"""Weight sharing and the compressed bundle (model.sfz): zeros kept, at most 2^bits values per
layer after fine-tuning, decode(encode(model)) bit for bit, a damaged .sfz refused in one line,
ONNX Runtime parity after save and load."""

from __future__ import annotations

import copy
import shutil
import struct

import numpy as np
import onnxruntime as ort
import pytest
import torch

import slimfuse
from slimfuse.errors import ModelError
from slimfuse.models import huffman, sfz
from slimfuse.models.bundle import SHARED
from slimfuse.quantization import Shared
from slimfuse.quantization.shared import SharedLayer, kmeans_1d
from slimfuse.quantization.storage import storage_report

FAST = {"epochs": 2, "lr": 1e-3, "quiet": True}


@pytest.fixture(scope="module")
def pruned_mlp(digits):
    """A trained MLP on digits with 80% of its weights pruned (masks kept)."""
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=digits, hidden=[48, 32])
    slimfuse.train(model, digits, config=slimfuse.TrainConfig(epochs=4, lr=3e-3, quiet=True))
    train = slimfuse.TrainConfig(**FAST, restore_best=False)
    return slimfuse.prune(model, {"method": "magnitude", "sparsity": 0.8}, digits, train=train)


@pytest.fixture(scope="module")
def shared_mlp(pruned_mlp, digits):
    return slimfuse.quantize(pruned_mlp, Shared(bits=3), digits, train=slimfuse.TrainConfig(**FAST))


def _weights(model):
    return {n: m.weight.detach() for n, m in model.named_modules() if hasattr(m, "weight")}


def test_sharing_keeps_zeros_and_at_most_2_to_the_bits_values(pruned_mlp, shared_mlp):
    before, after = _weights(pruned_mlp), _weights(shared_mlp)
    layers = [n for n, m in shared_mlp.named_modules() if isinstance(m, SharedLayer)]
    assert layers == ["net.0", "net.2", "net.4"]
    for name in layers:
        w, w0 = after[name], before[name]
        assert torch.equal(w == 0, w0 == 0), name  # the same zeros, no zero revived or added
        assert len(torch.unique(w[w != 0])) <= 2**3, name
    # the centroids moved during fine-tuning (the loop trained them), and still <= 8 values
    fresh = slimfuse.quantize(pruned_mlp, Shared(bits=3), train=slimfuse.TrainConfig(epochs=0))
    moved = [
        not torch.equal(a.codebook, b.codebook)
        for a, b in zip(fresh.modules(), shared_mlp.modules(), strict=True)
        if isinstance(a, SharedLayer)
    ]
    assert any(moved)
    # the caller's model is untouched
    assert all(isinstance(m, torch.nn.Linear) for m in pruned_mlp.net if hasattr(m, "weight"))


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    layer = SharedLayer("Linear", [3, 2], 2, 2, None)
    with torch.no_grad():
        layer.codebook.copy_(torch.tensor([-1.0, 2.0]))
        layer.codes.copy_(torch.tensor([[0, 1], [-1, 1], [0, 0]], dtype=torch.int16))
    x = torch.randn(5, 2)
    layer(x).sum().backward()
    w = layer.weight.detach().requires_grad_(True)
    torch.nn.functional.linear(x, w).sum().backward()
    codes = layer.codes
    expected = torch.stack([w.grad[codes == 0].sum(), w.grad[codes == 1].sum()])
    torch.testing.assert_close(layer.codebook.grad, expected)


def test_kmeans_inits_and_bounds():
    v = torch.cat([torch.randn(500), torch.tensor([8.0])])
    for init in ("linear", "density", "random"):
        c, a = kmeans_1d(v, 16, init)
        assert len(c) <= 16 and torch.all(c[1:] > c[:-1])
        assert int(a.min()) >= 0 and int(a.max()) < len(c)
    c, _ = kmeans_1d(v, 16, "linear")
    assert float(c[-1]) == pytest.approx(8.0)  # linear init keeps the outlier its own value


def test_huffman_round_trip_and_one_symbol():
    rng = np.random.default_rng(0)
    s = rng.choice(20, size=5000, p=rng.dirichlet(np.ones(20)))
    lengths = huffman.code_lengths(np.bincount(s, minlength=20))
    assert (huffman.decode(huffman.encode(s, lengths), lengths, len(s)) == s).all()
    ones = np.full(7, 3)
    lengths = huffman.code_lengths(np.bincount(ones, minlength=5))
    assert huffman.encode(ones, lengths) == b""
    assert (huffman.decode(b"", lengths, 7, only=3) == 3).all()


def test_save_load_is_bit_for_bit_and_exports(shared_mlp, digits, tmp_path):
    slimfuse.save(shared_mlp, tmp_path / "b")
    assert (tmp_path / "b" / SHARED).is_file()
    again = slimfuse.load(tmp_path / "b")
    a, b = shared_mlp.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    x = digits.example_input(64)
    assert torch.equal(shared_mlp(x), again(x))
    # the dense weights in the safetensors file are gone: the sfz holds them
    report = storage_report(tmp_path / "b")
    assert report["files"][SHARED] < report["total"]["quantized"]
    total = report["total"]
    assert max(total["huffman"], total["quantized"]) < total["pruned"] < total["dense"]
    path = slimfuse.export(again, digits.example_input(1), tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(out, again(x).detach().numpy(), atol=1e-5, rtol=1e-5)


def _layer_offsets(data: bytes) -> dict[str, int]:
    """Offsets of the first layer's fields in an .sfz (for targeted damage)."""
    at = 8
    (n,) = struct.unpack_from("<H", data, at)
    at += 2 + n
    (ndim,) = struct.unpack_from("<B", data, at)
    at += 1 + 4 * ndim
    return {"counts": at, "codebook": at + struct.calcsize("<BHBII")}


def _damage(kind: str, data: bytes) -> bytes:
    b = bytearray(data)
    off = _layer_offsets(data)
    if kind == "truncated":
        return bytes(b[: len(b) // 2])
    if kind == "empty":
        return b""
    if kind == "magic":
        b[0:4] = b"PK\x03\x04"
    elif kind == "trailing":
        b += b"\x00\x01"
    elif kind == "layer count":
        struct.pack_into("<I", b, 4, 99)
    elif kind == "huge nnz":
        struct.pack_into("<I", b, off["counts"] + 4, 0xFFFFFFF0)
    elif kind == "entries":
        bits, k, g, nnz, entries = struct.unpack_from("<BHBII", b, off["counts"])
        struct.pack_into("<BHBII", b, off["counts"], bits, k, g, nnz, entries + 1)
    elif kind == "codebook size":
        bits, k, g, nnz, entries = struct.unpack_from("<BHBII", b, off["counts"])
        struct.pack_into("<BHBII", b, off["counts"], bits, k + 1, g, nnz, entries)
    elif kind == "nan codebook":
        struct.pack_into("<f", b, off["codebook"], float("nan"))
    elif kind == "code lengths":
        _, k, *_ = struct.unpack_from("<BHBII", b, off["counts"])
        start = off["codebook"] + 4 * k
        b[start : start + (k + 2) // 2] = b"\x11" * ((k + 2) // 2)  # all 1-bit: not a prefix code
    elif kind == "flipped bits":
        for i in range(len(b) - 40, len(b) - 1, 3):
            b[i] ^= 0xA5
    return bytes(b)


KINDS = [
    "truncated",
    "empty",
    "magic",
    "trailing",
    "layer count",
    "huge nnz",
    "entries",
    "codebook size",
    "nan codebook",
    "code lengths",
    "flipped bits",
]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_sfz_is_one_line(shared_mlp, tmp_path, kind):
    folder = tmp_path / "b"
    slimfuse.save(shared_mlp, folder)
    good = (folder / SHARED).read_bytes()
    (folder / SHARED).write_bytes(_damage(kind, good))
    try:
        again = slimfuse.load(folder)
    except ModelError as exc:
        msg = str(exc)
        assert "\n" not in msg and SHARED in msg, msg
        return
    # a flip that still decodes must give another model, never a silent partial one
    assert kind == "flipped bits"
    assert not all(
        torch.equal(a, b)
        for a, b in zip(shared_mlp.state_dict().values(), again.state_dict().values(), strict=True)
    )


def test_a_missing_or_stray_sfz_is_one_line(shared_mlp, pruned_mlp, tmp_path):
    slimfuse.save(shared_mlp, tmp_path / "b")
    (tmp_path / "b" / SHARED).unlink()
    with pytest.raises(ModelError, match=r"no model\.sfz"):
        slimfuse.load(tmp_path / "b")
    slimfuse.save(pruned_mlp, tmp_path / "p")
    slimfuse.save(shared_mlp, tmp_path / "s")
    shutil.copyfile(tmp_path / "s" / SHARED, tmp_path / "p" / SHARED)
    with pytest.raises(ModelError, match="records no weight-shared layer"):
        slimfuse.load(tmp_path / "p")


def test_sfz_decodes_only_against_the_expected_shapes(shared_mlp):
    layers = {n: m.stored() for n, m in shared_mlp.named_modules() if isinstance(m, SharedLayer)}
    data = sfz.encode(layers)
    want = {n: sfz.Expected(t.codes.shape, len(t.codebook), t.bits) for n, t in layers.items()}
    back = sfz.decode(data, want)
    for n, t in layers.items():
        assert np.array_equal(back[n].codes, t.codes)
        assert back[n].codebook.tobytes() == t.codebook.tobytes()
    other = copy.deepcopy(want)
    other["net.0"] = sfz.Expected((48, 63), want["net.0"].k, want["net.0"].bits)
    with pytest.raises(ValueError, match="shape"):
        sfz.decode(data, other)


def test_quantize_flags_read_shared_bits():
    from slimfuse.cli import build_parser
    from slimfuse.errors import ConfigError
    from slimfuse.quantization.config import QuantConfig

    parser = build_parser()
    args = parser.parse_args(
        ["quantize", "--model", "m", "--data", "digits", "--mode", "shared", "--bits", "4",
         "--init", "density", "--epochs", "1", "--out", "o"]
    )  # fmt: skip
    cfg, train = QuantConfig.from_flags(args, seed=0, quiet=True)
    assert cfg == Shared(bits=4, init="density") and train is not None and train.epochs == 1
    args = parser.parse_args(
        [
            "quantize",
            "--model",
            "m",
            "--data",
            "digits",
            "--mode",
            "weight-only",
            "--bits",
            "5",
            "--out",
            "o",
        ]
    )
    with pytest.raises(ConfigError, match="bits"):
        QuantConfig.from_flags(args, seed=0, quiet=True)
    args = parser.parse_args(
        ["quantize", "--model", "m", "--data", "digits", "--mode", "shared", "--out", "o"]
    )
    assert QuantConfig.from_flags(args, seed=0, quiet=True)[0] == Shared()
