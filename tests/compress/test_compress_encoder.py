"""slimfuse compress on a text encoder: the budget is the mean cosine to the reference's
embeddings, and the space is the encoder's (int8, FFN/head pruning, low rank, a shallower
student), each move run once on a tiny real BERT and plain-text paragraphs."""

from __future__ import annotations

import json
import random

import pytest
import torch

import slimfuse
from slimfuse.autocompress import CompressConfig
from slimfuse.autocompress.space import Space, enqueued
from slimfuse.cli import main

pytest.importorskip("transformers")

WORDS = [
    "the",
    "list",
    "returns",
    "sorted",
    "items",
    "by",
    "key",
    "value",
    "function",
    "module",
    "class",
    "string",
    "parse",
]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    config = {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 16,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    encoder = slimfuse.build_model("hf_encoder", config=config).eval()
    slimfuse.save(encoder, root / "encoder")
    rng = random.Random(0)
    paragraphs = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "." for _ in range(60)
    ]
    (root / "notes.txt").write_text("\n\n".join(paragraphs))
    out = root / "out"
    code = main(
        [
            "compress",
            "--model",
            str(root / "encoder"),
            "--data",
            str(root / "notes.txt"),
            "--max-drop",
            "0.02",
            "--max-length",
            "16",
            "--batch",
            "1",
            "--trials",
            "4",
            "--epochs",
            "1",
            "--out",
            str(out),
        ]
    )
    return code, out


def test_encoder_search_keeps_the_cosine_budget(searched) -> None:
    code, out = searched
    assert code == 0
    summary = json.loads((out / "compress.json").read_text())
    assert summary["reference"]["task"] == "embedding"
    assert summary["chosen"]["drop"] <= 0.02 + 1e-9
    assert summary["test"]["metric"] == "cosine" and summary["test"]["batch"] == 1
    for row in summary["trials"]:  # every figure is a cosine to the reference's embeddings
        assert 0.0 < row["val_metric"] <= 1.0 + 1e-6
    assert "val cosine" in (out / "pareto.md").read_text()


def test_encoder_moves_run_once_each_first(searched) -> None:
    _, out = searched
    chains = [
        json.loads((folder / "trial.json").read_text())["chain"]
        for folder in sorted((out / "trials").iterdir())
    ]
    assert [c[0].get("mode") for c in chains[:3]] == ["dynamic", "dynamic", "static"]
    assert chains[1][0]["smoothquant"] == 1.0  # outlier smoothing, then dynamic
    assert chains[3][0]["stage"] == "prune" and chains[3][0]["recovery"] == "distill"
    # the rest of the queue: one run of each trained move (the search above ran 4 trials)
    queued = enqueued(CompressConfig(), Space(encoder_blocks=4))
    assert [q["move"] for q in queued] == ["ptq", "ptq", "ptq", "prune", "factorize", "depth"]
    assert queued[-1]["depth"] == 3  # 2/3 of 4 blocks


def test_encoder_recipe_reproduces_the_chosen_model(searched, tmp_path) -> None:
    _, out = searched
    assert main(["run", str(out / "recipe.yaml"), "--out", str(tmp_path / "again")]) == 0
    metrics = json.loads((tmp_path / "again" / "metrics.json").read_text())
    last = [r for r in metrics["stages"] if r["engine"] == "onnxruntime"][-1]
    chosen = json.loads((out / "metrics.json").read_text())
    kept = [r for r in chosen["stages"] if r["stage"] == "chosen" and r["engine"] == "onnxruntime"]
    assert last["metric_value"] == pytest.approx(kept[0]["metric_value"], abs=1e-4)
