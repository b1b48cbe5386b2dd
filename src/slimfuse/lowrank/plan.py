"""What every method shares: the layers it may factorize, and applying the ranks it chose.

:func:`candidates` selects the targeted layers and sets aside, with the reason, those no rank
can shrink (a ``Linear(4, 1)``: even rank 1 holds 5 weights), grouped convs and layers that
keep a zero mask (sparse: factors would lose the zeros). A method then gives a rank per layer
(``None``: leave it), and :func:`apply` swaps in the factorized layers, records the ``lowrank``
edit and returns the report: one row per targeted layer, factorized or left alone and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from slimfuse.lowrank.config import AnyLowRankConfig
from slimfuse.lowrank.layers import (
    Decomposition,
    breakeven,
    factor_weights,
    factorized,
    kind_of,
    matrix_shape,
    record_factorized,
    replace,
)
from slimfuse.targeting import select_modules
from slimfuse.training import CONSTRAINT

log = logging.getLogger("slimfuse.lowrank")

DEFAULT_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass
class Layer:
    """A targeted layer this family can factorize."""

    name: str
    module: nn.Module
    kind: str
    rows: int  # out
    cols: int  # in * kernel
    breakeven: int  # the largest rank that makes it smaller

    @property
    def weights(self) -> int:
        return self.rows * self.cols

    @property
    def full_rank(self) -> int:
        return min(self.rows, self.cols)


@dataclass
class Choice:
    """A method's decision for one layer: ``rank`` (None: left alone), why, and the SVD."""

    rank: int | None
    reason: str = ""
    dec: Decomposition | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _row(name: str, module: nn.Module, status: str, reason: str, **more: Any) -> dict[str, Any]:
    shape = list(matrix_shape(module)) if getattr(module, "weight", None) is not None else None
    return {
        "layer": name,
        "type": type(module).__name__,
        "shape": shape,
        "status": status,
        "reason": reason,
        **more,
    }


def candidates(
    model: nn.Module, config: AnyLowRankConfig
) -> tuple[list[Layer], list[dict[str, Any]]]:
    """The targeted layers that some rank shrinks, and report rows for the others."""
    picked = select_modules(
        model, config.targets, config.ignore, default_types=DEFAULT_TYPES, what="lowrank layer"
    )
    layers: list[Layer] = []
    alone: list[dict[str, Any]] = []
    for name, module in picked.items():
        kind = kind_of(module)
        if kind is None:
            weight = getattr(module, "weight", None)  # a container, a norm's scale: not reported
            if isinstance(weight, nn.Parameter) and weight.dim() >= 2:
                alone.append(_row(name, module, "left alone", "not a Linear, Conv1d or Conv2d"))
            continue
        if getattr(module, "groups", 1) != 1:
            alone.append(_row(name, module, "left alone", f"grouped conv (groups={module.groups})"))
            continue
        if module.__dict__.get(CONSTRAINT) is not None:
            alone.append(_row(name, module, "left alone", "keeps a zero mask (sparse weights)"))
            continue
        rows, cols = matrix_shape(module)
        edge = breakeven(module)
        if edge < 1:
            alone.append(
                _row(
                    name,
                    module,
                    "left alone",
                    f"no rank makes it smaller: rank 1 holds {rows + cols} weights, the layer "
                    f"{rows * cols}",
                    rank=None,
                    full_rank=min(rows, cols),
                )
            )
            continue
        layers.append(Layer(name, module, kind, rows, cols, edge))
    return layers, alone


def apply(
    model: nn.Module,
    layers: list[Layer],
    choices: dict[str, Choice],
    alone: list[dict[str, Any]],
    **info: Any,
) -> list[dict[str, Any]]:
    """Factorize each layer its choice gives a rank that shrinks it, in place; record the edit;
    return the report (rows in model order)."""
    done: dict[str, tuple[str, int]] = {}
    rows = {r["layer"]: r for r in alone}
    for layer in layers:
        choice = choices.get(layer.name, Choice(None, "not chosen"))
        r = choice.rank
        common = {"full_rank": layer.full_rank, **choice.extra}
        if r is None or r > layer.breakeven:
            why = choice.reason or "not chosen"
            if r is not None:
                why = (
                    f"rank {r}{f' ({choice.reason})' if choice.reason else ''} would hold "
                    f"{factor_weights(layer.module, r)} weights, the layer {layer.weights} (at "
                    f"most rank {layer.breakeven} shrinks it)"
                )
            rows[layer.name] = _row(
                layer.name, layer.module, "left alone", why, rank=None, **common
            )
            continue
        new = factorized(layer.module, r, choice.dec)
        replace(model, layer.name, new)
        done[layer.name] = (layer.kind, r)
        rows[layer.name] = _row(
            layer.name,
            layer.module,
            "factorized",
            choice.reason,
            rank=r,
            weights=[layer.weights, factor_weights(layer.module, r)],
            **common,
        )
    record_factorized(model, done, **info)
    order = [n for n, _ in model.named_modules()]
    place = {n: i for i, n in enumerate(order)}
    report = sorted(rows.values(), key=lambda r: place.get(r["layer"], len(order)))
    left = [r["layer"] for r in report if r["status"] != "factorized"]
    log.info(
        "low-rank: %d layer(s) factorized, %d left alone%s",
        len(done),
        len(left),
        f" ({', '.join(left[:6])}{', ...' if len(left) > 6 else ''})" if left else "",
    )
    return report
