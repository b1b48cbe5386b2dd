"""Quantization-aware training: fake-quant with a straight-through estimator, then int8 QDQ.

Training rounds what the deployed int8 graph rounds, on the grid it rounds to:

- **Weights**: each selected Linear / Conv becomes a :class:`FakeQuantLayer`: its weight is
  fake-quantized to int8 as ONNX Runtime quantizes it (symmetric, per output channel unless
  ``per_channel`` is off, 7 bits with ``reduce_range``). A Conv followed by BatchNorm is
  quantized *folded*: the export folds BatchNorm into the convolution and ONNX Runtime
  quantizes the folded weight ``W * gamma / sqrt(running_var + eps)``, so that is the weight
  QAT fake-quantizes (as ``torch.ao``'s QAT ConvBn modules and NNCF do). While BatchNorm still
  learns, the convolution runs with the quantized folded weight, its output is divided back by
  the fold factor and BatchNorm normalises it with the batch statistics (which keeps BatchNorm's
  gradient and its running statistics current, while the weight grid is the running-statistics
  one that deploys); for the last third of the training steps the statistics are frozen and
  the layer computes exactly the deployed convolution, folded weight and bias.
- **Activations**: every tensor the int8 graph quantizes (inputs of convolutions and linear
  layers, and also the outputs of convolutions feeding a residual ``Add``, ``Add`` / ``Concat``
  inputs and outputs, the graph output...) gets an :class:`~slimfuse.quantization.qat_sites.ActQuant`
  with a learned range (LSQ step size, gradient scaled by ``1 / sqrt(numel * 255)``, LSQ+ zero
  point), initialised from calibration: the float graph is quantized once to see which tensors
  that is, and :mod:`slimfuse.quantization.qat_sites` finds them in the PyTorch forward.

Training uses the one loop (:func:`slimfuse.training.train`), optionally with the fp32 model as
distillation teacher. Conversion exports the trained float model (BatchNorm folded by the
exporter's CPU passes) and quantizes it with ONNX Runtime as static QDQ, with the learned ranges
in place of calibrated ones. ``bits=4`` trains int4 weight-only layers instead (no activation
quantization, no folding: the int4 model keeps its BatchNorm).

Not simulated: the scale of a BatchNorm that follows no convolution (or of a LayerNorm), which
ONNX Runtime's QDQ graph rounds to int8 too; and a layer kept fp32 (``ignore``) between
quantized ones, whose arithmetic ONNX Runtime's graph optimizations change (off by one step in
a few percent of its outputs, measured on the MNIST-1D CNN).
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import ConfigError, SlimfuseWarning
from slimfuse.quantization.api import Job
from slimfuse.quantization.config import QAT, Static, WeightOnly
from slimfuse.quantization.graph import node_modules
from slimfuse.quantization.ptq import Prepared, calibration_cache, prepare, ptq, quantize_graph
from slimfuse.quantization.qat_sites import (
    ActQuant,
    Apply,
    Group,
    Key,
    match,
    quantized_tensors,
    record,
    run_with_sites,
    sites_of,
    tensor_values,
)
from slimfuse.quantization.weight_only import quantize_groups, quantize_weights
from slimfuse.training import Callback, train, trainable_copy

QAT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)
BATCHNORMS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d}
FROZEN_BN_SHARE = 1 / 3  # the last third of QAT's steps run with BatchNorm statistics frozen


class FakeQuantLayer(nn.Module):
    """A Linear / Conv whose weight is fake-quantized to int8 as ONNX Runtime quantizes it.

    With ``bn`` (the BatchNorm that reads this Conv's output, found at ``bn_path``; the model
    holds an ``nn.Identity`` there meanwhile) the folded weight is the one quantized; see the
    module docstring for training before and after :meth:`freeze_bn`.
    """

    def __init__(
        self,
        layer: nn.Module,
        weight_qmax: int = 127,
        *,
        per_channel: bool = True,
        bn: nn.Module | None = None,
        bn_path: str | None = None,
    ) -> None:
        super().__init__()
        self.layer = layer
        self.bn = bn
        self.bn_path = bn_path
        self.weight_qmax = weight_qmax  # 64 where int8 weights use 7 bits (reduce_range)
        self.per_channel = per_channel
        self.bn_frozen = False
        self.quantize = True  # False: the float function (how QAT finds its tensors)

    def freeze_bn(self) -> None:
        """From now on the running statistics fold into the weight, in training too."""
        self.bn_frozen = True

    def weight_scale(self, w: torch.Tensor) -> torch.Tensor:
        """ONNX Runtime's int8 weight scale: ``max |w| / qmax`` per output channel (or tensor)."""
        w = w.detach().abs()
        amax = w.reshape(w.shape[0], -1).amax(1) if self.per_channel else w.max().reshape(1)
        return (amax / self.weight_qmax).clamp_min(1e-8)

    def fake_weight(self, w: torch.Tensor) -> torch.Tensor:
        if not self.quantize:
            return w
        q = self.weight_qmax
        low = -q if q < 127 else -128
        scale = self.weight_scale(w)
        if not self.per_channel:
            return torch.fake_quantize_per_tensor_affine(w, float(scale), 0, low, q)
        zp = torch.zeros(w.shape[0], dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, low, q)

    def fake_bias(self, bias: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor | None:
        """The bias on ONNX Runtime's int32 grid (scale: input scale x weight scale), with a
        straight-through gradient; as it is where the input's quantizer is not known."""
        act = self.__dict__.get("input_quant")
        if bias is None or not self.quantize or act is None or not act.enabled:
            return bias
        step = act.scale.detach().abs().clamp_min(1e-8) * self.weight_scale(w)
        return bias + (torch.round(bias / step) * step - bias).detach()

    def fold_factor(self) -> torch.Tensor:
        """``gamma / sqrt(running_var + eps)`` per output channel."""
        bn = self.bn
        assert bn is not None and bn.running_var is not None
        g = torch.rsqrt(bn.running_var + bn.eps)
        return g * bn.weight if bn.weight is not None else g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if self.bn is None:
            bias = self.fake_bias(layer.bias, layer.weight)
            return _apply(layer, x, self.fake_weight(layer.weight), bias)
        bn = self.bn
        g = self.fold_factor()
        folded = layer.weight * g.reshape(-1, *[1] * (layer.weight.dim() - 1))
        w = self.fake_weight(folded)
        if self.training and not self.bn_frozen:  # batch statistics; running ones updated
            per_channel = (1, -1, *[1] * (x.dim() - 2))
            y = _apply(layer, x, w, None) / torch.where(g == 0, 1.0, g).reshape(per_channel)
            if layer.bias is not None:
                y = y + layer.bias.reshape(per_channel)
            return bn(y)
        assert bn.running_mean is not None
        bias = -bn.running_mean if layer.bias is None else layer.bias - bn.running_mean
        bias = bias * g if bn.bias is None else bias * g + bn.bias
        return _apply(layer, x, w, self.fake_bias(bias, folded))


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
        return _apply(self.layer, x, w + (deq.reshape(w.shape) - w).detach(), self.layer.bias)


def _apply(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, bias: Any) -> torch.Tensor:
    """``layer``'s operation with weight ``w`` and ``bias`` instead of its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, w, bias)
    fn = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return fn(x, w, bias, layer.stride, layer.padding, layer.dilation, layer.groups)


LEAVES = (FakeQuantLayer, FakeQuantWeight)


class QATModel(nn.Module):
    """What QAT trains: the model with :class:`FakeQuantLayer` s, and a learned activation
    quantizer for each tensor group the int8 graph quantizes (``groups[i]`` uses
    ``act[quantizer[i]]``; None: not found, not trained), applied where the forward makes that
    tensor (``sites``: site -> index into ``act``)."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[Group],
        act: list[ActQuant],
        sites: dict[Key, int],
        quantizer: list[int | None],
    ) -> None:
        super().__init__()
        self.model = model
        self.groups = groups
        self.act = nn.ModuleList(act)
        self.sites = sites
        self.quantizer = quantizer

    def _quantize(self, key: Key, value: torch.Tensor) -> torch.Tensor:
        i = self.sites.get(key)
        return value if i is None else self.act[i](value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return run_with_sites(self.model, args, kwargs, Apply(self._quantize), LEAVES)

    def tensor_ranges(self) -> dict[str, tuple[float, float]]:
        """Each trained tensor of the int8 graph (every member of a group) -> learned range."""
        return {
            name: self.act[q].range()
            for g, q in zip(self.groups, self.quantizer, strict=True)
            if q is not None
            for name in g.members
        }

    def untrained(self) -> list[str]:
        """The int8 graph's quantized tensors that no site holds (their ranges: calibrated)."""
        return sorted(
            g.owner for g, q in zip(self.groups, self.quantizer, strict=True) if q is None
        )


class FreezeBatchNorm(Callback):
    """Freezes the BatchNorm statistics of the folded layers for the last third of the steps."""

    def __init__(self, share: float = FROZEN_BN_SHARE) -> None:
        self.share = share
        self.at = 0

    def _freeze(self, model: nn.Module) -> None:
        for m in model.modules():
            if isinstance(m, FakeQuantLayer):
                m.freeze_bn()

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        self.at = total_steps - round(total_steps * self.share)
        if self.at <= 0:
            self._freeze(model)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if step >= self.at:
            self._freeze(model)


def _static(cfg: QAT) -> Static:
    fields = cfg.model_dump()
    return Static(**{k: v for k, v in fields.items() if k in Static.model_fields and k != "mode"})


def conv_bn_pairs(model: nn.Module, inputs: Any, convs: list[str]) -> dict[str, str]:
    """Conv -> the BatchNorm that alone reads its output (what the export folds), by tracing
    one forward: each called once, the Conv's output read by nothing else."""
    modules = dict(model.named_modules())
    rec = record(model, inputs)
    calls: dict[str, int] = {}
    for key, _ in rec.events:
        if key[0] == "module":
            calls[key[1]] = calls.get(key[1], 0) + 1
    pairs = {}
    for key, out in rec.events:
        if key[0] != "module" or key[1] not in convs or calls[key[1]] != 1:
            continue
        readers = rec.uses.get(id(out), [])
        if len(readers) != 1 or readers[0][0] != "module" or calls.get(readers[0][1]) != 1:
            continue
        conv, bn = modules[key[1]], modules[readers[0][1]]
        if (
            type(bn) is BATCHNORMS.get(type(conv))
            and bn.track_running_stats
            and bn.running_var is not None
        ):
            pairs[key[1]] = readers[0][1]
    return pairs


def _unfolded(prep: Prepared, model: nn.Module) -> set[str]:
    """BatchNorm modules the exported graph still runs (not folded into a convolution)."""
    names = {n for n, _ in model.named_modules() if n}
    owners = node_modules(prep.graph, names)
    bns = (owners.get(n.name) for n in prep.graph.node if n.op_type == "BatchNormalization")
    return {b for b in bns if b is not None}


def prepare_qat(model: nn.Module, cfg: QAT, job: Job, workdir: Path) -> nn.Module:
    """A trainable copy of ``model`` that fake-quantizes what the int8 graph will quantize.

    The copy trains even when ``model`` itself is frozen (a distillation teacher, a fusion
    member). ``bits=4``: int4 weight-only fake-quant layers, nothing else.
    """
    work = trainable_copy(model).eval()
    chosen = cfg.targeting.select(work, default_types=QAT_TYPES, what="quantization")
    names = [n for n, m in chosen.items() if isinstance(m, QAT_TYPES)]
    if cfg.bits == 4:  # int4 weight-only QAT
        for name in names:
            work.set_submodule(name, FakeQuantWeight(work.get_submodule(name), 4, cfg.group_size))
        return work
    import onnx
    from onnxruntime.quantization.calibrate import load_tensors_data

    static = _static(cfg)
    # the plan: quantize the float graph once, see which tensors get a QuantizeLinear
    prep = prepare(model.eval(), job.inputs, job.example_inputs, workdir)
    int8, _ = quantize_graph(prep, static)
    groups = quantized_tensors(onnx.load_from_string(int8).graph, prep.graph)
    calibrated = load_tensors_data(calibration_cache(prep, static)).data
    unfolded = _unfolded(prep, model)
    pairs = {
        c: b for c, b in conv_bn_pairs(work, job.inputs[0], names).items() if b not in unfolded
    }
    for name in names:
        layer = work.get_submodule(name)
        bn = work.get_submodule(pairs[name]) if name in pairs else None
        fq = FakeQuantLayer(
            layer,
            cfg.weight_qmax,
            per_channel=cfg.per_channel,
            bn=bn,
            bn_path=pairs.get(name),
        )
        work.set_submodule(name, fq)
        if name in pairs:
            work.set_submodule(pairs[name], nn.Identity())
    # find each quantized tensor in the PyTorch forward by its values (float function)
    values = tensor_values(prep.fp32_path, [m for g in groups for m in g.members], prep.feeds[0])
    layers = [m for m in work.modules() if isinstance(m, FakeQuantLayer)]
    for m in layers:
        m.quantize = False
    rec = record(work, job.inputs[0], LEAVES)
    for m in layers:
        m.quantize = True
    sites, quantizer = sites_of(groups, match(rec.events, values))
    act = []
    for g in groups:
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in calibrated[g.owner].range_value)
        act.append(ActQuant(low, high))  # the ones no site uses get no gradient
    member = {m: i for i, g in enumerate(groups) for m in g.members}
    owners = node_modules(prep.graph, {n for n, _ in model.named_modules() if n})
    for node in prep.graph.node:  # each layer's input quantizer: its bias's int32 grid
        i = member.get(node.input[0]) if node.input else None
        layer = owners.get(node.name)
        if i is None or quantizer[i] is None or layer not in names:
            continue
        fq_layer = work.get_submodule(layer)
        if node.op_type in ("Conv", "Gemm", "MatMul") and isinstance(fq_layer, FakeQuantLayer):
            object.__setattr__(fq_layer, "input_quant", act[quantizer[i]])  # shared, not a child
    unmatched = [g.owner for g, q in zip(groups, quantizer, strict=True) if q is None]
    if unmatched:
        warnings.warn(
            f"qat: {len(unmatched)} tensor(s) the int8 graph quantizes were not found in the "
            f"PyTorch forward ({', '.join(unmatched)}); they keep their calibrated ranges",
            SlimfuseWarning,
            stacklevel=3,
        )
    qat = QATModel(work, groups, act, sites, quantizer)
    return qat.train(False)


