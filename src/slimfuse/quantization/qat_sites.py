"""Which tensors QAT fake-quantizes: exactly those ONNX Runtime's QDQ graph quantizes.

ONNX Runtime's static quantizer puts a ``QuantizeLinear`` on more than the inputs of
convolutions and linear layers: on the outputs of convolutions that feed a residual ``Add``,
on ``Add`` / ``Concat`` inputs and outputs, on the graph's output, and it removes a ``Relu``
after a quantized op by quantizing the op's output with the ``Relu``'s range. Training must
round those tensors too, on the grid that deploys, or the int8 graph computes something else.

So QAT first quantizes the float graph once (the *plan*: which tensors get a ``QuantizeLinear``,
and which share one scale), then finds each such tensor in PyTorch by its values on a
calibration batch: every tensor a forward produces is a *site*, named by where it was made:

- ``("input", name)``: a model input (``input``, ``input_<i>``, or its keyword);
- ``("module", path, k)``: the output of the ``k``-th call of a leaf module (a module without
  children, or one of QAT's own layers), ops inside it are not sites;
- ``("op", scope, op, k)``: the ``k``-th tensor-valued call of a torch function or tensor method
  (``__add__``, ``cat``, ``relu``...) made directly in the ``forward`` of module ``scope``;
- ``(..., j)`` after either: the ``j``-th tensor of an output that is a tuple or list.

Names depend only on the code path, not on the values, so the site found on one batch is the
same site in every later forward, in training too. The ONNX tensor is matched to the first site
(in execution order) whose values equal it; a tensor no site matches keeps its calibrated range
and is reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as module_hooks
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

Key = tuple[Any, ...]
QMAX = 255  # uint8 activations
MATCH_RTOL = 1e-3  # fp32 PyTorch vs fp32 ONNX Runtime (BatchNorm folded, other op order)


class ActQuant(nn.Module):
    """uint8 fake quantization of one activation tensor with a learned range.

    Step size learned as in LSQ (Esser et al., 2020) with its gradient scaled by
    ``1 / sqrt(numel * Qp)`` (``Qp = 255``), zero point learned as in LSQ+ where the tensor
    takes negative values; a tensor that calibrates non-negative (a ReLU's output) keeps zero
    point 0, so its range starts at 0 as the int8 graph needs (ONNX Runtime drops such a
    ``Relu`` and lets the quantization clip at 0). Rounding passes gradients straight through.
    """

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.signed = low < 0
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / QMAX, 1e-8)
        zero_point = torch.tensor([float(min(max(round(-low / scale), 0), QMAX))])
        self.scale = nn.Parameter(torch.tensor([scale]))
        if self.signed:
            self.zero_point = nn.Parameter(zero_point)
        else:
            self.register_buffer("zero_point", zero_point)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        grad = 1.0 / math.sqrt(max(x.numel(), 1) * QMAX)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x,
            self.scale.abs().clamp_min(1e-8),
            torch.clamp(self.zero_point, 0, QMAX),
            0,
            QMAX,
            grad,
        )

    def range(self) -> tuple[float, float]:
        """The learned ``(low, high)`` (what the int8 graph's calibration cache is given)."""
        s = float(self.scale.detach().abs().clamp_min(1e-8))
        zp = float(torch.round(torch.clamp(self.zero_point.detach(), 0, QMAX)))
        return 0.0 - zp * s, (QMAX - zp) * s


# -- sites -----------------------------------------------------------------------------------


class Sites:
    """What a forward under :func:`run_with_sites` reports to; the default changes nothing."""

    tracks_uses = False

    def site(self, key: Key, value: torch.Tensor) -> torch.Tensor:
        return value

    def use(self, key: Key, values: Sequence[Any]) -> None:
        """``key`` reads ``values`` (only recorded by :class:`Recorder`)."""


@dataclass
class Recorder(Sites):
    """Every site's value in execution order, and who read each tensor (by identity)."""

    events: list[tuple[Key, torch.Tensor]] = field(default_factory=list)
    uses: dict[int, list[Key]] = field(default_factory=lambda: defaultdict(list))
    tracks_uses = True

    def site(self, key: Key, value: torch.Tensor) -> torch.Tensor:
        self.events.append((key, value))  # holds the tensor: ids stay unique meanwhile
        return value

    def use(self, key: Key, values: Sequence[Any]) -> None:
        for v in values:
            if isinstance(v, torch.Tensor):
                self.uses[id(v)].append(key)


def input_names(args: Sequence[Any], kwargs: dict[str, Any]) -> list[str]:
    """Names of a call's inputs: ``input`` for one tensor, ``input_<i>``, keywords as given."""
    if len(args) == 1 and not kwargs:
        return ["input"]
    return [f"input_{i}" for i in range(len(args))] + list(kwargs)


class _Tracker(TorchFunctionMode):
    def __init__(self, model: nn.Module, leaf_types: tuple[type, ...], sites: Sites) -> None:
        super().__init__()
        self.names = {id(m): n for n, m in model.named_modules()}
        self.leaves = {
            id(m) for m in model.modules() if isinstance(m, leaf_types) or not any(m.children())
        }
        self.sites = sites
        self.stack: list[tuple[str, bool, Key | None]] = []  # (path, leaf, site key)
        self.in_leaf = 0
        self.counts: dict[Key, int] = defaultdict(int)

    def _next(self, *key: Any) -> Key:
        k = self.counts[key]
        self.counts[key] += 1
        return (*key, k)

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names.get(id(module))
        if name is None:  # not the tracked model's (a quantizer, a teacher)
            return
        leaf = id(module) in self.leaves
        key = None
        if leaf and not self.in_leaf:
            key = self._next("module", name)
            if self.sites.tracks_uses:
                self.sites.use(key, tree_flatten(args)[0])
        self.stack.append((name, leaf, key))
        self.in_leaf += leaf

    def post(self, module: nn.Module, _args: tuple[Any, ...], out: Any) -> Any:
        if self.names.get(id(module)) is None or not self.stack:
            return None
        _, leaf, key = self.stack.pop()
        self.in_leaf -= leaf
        return None if key is None else self._site(key, out)

    def _site(self, key: Key, out: Any) -> Any:
        """A float tensor is a site; each one of a tuple or list (GRU, split) is one too."""
        if isinstance(out, torch.Tensor):
            return self.sites.site(key, out) if out.is_floating_point() else out
        if type(out) in (tuple, list) and any(isinstance(o, torch.Tensor) for o in out):
            return type(out)(
                self.sites.site((*key, j), o)
                if isinstance(o, torch.Tensor) and o.is_floating_point()
                else o
                for j, o in enumerate(out)
            )
        return out

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.in_leaf:
            return out
        if isinstance(out, torch.Tensor):
            if not out.is_floating_point():
                return out
        elif type(out) not in (tuple, list) or not any(isinstance(o, torch.Tensor) for o in out):
            return out
        scope = self.stack[-1][0] if self.stack else ""
        key = self._next("op", scope, getattr(func, "__name__", str(func)))
        if self.sites.tracks_uses:
            self.sites.use(key, tree_flatten((args, kwargs))[0])
        return self._site(key, out)


def run_with_sites(
    model: nn.Module,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    sites: Sites,
    leaf_types: tuple[type, ...] = (),
) -> Any:
    """``model(*args, **kwargs)`` with every site's tensor passed through ``sites.site``."""
    names = input_names(args, kwargs)
    values = [*args, *kwargs.values()]
    for i, (name, v) in enumerate(zip(names, values, strict=True)):
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            values[i] = sites.site(("input", name), v)
    args, kwargs = values[: len(args)], dict(zip(kwargs, values[len(args) :], strict=True))
    tracker = _Tracker(model, leaf_types, sites)
    pre = module_hooks.register_module_forward_pre_hook(tracker.pre)
    post = module_hooks.register_module_forward_hook(tracker.post, always_call=True)
    try:
        with tracker:
            out = model(*args, **kwargs)
    finally:
        pre.remove()
        post.remove()
    if sites.tracks_uses:
        sites.use(("output",), tree_flatten(out)[0])
    return out


def call_args(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A calibration batch's model inputs as call arguments (``tasks.forward``'s forms)."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


@torch.no_grad()
def record(model: nn.Module, inputs: Any, leaf_types: tuple[type, ...] = ()) -> Recorder:
    """Every site of one forward of ``model`` (in eval mode) on a calibration batch."""
    rec = Recorder()
    was_training = model.training
    model.eval()
    try:
        run_with_sites(model, *call_args(inputs), rec, leaf_types)
    finally:
        model.train(was_training)
    return rec


# -- the plan: what ONNX Runtime quantizes -----------------------------------------------------


@dataclass
class Group:
    """Tensors of the float graph that the int8 graph quantizes with one scale and zero point.

    ``owner`` names the scale (``<owner>_scale``): its range is what calibration gives, and
    what QAT hands the quantizer; the others (a ``Squeeze`` / ``Reshape`` / ``MaxPool`` of it)
    reuse it.
    """

    owner: str
    members: list[str]


def quantized_tensors(int8_graph: Any, fp32_graph: Any) -> list[Group]:
    """The activation tensors the int8 QDQ graph quantizes, grouped by the scale they share.

    Only tensors computed from the graph's inputs count: a constant one (a slice of a GRU's
    weights that ONNX Runtime quantizes on its way into a ``Concat``) is calibrated exactly at
    export from the trained weights.
    """
    known = {i.name for i in fp32_graph.input}
    for node in fp32_graph.node:  # in topological order
        if any(name in known for name in node.input):
            known.update(node.output)
    groups: dict[str, Group] = {}
    for node in int8_graph.node:
        if node.op_type != "QuantizeLinear":
            continue
        tensor, scale = node.input[0], node.input[1]
        tensor = tensor.removesuffix("_QuantizeLinear_Input")  # a graph output, renamed
        owner = scale.removesuffix("_scale") if scale.endswith("_scale") else tensor
        if tensor not in known or owner not in known:
            continue
        group = groups.setdefault(owner, Group(owner, []))
        if tensor not in group.members:
            group.members.append(tensor)
    for g in groups.values():
        if g.owner not in g.members:
            g.members.insert(0, g.owner)
    return list(groups.values())


def tensor_values(fp32_path: Any, names: list[str], feeds: dict[str, np.ndarray]) -> dict:
    """The values of the named tensors of the float graph on one batch (ONNX Runtime)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(fp32_path))
    outputs = {o.name for o in model.graph.output}
    for name in names:
        if name not in outputs:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    got = sess.run(names, feeds)
    return dict(zip(names, got, strict=True))


def match(events: list[tuple[Key, torch.Tensor]], values: dict[str, np.ndarray]) -> dict[str, Key]:
    """Each ONNX tensor -> the first site with the same values (flattened: layouts 1-D / 2-D)."""
    by_size: dict[int, list[tuple[Key, np.ndarray]]] = defaultdict(list)
    for key, t in events:
        v = t.detach().float().reshape(-1).numpy()
        by_size[v.size].append((key, v))
    found = {}
    for name, ref in values.items():
        r = np.asarray(ref, dtype=np.float32).reshape(-1)
        tol = MATCH_RTOL * max(float(np.abs(r).max(initial=0.0)), 1e-6)
        for key, v in by_size.get(r.size, []):
            if float(np.abs(v[:64] - r[:64]).max()) > tol:  # cheap first look
                continue
            if float(np.abs(v - r).max(initial=0.0)) <= tol:
                found[name] = key
                break
    return found


def sites_of(groups: list[Group], found: dict[str, Key]) -> tuple[dict[Key, int], list[int | None]]:
    """Where each quantizer applies: ``(site -> group index, each group's quantizer)``.

    A group's quantizer is its own; or, when its tensor is one another group quantizes already
    (the same values: two convolutions reading one tensor each get a copy of it in the 2-D
    layout), that group's (one tensor, one range); or None when no site holds its values.
    """
    sites: dict[Key, int] = {}
    quantizer: list[int | None] = []
    for i, g in enumerate(groups):
        keys = [found[m] for m in g.members if m in found]
        taken = [sites[k] for k in keys if k in sites]
        q = taken[0] if taken else i if keys else None
        quantizer.append(q)
        for key in keys:
            sites.setdefault(key, q)  # type: ignore[arg-type]
    return sites, quantizer


class Apply(Sites):
    """Passes each site's tensor through ``quantize(key, tensor)`` (what training runs with)."""

    def __init__(self, quantize: Callable[[Key, torch.Tensor], torch.Tensor]) -> None:
        self.quantize = quantize

    def site(self, key: Key, value: torch.Tensor) -> torch.Tensor:
        return self.quantize(key, value)
