"""The loop's batches: one seeded permutation per epoch (split across DDP ranks, optionally
grouped by length), and its progress (a bar on a terminal, epoch lines in a log)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader

from slimfuse.errors import ConfigError

log = logging.getLogger("slimfuse.training")


def _last_batch_dropped(n: int, per_rank: int, world: int) -> bool:
    """Whether :func:`_epoch_loader` with ``min_batch=2`` leaves out a last batch that it keeps
    with ``min_batch=1``: some process's share of the last global batch is one sample."""
    last = n % (per_rank * world)
    return world <= last < 2 * world


def _epoch_loader(
    dataset: Any,
    batch_size: int,
    seed: int,
    world: int,
    rank: int,
    by_length: bool = False,
    *,
    skip: int = 0,
    min_batch: int = 1,
) -> Any:
    """This process's batches of one epoch: slices of the same global batches in every process.

    One permutation of the whole set (seeded per epoch, the permutation a shuffled ``DataLoader``
    draws) is cut into global batches of ``batch_size * world``; process ``rank`` takes the
    ``rank``-th slice of each. DDP averages the gradients of the slices, so ``world`` processes
    take the same steps as one process with the global batch (up to float summation order).
    A last global batch too small to give every process a sample is dropped. ``by_length``
    (for datasets with ``lengths()``, such as token data) first sorts each run of 50 global
    batches of the permutation by length, then shuffles the batches: each batch holds texts of
    similar length, so little of it is padding.

    The loader draws from its own generator, never from the global torch RNG (a ``DataLoader``
    draws a seed each time it is iterated), so Dropout and augmentation see the same random
    streams whether or not a run was resumed. ``skip`` leaves out the first batches without
    loading them (a resumed epoch); ``min_batch`` leaves out a last batch whose share in some
    process would be smaller (2 for BatchNorm). Neither changes any other batch.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=g)
    if by_length:
        order = _grouped_by_length(order, dataset, batch_size * world, g)
    if world == 1 and not by_length:
        if len(order) % batch_size and len(order) % batch_size < min_batch:
            order = order[: len(order) - len(order) % batch_size]
        return DataLoader(
            dataset, batch_size=batch_size, sampler=order[skip * batch_size :].tolist(), generator=g
        )
    batches = []
    for chunk in order.split(batch_size * world):
        if len(chunk) < world * min_batch:
            break
        batches.append(torch.tensor_split(chunk, world)[rank].tolist())
    return DataLoader(dataset, batch_sampler=batches[skip:], generator=g)


def _grouped_by_length(
    order: torch.Tensor, dataset: Any, batch: int, g: torch.Generator
) -> torch.Tensor:
    if not callable(getattr(dataset, "lengths", None)):
        raise ConfigError(
            f"group_by_length needs a data set with lengths() (token data); "
            f"{type(dataset).__name__} has none"
        )
    lengths = torch.as_tensor(dataset.lengths())
    groups = []
    for mega in order.split(50 * batch):
        mega = mega[torch.argsort(lengths[mega], descending=True, stable=True)]
        groups += list(mega.split(batch))
    keep = torch.randperm(len(groups), generator=g).tolist()
    return torch.cat([groups[i] for i in keep])


class _Progress:
    """One progress bar for a whole run (a terminal), or a line every tenth of the epochs (a log)."""

    def __init__(self, show: bool, desc: str, total: int, done: int, epochs: int) -> None:
        self.show, self.desc, self.epochs = show, desc, epochs
        self.bar: Any = None
        if show and sys.stderr.isatty():
            from tqdm.auto import tqdm

            try:
                cols, rows = os.get_terminal_size(sys.stderr.fileno())
            except OSError:
                cols, rows = 0, 0
            # a terminal that reports no size (docker -t, script, CI pseudo-terminals) gets
            # 80x24: tqdm would otherwise hide the bar (0 rows) or draw it 0 columns wide
            self.bar = tqdm(
                total=total,
                initial=done,
                desc=desc,
                leave=False,
                dynamic_ncols=cols > 0,
                ncols=None if cols > 0 else 80,
                nrows=None if rows > 0 else 24,
            )
        self.every = max(1, epochs // 10)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def step(self, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    def epoch(self, epoch: int, loss: float, val: str) -> None:
        line = f"{self.desc} epoch {epoch}/{self.epochs}: loss {loss:.4f}, {val}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"epoch {epoch}/{self.epochs}, loss {loss:.4f}, {val}")
        elif self.show and (epoch % self.every == 0 or epoch == self.epochs):
            log.info(line)

    def say(self, line: str) -> None:
        if self.show:
            if self.bar is not None:
                self.bar.write(line)
            else:
                log.info(line)
