"""The fusion and merging configs, one per method.

``FuseConfig = Mean | Weighted | Vote | SoftVote | Stack | Head`` and
``MergeConfig = Uniform | Greedy | Ties``, each a :class:`~slimfuse.config.Family` told apart by
``method``. Every method has the fields it reads and no other: ``Weighted(cv=5)`` is a config,
``Mean(cv=5)`` is an error, and so is ``FuseConfig(method="mean", cv=5)`` (it says which methods
read ``cv``)::

    slimfuse.fuse(members, Weighted(cv=5), data)                 # or {"method": "weighted", "cv": 5}
    slimfuse.merge(variants, Ties(density=0.3), data, parent=base)

The methods that train with the one loop (``weighted`` and ``stack`` with ``cv=K`` retrain every
member per fold; ``head`` trains its head) read one :class:`~slimfuse.config.TrainConfig`
(default 10 epochs at lr 1e-3), passed to :func:`slimfuse.fuse` as ``train=``; the others take
none. Deep Mutual Learning is not a fusion method here: it trains new peers from a model source
instead of combining trained members (the ``mutual`` stage,
:class:`~slimfuse.fusion.mutual.MutualLearning`). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from slimfuse.config import Config, Family, TrainConfig, flag_name
from slimfuse.errors import ConfigError

# a head over frozen members, or members retrained per fold: fewer epochs, a smaller lr
FUSE_TRAINING: dict[str, Any] = {"epochs": 10, "lr": 1e-3}


class _Fuse(Config):
    @property
    def trains(self) -> bool:
        """Whether this method trains with the one loop (reads a TrainConfig)."""
        return False


class _Weights(_Fuse):
    weights: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] | None = Field(
        None,
        min_length=1,
        description="one weight per member, normalised to sum to 1 (none: equal weights)",
    )

    @model_validator(mode="after")
    def _not_all_zero(self) -> _Weights:
        if self.weights is not None and not any(self.weights):
            raise ValueError(
                f"weights {list(self.weights)} sum to 0: expected at least one positive weight"
            )
        return self


class _Space(_Fuse):
    space: Literal["probs", "logits"] = Field(
        "probs",
        description="average the members' probabilities (the output is their log) or their logits",
    )


class _Folds(_Fuse):
    cv: Annotated[int, Field(ge=2)] | Literal["prefit"] = Field(
        "prefit",
        description="what it is fitted on: the members' predictions of the val split (prefit), "
        "or out-of-fold predictions of K folds of train, every member retrained per fold with "
        "the training settings (K times their training)",
    )

    @property
    def trains(self) -> bool:
        return self.cv != "prefit"


class Mean(_Space, _Weights):
    """The (weighted) mean of the members' probabilities or logits; learns nothing."""

    method: Literal["mean"] = "mean"


class Weighted(_Space, _Weights, _Folds):
    """Member weights on the simplex that minimise the log-loss of held-out predictions (or
    given), pulled toward uniform by ``shrink``."""

    method: Literal["weighted"] = "weighted"
    shrink: Annotated[float, Field(ge=0, le=1)] | Literal["cv"] = Field(
        "cv",
        description="how far the fitted weights are pulled toward uniform (0: none, 1: uniform), "
        "or cv: chosen by cross-validated errors",
    )
    shrink_folds: int = Field(5, ge=2, description="folds that choose shrink cv")

    @model_validator(mode="after")
    def _given_or_learned(self) -> Weighted:
        if self.weights is not None:
            if self.cv != "prefit":
                raise ValueError(
                    f"cv {self.cv} learns the weights, but weights were given: expected one of them"
                )
            for key in ("shrink", "shrink_folds"):
                if key in self.model_fields_set:
                    raise ValueError(
                        f"{key} applies to learned weights, but weights were given: expected one "
                        "of them"
                    )
        if "shrink_folds" in self.model_fields_set and self.shrink != "cv":
            raise ValueError(f"shrink_folds applies to shrink 'cv'; got shrink {self.shrink}")
        return self


class Vote(_Weights):
    """Hard voting: each class's (weighted) share of the members' top-class votes."""

    method: Literal["vote"] = "vote"


class SoftVote(_Weights):
    """Soft voting: the (weighted) mean probability (the same output as ``Mean()``)."""

    method: Literal["soft-vote"] = "soft-vote"


