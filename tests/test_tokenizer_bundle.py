"""A Hugging Face encoder with its own tokenizer keeps it through bundles: every command reads
the bundle's text with the tokenizer the model was trained with, and a bundle's tokenizer files
are checked before anything reads them."""

from __future__ import annotations

import json
import random

import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.errors import ModelError
from slimfuse.models.hf import tokenizer_dir, tokenizer_of

tf = pytest.importorskip("transformers")

WORDS = ["the", "list", "returns", "sorted", "items", "by", "key", "value", "module", "class"]


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny BERT whose WordPiece vocabulary (22 tokens) is not all-MiniLM-L6-v2's (30,522)."""
    root = tmp_path_factory.mktemp("hf")
    folder = root / "tiny-bert"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *WORDS, "##s", "##ed"]
    tf.BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(folder)
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    tf.BertModel(config).save_pretrained(folder)
    rng = random.Random(0)
    notes = root / "notes.txt"
    notes.write_text(
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) + "." for _ in range(40))
    )
    return folder, notes, len(vocab)


def test_bundle_keeps_the_models_tokenizer(hf_folder, tmp_path, capsys):
    folder, notes, vocab = hf_folder
    model = slimfuse.load_model(str(folder))
    assert tokenizer_dir(model) == folder and len(tokenizer_of(model)) == vocab
    bundle = slimfuse.save(model, tmp_path / "b")
    assert sorted(p.name for p in (bundle / "tokenizer").iterdir()) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    again = slimfuse.load(bundle)
    assert tokenizer_dir(again) == bundle / "tokenizer" and len(tokenizer_of(again)) == vocab
    # a command on the bundle reads text with the model's tokenizer (MiniLM's 30,522 tokens
    # would be refused: the model embeds 22), and the bundle it writes keeps it too
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(bundle), "--data", str(notes), "--max-length", "16",
                 "--mode", "dynamic", "--quiet", "--out", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (
        folder / "tokenizer.json"
    ).read_text()
    assert main(["eval", "--model", str(out), "--data", str(notes), "--max-length", "16",
                 "--engine", "torch", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert 0.9 < rows[0]["metric_value"] <= 1.0 + 1e-6


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda t: (t / "run.py").write_text("print('pwned')"), "not a tokenizer file"),
        (lambda t: (t / "tokenizer.json").unlink(), "no tokenizer_config.json and vocabulary"),
    ],
)
def test_tampered_tokenizer_folder(hf_folder, tmp_path, tamper, message):
    folder, _, _ = hf_folder
    bundle = slimfuse.save(slimfuse.load_model(str(folder)), tmp_path / "b")
    tamper(bundle / "tokenizer")
    with pytest.raises(ModelError, match=message):
        slimfuse.load(bundle)


def test_broken_tokenizer_file_is_one_line(hf_folder, tmp_path, capsys):
    folder, notes, _ = hf_folder
    bundle = slimfuse.save(slimfuse.load_model(str(folder)), tmp_path / "b")
    (bundle / "tokenizer" / "tokenizer.json").write_text("{")
    assert main(["eval", "--model", str(bundle), "--data", str(notes), "--max-length", "16",
                 "--engine", "torch"]) == 2  # fmt: skip
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and "cannot load its tokenizer" in err[0], err


def test_large_tokenizer_file_is_refused(hf_folder, tmp_path, monkeypatch):
    import slimfuse.models.hf as hf

    folder, _, _ = hf_folder
    bundle = slimfuse.save(slimfuse.load_model(str(folder)), tmp_path / "b")
    monkeypatch.setattr(hf, "TOKENIZER_BYTES", 100)
    with pytest.raises(ModelError, match=r"tokenizer.json: [\d,]+ bytes, larger than"):
        slimfuse.load(bundle)


def test_zoo_encoder_bundle_has_no_tokenizer_folder(tmp_path):
    config = {"model_type": "bert", "vocab_size": 64, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16}  # fmt: skip
    bundle = slimfuse.save(slimfuse.build_model("hf_encoder", config=config), tmp_path / "b")
    assert not (bundle / "tokenizer").exists()
    assert tokenizer_dir(slimfuse.load(bundle)) is None
