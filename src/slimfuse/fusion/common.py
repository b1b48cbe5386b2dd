"""What every fusion method shares: member lists, weight checks, the handlers' job, the bundle spec.

Members are given in scikit-learn's manner, as ``(name, model)`` pairs (a plain list of modules
is named ``m0``, ``m1``, ...). A fused model records a :class:`~slimfuse.models.source.ModelSpec`
with source ``"fused"`` whose kwargs hold each member's own spec, so :func:`slimfuse.load`
rebuilds the whole structure (see :mod:`slimfuse.fusion.build`) before loading the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.errors import FusionError
from slimfuse.models.source import ModelSpec, set_spec, spec_of
from slimfuse.tasks import Task, forward, get_task

Members = Sequence[tuple[str, nn.Module]] | Sequence[nn.Module]


def as_pairs(members: Iterable[Any]) -> list[tuple[str, nn.Module]]:
    """Normalise members to ``[(name, module), ...]`` and check names and kinds."""
    items = list(members) if members is not None else []
    if not items:
        raise FusionError("no members given: expected at least one (name, model) pair")
    pairs: list[tuple[str, nn.Module]] = []
    for i, item in enumerate(items):
        if isinstance(item, nn.Module):
            name, model = f"m{i}", item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            name, model = str(item[0]), item[1]
        else:
            raise FusionError(
                f"member {i} is {type(item).__name__}: expected a (name, model) pair or an nn.Module"
            )
        if not isinstance(model, nn.Module):
            raise FusionError(
                f"member {name!r} is {type(model).__name__}: expected an nn.Module "
                "(wrap a scikit-learn classifier with slimfuse.fusion.SklearnMember)"
            )
        if not name or "." in name:
            raise FusionError(f"member name {name!r}: expected a non-empty name without dots")
        pairs.append((name, model))
    names = [n for n, _ in pairs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FusionError(f"member names {dup} appear more than once: expected unique names")
    return pairs


def check_weights(weights: Any, n: int, *, normalise: bool = True) -> torch.Tensor:
    """Validate member weights (finite, non-negative, one per member, not all zero)."""
    try:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
    except (TypeError, ValueError) as exc:
        raise FusionError(f"weights {weights!r}: expected a list of numbers ({exc})") from exc
    values = [round(float(v), 6) for v in w]
    if w.numel() != n:
        raise FusionError(f"{w.numel()} weights for {n} members: expected one weight per member")
    if not bool(torch.isfinite(w).all()):
        raise FusionError(f"weights {values} are not all finite: expected finite numbers")
    if bool((w < 0).any()):
        raise FusionError(f"weights {values} include negative values: expected weights >= 0")
    if float(w.sum()) <= 0:
        raise FusionError(f"weights {values} sum to 0: expected at least one positive weight")
    if normalise:
        w = w / w.sum()
    return w.float()


@dataclass(frozen=True)
class FuseJob:
    """What a fusion method's handler gets besides the members (copies) and its config."""

    data: Any  # the data it learns from (None: a method that learns nothing)
    task: str | Task
    train: TrainConfig | None  # the one loop's settings, for a method that trains
    seed: int = 0  # fold splits (the training seed when it trains)

    def needs_data(self, method: str) -> Any:
        if self.data is None:
            raise FusionError(f"method {method!r} learns from data: expected data")
        return self.data


def is_regression(task: str | Task) -> bool:
    """Whether a fusion fits real-valued targets (mean squared error) rather than labels."""
    return get_task(task).name == "regression"


def target_std(y: torch.Tensor, targets: int) -> torch.Tensor:
    """The standard deviation of each of ``targets`` targets over the samples of ``y`` (1 where
    a target is constant): the unit that regression fits weights and meta-learners in."""
    s = torch.as_tensor(y).double().reshape(len(y), targets).std(0, unbiased=False)
    return torch.where(s > 0, s, torch.ones_like(s))


def declared_outputs(model: nn.Module) -> int | None:
    """The number of outputs a member declares (its spec's ``num_classes``), if known."""
    n = getattr(model, "n_outputs", None)
    if isinstance(n, int):
        return n
    spec = spec_of(model)
    if spec is not None and spec.num_classes:
        return int(spec.num_classes)
    if spec is not None and isinstance(spec.kwargs.get("num_classes"), int):
        return int(spec.kwargs["num_classes"])
    return None


def check_output_sizes(sizes: dict[str, int | None]) -> int | None:
    """All known output sizes must agree; returns the common size (or ``None`` if unknown)."""
    known = {k: v for k, v in sizes.items() if v is not None}
    if len(set(known.values())) > 1:
        seen = ", ".join(f"{k}: {v}" for k, v in known.items())
        raise FusionError(
            f"members give different output sizes ({seen}): expected the same number of "
            "outputs from every member"
        )
    return next(iter(known.values()), None)


def check_outputs(names: Sequence[str], outputs: Sequence[torch.Tensor]) -> None:
    """Forward-time check (static shapes only, so it traces and exports)."""
    sizes = {n: int(o.shape[-1]) for n, o in zip(names, outputs, strict=True)}
    if len(set(sizes.values())) > 1:
        check_output_sizes(dict(sizes))


def probe_outputs(members: Sequence[tuple[str, nn.Module]], example: torch.Tensor) -> int:
    """Run each member once on ``example`` and check their output sizes agree."""
    sizes: dict[str, int | None] = {}
    with torch.no_grad():
        for name, m in members:
            was = m.training
            m.eval()
            sizes[name] = int(forward(m, example).shape[-1])
            m.train(was)
    out = check_output_sizes(sizes)
    assert out is not None
    return out


def member_specs(members: Sequence[tuple[str, nn.Module]]) -> list[dict[str, Any]] | None:
    """``[{"name", "spec"}]`` for members that all carry a spec, else ``None``."""
    out = []
    for name, m in members:
        spec = spec_of(m)
        if spec is None:
            return None
        out.append({"name": name, "spec": spec.to_dict()})
    return out


def attach_spec(
    fused: nn.Module,
    members: Sequence[tuple[str, nn.Module]],
    method: str,
    **kwargs: Any,
) -> nn.Module:
    """Give ``fused`` a ``"fused"`` spec when every member has one (so it can be saved)."""
    specs = member_specs(members)
    if specs is None:
        return fused
    first = spec_of(members[0][1])
    assert first is not None
    if any(s["spec"].get("edits") for s in specs):
        edits: list[dict[str, Any]] = [{"kind": "fusion_members"}]
    else:
        edits = []
    spec = ModelSpec(
        source="fused",
        kwargs={"method": method, "members": specs, **kwargs},
        edits=edits,
        task=first.task,
        input_shape=first.input_shape,
        num_classes=getattr(fused, "n_outputs", None) or first.num_classes,
    )
    return set_spec(fused, spec)


def finite_list(values: Any) -> list[float]:
    """A JSON-friendly list of floats."""
    out = [float(v) for v in torch.as_tensor(values).flatten()]
    if not all(math.isfinite(v) for v in out):
        raise FusionError(f"values {out}: expected finite numbers")
    return out
