"""Member predictions over a data split or loader, collected once for fitting fusion weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import check_output_sizes
from slimfuse.tasks import Task, forward, get_task


def as_loader(data: Data | Any, split: str = "val", batch_size: int = 256) -> Any:
    """A loader from :class:`Data` (its ``split``) or a loader given as is."""
    if isinstance(data, Data):
        return data.loader(split, batch_size=batch_size)
    return data


@torch.no_grad()
def collect(
    members: Sequence[tuple[str, nn.Module]],
    loader: Any,
    task: str | Task = "classification",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(outputs, targets)``: outputs ``(members, samples, classes)`` of raw member outputs."""
    task = get_task(task)
    outs: list[list[torch.Tensor]] = [[] for _ in members]
    targets: list[torch.Tensor] = []
    for m in (m for _, m in members):
        m.eval()
    for batch in loader:
        inputs, target = task.unpack(batch)
        for i, (_, m) in enumerate(members):
            outs[i].append(forward(m, inputs).float())
        targets.append(torch.as_tensor(target))
    if not targets:
        raise FusionError("the data to fit on is empty: expected at least one batch")
    stacked = [torch.cat(o) for o in outs]
    check_output_sizes({n: int(o.shape[-1]) for (n, _), o in zip(members, stacked, strict=True)})
    return torch.stack(stacked), torch.cat(targets)
