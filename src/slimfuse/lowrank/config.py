"""The low-rank configs, one per way of choosing ranks: ``LowRankConfig = Energy | Ratio | Budget``.

Every method replaces each targeted ``Linear`` (and ``Conv1d`` / ``Conv2d``) by two smaller
layers from its truncated SVD; they differ in how the rank of each layer is chosen::

    Energy(energy=0.9)          # per layer: the fewest singular values keeping 90% of sum(s^2)
    Ratio(ratio=0.5)            # per layer: half of its weights (and of its FLOPs)
    Budget(budget=0.5)          # the model at half its FLOPs; ranks by sensitivity on data
    LowRankConfig.parse({"energy": 0.9})   # a recipe's keys -> Energy(energy=0.9)

The method is the ``method`` key; left out, the amount given names it (``energy``, ``ratio``,
``budget``). Recovery trains with the one loop: its settings are a
:class:`~slimfuse.config.TrainConfig`, by default :data:`LOWRANK_TRAINING` (no epochs).
Nothing here imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from slimfuse.config import Config, Family, TrainConfig, flag_name
from slimfuse.errors import ConfigError

# recovery's training defaults: none (factorization only); the last epoch is kept
LOWRANK_TRAINING: dict[str, Any] = {"epochs": 0, "lr": 1e-3, "restore_best": False}


def _fraction(value: float, *, upper: bool) -> float:
    """A fraction in (0, 1] (``upper``) or (0, 1)."""
    ok = value == value and value > 0 and (value <= 1 if upper else value < 1)
    if not ok:
        raise ValueError(f"expected a fraction in (0, 1{']' if upper else ')'}")
    return value


class _Common(Config):
    """What every method reads: which layers, and how the factorized model recovers."""

    targets: tuple[str, ...] | None = Field(
        None,
        description="layers to factorize: names, re:<regex>, type:<Class> (default: every "
        "Linear, Conv1d and Conv2d)",
    )
    ignore: tuple[str, ...] = Field((), description="layers to leave alone (same syntax)")
    recovery: Literal["finetune", "distill"] = Field(
        "finetune",
        description="recovery epochs: fine-tune on the task loss, or distil from the original "
        "model",
    )


class Energy(_Common):
    """Per layer, the fewest singular values that keep ``energy`` of the sum of their squares."""

    method: Literal["energy"] = "energy"
    energy: float = Field(
        description="fraction of each layer's squared singular values to keep, in (0, 1] (its "
        "rank: the fewest that keep it)"
    )

    @field_validator("energy")
    @classmethod
    def _in_range(cls, value: float) -> float:
        return _fraction(value, upper=True)


class Ratio(_Common):
    """The same share of every targeted layer's weights (a layer's FLOPs shrink alike)."""

    method: Literal["ratio"] = "ratio"
    ratio: float = Field(
        description="fraction of each targeted layer's weights (and FLOPs) to keep, in (0, 1]"
    )

    @field_validator("ratio")
    @classmethod
    def _in_range(cls, value: float) -> float:
        return _fraction(value, upper=True)


class Budget(_Common):
    """The model's FLOPs (or parameters) brought to ``budget`` of what they were, each layer's
    rank chosen by its sensitivity on calibration data (the least output error per removed
    FLOP cut first)."""

    method: Literal["budget"] = "budget"
    budget: float = Field(
        description="the model's FLOPs (or parameters: of) after factorization, as a fraction "
        "of before, in (0, 1)"
    )
    of: Literal["flops", "params"] = Field(
        "flops", description="what the budget counts: the model's FLOPs or its parameters"
    )
    whiten: bool = Field(
        True,
        description="data-aware SVD: factor W C^1/2 (C: the layer's input covariance on the "
        "calibration data), so truncation loses the least output, not the least weight",
    )
    calibration_samples: int = Field(
        256, ge=1, description="training samples whose layer inputs measure the sensitivity"
    )

    @field_validator("budget")
    @classmethod
    def _in_range(cls, value: float) -> float:
        return _fraction(value, upper=False)


# the amount each method is given by: given without ``method``, it names the method
AMOUNTS: dict[str, str] = {"energy": "energy", "ratio": "ratio", "budget": "budget"}


class _LowRankFamily(Family):
    """:class:`~slimfuse.config.Family`, the method inferred from the amount when no
    ``method`` is given."""

    def kind_of(self, values: dict[str, Any], where: str = "", flags: bool = False) -> str:
        if values.get(self.key) is not None:
            return super().kind_of(values, where, flags)
        given = [k for k in AMOUNTS if values.get(k) is not None]
        if len(given) != 1:
            names = [flag_name(k) if flags else k for k in AMOUNTS]
            shown = ", ".join(flag_name(k) if flags else k for k in given)
            raise ConfigError(f"give exactly one of {', '.join(names)}; got {shown or 'none'}")
        return AMOUNTS[given[0]]


LowRankConfig = _LowRankFamily(
    "LowRankConfig",
    "method",
    [Energy, Ratio, Budget],
    trains={m: LOWRANK_TRAINING for m in ("energy", "ratio", "budget")},
)
AnyLowRankConfig = Energy | Ratio | Budget
METHODS = tuple(LowRankConfig.names())


def check_recovery(config: AnyLowRankConfig, train: TrainConfig) -> None:
    """Checks across a method's config and its recovery training (one line)."""
    if config.recovery == "distill" and train.epochs < 1:
        raise ConfigError("recovery 'distill' trains the factorized model; expected epochs >= 1")