class Stack(_Folds):
    """A meta-learner on the members' held-out predictions (by default logistic regression
    anchored at their mean logits)."""

    method: Literal["stack"] = "stack"
    features: Literal["probs", "log_probs", "logits"] = Field(
        "probs",
        description="the meta-learner's inputs: the members' probabilities, log-probabilities or "
        "logits (it starts from their mean logits)",
    )
    meta_c: Annotated[float, Field(gt=0, allow_inf_nan=False)] | Literal["cv"] = Field(
        "cv",
        description="the meta-learner's inverse L2 penalty, or cv: chosen by held-out log-loss",
    )
    meta_cv: int = Field(5, ge=2, description="folds that choose meta_c and score the meta-learner")
    with_val: bool = Field(
        False,
        description="with cv K: also fit the meta-learner on the members' own validation "
        "predictions",
    )

    @model_validator(mode="after")
    def _with_val_needs_folds(self) -> Stack:
        if self.with_val and self.cv == "prefit":
            raise ValueError(
                "with_val adds the validation predictions to out-of-fold ones: expected cv K "
                "(cv prefit already fits on the validation split)"
            )
        return self


class Head(_Fuse):
    """A head trained by the one loop over the frozen members' logits or features."""

    method: Literal["head"] = "head"
    on: Literal["logits", "features", "both"] = Field(
        "logits",
        description="the head reads the members' logits, their penultimate features, or both",
    )
    hidden: int = Field(0, ge=0, description="the head's hidden width (0: one linear layer)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the head's layers")
    layer: str | None = Field(
        None,
        description="with on features or both: the layer whose input is a member's features "
        "(none: its last nn.Linear)",
    )

    @model_validator(mode="after")
    def _layer_needs_features(self) -> Head:
        if self.layer is not None and self.on == "logits":
            raise ValueError(
                f"layer {self.layer!r} applies to on 'features' or 'both'; got on 'logits'"
            )
        return self

    @property
    def trains(self) -> bool:
        return True


FuseConfig = Family(
    "FuseConfig",
    "method",
    [Mean, Weighted, Vote, SoftVote, Stack, Head],
    default="mean",
    trains={"weighted": FUSE_TRAINING, "stack": FUSE_TRAINING, "head": FUSE_TRAINING},
)
AnyFuseConfig = Mean | Weighted | Vote | SoftVote | Stack | Head
FUSE_METHODS = tuple(FuseConfig.names())


def fuse_training(
    config: AnyFuseConfig, given: dict[str, Any], *, flags: bool = False, **fixed: Any
) -> TrainConfig | None:
    """The :class:`~slimfuse.config.TrainConfig` of a fuse config that trains: the fuse
    defaults (10 epochs at lr 1e-3), then the training keys ``given`` (a stage's, the flags
    set). A config that does not train (``weighted`` with ``cv: prefit``) refuses them."""
    if config.trains:
        return FuseConfig.training(config, given, flags=flags, **fixed)
    if given:
        raise ConfigError(not_training(config, next(iter(given)), flags=flags))
    return None


def not_training(config: AnyFuseConfig, what: str, *, flags: bool = False) -> str:
    """``what`` (a training key, ``train=``) given to a config that does not train."""
    cv, method = (flag_name("cv"), flag_name("method")) if flags else ("cv", "method")
    name = flag_name(what) if flags and what.isidentifier() else what
    got = f"{method} {config.method!r}"
    if hasattr(config, "cv"):
        got += f" with {cv} prefit" if flags else f" with {cv} 'prefit'"
    return (
        f"{name} applies to the methods that train: weighted and stack with {cv} K (every member "
        f"retrained per fold), head; got {got}"
    )


class Uniform(Config):
    """Uniform soup: the mean of every ingredient's weights."""

    method: Literal["uniform"] = "uniform"


class Greedy(Config):
    """Greedy soup: ingredients best first (by validation), each kept only if validation does
    not drop."""

    method: Literal["greedy"] = "greedy"


class Ties(Config):
    """TIES merging of variants fine-tuned from one parent (given to :func:`slimfuse.merge` as
    ``parent=``): trim, elect sign, disjoint mean of their changes."""

    method: Literal["ties"] = "ties"
    density: float = Field(
        0.2,
        gt=0,
        le=1,
        description="fraction of each variant's change from the parent kept (largest magnitudes)",
    )
    scale: float = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="scale of the merged change added to the parent",
    )


MergeConfig = Family("MergeConfig", "method", [Uniform, Greedy, Ties], default="greedy")
AnyMergeConfig = Uniform | Greedy | Ties
MERGE_METHODS = tuple(MergeConfig.names())
