"""Tasks: the loss, the metric and how to unpack a batch, per kind of problem.

- ``classification``: cross-entropy, accuracy
- ``regression``: mean squared error, metric = MSE (lower is better)
- ``embedding``: fidelity to reference embeddings: loss ``1 - cos``, metric = mean cosine

A batch is ``(inputs, target)``; ``inputs`` may be a tensor, a tuple of tensors or a dict of
tensors (passed to the model as ``*args`` / ``**kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.registry import Registry


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    higher_is_better: bool

    def unpack(self, batch: Any) -> tuple[Any, torch.Tensor]:
        if isinstance(batch, dict):
            batch = dict(batch)
            target = batch.pop("target", None)
            if target is None:
                target = batch.pop("labels")
            return batch, target
        inputs, target = batch[0], batch[1]
        return inputs, target

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample metric contributions, averaged by :func:`evaluate`."""
        raise NotImplementedError

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b


class Classification(Task):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.argmax(-1) == target).float()


class Regression(Task):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.reshape(target.shape), target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.reshape(target.shape) - target).pow(2).reshape(len(target), -1).mean(1)


class Embedding(Task):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - F.cosine_similarity(output, target, dim=-1)).mean()

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(output, target, dim=-1)


TASKS: Registry[Task] = Registry("task")
TASKS.register("classification")(Classification("classification", "accuracy", True))
TASKS.register("regression")(Regression("regression", "mse", False))
TASKS.register("embedding")(Embedding("embedding", "cosine", True))


def get_task(task: str | Task) -> Task:
    return task if isinstance(task, Task) else TASKS.get(task)


def forward(model: Any, inputs: Any) -> torch.Tensor:
    """Call a model (or runner) on inputs of any of the batch forms."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@torch.no_grad()
def evaluate(model: nn.Module | Any, loader: Any, task: str | Task = "classification") -> float:
    """The task metric of ``model`` (an ``nn.Module`` or a runner) over a loader."""
    task = get_task(task)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    total, n = 0.0, 0
    for batch in loader:
        inputs, target = task.unpack(batch)
        out = forward(model, inputs)
        s = task.score(torch.as_tensor(out), target)
        total += float(s.sum())
        n += len(s)
    if isinstance(model, nn.Module):
        model.train(was_training)
    return total / max(n, 1)
