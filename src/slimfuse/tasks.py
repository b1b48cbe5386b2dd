"""Tasks: the loss, the metric and how to unpack a batch, per kind of problem.

- ``classification``: cross-entropy, accuracy
- ``regression``: mean squared error, metric = MSE (lower is better); MAE and R² reported too
  (:func:`scores`). A model built for standardized targets (``output = target_mean +
  target_std * h``, :func:`slimfuse.data.preprocessing.standardize_targets`) trains on the loss
  in standardized units, ``mean(((output - y) / target_std)^2)``, so every target counts alike
  whatever its units, while its predictions, and every metric, are in the original units.
- ``embedding``: fidelity to reference embeddings: loss ``1 - cos``, metric = mean cosine

A batch is ``(inputs, target)``; ``inputs`` may be a tensor, a tuple of tensors or a dict of
tensors (passed to the model as ``*args`` / ``**kwargs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.registry import Registry

TARGET_STD = "target_std"  # the buffer of a model that outputs de-standardized targets


def target_scale(model: Any) -> torch.Tensor | None:
    """The per-target standard deviation a model de-standardizes its outputs with (its
    ``target_std`` buffer, :func:`slimfuse.data.preprocessing.standardize_targets`; the first
    module that has one), if any."""
    if not isinstance(model, nn.Module):
        return None
    for m in model.modules():
        std = m._buffers.get(TARGET_STD)
        if std is not None:
            return std.detach()
    return None


@dataclass(frozen=True)
class Task:
    name: str
    metric: str
    higher_is_better: bool
    # further scores of :func:`scores` that :func:`slimfuse.measure` reports beside the metric
    reported: ClassVar[tuple[str, ...]] = ()

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

    def loss_for(self, model: Any) -> Any:
        """The training loss ``(output, target) -> loss`` for ``model`` (default: :meth:`loss`)."""
        return self.loss

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample metric contributions, averaged by :func:`evaluate`."""
        raise NotImplementedError

    def better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    # -- every score of a split in one pass (scores) --------------------------------------

    def accumulate(self, acc: dict[str, Any], output: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch to the running sums ``acc`` (summarised by :meth:`summarise`)."""
        s = self.score(output, target)
        acc["n"] = acc.get("n", 0) + len(s)
        acc[self.metric] = acc.get(self.metric, 0.0) + float(s.sum())
        acc["loss"] = acc.get("loss", 0.0) + float(self.loss(output, target)) * len(s)

    def summarise(self, acc: dict[str, Any]) -> dict[str, float]:
        n = max(int(acc.get("n", 0)), 1)
        return {self.metric: acc.get(self.metric, 0.0) / n, "loss": acc.get("loss", 0.0) / n}


class Classification(Task):
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.argmax(-1) == target).float()


class Regression(Task):
    """MSE loss and metric; :func:`scores` adds MAE and R² (the mean over targets of
    ``1 - SSE / SST``, scikit-learn's ``r2_score``), all in the targets' units."""

    reported: ClassVar[tuple[str, ...]] = ("mae", "r2")

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(output.reshape(target.shape), target)

    def loss_for(self, model: Any) -> Any:
        """The MSE of standardized targets when ``model`` de-standardizes its outputs
        (``((output - y) / target_std)^2``), else the plain MSE."""
        std = target_scale(model)
        if std is None:
            return self.loss

        def standardized(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            out = output.reshape(target.shape)
            scale = std.to(out.dtype) if target.dim() > 1 else std.to(out.dtype).reshape(-1)[0]
            return F.mse_loss(out / scale, target / scale)

        return standardized

    def score(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output.reshape(target.shape) - target).pow(2).reshape(len(target), -1).mean(1)

    def accumulate(self, acc: dict[str, Any], output: torch.Tensor, target: torch.Tensor) -> None:
        y = target.double().reshape(len(target), -1)
        err = output.double().reshape(y.shape) - y
        zero = torch.zeros(y.shape[1], dtype=torch.float64)
        acc["n"] = acc.get("n", 0) + len(y)
        acc["sse"] = acc.get("sse", zero) + err.pow(2).sum(0)
        acc["sae"] = acc.get("sae", zero) + err.abs().sum(0)
        acc["sy"] = acc.get("sy", zero) + y.sum(0)
        acc["syy"] = acc.get("syy", zero) + y.pow(2).sum(0)

    def summarise(self, acc: dict[str, Any]) -> dict[str, float]:
        n = int(acc.get("n", 0))
        if n == 0:
            return {"mse": 0.0, "loss": 0.0, "mae": 0.0, "r2": 0.0}
        mse = float(acc["sse"].mean()) / n
        sst = acc["syy"] - acc["sy"].pow(2) / n
        # scikit-learn's convention: a constant target scores 1 if predicted exactly, else 0
        r2 = torch.where(
            sst > 0,
            1 - acc["sse"] / sst.clamp_min(1e-300),
            (acc["sse"] == 0).double(),
        )
        return {
            "mse": mse,
            "loss": mse,
            "mae": float(acc["sae"].mean()) / n,
            "r2": float(r2.mean()),
        }


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


@torch.no_grad()
def scores(
    model: nn.Module | Any, loader: Any, task: str | Task = "classification"
) -> dict[str, float]:
    """Every score of ``model`` over a loader in one pass: the task's metric, ``loss`` (the
    task's loss, averaged over samples) and, for regression, ``mae`` and ``r2``."""
    task = get_task(task)
    was_training = getattr(model, "training", False)
    if isinstance(model, nn.Module):
        model.eval()
    acc: dict[str, Any] = {}
    try:
        for batch in loader:
            inputs, target = task.unpack(batch)
            task.accumulate(acc, torch.as_tensor(forward(model, inputs)), target)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return task.summarise(acc)
