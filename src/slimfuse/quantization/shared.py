"""Weight sharing (trained quantization, Han et al.'s Deep Compression): per layer, the non-zero
weights clustered into at most ``2^bits`` values by k-means, each weight replaced by the index
of its cluster, and the cluster values (centroids) fine-tuned with the one training loop.

A shared layer (:class:`SharedLayer`) holds ``codebook`` (a parameter, at most ``2^bits`` floats)
and ``codes`` (an int16 buffer of the weight's shape: the cluster of each weight, -1 for a
zero). Its weight is ``codebook[codes]`` (zero where the code is -1), computed in the forward,
so the gradient of a centroid is the sum of the gradients of the weights that share it, as in
the paper, and no optimizer step can make two weights of one cluster differ or a zero non-zero:
the constraint is the layer's structure, not a hook. Pruned weights stay zero (sparsity kept).

k-means is one-dimensional (Lloyd's iterations with nearest-centroid assignment by sorted
midpoints); its initial centroids are ``linear`` (evenly spaced between the smallest and
largest weight, the paper's choice: large weights keep their own centroids), ``density``
(quantiles of the weights) or ``random`` (weights drawn at random, seeded).

The bundle stores shared layers entropy coded in ``model.sfz`` (:mod:`slimfuse.models.sfz`:
Huffman-coded cluster indices and relative sparse-index gaps); the ``shared`` edit tells
:func:`slimfuse.load` where to put them back. The ONNX export holds dense float weights (ONNX
Runtime computes with dense weights; the codec is for download and flash size).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import ConfigError, ModelError, UnsupportedLayerError
from slimfuse.models.sfz import SharedTensor
from slimfuse.models.source import record
from slimfuse.quantization.config import Shared
from slimfuse.quantization.sqnr import sqnr_db
from slimfuse.targeting import matches
from slimfuse.training import train

log = logging.getLogger("slimfuse.quantization")

EDIT_KIND = "shared"
KINDS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


class SharedLayer(nn.Module):
    """A Linear / Conv layer whose weight is ``codebook[codes]`` (zero where ``codes`` is -1)."""

    def __init__(
        self,
        kind: str,
        shape: list[int],
        bits: int,
        k: int,
        bias: torch.Tensor | None,
        conv: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.shape, self.bits = kind, list(shape), bits
        self.conv = conv or {}
        self.codebook = nn.Parameter(torch.zeros(k))
        self.register_buffer("codes", torch.full(self.shape, -1, dtype=torch.int16))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight: ``codebook[codes]``, zero where ``codes`` is -1 (differentiable in
        the codebook: a centroid's gradient is the sum of its weights')."""
        values = F.pad(self.codebook, (1, 0))  # slot 0 is the zero of pruned weights
        return values[self.codes.long() + 1]

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._cache = None

    def weight_for_compute(self) -> torch.Tensor:
        """The weight; without gradients (inference), the dense weight is kept until the
        codebook or the codes change."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.weight
        key = (self.codebook._version, self.codes._version, self.codebook.data_ptr())
        cache = self.__dict__.get("_cache")
        if cache is None or cache[0] != key:
            cache = (key, self.weight.detach())
            self.__dict__["_cache"] = cache
        return cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_for_compute()
        if self.kind == "Linear":
            return F.linear(x, w, self.bias)
        fn = F.conv1d if self.kind == "Conv1d" else F.conv2d
        return fn(x, w, self.bias, **self.conv)

    def stored(self) -> SharedTensor:
        """What ``model.sfz`` stores for this layer."""
        return SharedTensor(
            self.codes.detach().cpu().numpy().astype(np.int16),
            self.codebook.detach().cpu().float().numpy(),
            self.bits,
        )

    @torch.no_grad()
    def count_params(self) -> tuple[int, int]:
        """(weights, non-zero weights) as the float layer counts them, the bias included."""
        w = self.weight
        total, nonzero = w.numel(), int(torch.count_nonzero(w))
        if self.bias is not None:
            total += self.bias.numel()
            nonzero += int(torch.count_nonzero(self.bias))
        return total, nonzero

    def extra_repr(self) -> str:
        return (
            f"{self.kind}{tuple(self.shape)}, {len(self.codebook)} shared values ({self.bits} bits)"
        )


@torch.no_grad()
def kmeans_1d(
    values: torch.Tensor, k: int, init: str = "linear", iters: int = 30, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids, assignment)`` of 1-D ``values`` into at most ``k`` clusters: centroids
    sorted, clusters left empty dropped."""
    v = values.detach().double().reshape(-1)
    if v.numel() == 0:
        return torch.zeros(1), torch.zeros(0, dtype=torch.long)
    k = max(1, min(k, int(torch.unique(v).numel())))
    if init == "linear":
        c = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    elif init == "density":
        c = torch.quantile(v, (torch.arange(k, dtype=torch.float64) + 0.5) / k)
    else:
        g = torch.Generator().manual_seed(seed)
        c = v[torch.randperm(v.numel(), generator=g)[:k]]
    c = torch.sort(c).values
    idx = torch.zeros(v.numel(), dtype=torch.long)
    for i in range(iters + 1):
        mid = (c[1:] + c[:-1]) / 2
        new = torch.searchsorted(mid, v)
        if i and torch.equal(new, idx):
            break
        idx = new
        if i == iters:
            break
        sums = torch.zeros(len(c), dtype=torch.float64).index_add_(0, idx, v)
        counts = torch.bincount(idx, minlength=len(c)).double()
        c = torch.where(counts > 0, sums / counts.clamp(min=1), c)
        c = torch.sort(c).values
    used = torch.unique(idx)
    remap = torch.full((len(c),), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    return c[used].float(), remap[idx]


def conv_args(layer: nn.Module) -> dict[str, Any] | None:
    """A convolution's stride, padding, dilation and groups (``None`` for a Linear layer)."""
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return None
    return {
        "stride": list(layer.stride),
        "padding": list(layer.padding),
        "dilation": list(layer.dilation),
        "groups": layer.groups,
    }


@torch.no_grad()
def share_layer(layer: nn.Module, bits: int, init: str, iters: int, seed: int) -> SharedLayer:
    """The shared version of ``layer``: its non-zero weights clustered, its zeros kept."""
    conv = conv_args(layer)
    w = layer.weight.detach().float().cpu()
    nz = w != 0
    centroids, assign = kmeans_1d(w[nz], 1 << bits, init, iters, seed)
    new = SharedLayer(type(layer).__name__, list(w.shape), bits, len(centroids), layer.bias, conv)
    new.codebook.copy_(centroids)
    codes = torch.full(w.shape, -1, dtype=torch.int16)
    codes[nz] = assign.to(torch.int16)
    new.codes.copy_(codes)
    return new.to(layer.weight.device)


def layer_bits(cfg: Shared, layers: dict[str, nn.Module]) -> dict[str, int]:
    """The index bits of each layer: the first ``layer_bits`` selector that matches it, else
    ``bits``; a selector that matches none of ``layers`` is an error (one line)."""
    out: dict[str, int] = {}
    used: set[str] = set()
    for name, layer in layers.items():
        for selector, bits in cfg.layer_bits.items():
            if matches(selector, name, layer):
                out[name] = bits
                used.add(selector)
                break
        else:
            out[name] = cfg.bits
    unused = [s for s in cfg.layer_bits if s not in used]
    if unused:
        raise ConfigError(
            f"layer_bits {', '.join(unused)[:80]}: matches no layer that weight sharing "
            f"takes (targeted: {', '.join(layers)[:120]})"
        )
    return out


def share_weights(model: nn.Module, cfg: Shared, seed: int = 0) -> nn.Module:
    """Weight sharing of the selected layers, in place (no fine-tuning); records the edit."""
    chosen = cfg.targeting.select(model, default_types=KINDS, what="weight sharing")
    for name, layer in chosen.items():
        if not isinstance(layer, KINDS):
            raise UnsupportedLayerError(
                f"weight sharing asked for layer {name!r} ({type(layer).__name__}); it takes "
                "Linear, Conv1d and Conv2d layers: drop it from the targets or add it to ignore"
            )
    if not chosen:
        raise UnsupportedLayerError(
            f"weight sharing found no layer in {type(model).__name__}; expected Linear, Conv1d "
            "or Conv2d layers"
        )
    bits = layer_bits(cfg, chosen)
    layers: dict[str, Any] = {}
    sqnr: dict[str, float] = {}
    for name, layer in chosen.items():
        new = share_layer(layer, bits[name], cfg.init, cfg.kmeans_iters, seed)
        sqnr[name] = round(sqnr_db(layer.weight, new.weight), 2)
        layers[name] = {
            "kind": new.kind,
            "shape": new.shape,
            "k": len(new.codebook),
            "conv": new.conv,
            "bias": new.bias is not None,
            "bits": new.bits,
        }
        model.set_submodule(name, new)
    record(model, edit={"kind": EDIT_KIND, "bits": cfg.bits, "layers": layers})
    object.__setattr__(model, "quant_sqnr_db", sqnr)
    return model


def shared_layers(model: nn.Module) -> dict[str, SharedLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, SharedLayer)}


