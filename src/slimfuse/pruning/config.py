"""The pruning configs, one per method: ``PruneConfig = Magnitude | Threshold | Channels | Transformer``.

Each method has the fields it reads and no other: ``Channels(channels=0.5, importance="taylor")``
is a config, ``Magnitude(sparsity=0.9, importance="taylor")`` is an error, and so is
``PruneConfig(sparsity=0.9, importance="taylor")`` (it says which methods read ``importance``)::

    Magnitude(sparsity=0.9)                      # unstructured: the smallest |w|, AGP or one-shot
    Threshold(threshold=0.02)                    # unstructured: every |w| <= 0.02, one-shot
    Channels(channels=0.5, importance="l1")      # structured: channels / neurons removed
    Transformer(ffn=0.5, heads=0.25)             # BERT-style encoders: FFN neurons, attention heads
    PruneConfig.parse({"channels": 0.5})         # a recipe's keys -> Channels(channels=0.5)

The method is the ``method`` key; left out, the amount given names it (:func:`infer_method`):
``sparsity`` magnitude, ``threshold`` threshold, ``channels`` channels, ``ffn`` / ``heads``
transformer. Recovery trains with the one loop: its settings are a
:class:`~slimfuse.config.TrainConfig` (``train=`` of :func:`slimfuse.prune`; recipe and CLI:
the training keys), by default :data:`PRUNE_TRAINING` (no recovery epochs). Nothing here
imports torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from slimfuse.config import Config, Family, TrainConfig, flag_name
from slimfuse.errors import ConfigError
from slimfuse.pruning.importance import IMPORTANCE

# Recovery's training defaults: no epochs (pruning only); the last epoch, not the best, is kept
# (with AGP the last epoch is the one at the final sparsity).
PRUNE_TRAINING: dict[str, Any] = {"epochs": 0, "lr": 1e-3, "restore_best": False}


_GLOBAL = "rank across the targeted layers (uneven fractions), else the same fraction in each"
# global magnitude pruning's default floor: each layer keeps at least 1% of its weights
MIN_DENSITY = 0.01


class _Recovery(Config):
    """What every method reads: how the pruned model recovers in the training epochs."""

    recovery: Literal["finetune", "distill"] = Field(
        "finetune",
        description="recovery epochs: fine-tune on the task loss, or distil from the unpruned "
        "model",
    )


class _Layers(Config):
    """Which layers (the methods that prune per layer)."""

    targets: tuple[str, ...] | None = Field(
        None,
        description="layers to prune: names, re:<regex>, type:<Class> (default: every conv and "
        "linear layer; channels: except the output layers)",
    )
    ignore: tuple[str, ...] = Field((), description="layers to leave alone (same syntax)")


class Magnitude(_Layers, _Recovery):
    """Unstructured: zero the smallest weights, gradually during recovery (AGP) or at once."""

    method: Literal["magnitude"] = "magnitude"
    sparsity: float = Field(
        ge=0, lt=1, description="fraction of the targeted weights to zero (the smallest |w|)"
    )
    sparsity_schedule: Literal["agp", "oneshot"] = Field(
        "agp",
        description="agp: the sparsity rises on a cubic schedule during the recovery epochs; "
        "oneshot: all at once, then recovery keeps the zeros",
    )
    global_pruning: bool = Field(True, description=_GLOBAL)
    min_density: float = Field(
        MIN_DENSITY,
        ge=0,
        lt=1,
        description="global pruning: every layer keeps at least this fraction of its weights, so "
        "none collapses (at most 1 - sparsity; 0: no floor)",
    )

    @model_validator(mode="after")
    def _floor_fits(self) -> Magnitude:
        if "min_density" in self.model_fields_set:
            if not self.global_pruning:
                raise ValueError(
                    "min_density applies to global pruning (global_pruning true); each layer "
                    "loses the same fraction without it"
                )
            if self.min_density > 1 - self.sparsity + 1e-12:
                raise ValueError(
                    f"min_density {self.min_density} keeps more of each layer than sparsity "
                    f"{self.sparsity} leaves in all; expected at most {1 - self.sparsity:.6g}"
                )
        return self

    @property
    def floor(self) -> float:
        """The per-layer floor global pruning uses: ``min_density``, at most ``1 - sparsity``."""
        return min(self.min_density, 1.0 - self.sparsity) if self.global_pruning else 0.0


class Threshold(_Layers, _Recovery):
    """Unstructured, one-shot: zero every weight with ``|w| <= threshold``."""

    method: Literal["threshold"] = "threshold"
    threshold: float = Field(
        ge=0, allow_inf_nan=False, description="zero every weight with |w| <= this (one-shot)"
    )


class Channels(_Layers, _Recovery):
    """Structured: remove output channels / neurons (Torch-Pruning's dependency graph)."""

    method: Literal["channels"] = "channels"
    channels: float = Field(
        ge=0,
        lt=1,
        description="fraction of the channels / neurons of the targeted layers to remove",
    )
    importance: str = Field(
        "l1",
        description="how channels are ranked: l1, l2, bn (BatchNorm scale), taylor (|w dL/dw| "
        "on a few batches) or a registered criterion",
    )
    global_pruning: bool = Field(False, description=_GLOBAL)
    iterative_steps: int = Field(
        1, ge=1, description="reach the fraction in this many steps, recovering after each"
    )
    unsupported: Literal["error", "skip"] = Field(
        "error",
        description="a layer that cannot be resized: an error, or skip it (left alone, with a "
        "warning)",
    )

    @field_validator("importance")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in IMPORTANCE:
            raise ValueError(f"expected one of {', '.join(IMPORTANCE.names())}")
        return name


class Transformer(_Recovery):
    """BERT-style encoders: the same share of FFN neurons and attention heads in every layer."""

    method: Literal["transformer"] = "transformer"
    ffn: float = Field(
        0.0, ge=0, lt=1, description="fraction of the FFN neurons of every layer to remove"
    )
    heads: float = Field(
        0.0, ge=0, lt=1, description="fraction of the attention heads of every layer to remove"
    )
    importance: Literal["l1", "l2", "activation"] = Field(
        "l1",
        description="how neurons and heads are ranked: l1, l2 (weight norms) or activation (on "
        "a few batches of token data)",
    )

    @model_validator(mode="after")
    def _ffn_or_heads(self) -> Transformer:
        if not {"ffn", "heads"} & self.model_fields_set:
            raise ValueError("give ffn and/or heads: the fractions to remove")
        return self


# the amount each method prunes by: given without ``method``, it names the method
AMOUNTS: dict[str, str] = {
    "sparsity": "magnitude",
    "threshold": "threshold",
    "channels": "channels",
    "ffn": "transformer",
    "heads": "transformer",
}


def infer_method(values: dict[str, Any], flags: bool = False) -> str:
    """The method that the amount in ``values`` names (``channels: 0.5``: channels), when no
    ``method`` is given: exactly one of sparsity, threshold, channels or ffn/heads."""
    given = [k for k in AMOUNTS if values.get(k) is not None]
    methods = list(dict.fromkeys(AMOUNTS[k] for k in given))
    if len(methods) != 1:
        names = [flag_name(k) if flags else k for k in AMOUNTS]
        shown = ", ".join(flag_name(k) if flags else k for k in given)
        raise ConfigError(
            f"give exactly one of {', '.join(names[:3])} or {names[3]}/{names[4]}; "
            f"got {shown or 'none'}"
        )
    return methods[0]


class _PruneFamily(Family):
    """:class:`~slimfuse.config.Family`, with the method inferred from the amount when no
    ``method`` is given, and a hint for the keys older versions used."""

    def kind_of(self, values: dict[str, Any], where: str = "", flags: bool = False) -> str:
        if values.get(self.key) is None:
            return infer_method(values, flags)
        return super().kind_of(values, where, flags)

    def split(
        self, values: Any, where: str = "", *, flags: bool = False
    ) -> tuple[Config, dict[str, Any]]:
        if isinstance(values, dict) and "finetune_epochs" in values:
            raise ConfigError("finetune_epochs is now epochs (recovery's training keys)")
        if isinstance(values, dict) and values.get("schedule") in ("agp", "oneshot"):
            raise ConfigError(
                f"schedule {values['schedule']!r} is now sparsity_schedule; schedule is recovery's "
                "learning-rate schedule (cosine, constant)"
            )
        return super().split(values, where, flags=flags)


PruneConfig = _PruneFamily(
    "PruneConfig",
    "method",
    [Magnitude, Threshold, Channels, Transformer],
    trains={m: PRUNE_TRAINING for m in ("magnitude", "threshold", "channels", "transformer")},
)
AnyPruneConfig = Magnitude | Threshold | Channels | Transformer
METHODS = tuple(PruneConfig.names())


def check_recovery(config: AnyPruneConfig, train: TrainConfig) -> None:
    """Checks across a method's config and its recovery training (one line each); the verb,
    the recipe parser and the command run them before any model or data is loaded."""
    if isinstance(config, Magnitude) and config.sparsity_schedule == "agp":
        if train.epochs < 1:
            raise ConfigError(
                "sparsity_schedule 'agp' prunes gradually during fine-tuning; expected "
                "epochs >= 1 (or sparsity_schedule 'oneshot')"
            )
        if train.restore_best or train.patience is not None:
            raise ConfigError(
                "sparsity_schedule 'agp' reaches the final sparsity in the last epochs; expected "
                "restore_best off and no patience (an earlier epoch is a denser model)"
            )
    if config.recovery == "distill" and train.epochs < 1:
        raise ConfigError("recovery 'distill' trains the pruned model; expected epochs >= 1")
