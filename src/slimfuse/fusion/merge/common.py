"""What the merge methods share: compatibility checks, state averaging, BatchNorm re-estimation."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.models.bundle import sparse_keys
from slimfuse.tasks import Task, evaluate, forward, get_task

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MergeJob:
    """What a merge method's handler gets besides the ingredients and its config."""

    data: Data | None  # validation scores, BatchNorm re-estimation
    task: str | Task
    parent: nn.Module | None = None  # TIES: the model the variants were fine-tuned from


def states(pairs: Sequence[tuple[str, nn.Module]]) -> list[State]:
    """The ingredients' state dicts, checked to have the same keys and shapes."""
    out = [{k: v.detach() for k, v in m.state_dict().items()} for _, m in pairs]
    ref_name, ref = pairs[0][0], out[0]
    for (name, _), st in zip(pairs[1:], out[1:], strict=True):
        check_same(ref_name, ref, name, st)
    return out


def check_same(ref_name: str, ref: State, name: str, st: State) -> None:
    """One line naming the first missing/unexpected keys or the first shape that differs."""
    missing = [k for k in ref if k not in st]
    extra = [k for k in st if k not in ref]
    if missing or extra:
        raise FusionError(
            f"{name!r} does not match {ref_name!r}: missing keys {missing[:3]}, unexpected keys "
            f"{extra[:3]}; expected models of the same architecture"
        )
    for k, v in ref.items():
        if st[k].shape != v.shape:
            raise FusionError(
                f"{name!r} does not match {ref_name!r}: {k} has shape {tuple(st[k].shape)}, "
                f"expected {tuple(v.shape)}"
            )


def average(sts: Sequence[State]) -> State:
    """Elementwise mean of floating tensors; other tensors (counters) from the first state."""
    out: State = {}
    for k, v in sts[0].items():
        if v.is_floating_point():
            out[k] = torch.stack([s[k].float() for s in sts]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, loader: Any, task: str | Task = "classification", max_batches: int = 50
) -> nn.Module:
    """Re-estimate BatchNorm running statistics on ``loader`` (a cumulative average), in place.

    Only the BatchNorm layers run in train mode (their statistics reset, ``momentum=None``: the
    plain average over the batches); every other module stays in eval mode, so Dropout is off
    and the statistics are those of the network that will run. Afterwards the BatchNorm layers
    get their momentum back and the whole model is in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    task = get_task(task)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    try:
        for i, batch in enumerate(loader):
            if i >= max_batches:
                break
            inputs, _ = task.unpack(batch)
            forward(model, inputs)
    finally:
        for bn, mom in zip(bns, momenta, strict=True):
            bn.momentum = mom
    return model.eval()


def keep_pruned(state: State, ingredients: Sequence[nn.Module]) -> State:
    """``state`` with every weight an ingredient's unstructured pruning zeroed (the tensors its
    ``sparse`` edits name) set to zero: the merge keeps each ingredient's pruned weights pruned,
    so averaging differently pruned variants is not denser than any of them."""
    keys = {k for m in ingredients for k in sparse_keys(m)} & state.keys()
    if not keys:
        return state
    sts = [m.state_dict() for m in ingredients]
    out = dict(state)
    for k in keys:
        alive = torch.stack([st[k] != 0 for st in sts]).all(0)
        out[k] = state[k] * alive
    return out


def build(
    template: nn.Module,
    state: State,
    data: Data | None,
    task: str | Task = "classification",
    bn_loader: Any = None,
    ingredients: Sequence[nn.Module] = (),
) -> nn.Module:
    """A copy of ``template`` with ``state`` loaded (the ``ingredients``' pruned weights kept
    zero, :func:`keep_pruned`) and BatchNorm statistics re-estimated."""
    model = copy.deepcopy(template)
    model.load_state_dict(keep_pruned(state, [template, *ingredients]), strict=True)
    if has_batchnorm(model):
        loader = bn_loader
        if loader is None and data is not None:
            loader = data.loader("train", batch_size=128, shuffle=True, seed=0)
        if loader is None:
            raise FusionError(
                "the merged model has BatchNorm layers: expected data to re-estimate their statistics"
            )
        recalibrate_bn(model, loader, task)
    return model.eval()


def val_score(model: nn.Module, data: Data, task: str | Task = "classification") -> float:
    return evaluate(model, data.loader("val", batch_size=256), task)
