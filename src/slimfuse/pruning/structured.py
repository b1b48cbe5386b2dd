"""Structured pruning that physically removes channels and neurons (Torch-Pruning underneath).

Torch-Pruning's dependency graph finds every layer that must shrink together (residual adds,
concatenations, BatchNorm/LayerNorm, depthwise convolutions); slimfuse adds the importance
criteria (:mod:`slimfuse.pruning.importance`), per-layer targeting, uniform or global ratios,
iterative prune → recover, clear errors, and a ``resize`` edit so that ``slimfuse.load`` rebuilds
the smaller shapes::

    small = prune_structured(model, data.example_input(1), ratio=0.5, importance="l1")
    slimfuse.save(small, "runs/small")   # slimfuse.load("runs/small") gives the same outputs

The model's output layers (:func:`output_layers`: the last conv/linear on every path to the output,
one per member of an ensemble) are never shrunk, so the outputs keep their shape.
:func:`prune_channels` is the ``channels`` method of :func:`slimfuse.prune`.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch_pruning as tp
from torch import nn

from slimfuse.errors import ConfigError, ModelError, SlimfuseWarning, UnsupportedLayerError
from slimfuse.pruning.config import Channels
from slimfuse.pruning.importance import IMPORTANCE
from slimfuse.pruning.resize import record_resize, snapshot
from slimfuse.pruning.sparse import refresh_masks
from slimfuse.targeting import Selector, select_modules
from slimfuse.tasks import Task, forward, get_task
from slimfuse.training import trainable_copy

if TYPE_CHECKING:
    from slimfuse.pruning.api import Job

# layers whose channels Torch-Pruning knows how to remove (the roots are conv and linear)
ROOT_TYPES: tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SUPPORTED_TYPES: tuple[type, ...] = (
    *ROOT_TYPES,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.modules.batchnorm._BatchNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.PReLU,
    nn.Embedding,
    nn.LSTM,
    nn.MultiheadAttention,
)
Unsupported = Literal["error", "skip"]


def check_ratio(ratio: float, what: str = "channel ratio") -> float:
    """A pruning ratio must be a number in [0, 1)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{what} {ratio!r}: expected a number in [0, 1)")
    return float(ratio)


def unsupported_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules holding their own parameters that structured pruning cannot resize."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, SUPPORTED_TYPES):
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out[name or "(root)"] = m
    return out