def strip_fake_quant(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[float, float]]]:
    """The float model with the trained weights (BatchNorm back in place, unfolded), and the
    learned range of each int8-graph tensor that was trained."""
    ranges = model.tensor_ranges() if isinstance(model, QATModel) else {}
    inner = model.model if isinstance(model, QATModel) else model
    inner = copy.deepcopy(inner)
    for name, m in list(inner.named_modules()):
        if isinstance(m, FakeQuantLayer):
            inner.set_submodule(name, m.layer)
            if m.bn is not None and m.bn_path is not None:
                inner.set_submodule(m.bn_path, m.bn)
        elif isinstance(m, FakeQuantWeight):
            inner.set_submodule(name, m.layer)
    return inner, ranges


def layer_input_ranges(
    prep: Prepared, layers: set[str], ranges: dict[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Each quantized layer's learned input range (its node's input tensor in the graph)."""
    owners = node_modules(prep.graph, {n for n, _ in prep.model.named_modules() if n})
    out = {}
    for node in prep.graph.node:
        owner = owners.get(node.name)
        if (
            owner in layers
            and node.op_type in ("Conv", "Gemm", "MatMul")
            and node.input[0] in ranges
        ):
            out[owner] = ranges[node.input[0]]
    return out


def quantize_qat(model: nn.Module, cfg: QAT, job: Job) -> nn.Module:
    """The ``qat`` handler of :func:`slimfuse.quantize`: prepare, train with the one loop,
    convert to an int8 QDQ graph (ONNX Runtime), or to int4 weight-only layers (``bits=4``)."""
    if job.data is None:
        raise ConfigError("qat needs training data (data=...); got none")
    assert job.train is not None  # the verb gives QAT its training config
    objective = None
    if cfg.distill:
        if job.teacher_objective is None:
            raise ConfigError(
                "qat with distill needs a distillation objective (teacher_objective=); "
                "slimfuse.quantize passes the distillation family's"
            )
        objective = job.teacher_objective(copy.deepcopy(model).eval(), job.task)
    with tempfile.TemporaryDirectory(prefix="slimfuse-qat-") as tmp:
        plan_dir, final_dir = Path(tmp) / "plan", Path(tmp) / "final"
        plan_dir.mkdir()
        final_dir.mkdir()
        fq = prepare_qat(model, cfg, job, plan_dir)
        callbacks = [FreezeBatchNorm()] if cfg.bits != 4 else []
        result = train(
            fq,
            job.data,
            job.task,
            job.train,
            objective=objective,
            callbacks=callbacks,
            description="qat",
        )
        float_model, ranges = strip_fake_quant(fq)
        float_model.eval()
        if cfg.bits == 4:
            wo = WeightOnly(
                targets=cfg.targets, ignore=cfg.ignore, bits=4, group_size=cfg.group_size
            )
            out = quantize_weights(float_model, wo)
            object.__setattr__(out, "fake_quant_model", fq)
            return out
        prep = prepare(float_model, job.inputs, job.example_inputs, final_dir)
        known = {i.name for i in prep.graph.input} | {o for n in prep.graph.node for o in n.output}
        if set(ranges) - known:  # the same model exports to the same tensor names
            raise RuntimeError(
                f"qat: the trained model's graph lacks tensors {sorted(set(ranges) - known)}"
            )
        layers = {n for n, m in fq.model.named_modules() if isinstance(m, FakeQuantLayer)}
        groups = {g.owner: g for g in fq.groups}
        q = ptq(
            prep,
            _static(cfg),
            ranges={owner: r for owner, r in ranges.items() if owner in groups},
            mode="qat",
            config=cfg.to_dict(),
            train=job.train.to_dict(),
            qat={
                "epochs": result.epochs_run,
                "best_val": result.best_metric,
                "learned_ranges": layer_input_ranges(prep, layers, ranges),
                "tensor_ranges": {o: r for o, r in ranges.items() if o in groups},
                "untrained_tensors": fq.untrained(),
                "folded_batchnorms": {
                    n: m.bn_path
                    for n, m in fq.model.named_modules()
                    if isinstance(m, FakeQuantLayer) and m.bn_path
                },
            },
        )
    object.__setattr__(q, "fake_quant_model", fq)
    return q
