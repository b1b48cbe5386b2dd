"""The distillation configs, one per loss: ``DistillConfig = KD | MSE | Cosine | Hint``.

Each loss has the settings it reads and no other: ``KD(temperature=2)`` is a config,
``MSE(temperature=2)`` is an error, and so is ``DistillConfig(loss="mse", temperature=2)`` (it
says which losses read ``temperature``). Calling the family picks the class by ``loss``::

    DistillConfig(loss="kd", temperature=4, alpha=0.9)     # -> KD(...)
    DistillConfig.parse({"loss": "hint", "hints": {"conv2": "conv3"}})

Every loss trains with the one loop: its training settings are a
:class:`~slimfuse.config.TrainConfig`, passed to :func:`slimfuse.distill` as ``train=``. A loss
registered in :data:`slimfuse.distillation.losses.LOSSES` gets a config too (every setting, as
the loss may read any of them): ``DistillConfig(loss="mine", temperature=2)``.

:class:`StudentFromTeacher` says how a student is made from its (first) teacher: fewer blocks
(``depth``, ``keep``) and/or fewer channels (``width``). Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from slimfuse.config import Config, Family
from slimfuse.errors import ConfigError

_HINT_OPTIONS = ("hint_weight", "hint_metric")


class _Common(Config):
    """What every loss reads: the label mix, hints, the ensemble of teachers, the cache, mixup."""

    alpha: float = Field(
        0.9, ge=0, le=1, description="weight of the teacher term against the label loss"
    )
    hints: dict[str, str] = Field(
        default_factory=dict,
        description="feature hints, student layer -> teacher layer (FitNets; learned adapters "
        "where widths differ)",
    )
    hint_weight: float = Field(
        1.0, ge=0, allow_inf_nan=False, description="weight of the hint term (with hints)"
    )
    hint_metric: Literal["mse", "cosine"] = Field(
        "mse", description="distance between hint features (cosine: scale-free, per token)"
    )
    ensemble_space: Literal["probs", "probs-t1", "logits"] = Field(
        "probs",
        description="several teachers: probs: the mean of their probabilities softened at the "
        "temperature, mean softmax(z_i/T) (the KD target; T = 1 for losses that do not soften); "
        "probs-t1: the mean at T = 1, softened afterwards, p^(1/T) (the earlier target); logits: "
        "the mean of their logits",
    )
    ensemble_weights: tuple[Annotated[float, Field(ge=0, allow_inf_nan=False)], ...] | None = Field(
        None,
        min_length=1,
        description="several teachers: one weight each, normalised (none: equal weights)",
    )
    cache: bool = Field(
        True,
        description="keep the teachers' outputs per sample: deterministic data runs them once",
    )
    max_cache_mb: float = Field(
        1024.0, gt=0, allow_inf_nan=False, description="the teacher cache's limit in MiB"
    )
    mixup: float = Field(
        0.0,
        ge=0,
        allow_inf_nan=False,
        description="> 0: the teacher labels mixup blends of the inputs, lam ~ Beta(m, m); no "
        "cache then (0: off)",
    )

    @field_validator("hints", mode="before")
    @classmethod
    def _names_as_text(cls, value: Any) -> Any:
        if isinstance(value, dict):  # YAML reads layer "0" as a number
            return {str(k): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _read_only_when_used(self) -> _Common:
        if not self.hints:
            for name in _HINT_OPTIONS:
                if name in self.model_fields_set:
                    raise ValueError(
                        f"{name} does not apply without hints; give hints (student layer -> "
                        "teacher layer) or leave it out"
                    )
        if self.ensemble_weights is not None and not sum(self.ensemble_weights) > 0:
            raise ValueError(
                f"ensemble_weights {list(self.ensemble_weights)} sum to 0; expected at least "
                "one positive weight"
            )
        if "max_cache_mb" in self.model_fields_set and (not self.cache or self.mixup > 0):
            why = "cache is off" if not self.cache else "mixup turns the cache off"
            raise ValueError(f"max_cache_mb does not apply: {why}")
        return self


class _Softened(Config):
    temperature: float = Field(
        4.0,
        gt=0,
        allow_inf_nan=False,
        description="softmax temperature T of the soft targets (the KL is scaled by T^2)",
    )


class KD(_Common, _Softened):
    """Hinton et al. (2015): the KL of the outputs softened at ``temperature``, times T^2,
    mixed with the label loss by ``alpha``."""

    loss: Literal["kd"] = "kd"


class MSE(_Common):
    """Output matching: the mean squared difference, mixed with the label loss by ``alpha``."""

    loss: Literal["mse"] = "mse"


class Cosine(_Common):
    """Embeddings: ``alpha * (1 - cos) + (1 - alpha) * MSE`` between the output vectors."""

    loss: Literal["cosine"] = "cosine"


class Hint(_Common, _Softened):
    """FitNets (Romero et al., 2015): the task's output loss (``kd`` for classification, so
    ``temperature`` applies there; ``cosine`` for embeddings; ``mse`` otherwise) plus
    ``hint_weight`` times the distance between adapted student and teacher features."""

    loss: Literal["hint"] = "hint"

    @model_validator(mode="after")
    def _needs_hints(self) -> Hint:
        if not self.hints:
            raise ValueError(
                "loss 'hint' needs hints: expected a mapping of student layer -> teacher layer"
            )
        return self


class Registered(_Common, _Softened):
    """A loss registered in :data:`~slimfuse.distillation.losses.LOSSES`: it may read every
    setting (its ``LossContext`` carries them all)."""

    loss: str


BUILTIN = (KD, MSE, Cosine, Hint)


class _LossFamily(Family):
    """The family, plus a config for each loss registered after it was made (looked up in
    :data:`~slimfuse.distillation.losses.LOSSES` when a name is not a built-in)."""

    def kind_of(self, values: dict[str, Any], where: str = "", flags: bool = False) -> str:
        kind = values.get(self.key, self.default)
        if isinstance(kind, str) and kind not in self.variants:
            self.adopt(kind)
        return super().kind_of(values, where, flags)

    def adopt(self, name: str) -> None:
        """Give the registered loss ``name`` its config class (nothing if it is not registered)."""
        # the registry lives with the losses (torch): imported only for a name not built in
        from slimfuse.distillation.losses import LOSSES

        if name not in LOSSES:
            return
        cls = create_model(  # type: ignore[call-overload]
            f"Registered_{name}",
            __base__=Registered,
            __doc__=Registered.__doc__,
            loss=(Literal[name], name),
        )
        self.variants[name] = cls
        self.trains[name] = {}


DistillConfig = _LossFamily(
    "DistillConfig",
    "loss",
    list(BUILTIN),
    default="kd",
    trains={cls.model_fields["loss"].default: {} for cls in BUILTIN},
)
AnyDistillConfig = KD | MSE | Cosine | Hint | Registered
LOSS_NAMES = tuple(DistillConfig.names())


def check_teachers(config: Any, n_teachers: int) -> None:
    """Refuse the ensemble settings with one teacher (they would be dropped), and weights that
    are not one per teacher."""
    if n_teachers == 1:
        for name in ("ensemble_space", "ensemble_weights"):
            if name in config.model_fields_set:
                raise ConfigError(
                    f"{name} does not apply to one teacher; it is for an ensemble of teachers"
                )
    weights = config.ensemble_weights
    if weights is not None and n_teachers > 1 and len(weights) != n_teachers:
        raise ConfigError(
            f"ensemble_weights: {len(weights)} weights for {n_teachers} teachers; expected one "
            "per teacher"
        )


class StudentFromTeacher(Config):
    """A student made from its teacher: ``depth`` / ``keep`` blocks (initialised from the
    teacher's, DistilBERT-style) and/or ``width`` (a ratio of channels removed)."""

    depth: int | None = Field(
        None, ge=1, description="blocks to keep, spread evenly (the first and last kept)"
    )
    keep: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(
        None, min_length=1, description="indices of the blocks to keep, increasing"
    )
    width: float | None = Field(
        None, ge=0, lt=1, description="ratio of the channels removed (structured pruning)"
    )
    importance: str = Field("l1", description="how the channels to remove are ranked (width)")
    blocks_path: str | None = Field(
        None, description="the block list's module name (default: looked up)"
    )

    @model_validator(mode="after")
    def _one_shape(self) -> StudentFromTeacher:
        if self.depth is None and self.keep is None and self.width is None:
            raise ValueError("expected depth, keep or width (how the student is smaller)")
        if self.depth is not None and self.keep is not None:
            raise ValueError("give depth or keep, not both")
        if "importance" in self.model_fields_set and self.width is None:
            raise ValueError("importance does not apply without width")
        if "blocks_path" in self.model_fields_set and self.depth is None and self.keep is None:
            raise ValueError("blocks_path does not apply without depth or keep")
        return self


def check_student(student: Any, from_teacher: Any) -> None:
    """Exactly one way to the student: a model (source) or ``student_from_teacher``."""
    if (student is None) == (from_teacher is None):
        raise ConfigError(
            "give either a student model or student_from_teacher (depth=, keep=, width=); "
            f"got {'both' if student is not None else 'neither'}"
        )
