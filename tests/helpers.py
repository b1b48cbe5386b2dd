"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# `slimfuse train` of a small MLP on scikit-learn's digits for 2 epochs: a CLI run of a second
TRAIN_MLP = ["train", "--model", "mlp", "--kw", "hidden=[32]", "--data", "digits", "--epochs", "2"]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run ``python -m slimfuse ARGS`` in a fresh process; returns the CompletedProcess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "slimfuse", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


# A small random BERT (2 layers, 4 heads of 8): fast enough to prune, quantize and export in tests.
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
}


def bert_tokens(n: int = 3, length: int = 10, seed: int = 1, pad_from: int = 7) -> dict:
    """Random token ids for :data:`TINY_BERT`; the first text is padded from ``pad_from`` on."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, TINY_BERT["vocab_size"], (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, pad_from:] = 0
    return {"input_ids": ids, "attention_mask": mask}
