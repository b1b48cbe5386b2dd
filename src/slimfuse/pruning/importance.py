"""Importance criteria for structured pruning, in one registry.

Each criterion scores the channels/neurons of a dependency group (all the layers that must shrink
together), built on Torch-Pruning's importance classes:

- ``l1``: Σ|w| over the group's weights (the neuron importance p_i = Σ_j |w_ij|)
- ``l2``: the L2 norm of the same weights
- ``bn``: the absolute BatchNorm scale |γ| (network slimming); needs BatchNorm layers
- ``taylor``: first-order Taylor |w · ∂L/∂w|, with gradients accumulated from a few batches

Add one with ``IMPORTANCE.register("name")(Criterion(make=..., needs_grad=...))``. Torch-Pruning
is imported when a criterion is made, so that this registry (and the configs that check names
against it) import no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slimfuse.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """A factory of a Torch-Pruning importance; ``needs_grad``: gradients from data first."""

    make: Callable[[], Any]
    needs_grad: bool = False
    needs_bn: bool = False
    help: str = ""


def _magnitude(p: int) -> Callable[[], Any]:
    def make() -> Any:
        import torch_pruning as tp

        return tp.importance.MagnitudeImportance(p=p, group_reduction="mean")

    return make


def _bn() -> Any:
    import torch_pruning as tp

    return tp.importance.BNScaleImportance()


def _taylor() -> Any:
    import torch_pruning as tp

    return tp.importance.TaylorImportance(group_reduction="mean")


IMPORTANCE: Registry[Criterion] = Registry("importance criterion")
IMPORTANCE.register("l1")(Criterion(_magnitude(1), help="sum of |w| (the articles' p_i)"))
IMPORTANCE.register("l2")(Criterion(_magnitude(2), help="L2 norm of the weights"))
IMPORTANCE.register("bn")(Criterion(_bn, needs_bn=True, help="|BatchNorm scale|"))
IMPORTANCE.register("taylor")(
    Criterion(_taylor, needs_grad=True, help="first-order Taylor |w dL/dw| from a few batches")
)
