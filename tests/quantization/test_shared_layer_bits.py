"""Weight sharing with bits per layer (``layer_bits``): each layer at most 2^its bits values,
the bits recorded per layer and kept through save / load and model.sfz, bounds and selectors
checked in one line, the CLI flag read from the config."""

from __future__ import annotations

import json

import pytest
import torch

import slimfuse
from slimfuse.errors import ConfigError, ModelError
from slimfuse.models.bundle import META, SHARED
from slimfuse.quantization import Shared
from slimfuse.quantization.shared import SharedLayer
from slimfuse.quantization.storage import storage_report


@pytest.fixture(scope="module")
def pruned(digits):
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=digits, hidden=[48, 32])
    slimfuse.train(model, digits, config=slimfuse.TrainConfig(epochs=3, lr=3e-3, quiet=True))
    train = slimfuse.TrainConfig(epochs=1, lr=1e-3, quiet=True, restore_best=False)
    return slimfuse.prune(model, {"method": "magnitude", "sparsity": 0.7}, digits, train=train)


def _bits(model):
    return {n: m.bits for n, m in model.named_modules() if isinstance(m, SharedLayer)}


def test_layer_bits_per_layer_saved_and_reloaded(pruned, digits, tmp_path):
    cfg = Shared(bits=3, layer_bits={"net.0": 2, "re:net\\.[4]": 6})
    train = slimfuse.TrainConfig(epochs=1, lr=1e-3, quiet=True)
    shared = slimfuse.quantize(pruned, cfg, digits, train=train)
    assert _bits(shared) == {"net.0": 2, "net.2": 3, "net.4": 6}
    for name, m in shared.named_modules():
        if isinstance(m, SharedLayer):
            w = m.weight.detach()
            assert len(torch.unique(w[w != 0])) <= 2**m.bits, name
    # net.4 (32 x 10, 30% kept: 96 weights) has more than 8 distinct values at 6 bits
    assert len(shared.net[4].codebook) > 8
    slimfuse.save(shared, tmp_path / "b")
    again = slimfuse.load(tmp_path / "b")
    assert _bits(again) == _bits(shared)
    for key, value in shared.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    x = digits.example_input(32)
    assert torch.equal(shared(x), again(x))
    layers = {r["layer"]: r["bits"] for r in storage_report(tmp_path / "b")["layers"]}
    assert layers == {"net.0": 2, "net.2": 3, "net.4": 6}


def test_layer_bits_fewer_bits_fewer_bytes(pruned, digits, tmp_path):
    none = slimfuse.TrainConfig(epochs=0)
    sizes = {}
    for bits in (2, 6):
        m = slimfuse.quantize(pruned, Shared(bits=6, layer_bits={"net.0": bits}), train=none)
        slimfuse.save(m, tmp_path / str(bits))
        sizes[bits] = (tmp_path / str(bits) / SHARED).stat().st_size
    assert sizes[2] < sizes[6]


def test_a_file_with_bad_layer_bits_is_one_line(pruned, tmp_path):
    m = slimfuse.quantize(
        pruned, Shared(bits=3, layer_bits={"net.2": 4}), train=slimfuse.TrainConfig(epochs=0)
    )
    slimfuse.save(m, tmp_path / "b")
    meta_path = tmp_path / "b" / META
    text = meta_path.read_text()
    assert '"bits": 4' in text
    meta_path.write_text(text.replace('"bits": 4', '"bits": 9'))
    with pytest.raises(ModelError, match="bits 9 not valid") as exc:
        slimfuse.load(tmp_path / "b")
    assert "\n" not in str(exc.value)
    meta_path.write_text(text.replace('"bits": 4', '"bits": 5'))  # fits, but not the sfz's
    with pytest.raises(ModelError) as exc:
        slimfuse.load(tmp_path / "b")
    assert "\n" not in str(exc.value)
    json.loads(text)  # the untouched file was JSON


@pytest.mark.parametrize(
    ("layer_bits", "match"),
    [
        ({"net.0": 1}, "greater than or equal to 2"),
        ({"net.0": 9}, "less than or equal to 8"),
        ({"net.0": "4"}, "whole bits"),
        ({"net.0": True}, "whole bits"),
        ({"net.0": 4.5}, "whole bits"),
    ],
)
def test_layer_bits_bounds(layer_bits, match):
    with pytest.raises(ConfigError, match=match) as exc:
        Shared(layer_bits=layer_bits)
    assert "\n" not in str(exc.value) and "layer_bits" in str(exc.value)


def test_a_selector_matching_no_layer_is_one_line(pruned):
    cfg = Shared(layer_bits={"net.9": 4})
    with pytest.raises(ConfigError, match=r"layer_bits net\.9: matches no layer") as exc:
        slimfuse.quantize(pruned, cfg, train=slimfuse.TrainConfig(epochs=0))
    assert "\n" not in str(exc.value)


def test_layer_bits_flag_and_help():
    from slimfuse.cli import build_parser
    from slimfuse.quantization.config import QuantConfig

    parser = build_parser()
    base = ["quantize", "--model", "m", "--data", "digits", "--mode", "shared", "--out", "o"]
    args = parser.parse_args([*base, "--layer-bits", "net.0=4", "type:Linear=6"])
    cfg, _ = QuantConfig.from_flags(args, seed=0, quiet=True)
    assert cfg == Shared(layer_bits={"net.0": 4, "type:Linear": 6})
    args = parser.parse_args([*base, "--layer-bits", "net.0=9"])
    with pytest.raises(ConfigError, match=r"layer.bits"):
        QuantConfig.from_flags(args, seed=0, quiet=True)
    sub = next(
        a
        for a in parser._subparsers._group_actions[0].choices.values()
        if a.prog.endswith("quantize")
    )
    text = " ".join(sub.format_help().split())
    assert "--layer-bits KEY=VALUE" in text and "SELECTOR=BITS" in text and "[shared]" in text
