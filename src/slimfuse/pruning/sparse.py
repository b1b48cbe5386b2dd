"""Sparsity as a property of the model: zero masks that training keeps, a record that bundles keep.

After unstructured pruning the zeros are a constraint, not an accident of the weights:

- every pruned layer carries a :class:`ZeroMask` (``module.slimfuse_constraint``) that the one
  training loop re-applies before the first step and after every optimizer step
  (:func:`slimfuse.training.apply_constraints`), so a later ``train``, ``distill``, ``qat`` or
  fine-tuning stage cannot revive a pruned weight. The mask is the module's own: it follows the
  layer into copies, fused models and wrappers (QAT's fake-quant layers);
- the model's spec records a ``sparse`` edit: the tensors (``tensors``), their number of zeros
  (``zeros``) and of weights (``numel``). ``slimfuse.save`` stores those tensors as non-zero values + a 1-bit mask where
  that is smaller (:func:`slimfuse.models.bundle.state_tensors`: ``state_dict()`` itself stays
  plain tensors), and ``slimfuse.load`` gives the rebuilt layers their masks back
  (:func:`apply_sparse`), taken from the zeros they load with;
- the recipe runner checks after every stage that no recorded count of zeros went down
  (:mod:`slimfuse.pipeline.checks`).

:func:`storage_report` gives the honest numbers: dense bytes, non-zeros, encoded bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.measuring import count_params
from slimfuse.models.bundle import state_tensors
from slimfuse.models.source import record
from slimfuse.models.weights import BITMASK, VALUES
from slimfuse.training import CONSTRAINT

EDIT_KIND = "sparse"


class ZeroMask:
    """A layer's zero constraint: the weights where ``mask`` (bool, ``True`` = kept) is
    ``False`` are set to 0.

    Built without a mask (a layer rebuilt from a bundle), it takes the zeros of the weight it
    is first applied to: the weights it was loaded with. A weight whose shape no longer fits the
    mask (channels removed since) gets the mask of its zeros again (:func:`refresh_masks`
    does that on purpose, after structured pruning).
    """

    def __init__(self, mask: torch.Tensor | None = None, name: str = "weight") -> None:
        self.name = name
        self.mask = None if mask is None else mask.detach().to(torch.bool).cpu().clone()

    @torch.no_grad()
    def __call__(self, module: nn.Module) -> None:
        w = getattr(module, self.name, None)
        if not isinstance(w, torch.Tensor):
            return
        if self.mask is None or self.mask.shape != w.shape:
            self.mask = (w.detach() != 0).cpu()
        if self.mask.device != w.device:
            self.mask = self.mask.to(w.device)
        w.masked_fill_(~self.mask, 0)

    def sparsity(self) -> float | None:
        if self.mask is None:
            return None
        return 1.0 - float(self.mask.float().mean())

    def __repr__(self) -> str:
        s = self.sparsity()
        return f"ZeroMask({self.name}, sparsity={'unset' if s is None else f'{s:.4f}'})"


def mask_of(module: nn.Module) -> ZeroMask | None:
    """The module's :class:`ZeroMask`, if it carries one."""
    c = module.__dict__.get(CONSTRAINT)
    return c if isinstance(c, ZeroMask) else None


def set_mask(module: nn.Module, mask: torch.Tensor | None, name: str = "weight") -> ZeroMask:
    """Give ``module`` a zero mask on its ``name`` tensor (``None``: its current zeros, taken
    when first applied); it replaces any constraint the module had."""
    zm = ZeroMask(mask, name)
    object.__setattr__(module, CONSTRAINT, zm)
    return zm


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The modules of ``model`` that carry a zero mask, by name."""
    return {n: m for n, m in model.named_modules() if mask_of(m) is not None}


def _zeros(t: torch.Tensor) -> int:
    return int(t.numel() - torch.count_nonzero(t.detach()))


def make_compact(model: nn.Module, module_names: list[str]) -> nn.Module:
    """Record the ``weight`` of the named modules as sparse (the ``sparse`` edit, with each
    tensor's zeros): bundles store them compactly and reload them with their masks."""
    modules = dict(model.named_modules())
    keys = [f"{n}.weight" for n in module_names]
    zeros = {f"{n}.weight": _zeros(modules[n].weight) for n in module_names}
    numel = {f"{n}.weight": modules[n].weight.numel() for n in module_names}
    record(model, edit={"kind": EDIT_KIND, "tensors": keys, "zeros": zeros, "numel": numel})
    return model


@torch.no_grad()
def refresh_masks(model: nn.Module, changed: Iterable[str]) -> list[str]:
    """After a structural change to the modules named ``changed`` (channels removed), give
    those that carry a zero mask the mask of their zeros now, and record the new counts (the
    ``sparse`` edit after the ``resize`` one); returns those layers."""
    masked = masked_modules(model)
    names = [n for n in changed if n in masked]
    for name in names:
        zm = masked[name].__dict__[CONSTRAINT]
        zm.mask = (getattr(masked[name], zm.name).detach() != 0).cpu()
    if names:
        make_compact(model, names)
    return names


def apply_sparse(
    model: nn.Module, edit: dict[str, Any], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Edit handler: the rebuilt layers named by the edit get their zero masks back (taken from
    the weights they are loaded with); an edit from before the counts were recorded gets them
    from the weights file."""
    keys = edit["tensors"]
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ModelError("sparse edit: tensors is not a list of names")
    params = dict(model.named_parameters())
    missing = [k for k in keys if k not in params]
    if missing:
        raise ModelError(f"sparse edit names parameters the model lacks: {missing[:5]}")
    for key in keys:
        owner, _, name = key.rpartition(".")
        set_mask(model.get_submodule(owner), None, name)
    if "zeros" not in edit:  # a bundle from before the counts: what the file holds
        counts = {k: _stored_zeros(state, k, params[k].numel()) for k in keys}
        edit["zeros"] = {k: n for k, n in counts.items() if n is not None}
        edit["numel"] = {k: params[k].numel() for k in edit["zeros"]}
    return model


def _stored_zeros(state: dict[str, torch.Tensor], key: str, numel: int) -> int | None:
    """Zeros of ``key`` as the weights file holds it: dense, or values + bitmask (its size
    taken from the model when the bitmask's length fits it; else unknown)."""
    if key in state:
        return _zeros(state[key])
    values, bits = state.get(key + VALUES), state.get(key + BITMASK)
    if values is None or bits is None or bits.numel() != (numel + 7) // 8:
        return None
    return numel - values.numel()


def storage_report(model: nn.Module) -> dict[str, int]:
    """Dense bytes, non-zero parameters and encoded bytes of the model's safetensors weights."""
    from safetensors.torch import save

    params, nonzero = count_params(model)
    return {
        "params": params,
        "nonzero_params": nonzero,
        "dense_bytes": len(save(state_tensors(model, compact=False))),
        "encoded_bytes": len(save(state_tensors(model))),
    }