def quantize_shared(model: nn.Module, cfg: Shared, job: Any) -> nn.Module:
    """The ``shared`` handler of :func:`slimfuse.quantize`: cluster, then fine-tune the
    centroids (and the rest of the model's parameters) with the one training loop."""
    seed = job.train.seed if job.train is not None else 0
    model = share_weights(model, cfg, seed)
    before = dict(model.quant_sqnr_db)
    trained = None
    if job.train is not None and job.train.epochs > 0:
        if job.data is None:
            raise ModelError("weight sharing with epochs > 0 needs data to fine-tune on")
        model.requires_grad_(True)
        result = train(model, job.data, job.task, job.train, description="share finetune")
        model.eval()
        trained = {"epochs": job.train.epochs, "best_epoch": getattr(result, "best_epoch", None)}
    layers = shared_layers(model)
    record(
        model,
        lineage={
            "stage": "quantize",
            "mode": "shared",
            "bits": cfg.bits,
            **({"layer_bits": {n: m.bits for n, m in layers.items()}} if cfg.layer_bits else {}),
            "init": cfg.init,
            "values": {n: len(m.codebook) for n, m in layers.items()},
            "sqnr_db_before_training": before,
            "finetune": trained,
        },
    )
    return model


def load_shared(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: put shared layers where the edit says (their codes and codebooks come from
    ``model.sfz``, decoded against these layers). What the edit says comes from a file: each
    layer must replace a Linear / Conv of the same kind and weight shape in the rebuilt model,
    with at most ``2^bits`` values; the convolution settings are taken from that layer."""
    default = edit["bits"]
    for name, spec in edit["layers"].items():
        bits = spec.get("bits", default) if isinstance(spec, dict) else default
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ModelError(f"shared edit: bits {str(bits)[:20]} not valid (expected 2..8)")
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"shared edit names layer {name!r}, which the model lacks") from None
        k = spec["k"]
        ok = (
            spec["kind"] == type(old).__name__
            and isinstance(old, KINDS)
            and spec["shape"] == list(old.weight.shape)
            and isinstance(k, int)
            and not isinstance(k, bool)
            and 1 <= k <= 1 << bits
            and bool(spec["bias"]) == (getattr(old, "bias", None) is not None)
        )
        if not ok:
            raise ModelError(
                f"shared edit of {name!r}: {str(spec.get('kind'))[:20]} "
                f"{str(spec.get('shape'))[:40]} with {str(k)[:12]} values does not fit the "
                f"model's {type(old).__name__} {list(getattr(old, 'weight', torch.empty(0)).shape)}"
            )
        bias = torch.zeros(spec["shape"][0]) if spec["bias"] else None
        # the convolution's settings are the rebuilt layer's own, not the file's
        model.set_submodule(
            name, SharedLayer(spec["kind"], spec["shape"], bits, k, bias, conv_args(old))
        )
    return model