def output_layers(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """Conv/linear layers whose outputs reach the model's output through no other conv/linear:
    the last layer of a model, of every member of an ensemble. They are never shrunk.

    Found on the autograd graph of one forward pass: walking back from the output, every path
    stops at the first conv/linear it meets (through views, activations, pooling, a mean of
    members, a residual sum).
    """
    made_by: dict[Any, nn.Module] = {}

    def hook(mod: nn.Module, _inp: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            made_by[out.grad_fn] = mod

    frozen = [p for p in model.parameters() if not p.requires_grad]
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, ROOT_TYPES)]
    try:
        for p in frozen:  # frozen members (a fused model's) still need a graph to walk
            p.requires_grad_(True)
        with torch.enable_grad():
            y = forward(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    ys = y if isinstance(y, (tuple, list)) else [y]
    todo = [t.grad_fn for t in ys if isinstance(t, torch.Tensor) and t.grad_fn is not None]
    seen: set[Any] = set()
    found: list[nn.Module] = []
    while todo:
        fn = todo.pop()
        if fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            found.append(made_by[fn])
        else:
            todo += [nxt for nxt, _ in fn.next_functions if nxt is not None]
    return list(dict.fromkeys(found))


class _LeaveAlone:
    """A Torch-Pruning layer pruner for a module it cannot resize: it reports no channels."""

    def prune_out_channels(self, layer: nn.Module, idxs: Any) -> nn.Module:
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channels(self, layer: nn.Module) -> None:
        return None

    def get_in_channel_groups(self, layer: nn.Module) -> int:
        return 1

    def get_out_channel_groups(self, layer: nn.Module) -> int:
        return 1


def _batches(data: Any, task: Task, n: int) -> Iterable[tuple[Any, torch.Tensor]]:
    loader = data.loader("train", batch_size=64, shuffle=True) if hasattr(data, "loader") else data
    for batch in itertools.islice(loader, n):
        yield task.unpack(batch)


def accumulate_gradients(model: nn.Module, data: Any, task: Task, batches: int = 4) -> None:
    """Sum the task loss's gradients over a few batches (for Taylor importance)."""
    model.zero_grad(set_to_none=True)
    model.eval()
    seen = 0
    for inputs, target in _batches(data, task, batches):
        task.loss(forward(model, inputs), target).backward()
        seen += 1
    if seen == 0:
        raise ConfigError("Taylor importance needs data: the loader gave no batch")


def _prep(
    model: nn.Module,
    example_inputs: Any,
    ratio: float,
    importance: str,
    data: Any,
    unsupported: Unsupported,
) -> tuple[Any, dict[str, nn.Module]]:
    check_ratio(ratio)
    if example_inputs is None:
        raise ConfigError(
            "structured pruning traces the model and needs example inputs; got None "
            "(pass e.g. data.example_input(1))"
        )
    if unsupported not in ("error", "skip"):
        raise ConfigError(f"unsupported={unsupported!r}: expected 'error' or 'skip'")
    criterion = IMPORTANCE.get(importance)
    if criterion.needs_bn and not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise ConfigError(
            f"importance 'bn' scores BatchNorm scales; {type(model).__name__} has no BatchNorm layer"
        )
    if criterion.needs_grad and data is None:
        raise ConfigError(f"importance {importance!r} needs data (a few batches for gradients)")
    bad = unsupported_layers(model)
    if bad and unsupported == "error":
        name, mod = next(iter(bad.items()))
        raise UnsupportedLayerError(
            f"cannot prune channels around {name!r} ({type(mod).__name__}): structured pruning "
            "supports Conv, Linear, BatchNorm, LayerNorm, GroupNorm, Embedding, LSTM, "
            "MultiheadAttention; pass unsupported='skip' to leave it alone, or ignore it"
        )
    for name, mod in bad.items():
        warnings.warn(
            f"structured pruning leaves {name!r} ({type(mod).__name__}) and the layers tied to it alone",
            SlimfuseWarning,
            stacklevel=3,
        )
    try:
        with torch.no_grad():
            forward(model.eval(), example_inputs)
    except Exception as exc:
        raise ModelError(
            f"{type(model).__name__} does not run on the example inputs: {str(exc).splitlines()[0][:200]}"
        ) from exc
    return criterion, bad


def prune_structured(
    model: nn.Module,
    example_inputs: Any,
    *,
    ratio: float,
    importance: str = "l1",
    targets: Selector | Iterable[Selector] | None = None,
    ignore: Selector | Iterable[Selector] | None = None,
    global_pruning: bool = False,
    data: Any = None,
    task: str | Task = "classification",
    iterative_steps: int = 1,
    recover: Callable[[nn.Module, int], None] | None = None,
    unsupported: Unsupported = "error",
    round_to: int | None = None,
    taylor_batches: int = 4,
    inplace: bool = False,
) -> nn.Module:
    """Remove ``ratio`` of the output channels/neurons of the targeted layers; returns the smaller model.

    ``targets``/``ignore`` use :mod:`slimfuse.targeting` (default: every conv and linear layer
    except the output layer). ``global_pruning`` ranks channels across layers instead of a uniform
    ratio per layer. ``data`` (a :class:`~slimfuse.data.Data` or a loader) feeds Taylor importance.
    With ``iterative_steps > 1`` the ratio is reached in steps and ``recover(model, step)`` (e.g.
    a short fine-tune) runs after each. Unless ``inplace``, the input model is left unchanged.
    """
    if iterative_steps < 1:
        raise ConfigError(f"iterative_steps {iterative_steps}: expected >= 1")
    task = get_task(task)
    if not inplace:
        model = trainable_copy(model)
    model.eval()
    criterion, bad = _prep(model, example_inputs, ratio, importance, data, unsupported)
    chosen = select_modules(model, targets, ignore, default_types=ROOT_TYPES, what="pruning target")
    for name, mod in chosen.items():
        if not isinstance(mod, ROOT_TYPES):
            raise UnsupportedLayerError(
                f"pruning target {name!r} is a {type(mod).__name__}; expected Conv1d/2d/3d or Linear"
            )
        n = mod.out_channels if isinstance(mod, nn.modules.conv._ConvNd) else mod.out_features
        if int(n * (1 - ratio)) < 1 and n > 1:
            raise ConfigError(
                f"ratio {ratio} would remove every channel of {name!r} ({type(mod).__name__}, {n} channels); "
                f"expected a ratio below {1 - 1 / n:.3f} or ignore that layer"
            )
    protected = set(output_layers(model, example_inputs))
    with torch.no_grad():
        out_shape = tuple(getattr(forward(model, example_inputs), "shape", ()))
    ignored = [m for m in model.modules() if isinstance(m, ROOT_TYPES) and m not in chosen.values()]
    ignored += [m for m in protected if m not in ignored]
    custom = {type(m): _LeaveAlone() for m in bad.values()}
    before = snapshot(model)
    kwargs: dict[str, Any] = dict(
        importance=criterion.make(),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        iterative_steps=iterative_steps,
        ignored_layers=ignored + list(bad.values()),
        round_to=round_to,
        customized_pruners=custom or None,
        forward_fn=lambda m, x: forward(m, x),
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if custom:
                kwargs["ignored_layers"] += _tied_roots(model, example_inputs, custom)
            pruner = tp.pruner.BasePruner(model, example_inputs, **kwargs)
    except (ConfigError, UnsupportedLayerError):
        raise
    except Exception as exc:
        raise ModelError(
            f"cannot trace {type(model).__name__} for structured pruning "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}); "
            "expected a model whose forward runs on tensors with static control flow"
        ) from exc
    _check_traced(pruner.DG, model, example_inputs, protected)
    for step in range(iterative_steps):
        if criterion.needs_grad:
            accumulate_gradients(model, data, task, taylor_batches)
        pruner.step()
        model.zero_grad(set_to_none=True)
        _check_not_empty(model, ratio)
        if recover is not None:
            recover(model, step)
    try:
        with torch.no_grad():
            out_after = forward(model.eval(), example_inputs)
    except Exception as exc:
        raise UnsupportedLayerError(
            f"after pruning, {type(model).__name__} no longer runs "
            f"({str(exc).splitlines()[0][:160]}); ignore the layers next to "
            f"{', '.join(bad) or 'the failing op'}"
        ) from exc
    shape_after = tuple(getattr(out_after, "shape", ()))
    if shape_after != out_shape:
        raise ConfigError(
            f"pruning changed {type(model).__name__}'s output shape from {out_shape} to "
            f"{shape_after}; add the output layer to ignore=[...]"
        )
    changed = record_resize(
        model,
        before,
        method="structured",
        ratio=ratio,
        importance=importance,
        global_pruning=global_pruning,
    )
    refresh_masks(model, changed)  # a sparse layer keeps its zeros at its new size
    return model.eval()


