"""Quantization-aware training: fake-quant with a straight-through estimator, then int8 QDQ.

Each selected Linear / Conv gets a :class:`FakeQuantLayer`: its input is fake-quantized to
uint8 with a learned scale and zero point (LSQ+, ``torch._fake_quantize_learnable_per_tensor_affine``,
initialised from calibration min/max), its weight per output channel to int8 (symmetric, range
from the current weight). Rounding passes gradients straight through. Training uses the one loop
(:func:`slimfuse.training.train`), optionally with the fp32 model as distillation teacher.
Conversion exports the trained float layers and quantizes them with ONNX Runtime as static QDQ,
using the learned input ranges in place of calibrated ones.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.quantization.api import Job
from slimfuse.quantization.calibration import input_ranges
from slimfuse.quantization.config import QAT, Static, WeightOnly
from slimfuse.quantization.graph import node_modules
from slimfuse.quantization.ptq import prepare, ptq
from slimfuse.quantization.weight_only import quantize_groups, quantize_weights
from slimfuse.training import train, trainable_copy

QAT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


class FakeQuantLayer(nn.Module):
    """A Linear / Conv with fake-quantized input (uint8, learned range) and weight (int8/channel)."""

    def __init__(self, layer: nn.Module, low: float, high: float, weight_qmax: int = 127) -> None:
        super().__init__()
        self.layer = layer
        self.weight_qmax = weight_qmax  # 64 where int8 weights use 7 bits (reduce_range)
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / 255.0, 1e-8)
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.zero_point = nn.Parameter(torch.tensor([float(round(-low / scale))]))

    def input_range(self) -> tuple[float, float]:
        """The learned (low, high) of the input quantizer."""
        s = float(self.scale.detach().abs().clamp_min(1e-8))
        zp = float(torch.clamp(torch.round(self.zero_point.detach()), 0, 255))
        return -zp * s, (255 - zp) * s

    def fake_weight(self) -> torch.Tensor:
        w = self.layer.weight
        q = self.weight_qmax
        scale = (w.detach().abs().reshape(w.shape[0], -1).amax(1) / q).clamp_min(1e-8)
        zp = torch.zeros(w.shape[0], dtype=torch.int32)
        low = -q if q < 127 else -128
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, low, q)

    def fake_input(self, x: torch.Tensor) -> torch.Tensor:
        zp = torch.clamp(self.zero_point, 0, 255)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale.abs().clamp_min(1e-8), zp, 0, 255, 1.0
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _apply(self.layer, self.fake_input(x), self.fake_weight())


class FakeQuantWeight(nn.Module):
    """A Linear / Conv whose weight is fake-quantized group-wise (int4, straight-through)."""

    def __init__(self, layer: nn.Module, bits: int, group_size: int) -> None:
        super().__init__()
        self.layer, self.bits, self.group_size = layer, bits, group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.layer.weight
        q, scales = quantize_groups(w, self.bits, self.group_size)
        fan_in = w[0].numel()
        deq = (q.float() * scales.unsqueeze(2)).reshape(w.shape[0], -1)[:, :fan_in]
        return _apply(self.layer, x, w + (deq.reshape(w.shape) - w).detach())


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``layer``'s operation with weight ``w`` instead of its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, layer.bias)
    fn = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return fn(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def prepare_qat(model: nn.Module, cfg: QAT, inputs: list[Any]) -> nn.Module:
    """A trainable copy of ``model`` with fake-quant layers (input ranges from ``inputs``).

    The copy trains even when ``model`` itself is frozen (a distillation teacher, a fusion member).
    """
    model = trainable_copy(model).eval()
    if cfg.bits == 4:  # int4 weight-only QAT
        for name in cfg.targeting.select(model, default_types=QAT_TYPES, what="quantization"):
            layer = model.get_submodule(name)
            if isinstance(layer, QAT_TYPES):
                model.set_submodule(name, FakeQuantWeight(layer, 4, cfg.group_size))
        return model
    chosen = cfg.targeting.select(model, default_types=QAT_TYPES, what="quantization")
    names = [n for n, m in chosen.items() if isinstance(m, QAT_TYPES)]
    ranges = input_ranges(model, names, inputs)
    for name in names:
        layer = model.get_submodule(name)
        model.set_submodule(name, FakeQuantLayer(layer, *ranges[name], weight_qmax=cfg.weight_qmax))
    return model


def strip_fake_quant(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[float, float]]]:
    """The float model with the trained weights, and each layer's learned input range."""
    model = copy.deepcopy(model)
    learned = {}
    for name, m in list(model.named_modules()):
        if isinstance(m, FakeQuantLayer):
            learned[name] = m.input_range()
            model.set_submodule(name, m.layer)
        elif isinstance(m, FakeQuantWeight):
            model.set_submodule(name, m.layer)
    return model, learned


def quantize_qat(model: nn.Module, cfg: QAT, job: Job) -> nn.Module:
    """The ``qat`` handler of :func:`slimfuse.quantize`: prepare, train with the one loop,
    convert to an int8 QDQ graph (ONNX Runtime), or to int4 weight-only layers (``bits=4``)."""
    if job.data is None:
        raise ConfigError("qat needs training data (data=...); got none")
    assert job.train is not None  # the verb gives QAT its training config
    fq = prepare_qat(model, cfg, job.inputs)
    objective = None
    if cfg.distill:
        if job.teacher_objective is None:
            raise ConfigError(
                "qat with distill needs a distillation objective (teacher_objective=); "
                "slimfuse.quantize passes the distillation family's"
            )
        objective = job.teacher_objective(copy.deepcopy(model).eval(), job.task)
    result = train(fq, job.data, job.task, job.train, objective=objective, description="qat")
    float_model, learned = strip_fake_quant(fq)
    float_model.eval()
    if cfg.bits == 4:
        wo = WeightOnly(targets=cfg.targets, ignore=cfg.ignore, bits=4, group_size=cfg.group_size)
        out = quantize_weights(float_model, wo)
        object.__setattr__(out, "fake_quant_model", fq)
        return out
    with tempfile.TemporaryDirectory(prefix="slimfuse-qat-") as tmp:
        prep = prepare(float_model, job.inputs, job.example_inputs, Path(tmp))
        names = {n for n, _ in float_model.named_modules() if n}
        owners = node_modules(prep.graph, names)
        ranges = {}
        for node in prep.graph.node:
            owner = owners.get(node.name)
            if owner in learned and node.op_type in ("Conv", "Gemm", "MatMul"):
                ranges[node.input[0]] = learned[owner]
        static = Static(
            **{
                k: v
                for k, v in cfg.model_dump().items()
                if k in Static.model_fields and k != "mode"
            }
        )
        q = ptq(
            prep,
            static,
            ranges=ranges,
            mode="qat",
            config=cfg.to_dict(),
            train=job.train.to_dict(),
            qat={
                "epochs": result.epochs_run,
                "best_val": result.best_metric,
                "learned_ranges": learned,
            },
        )
    object.__setattr__(q, "fake_quant_model", fq)
    return q
