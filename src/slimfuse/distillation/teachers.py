"""Teachers: one model or several (an ensemble), frozen and in eval mode, with an output cache.

Several teachers are combined with :class:`slimfuse.fusion.ensemble.MeanFusion` (the average of
their probabilities by default, or of their logits). A teacher never trains: its parameters get
``requires_grad=False``, it stays in eval mode and runs under ``torch.no_grad()``.

:class:`TeacherCache` keeps the teacher's outputs (and hint features) per sample, keyed by a
hash of the sample's input bytes. A deterministic data pipeline (tensors without random
augmentation, the built-in sets) therefore runs the teachers once: from the second epoch on
every batch is served from the cache. A sample whose bytes change (augmentation) simply misses,
so the cache can never serve a stale output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from slimfuse.errors import ConfigError


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher's weights cannot change."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def make_teacher(
    teacher: nn.Module | Sequence[nn.Module] | Sequence[tuple[str, nn.Module]],
    *,
    space: Literal["probs", "logits"] = "probs",
    weights: Sequence[float] | None = None,
) -> nn.Module:
    """One frozen teacher module from a model, a list of models or ``(name, model)`` pairs."""
    if isinstance(teacher, nn.Module):
        return freeze(teacher)
    members = list(teacher) if teacher is not None else []
    if not members:
        raise ConfigError("the teacher list is empty; expected at least one teacher model")
    pairs: list[tuple[str, nn.Module]] = []
    for i, m in enumerate(members):
        if isinstance(m, tuple) and len(m) == 2 and isinstance(m[1], nn.Module):
            pairs.append((str(m[0]), m[1]))
        elif isinstance(m, nn.Module):
            pairs.append((f"teacher{i}", m))
        else:
            raise ConfigError(
                f"teacher {i} is {type(m).__name__}; expected an nn.Module or a (name, module) pair"
            )
    if len(pairs) == 1:
        return freeze(pairs[0][1])
    if space not in ("probs", "logits"):
        raise ConfigError(f"ensemble space {space!r}: expected probs or logits")
    from slimfuse.fusion.ensemble import MeanFusion

    for _, m in pairs:
        freeze(m)
    return freeze(MeanFusion(pairs, space=space, weights=list(weights) if weights else None))


def sample_keys(inputs: Any) -> list[bytes]:
    """A digest per sample of the batch's inputs (a tensor, a tuple or a dict of tensors)."""
    if isinstance(inputs, dict):
        tensors = [inputs[k] for k in sorted(inputs)]
    elif isinstance(inputs, (tuple, list)):
        tensors = list(inputs)
    else:
        tensors = [inputs]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    n = len(tensors[0])
    rows = [t.detach().reshape(n, -1).contiguous().numpy() for t in tensors]
    keys = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for r in rows:
            h.update(r[i].tobytes())
        keys.append(h.digest())
    return keys


class TeacherCache:
    """Teacher outputs and features per sample, up to ``max_mb`` megabytes."""

    def __init__(self, max_mb: float = 1024.0) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def get(
        self, keys: list[bytes], lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """The batch's cached outputs, or ``None`` if any sample is missing."""
        rows = [self._rows.get(k) for k in keys]
        if any(r is None for r in rows):
            self.misses += 1
            return None
        self.hits += 1
        out = torch.stack([r[0] for r in rows])  # type: ignore[index]
        feats: dict[str, torch.Tensor] = {}
        for name in rows[0][1]:  # type: ignore[index]
            parts = [r[1][name] for r in rows]  # type: ignore[index]
            feats[name] = _stack_padded(parts, lengths)
        return out, feats

    def put(
        self,
        keys: list[bytes],
        out: torch.Tensor,
        feats: dict[str, torch.Tensor],
        lengths: torch.Tensor | None,
    ) -> None:
        for i, k in enumerate(keys):
            if k in self._rows:
                continue
            row_feats = {}
            for name, f in feats.items():
                fi = f[i]
                if lengths is not None and f.dim() >= 3 and f.shape[1] >= int(lengths.max()):
                    fi = fi[: int(lengths[i])]  # keep only the sample's real tokens
                row_feats[name] = fi.detach().clone()
            o = out[i].detach().clone()
            size = o.numel() * o.element_size() + sum(
                v.numel() * v.element_size() for v in row_feats.values()
            )
            if self.bytes + size > self.max_bytes:
                return
            self._rows[k] = (o, row_feats)
            self.bytes += size


def _stack_padded(parts: list[torch.Tensor], lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None or parts[0].dim() < 2:
        return torch.stack(parts)
    width = int(lengths.max())
    out = parts[0].new_zeros((len(parts), width, *parts[0].shape[1:]))
    for i, p in enumerate(parts):
        out[i, : len(p)] = p[:width]
    return out
