"""Weight-only int8 / int4 with group-wise scales: ``w' = round(w / s)``, ``s = max|w| / qmax``.

Each group of ``group_size`` consecutive input weights of an output channel shares one fp32
scale (symmetric, zero point 0). int4 values are packed two per byte. The packed tensors are what
the bundle stores (``qweight``, ``scales``): the ``weight_only`` edit tells
:func:`slimfuse.load` to rebuild these layers, and the weights are dequantized on load (and
cached) so compute stays in float in PyTorch.

In an ONNX export (dynamo exporter) a Linear layer becomes ONNX Runtime's ``MatMulNBits``
contrib op on the same packed weights and scales (:mod:`slimfuse.quantization.nbits`): ONNX
Runtime computes with its n-bit GEMM kernels. Convolutions, group sizes that are not a power of
two >= 16, int8 on an ONNX Runtime without 8-bit ``MatMulNBits`` and the TorchScript exporter
keep the float decoding: the dequantization is part of the graph, on constants, so the file holds
the packed weights (the exporter is told not to fold them) and ONNX Runtime folds them at load.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import ModelError, UnsupportedLayerError
from slimfuse.models.source import record
from slimfuse.quantization import nbits
from slimfuse.quantization.config import QAT, WeightOnly
from slimfuse.quantization.sqnr import sqnr_db

EDIT_KIND = "weight_only"
QMAX = {8: 127, 4: 7}


def quantize_groups(
    weight: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scales)``: q int8 of shape ``(out, groups, group_size)``, scales ``(out, groups)``.

    The input dimension is zero-padded to a multiple of ``group_size``. An all-zero group gets
    scale 1 (finite and positive), so dequantization never divides by zero.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)
    pad = (-w.shape[1]) % group_size
    if pad:
        w = F.pad(w, (0, pad))
    w = w.reshape(w.shape[0], -1, group_size)
    qmax = QMAX[bits]
    scales = w.abs().amax(dim=2) / qmax
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.clamp(torch.round(w / scales.unsqueeze(2)), -qmax - 1, qmax).to(torch.int8)
    return q, scales


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """int8 values -> storage: int8 as is, int4 two per ``uint8`` (low nibble first)."""
    if bits == 8:
        return q
    u = (q.to(torch.int16) + 8).to(torch.uint8).reshape(*q.shape[:-1], -1, 2)
    return u[..., 0] | (u[..., 1] << 4)


def unpack(stored: torch.Tensor, bits: int) -> torch.Tensor:
    """The inverse of :func:`pack` (float result)."""
    if bits == 8:
        return stored.float()
    s = stored.float()  # float arithmetic (exact for 0..255) exports to plain ONNX ops
    high = torch.floor(s / 16.0)
    low = s - 16.0 * high
    return torch.stack([low, high], dim=-1).reshape(*stored.shape[:-1], -1) - 8.0


class WeightOnlyLayer(nn.Module):
    """A Linear / Conv layer whose weight is stored packed and dequantized for float compute.

    ``accuracy_level`` is the ``MatMulNBits`` attribute its ONNX export gets (0: unset, fp32
    input; 4: int8 input, see :mod:`slimfuse.quantization.nbits`); it is not stored in bundles.
    """

    accuracy_level = 0

    @property
    def onnx_no_fold(self) -> bool:
        """The exporter must not fold the float decoding into float weights (a file larger than
        fp32; see slimfuse.exporting): only layers that export that decoding ask for it."""
        return not nbits.exportable(self)

    def __init__(
        self,
        kind: str,
        shape: list[int],
        bits: int,
        group_size: int,
        bias: torch.Tensor | None,
        conv: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.kind, self.shape, self.bits, self.group_size = kind, list(shape), bits, group_size
        self.conv = conv or {}
        fan_in = math.prod(shape[1:])
        groups = math.ceil(fan_in / group_size)
        per = group_size if bits == 8 else group_size // 2
        dtype = torch.int8 if bits == 8 else torch.uint8
        self.register_buffer("qweight", torch.zeros(shape[0], groups, per, dtype=dtype))
        self.register_buffer("scales", torch.ones(shape[0], groups))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self._cache: torch.Tensor | None = None

    @classmethod
    def from_layer(cls, layer: nn.Module, bits: int, group_size: int) -> WeightOnlyLayer:
        conv = None
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            conv = {
                "stride": list(layer.stride),
                "padding": list(layer.padding),
                "dilation": list(layer.dilation),
                "groups": layer.groups,
            }
        new = cls(
            type(layer).__name__, list(layer.weight.shape), bits, group_size, layer.bias, conv
        )
        q, scales = quantize_groups(layer.weight, bits, group_size)
        new.qweight.copy_(pack(q, bits))
        new.scales.copy_(scales)
        return new

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._cache = None

    def dequantized(self) -> torch.Tensor:
        """The float weight: ``q * s``, padding dropped, original shape."""
        w = unpack(self.qweight, self.bits) * self.scales.unsqueeze(2)
        fan_in = math.prod(self.shape[1:])
        return w.reshape(self.shape[0], -1)[:, :fan_in].reshape(self.shape)

    def weight_for_compute(self) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self.dequantized()  # in the exported graph: packed constants + dequantize
        if self._cache is None:
            self._cache = self.dequantized()
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 2 and nbits.in_dynamo_export() and nbits.exportable(self):
            return nbits.matmul_nbits(self, x)  # ONNX Runtime's MatMulNBits on the packed weights
        w = self.weight_for_compute()
        if self.kind == "Linear":
            return F.linear(x, w, self.bias)
        fn = F.conv1d if self.kind == "Conv1d" else F.conv2d
        return fn(x, w, self.bias, **self.conv)

    @torch.no_grad()
    def count_params(self) -> tuple[int, int]:
        """(weights, non-zero weights) as the float layer counts them, the bias included."""
        fan_in = math.prod(self.shape[1:])
        q = unpack(self.qweight, self.bits).reshape(self.shape[0], -1)[:, :fan_in]
        total, nonzero = q.numel(), int(torch.count_nonzero(q))
        if self.bias is not None:
            total += self.bias.numel()
            nonzero += int(torch.count_nonzero(self.bias))
        return total, nonzero

    def extra_repr(self) -> str:
        return f"{self.kind}{tuple(self.shape)}, int{self.bits}, group_size={self.group_size}"


def _kinds(bits: int) -> tuple[type, ...]:
    return (nn.Linear, nn.Conv1d, nn.Conv2d)


@torch.no_grad()
def quantize_weights(model: nn.Module, cfg: WeightOnly | QAT) -> nn.Module:
    """Weight-only int8/int4 of the selected layers, in place; per-layer SQNR in the lineage."""
    kinds = _kinds(cfg.bits)
    chosen = cfg.targeting.select(model, default_types=kinds, what="quantization")
    for name, layer in chosen.items():
        if not isinstance(layer, kinds):
            raise UnsupportedLayerError(
                f"int{cfg.bits} weight-only asked for layer {name!r} ({type(layer).__name__}); "
                f"int{cfg.bits} takes Linear, Conv1d and Conv2d layers: drop it from the "
                "targets or add it to ignore"
            )
    if not chosen:
        raise UnsupportedLayerError(
            f"int{cfg.bits} weight-only found no layer to quantize in {type(model).__name__}; "
            f"expected {', '.join(k.__name__ for k in kinds)} layers"
        )
    layers: dict[str, Any] = {}
    sqnr: dict[str, float] = {}
    for name, layer in chosen.items():
        new = WeightOnlyLayer.from_layer(layer, cfg.bits, cfg.group_size)
        sqnr[name] = round(sqnr_db(layer.weight, new.dequantized()), 2)
        layers[name] = {
            "kind": new.kind,
            "shape": new.shape,
            "conv": new.conv,
            "bias": new.bias is not None,
        }
        model.set_submodule(name, new)
    edit = {"kind": EDIT_KIND, "bits": cfg.bits, "group_size": cfg.group_size, "layers": layers}
    record(model, edit=edit)
    record(
        model,
        lineage={"stage": "quantize", "mode": "weight-only", "bits": cfg.bits, "sqnr_db": sqnr},
    )
    object.__setattr__(model, "quant_sqnr_db", sqnr)
    return model


def load_weight_only(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: put packed layers where the edit says; the state dict fills them.

    What the edit says comes from a file: the kind, bits and group size must be ones this
    module writes, and the packed sizes must be the ones the weights file holds."""
    bits, group_size = edit["bits"], edit["group_size"]
    if bits not in QMAX or not isinstance(group_size, int) or not 2 <= group_size <= 1 << 16:
        raise ModelError(f"weight_only edit: bits {bits!r}, group_size {group_size!r} not valid")
    for name, spec in edit["layers"].items():
        shape = spec["shape"]
        ok = (
            spec["kind"] in ("Linear", "Conv1d", "Conv2d")
            and isinstance(shape, list)
            and len(shape) >= 2
            and all(isinstance(d, int) and 0 < d < 1 << 24 for d in shape)
        )
        packed = state.get(f"{name}.qweight")
        groups = math.ceil(math.prod(shape[1:]) / group_size) if ok else 0
        per = group_size if bits == 8 else group_size // 2
        if not ok or packed is None or list(packed.shape) != [shape[0], groups, per]:
            raise ModelError(
                f"weight_only edit of {name!r}: {spec['kind']} {str(shape)[:40]} does not match "
                "the packed weights in the file"
            )
        bias = torch.zeros(shape[0]) if spec["bias"] else None
        model.set_submodule(
            name,
            WeightOnlyLayer(
                spec["kind"], spec["shape"], edit["bits"], edit["group_size"], bias, spec["conv"]
            ),
        )
    return model


def quantize_weight_only(model: nn.Module, cfg: WeightOnly, job: Any) -> nn.Module:
    """The ``weight-only`` handler of :func:`slimfuse.quantize` (``model`` is already a copy)."""
    return quantize_weights(model, cfg)
