"""Average fusion: one module whose output is the (weighted) mean of its members' predictions.

``space="probs"`` averages probabilities and returns their log, so ``softmax(output)`` is the
mean probability and ``argmax`` is the soft vote; ``space="logits"`` averages the raw outputs
(the right choice for regression or embeddings too). Members are frozen (no gradients, eval
mode), so a :class:`MeanFusion` can sit in front of a student as a distillation teacher::

    teacher = MeanFusion([("a", cnn_a), ("b", cnn_b), ("c", cnn_c)])
    teacher(x).softmax(-1)           # mean of the members' probabilities
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from slimfuse.errors import FusionError
from slimfuse.fusion.common import (
    FuseJob,
    Members,
    as_pairs,
    attach_spec,
    check_output_sizes,
    check_outputs,
    check_weights,
    declared_outputs,
    is_regression,
)
from slimfuse.fusion.config import Mean
from slimfuse.training import freeze

SPACES = ("probs", "logits")


def call(model: nn.Module, x: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Call a member with the fused model's inputs (``x`` first, like the exporter names them)."""
    return model(*(() if x is None else (x, *args)), **kwargs)


def log_mean_prob(outs: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``log sum_i w_i softmax(z_i)``, computed stably as a log-sum-exp over members."""
    logp = torch.stack([F.log_softmax(o, dim=-1) + torch.log(w[k]) for k, o in enumerate(outs)])
    top = logp.max(dim=0).values.detach()
    return top + torch.log(torch.exp(logp - top).sum(dim=0))


class FusionModule(nn.Module):
    """Base of fused models: frozen members in a ``ModuleDict`` that stay in eval mode.

    The members given are frozen in place (``requires_grad=False``, eval mode), as
    distillation teachers are; pass copies to keep training a member on its own
    (:func:`slimfuse.fuse` does: it leaves the caller's models as they were).
    """

    def __init__(self, members: Members) -> None:
        super().__init__()
        pairs = as_pairs(members)
        self.names: list[str] = [n for n, _ in pairs]
        self.members = nn.ModuleDict({n: freeze(m) for n, m in pairs})
        self.n_outputs: int | None = check_output_sizes({n: declared_outputs(m) for n, m in pairs})

    @property
    def pairs(self) -> list[tuple[str, nn.Module]]:
        return [(n, self.members[n]) for n in self.names]

    def train(self, mode: bool = True) -> FusionModule:
        super().train(mode)
        for m in self.members.values():
            m.eval()  # members stay frozen: no BatchNorm updates, no dropout
        return self

    def member_outputs(self, x: Any = None, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        """Each member's raw output (logits), checked to have the same size."""
        outs = [call(self.members[n], x, args, kwargs) for n in self.names]
        check_outputs(self.names, outs)
        return outs


class MeanFusion(FusionModule):
    """Weighted mean of member logits (``space="logits"``) or of probabilities (``"probs"``).

    ``weights`` (one per member, >= 0, not all 0) are normalised to sum to 1; ``None`` means
    equal weights. Members with weight 0 are skipped at run time.
    """

    def __init__(
        self,
        members: Members,
        *,
        space: Literal["probs", "logits"] = "probs",
        weights: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__(members)
        if space not in SPACES:
            raise FusionError(f"space {space!r}: expected one of {', '.join(SPACES)}")
        self.space = space
        self.register_buffer("weights", torch.zeros(len(self.names)))
        self.set_weights(weights)

    def set_weights(self, weights: Sequence[float] | torch.Tensor | None) -> None:
        """Replace the member weights (validated and normalised) and refresh the spec."""
        n = len(self.names)
        w = torch.full((n,), 1.0 / n) if weights is None else check_weights(weights, n)
        self.weights.copy_(w)
        self._active = [i for i in range(n) if float(w[i]) > 0]
        attach_spec(
            self,
            self.pairs,
            "mean",
            space=self.space,
            weights=[float(v) for v in w],
        )

    def forward(self, x: Any = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        outs = [call(self.members[self.names[i]], x, args, kwargs) for i in self._active]
        check_outputs([self.names[i] for i in self._active], outs)
        w = self.weights[self._active]
        if self.space == "logits":
            return sum(o * w[k] for k, o in enumerate(outs))  # type: ignore[return-value]
        return log_mean_prob(outs, w)

    def extra_repr(self) -> str:
        w = ", ".join(f"{n}={float(v):.3f}" for n, v in zip(self.names, self.weights, strict=True))
        return f"space={self.space!r}, weights=({w})"


def fused_space(config: Any, job: FuseJob) -> Literal["probs", "logits"]:
    """The space a mean is taken in: the config's; for regression, the predictions themselves
    (``logits``: what the config defaults to there; ``probs`` given explicitly is refused)."""
    if not is_regression(job.task):
        return config.space  # type: ignore[no-any-return]
    if "space" in config.model_fields_set and config.space != "logits":
        raise FusionError(
            f"space {config.space!r} averages probabilities; regression averages the members' "
            "predictions: expected space 'logits'"
        )
    return "logits"


def fuse_mean(pairs: list[tuple[str, nn.Module]], config: Mean, job: FuseJob) -> MeanFusion:
    """The ``mean`` handler of :func:`slimfuse.fuse` (regression: the mean of predictions)."""
    return MeanFusion(pairs, space=fused_space(config, job), weights=config.weights)