def prune_channels(model: nn.Module, cfg: Channels, job: Job) -> nn.Module:
    """The ``channels`` method: a smaller copy of ``model`` (traced on ``job.example_inputs``,
    else one sample of the data), recovered between iterative steps and at the end."""
    x = job.example_inputs
    if x is None and job.data is not None:
        x = job.data.example_input(1)
    steps = cfg.iterative_steps

    def between(m: nn.Module, step: int) -> None:
        if step < steps - 1:
            job.recover(m, [], f"recover {step + 1}/{steps}")

    small = prune_structured(
        model,
        x,
        ratio=cfg.channels,
        importance=cfg.importance,
        targets=cfg.targets,
        ignore=cfg.ignore,
        global_pruning=cfg.global_pruning,
        data=job.data,
        task=job.task,
        iterative_steps=steps,
        recover=between if steps > 1 else None,
        unsupported=cfg.unsupported,
    )
    job.recover(small, [], "recover")
    return small


def _tied_roots(model: nn.Module, example_inputs: Any, custom: dict[type, Any]) -> list:
    """Root layers whose dependency group touches a module left alone (they are kept too)."""
    dg = tp.DependencyGraph().build_dependency(
        model,
        example_inputs,
        customized_pruners=custom,
        forward_fn=lambda m, x: forward(m, x),
    )
    roots = []
    for group in dg.get_all_groups(root_module_types=list(ROOT_TYPES)):
        if any(isinstance(dep.target.module, tuple(custom)) for dep, _ in group):
            roots.append(group[0].dep.target.module)
    return roots


def _check_not_empty(model: nn.Module, ratio: float) -> None:
    for name, m in model.named_modules():
        n = getattr(m, "out_channels", getattr(m, "out_features", None))
        if isinstance(m, ROOT_TYPES) and n == 0:
            raise ConfigError(
                f"ratio {ratio} removed every channel of {name!r} ({type(m).__name__}); "
                "expected a lower ratio or uniform (non-global) pruning"
            )


def _check_traced(
    dg: Any, model: nn.Module, example_inputs: Any, protected: set[nn.Module]
) -> None:
    """Every conv/linear that runs must be in the traced graph, feeding something or the output."""
    names = {m: n for n, m in model.named_modules()}
    ran: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, _i, _o: ran.append(mod))
        for m in model.modules()
        if isinstance(m, ROOT_TYPES)
    ]
    try:
        with torch.no_grad():
            forward(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    for m in dict.fromkeys(ran):
        node = dg.module2node.get(m)
        if node is None or (not node.outputs and m not in protected):
            raise ModelError(
                f"cannot trace {type(model).__name__} for structured pruning: the output of "
                f"{names[m]!r} ({type(m).__name__}) leaves the autograd graph (numpy, .item(), "
                "no_grad?); expected tensor operations from input to output"
            )
