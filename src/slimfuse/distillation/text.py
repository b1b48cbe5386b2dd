"""Text as :class:`~slimfuse.data.Data` for encoders (distillation, pruning, quantization).

:func:`encode_text` turns text data (``load_data("notes.txt")``, ``pydocs``, ...) into the
token data an encoder reads; :func:`embedding_data` tokenizes train / val / test texts once
and pairs each with its teacher embedding (the reference of the ``embedding`` task, whose
metric is the mean cosine to it).
A sample is ``({"input_ids", "attention_mask"}, target)``; the distillation objective drops
all-padding columns per batch, so padding to ``max_length`` costs nothing in training.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from slimfuse.data import Data
from slimfuse.data.text import MAX_LENGTH, is_text
from slimfuse.distillation.objectives import trim_padding
from slimfuse.errors import DataError
from slimfuse.models.hf import tokenize, tokenizer_of

log = logging.getLogger(__name__)


class TokenDataset(Dataset):
    """Token ids and masks ``(N, L)`` with targets ``(N, D)``."""

    def __init__(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, target: torch.Tensor
    ) -> None:
        self.input_ids, self.attention_mask, self.target = input_ids, attention_mask, target

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> torch.Tensor:
        """Tokens per sample (for ``TrainConfig(group_by_length=True)``)."""
        return self.attention_mask.sum(1)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return (
            {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]},
            self.target[i],
        )


@torch.no_grad()
def embed(model: nn.Module, inputs: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """``model``'s embeddings of tokenized inputs, batch by batch, padding trimmed per batch."""
    model.eval()
    outs = []
    n = len(inputs["input_ids"])
    for start in range(0, n, batch_size):
        part, _ = trim_padding({k: v[start : start + batch_size] for k, v in inputs.items()})
        outs.append(model(**part))
    return torch.cat(outs)


def embedding_data(
    teacher: nn.Module,
    texts: dict[str, list[str]],
    *,
    tokenizer: Any = None,
    max_length: int = 128,
    train_max_length: int | None = None,
    train_targets: bool = True,
    name: str = "text",
) -> Data:
    """Train / val / test token data whose targets are ``teacher``'s embeddings.

    ``train_max_length`` truncates the training texts harder than the evaluation texts
    (cheaper steps). With ``train_targets=False`` the training split gets empty targets
    (shape ``(N, 0)``): distillation asks the teacher itself (and caches its answers), so the
    teacher does not need a separate pass over the training texts.
    """
    missing = [s for s in ("train", "val", "test") if not texts.get(s)]
    if missing:
        raise DataError(
            f"text splits {', '.join(missing)} are empty or missing; expected train, val and test"
        )
    tokenizer = tokenizer or tokenizer_of(teacher)
    sets = {}
    for split in ("train", "val", "test"):
        width = (train_max_length or max_length) if split == "train" else max_length
        enc = tokenize(list(texts[split]), tokenizer, max_length=width)
        if enc["input_ids"].shape[1] < width:  # fixed width: any batch collates
            pad = width - enc["input_ids"].shape[1]
            enc = {k: nn.functional.pad(v, (0, pad)) for k, v in enc.items()}
        if split == "train" and not train_targets:
            target = torch.zeros(len(enc["input_ids"]), 0)
        else:
            target = embed(teacher, enc)
        sets[split] = TokenDataset(enc["input_ids"], enc["attention_mask"], target)
    return Data(
        name=name,
        train=sets["train"],
        val=sets["val"],
        test=sets["test"],
        num_classes=None,
        input_shape=(max_length,),
        meta={"max_length": max_length, "train_max_length": train_max_length or max_length},
    )


def encode_text(
    model: nn.Module,
    data: Data,
    *,
    tokenizer: Any = None,
    train_targets: bool = True,
    what: str = "the model",
) -> Data:
    """Text data as token data for the encoder ``model``; any other data is returned as is.

    Every split is tokenized by :func:`~slimfuse.models.hf.tokenize` (``tokenizer``: default the
    model's own, see :func:`~slimfuse.models.hf.tokenizer_of`) to ``data.meta["max_length"]``
    tokens (default 128), and each paragraph's target is ``model``'s own embedding of it: the
    reference the ``embedding`` task's cosine measures a compressed model's fidelity to. ``train_targets=False``: see
    :func:`embedding_data` (distillation asks its teachers itself).
    """
    if not is_text(data):
        return data
    max_length = int(data.meta.get("max_length", MAX_LENGTH))
    config = getattr(getattr(model, "encoder", None), "config", None)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise DataError(
            f"max_length {max_length}: {what} reads at most {positions} tokens per paragraph"
        )
    tok = tokenizer or tokenizer_of(model)
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and len(tok) > vocab:
        raise DataError(
            f"the tokenizer has {len(tok):,} tokens but {what} embeds {vocab:,}; expected the "
            "model's own tokenizer (a Hugging Face folder with its tokenizer files)"
        )
    texts = {s: list(getattr(data.split(s), "texts", [])) for s in ("train", "val", "test")}
    n = sum(len(t) for s, t in texts.items() if train_targets or s != "train")
    log.info(
        f"{data.name}: {sum(map(len, texts.values())):,} paragraphs, tokenized to at most "
        f"{max_length} tokens; reference embeddings of {n:,} from {what}"
    )
    out = embedding_data(
        model,
        texts,
        tokenizer=tok,
        max_length=max_length,
        train_targets=train_targets,
        name=data.name,
    )
    out.meta = {**data.meta, **out.meta, "kind": "tokens"}
    return out
