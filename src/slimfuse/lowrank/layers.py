"""Factorized layers, their truncated SVD, and the ``lowrank`` structural edit.

A ``Linear`` with weight ``W`` (out x in) becomes :class:`LowRankLinear`: ``first`` (rank x in,
no bias) = ``S^1/2 V^T`` and ``second`` (out x rank, the bias) = ``U S^1/2``, from the SVD
``W = U S V^T`` truncated to ``rank``. A ``Conv1d`` / ``Conv2d`` (one group) is a channel SVD of
its kernel reshaped to ``out x (in * k)``: :class:`LowRankConv` is a conv with ``rank`` output
channels and the original kernel, stride, padding and dilation, then a 1x1 conv to ``out``
(the bias). At full rank either form computes what the original did.

With ``whiten`` (a symmetric square root ``R`` of the layer's input covariance ``C = R R^T``),
the SVD is of ``W R`` and the first factor ends with ``R^-1``: truncation then drops the
directions that least change the layer's output on that data, and the squared singular values
that go are its output error.

Every replacement is recorded as one ``lowrank`` edit (:func:`record_factorized`), so that
``slimfuse.load`` rebuilds the two layers before loading their weights (:func:`apply_lowrank`)::

    {"kind": "lowrank", "modules": {"encoder.layer.0.output.dense": {"type": "linear", "rank": 96}}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.models.source import record

CONVS: dict[str, type[nn.Module]] = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d}
KINDS: dict[type[nn.Module], str] = {nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d"}
MAX_RANK = 1 << 20


class LowRankLinear(nn.Module):
    """``second(first(x))``: a Linear of ``in_features -> out_features`` through ``rank``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


class LowRankConv(nn.Module):
    """A conv with ``rank`` output channels (the original's kernel and geometry), then 1x1."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d, rank: int) -> None:
        super().__init__()
        cls = type(conv)
        self.in_channels, self.out_channels, self.rank = conv.in_channels, conv.out_channels, rank
        self.first = cls(
            conv.in_channels,
            rank,
            conv.kernel_size,  # type: ignore[arg-type]
            stride=conv.stride,  # type: ignore[arg-type]
            padding=conv.padding,  # type: ignore[arg-type]
            dilation=conv.dilation,  # type: ignore[arg-type]
            bias=False,
            padding_mode=conv.padding_mode,
        )
        self.second = cls(rank, conv.out_channels, 1, bias=conv.bias is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def kind_of(module: nn.Module) -> str | None:
    """``linear``, ``conv1d`` or ``conv2d`` for a layer this family can factorize, else None."""
    return KINDS.get(type(module))


def matrix_shape(module: nn.Module) -> tuple[int, int]:
    """(rows, columns) of the layer's weight as a matrix: (out, in * kernel)."""
    w = module.weight
    return int(w.shape[0]), int(w[0].numel())


