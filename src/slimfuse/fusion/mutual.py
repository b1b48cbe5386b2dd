"""Deep Mutual Learning (Zhang et al., 2018): K models trained together, each on the labels plus
the KL divergence to its peers' predictions.

Member ``k`` minimises ``CE(z_k, y) + kl_weight * T^2 * mean_{j != k} KL(p_j || p_k)`` where the
peers' probabilities ``p_j`` (at temperature ``T``) are treated as targets (no gradient flows into
a peer through its own target). All members step together in ONE run of the one training loop
:func:`slimfuse.training.train`, over the :class:`MutualLearning` container with a custom
``objective`` and an ``evaluate_fn`` (the members' mean validation accuracy). Afterwards each
member is usable alone (:meth:`MutualLearning.member`) or fused (:meth:`MutualLearning.fused`).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.data import Data
from slimfuse.errors import FusionError
from slimfuse.fusion.common import Members, as_pairs, check_output_sizes, declared_outputs
from slimfuse.fusion.ensemble import MeanFusion, call
from slimfuse.tasks import Task, evaluate, forward, get_task
from slimfuse.training import TrainConfig, train


class MutualLearning(nn.Module):
    """Trainable container of K peers; ``forward`` returns their stacked outputs ``(K, B, C)``."""

    def __init__(self, members: Members, *, kl_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        pairs = as_pairs(members)
        if len(pairs) < 2:
            raise FusionError(f"{len(pairs)} member given: mutual learning needs at least 2 peers")
        if not (kl_weight >= 0 and temperature > 0):
            raise FusionError(
                f"kl_weight={kl_weight}, temperature={temperature}: expected >= 0 and > 0"
            )
        check_output_sizes({n: declared_outputs(m) for n, m in pairs})
        self.names = [n for n, _ in pairs]
        self.members = nn.ModuleDict(dict(pairs))
        self.kl_weight, self.temperature = kl_weight, temperature

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.stack([call(self.members[n], x, args, kwargs) for n in self.names])

    def loss(self, outputs: torch.Tensor, target: torch.Tensor, task: Task) -> torch.Tensor:
        """Sum over peers of the task loss plus the mean KL to the other peers."""
        k = outputs.shape[0]
        t = self.temperature
        logp = F.log_softmax(outputs / t, dim=-1)
        targets = logp.detach()
        total = outputs.new_zeros(())
        for i in range(k):
            kl = sum(
                F.kl_div(logp[i], targets[j], log_target=True, reduction="batchmean")
                for j in range(k)
                if j != i
            )
            total = total + task.loss(outputs[i], target) + self.kl_weight * t * t * kl / (k - 1)
        return total

    def fit(
        self,
        data: Data,
        *,
        config: TrainConfig | None = None,
        task: str | Task = "classification",
        checkpoint_dir: Any = None,
        resume: bool = False,
    ) -> MutualLearning:
        """Train all peers together; learned attributes ``result_``, ``member_scores_``."""
        task = get_task(task)
        val = data.loader("val", batch_size=256)

        def objective(model: nn.Module, batch: Any) -> torch.Tensor:
            inputs, target = task.unpack(batch)
            return self.loss(forward(model, inputs), target, task)

        def evaluate_fn(_model: nn.Module) -> float:
            scores = [evaluate(self.members[n], val, task) for n in self.names]
            return sum(scores) / len(scores)

        self.result_ = train(
            self,
            data,
            task,
            config or TrainConfig(quiet=True),
            objective=objective,
            evaluate_fn=evaluate_fn,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            description="mutual",
        )
        self.member_scores_ = {n: evaluate(self.members[n], val, task) for n in self.names}
        return self

    def member(self, name: str) -> nn.Module:
        """One trained peer, usable alone (it keeps its own bundle spec)."""
        if name not in self.members:
            raise FusionError(f"no member {name!r}: expected one of {', '.join(self.names)}")
        return self.members[name]

    def fused(self, space: Literal["probs", "logits"] = "probs") -> MeanFusion:
        """The peers averaged into one :class:`MeanFusion` (copies: this container stays trainable)."""
        return MeanFusion([(n, copy.deepcopy(self.members[n])) for n in self.names], space=space)
