"""Teachers: one model or several (an ensemble), frozen copies in eval mode, with an output cache.

A teacher never trains and the caller's model is never changed: the objective works on a copy
(:func:`~slimfuse.training.freeze`: ``requires_grad=False``, eval mode) that runs under
``torch.no_grad()``. Several teachers are one :class:`TeacherEnsemble`: the (weighted) average
of their probabilities softened at the KD temperature (returned so that KD's softmax at that
temperature gives it back), or of their logits.

:class:`TeacherCache` keeps the teacher's outputs (and hint features) per sample, keyed by a
hash of the sample's input bytes. A deterministic data pipeline (tensors without random
augmentation, the built-in sets) therefore runs the teachers once: from the second epoch on
every batch is served from the cache. A sample whose bytes change (augmentation) simply misses,
so the cache can never serve a stale output.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.training import freeze

EnsembleSpace = Literal["probs", "probs-t1", "logits"]
ENSEMBLE_SPACES: tuple[str, ...] = ("probs", "probs-t1", "logits")


class TeacherEnsemble(nn.Module):
    """The weighted mean of several teachers' probabilities or of their raw outputs.

    - ``space="probs"``: the mean of the teachers' probabilities at ``temperature`` T, returned
      as ``T * log sum_i w_i softmax(z_i / T)``: ``softmax(output / T)`` is exactly
      ``sum_i w_i softmax(z_i / T)``, the softened ensemble that KD at temperature T matches
      (at T = 1: the log of the mean probability).
    - ``space="probs-t1"``: the log of the mean probability at T = 1, whatever ``temperature``;
      KD at T then matches ``softmax(log p / T)``, proportional to ``p^(1/T)``: the mean
      probability sharpened or flattened, not the mean of the softened ones (slimfuse's
      earlier target).
    - ``space="logits"``: the mean of the raw outputs (regression and embeddings too).

    ``weights`` are normalised to sum to 1 (``None``: equal); a teacher with weight 0 is not
    run. Members stay in eval mode. Hint layers are named ``members.<name>.<layer>``
    (``members.teacher0.conv2``)."""

    def __init__(
        self,
        members: Sequence[tuple[str, nn.Module]],
        *,
        space: EnsembleSpace = "probs",
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if space not in ENSEMBLE_SPACES:
            raise ConfigError(f"space {space!r}: expected one of {', '.join(ENSEMBLE_SPACES)}")
        if not temperature > 0:
            raise ConfigError(f"temperature {temperature!r}: expected a number > 0")
        self.names = [n for n, _ in members]
        self.members = nn.ModuleDict(dict(members))
        self.space = space
        self.temperature = float(temperature)
        n = len(self.names)
        if weights is None:
            w = torch.full((n,), 1.0 / n)
        else:
            w64 = torch.as_tensor(list(weights), dtype=torch.float64)
            w = (w64 / w64.sum()).float()
        self.register_buffer("weights", w)
        self._active = [i for i in range(n) if float(w[i]) > 0]

    def train(self, mode: bool = True) -> TeacherEnsemble:
        super().train(mode)
        for m in self.members.values():
            m.eval()  # teachers stay frozen: no BatchNorm updates, no dropout
        return self

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        outs = [self.members[self.names[i]](*args, **kwargs) for i in self._active]
        shapes = {self.names[i]: tuple(o.shape) for i, o in zip(self._active, outs, strict=True)}
        if len(set(shapes.values())) > 1:
            seen = ", ".join(f"{k}: {v}" for k, v in shapes.items())
            raise ConfigError(
                f"the teachers give different output shapes ({seen}); expected equal shapes"
            )
        w = self.weights[self._active]
        if self.space == "logits":
            return sum(o * w[k] for k, o in enumerate(outs))  # type: ignore[return-value]
        t = self.temperature if self.space == "probs" else 1.0
        logp = torch.stack(
            [F.log_softmax(o / t, dim=-1) + torch.log(w[k]) for k, o in enumerate(outs)]
        )
        top = logp.max(dim=0).values.detach()  # log-sum-exp over the teachers, stably
        mixed = top + torch.log(torch.exp(logp - top).sum(dim=0))
        return mixed * t if t != 1.0 else mixed


def make_teacher(
    teacher: nn.Module | Sequence[nn.Module] | Sequence[tuple[str, nn.Module]],
    *,
    space: EnsembleSpace = "probs",
    weights: Sequence[float] | None = None,
    temperature: float = 1.0,
) -> nn.Module:
    """One frozen teacher module from a model, a list of models or ``(name, model)`` pairs:
    frozen copies, so the caller's models keep their mode, gradients and hooks' targets.
    Several are a :class:`TeacherEnsemble` (``space``, ``weights``, and the ``temperature`` its
    ``probs`` are softened at: the KD loss's)."""
    members = [teacher] if isinstance(teacher, nn.Module) else list(teacher or [])
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
    names = [n for n, _ in pairs]
    bad = sorted({n for n in names if not n or "." in n or names.count(n) > 1})
    if bad:
        raise ConfigError(f"teacher names {bad}: expected unique, non-empty names without dots")
    frozen = [(name, freeze(copy.deepcopy(m))) for name, m in pairs]
    if len(frozen) == 1:
        return frozen[0][1]
    return freeze(TeacherEnsemble(frozen, space=space, weights=weights, temperature=temperature))


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
    rows = [t.detach().reshape(n, -1).contiguous().cpu().numpy() for t in tensors]
    keys = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for r in rows:
            h.update(r[i].tobytes())
        keys.append(h.digest())
    return keys


Row = tuple[torch.Tensor, dict[str, torch.Tensor]]


class TeacherCache:
    """Teacher outputs and features per sample, up to ``max_mb`` megabytes.

    Only the samples of a batch that are not cached yet go through the teacher, so a cache that
    holds part of the data set still saves that part.
    """

    def __init__(self, max_mb: float = 1024.0) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self.bytes = 0
        self.hits = 0  # samples served from the cache
        self.misses = 0  # samples that ran through the teacher
        self._rows: dict[bytes, Row] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def lookup(self, keys: list[bytes]) -> list[Row | None]:
        rows = [self._rows.get(k) for k in keys]
        n_hit = sum(r is not None for r in rows)
        self.hits += n_hit
        self.misses += len(rows) - n_hit
        return rows

    def to(self, device: Any) -> TeacherCache:
        """The cached rows moved to ``device`` (they follow the teacher's device)."""
        self._rows = {
            k: (out.to(device), {n: f.to(device) for n, f in feats.items()})
            for k, (out, feats) in self._rows.items()
        }
        return self

    def put(self, key: bytes, row: Row) -> None:
        if key in self._rows:
            return
        out, feats = row
        size = out.numel() * out.element_size()
        size += sum(v.numel() * v.element_size() for v in feats.values())
        if self.bytes + size <= self.max_bytes:
            self._rows[key] = row
            self.bytes += size


def split_rows(
    out: torch.Tensor, feats: dict[str, torch.Tensor], lengths: torch.Tensor | None
) -> list[Row]:
    """Per-sample ``(output, features)``; sequence outputs and features keep only the sample's
    real tokens (a batch of other lengths pads them again, :func:`stack_rows`)."""
    rows = []
    for i in range(len(out)):
        oi = out[i]
        if lengths is not None and out.dim() >= 3:
            oi = oi[: int(lengths[i])]
        row_feats = {}
        for name, f in feats.items():
            fi = f[i]
            if lengths is not None and f.dim() >= 3:
                fi = fi[: int(lengths[i])]
            row_feats[name] = fi.detach().clone()
        rows.append((oi.detach().clone(), row_feats))
    return rows


def stack_rows(rows: list[Row], lengths: torch.Tensor | None) -> Row:
    """The batch back from per-sample rows (sequence outputs and features zero-padded to the
    batch width)."""
    out = _stack_padded([r[0] for r in rows], lengths)
    feats = {name: _stack_padded([r[1][name] for r in rows], lengths) for name in rows[0][1]}
    return out, feats


def select(inputs: Any, index: list[int]) -> Any:
    """The samples ``index`` of a batch's inputs (a tensor, a tuple or a dict of tensors)."""
    idx = torch.tensor(index, dtype=torch.long)
    if isinstance(inputs, dict):
        return {k: v[idx] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(v[idx] if isinstance(v, torch.Tensor) else v for v in inputs)
    return inputs[idx]


def _stack_padded(parts: list[torch.Tensor], lengths: torch.Tensor | None) -> torch.Tensor:
    if lengths is None or parts[0].dim() < 2:
        return torch.stack(parts)
    width = int(lengths.max())
    out = parts[0].new_zeros((len(parts), width, *parts[0].shape[1:]))
    for i, p in enumerate(parts):
        out[i, : len(p)] = p[:width]
    return out
