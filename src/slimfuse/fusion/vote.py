"""Voting: hard majority vote (each member votes for its top class) and soft vote.

``VoteFusion(members, voting="hard")`` outputs each class's (weighted) share of the votes; its
``argmax`` is the majority class, ties going to the lowest class index as in scikit-learn's
``VotingClassifier``. A member whose top logits tie votes for each tied class. ``voting="soft"``
is the argmax of the mean probability: the same output as ``MeanFusion(space="probs")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from slimfuse.errors import FusionError
from slimfuse.fusion.common import FuseJob, Members, attach_spec, check_outputs, check_weights
from slimfuse.fusion.config import SoftVote, Vote
from slimfuse.fusion.ensemble import FusionModule, call, log_mean_prob

VOTING = ("hard", "soft")


class VoteFusion(FusionModule):
    """Hard or soft (weighted) voting over frozen members."""

    def __init__(
        self,
        members: Members,
        *,
        voting: Literal["hard", "soft"] = "hard",
        weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__(members)
        if voting not in VOTING:
            raise FusionError(f"voting {voting!r}: expected one of {', '.join(VOTING)}")
        self.voting = voting
        n = len(self.names)
        w = torch.full((n,), 1.0 / n) if weights is None else check_weights(weights, n)
        self.register_buffer("weights", w)
        self._active = [i for i in range(n) if float(w[i]) > 0]
        attach_spec(self, self.pairs, "vote", voting=voting, weights=[float(v) for v in w])

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        names = [self.names[i] for i in self._active]
        outs = [call(self.members[n], x, args, kwargs) for n in names]
        check_outputs(names, outs)
        w = self.weights[self._active]
        if self.voting == "soft":
            return log_mean_prob(outs, w)
        votes = [(o == o.max(dim=-1, keepdim=True).values).to(o.dtype) for o in outs]
        return sum(v * w[i] for i, v in enumerate(votes))  # type: ignore[return-value]


def _build(members: list[tuple[str, nn.Module]], **kw: Any) -> nn.Module:
    return VoteFusion(members, **kw)


def fuse_vote(pairs: list[tuple[str, nn.Module]], config: Vote, job: FuseJob) -> VoteFusion:
    """The ``vote`` handler of :func:`slimfuse.fuse`."""
    return VoteFusion(pairs, voting="hard", weights=config.weights)


def fuse_soft_vote(
    pairs: list[tuple[str, nn.Module]], config: SoftVote, job: FuseJob
) -> VoteFusion:
    """The ``soft-vote`` handler of :func:`slimfuse.fuse`."""
    return VoteFusion(pairs, voting="soft", weights=config.weights)