def breakeven(module: nn.Module) -> int:
    """The largest rank whose two factors hold fewer weights than the layer (0: none does)."""
    rows, cols = matrix_shape(module)
    return max(0, (rows * cols - 1) // (rows + cols))


def factor_weights(module: nn.Module, rank: int) -> int:
    """Weights of the two factors at ``rank`` (biases not counted)."""
    rows, cols = matrix_shape(module)
    return rank * (rows + cols)


@dataclass
class Decomposition:
    """The SVD of a layer's (optionally whitened) weight matrix, in float64."""

    u: torch.Tensor  # rows x n
    s: torch.Tensor  # n, descending
    vh: torch.Tensor  # n x cols
    unwhiten: torch.Tensor | None  # cols x cols: R^-1 (whiten), else None

    @property
    def full_rank(self) -> int:
        return int(self.s.numel())


def whitening(cov: torch.Tensor, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """``R`` and ``R^-1`` with ``R R^T`` the covariance ``cov`` (its eigenvalues floored at
    ``eps`` of the largest, so ``R`` is invertible and ``W R R^-1 = W`` exactly)."""
    cov = cov.double()
    vals, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    vals = vals.clamp(min=float(vals.max().clamp(min=1e-30)) * eps)
    root = vals.sqrt()
    return vecs * root, (vecs / root).T


@torch.no_grad()
def decompose(module: nn.Module, cov: torch.Tensor | None = None) -> Decomposition:
    """The SVD of ``module``'s weight as a matrix; with ``cov`` (its input covariance over
    the columns), of the whitened weight."""
    w = module.weight.detach().double().reshape(module.weight.shape[0], -1)
    unwhiten = None
    if cov is not None:
        root, unwhiten = whitening(cov)
        w = w @ root
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    return Decomposition(u, s, vh, unwhiten)


@torch.no_grad()
def factorized(module: nn.Module, rank: int, dec: Decomposition | None = None) -> nn.Module:
    """The two-layer replacement of ``module`` at ``rank`` (``dec``: its decomposition, else the
    plain SVD of its weight)."""
    dec = dec or decompose(module)
    if not 1 <= rank <= dec.full_rank:
        raise ModelError(f"rank {rank}: expected 1 to {dec.full_rank} for {type(module).__name__}")
    root = dec.s[:rank].sqrt()
    second = dec.u[:, :rank] * root  # rows x r
    first = root[:, None] * dec.vh[:rank]  # r x cols
    if dec.unwhiten is not None:
        first = first @ dec.unwhiten
    new = build(module, rank)
    dtype = module.weight.dtype
    new.first.weight.copy_(first.reshape(new.first.weight.shape).to(dtype))
    new.second.weight.copy_(second.reshape(new.second.weight.shape).to(dtype))
    if module.bias is not None:
        new.second.bias.copy_(module.bias)
    return new.train(module.training)


def build(module: nn.Module, rank: int) -> nn.Module:
    """An untrained :class:`LowRankLinear` / :class:`LowRankConv` shaped for ``module``."""
    if isinstance(module, nn.Linear):
        new: nn.Module = LowRankLinear(
            module.in_features, module.out_features, rank, bias=module.bias is not None
        )
    else:
        new = LowRankConv(module, rank)
    w = module.weight
    return new.to(device=w.device, dtype=w.dtype)


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def record_factorized(model: nn.Module, ranks: dict[str, tuple[str, int]], **info: Any) -> None:
    """Record one ``lowrank`` edit: ``{name: (kind, rank)}``."""
    if ranks:
        modules = {n: {"type": k, "rank": r} for n, (k, r) in ranks.items()}
        record(model, edit={"kind": "lowrank", "modules": modules, **info})


def apply_lowrank(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: replace each recorded layer by its (untrained) two-layer form; the weights
    are loaded afterwards. The recorded kind must be the rebuilt layer's and the rank the one
    the weights file holds."""
    modules = edit["modules"]
    if not isinstance(modules, dict):
        raise ModelError("lowrank edit: modules is not a mapping of layer names")
    for name, entry in modules.items():
        kind, rank = entry.get("type"), entry.get("rank")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"lowrank edit names layer {name!r}, which the model lacks") from None
        if kind_of(layer) is None or kind_of(layer) != kind:
            raise ModelError(
                f"lowrank edit of {name!r}: recorded as {str(kind)[:20]!r}, but the rebuilt "
                f"layer is a {type(layer).__name__}"
            )
        if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= MAX_RANK:
            raise ModelError(f"lowrank edit of {name!r}: rank {str(rank)[:20]} is not a rank")
        held = state.get(f"{name}.first.weight")
        if held is None or held.shape[0] != rank:
            shown = "none" if held is None else list(held.shape)
            raise ModelError(
                f"lowrank edit of {name!r}: rank {rank}, but the weights file holds "
                f"{name}.first.weight of shape {shown}"
            )
        replace(model, name, build(layer, rank))
    return model
