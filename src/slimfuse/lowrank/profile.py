"""What the budget needs from data: each layer's FLOPs on an example input, and the covariance
of its inputs over calibration batches (statistics only; no layer is changed here)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from slimfuse.measuring import count_macs
from slimfuse.tasks import forward


def _positions(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    """Output positions in the whole call: tokens (rows) for a Linear, output pixels times
    samples for a conv (its MACs are its weights times these)."""
    if isinstance(module, nn.Linear):
        return x.numel() // max(1, module.in_features)
    return out.numel() // max(1, int(out.shape[1] if out.dim() > 2 else out.shape[0]))


@torch.no_grad()
def layer_positions(
    model: nn.Module, layers: dict[str, nn.Module], example: Any
) -> tuple[dict[str, int], int | None]:
    """Per layer, its output positions on ``example`` (a layer's MACs are its weights times
    these), and the whole model's MACs on it (``None``: not countable)."""
    seen: dict[str, int] = {}
    handles = []
    for name, module in layers.items():

        def hook(m: nn.Module, inp: Any, out: Any, name: str = name) -> None:
            seen[name] = seen.get(name, 0) + _positions(m, inp[0], out)

        handles.append(module.register_forward_hook(hook))
    try:
        macs = count_macs(model, example)
    finally:
        for h in handles:
            h.remove()
    return {n: seen.get(n, 0) for n in layers}, macs


def _rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The layer's input as a matrix whose columns match its weight's (conv: unfolded patches);
    token inputs keep only the tokens the attention mask marks."""
    if isinstance(module, nn.Linear):
        if mask is not None and x.dim() == 3 and tuple(mask.shape) == tuple(x.shape[:2]):
            x = x[mask.bool()]
        return x.reshape(-1, x.shape[-1])
    conv: Any = module
    two_d = isinstance(module, nn.Conv2d)
    pad = conv.padding if isinstance(conv.padding, tuple) else (0,) * (2 if two_d else 1)
    if two_d:
        cols = F.unfold(
            x, conv.kernel_size, dilation=conv.dilation, padding=pad, stride=conv.stride
        )
    else:
        cols = F.unfold(
            x.unsqueeze(2),
            (1, conv.kernel_size[0]),
            dilation=(1, conv.dilation[0]),
            padding=(0, pad[0]),
            stride=(1, conv.stride[0]),
        )
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def input_covariances(
    model: nn.Module,
    layers: dict[str, nn.Module],
    batches: Iterable[Any],
    max_dim: int = 8192,
) -> dict[str, torch.Tensor | None]:
    """Per layer, the mean of ``x x^T`` over its input rows on ``batches`` (float64, columns as
    its weight's); ``None`` for a layer wider than ``max_dim`` or never run. Layers that read one
    tensor (query, key and value) share one product."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    state: dict[str, Any] = {"mask": None, "cache": {}}
    handles = []
    for name, module in layers.items():
        if module.weight[0].numel() > max_dim:
            continue

        def hook(m: nn.Module, inp: Any, _out: Any, name: str = name) -> None:
            x = inp[0]
            # the same tensor into layers of one geometry: one product (the cache holds the
            # tensor, so its id stays its own for the batch)
            geometry = tuple(getattr(m, a, None) for a in ("kernel_size", "stride", "padding"))
            key = (id(x), type(m), geometry, getattr(m, "dilation", None))
            if key not in state["cache"]:
                rows = _rows(m, x.detach().float(), state["mask"])
                state["cache"][key] = (x, (rows.T @ rows).double(), rows.shape[0])
            _, prod, n = state["cache"][key]
            sums[name] = sums[name] + prod if name in sums else prod.clone()
            counts[name] = counts.get(name, 0) + n

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        for inputs in batches:
            state["mask"] = inputs.get("attention_mask") if isinstance(inputs, dict) else None
            state["cache"] = {}
            forward(model, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: (sums[n] / counts[n] if counts.get(n) else None) for n in layers}
