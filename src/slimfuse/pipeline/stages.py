"""The stage registry: the extension point that every technique family adds to.

A stage is a function ``fn(ctx, config) -> nn.Module | None`` plus a pydantic config class. It
returns the new current model (measured and saved as a bundle by the runner) or ``None`` when it
leaves the model unchanged. Built-in stages are declared lazily in :data:`STAGES` so that
listing them imports nothing heavy; add your own with ``STAGES.register("name")(Stage(...))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr, create_model
from torch import nn

from slimfuse.config import TRAIN_KEYS, Config, Family, TrainConfig, validate
from slimfuse.data import Data
from slimfuse.errors import ConfigError
from slimfuse.registry import Registry
from slimfuse.tasks import Task


class StageConfig(Config):
    """Base of every stage config: unknown keys are errors, values are validated."""

    @classmethod
    def parse(cls, values: dict[str, Any]) -> StageConfig:
        """A recipe stage's keys as this config (one line naming the key on error)."""
        return validate(cls, values)

    def check(self) -> None:
        """Checks across keys that need no model or data (raise ``ConfigError``). The recipe
        parser runs them, so a bad stage fails before the first stage runs."""


class _TrainingKeys(StageConfig):
    def train_config(self, ctx: Context) -> TrainConfig:
        return self.to_train_config(seed=ctx.seed, quiet=ctx.quiet)

    def to_train_config(self, *, seed: int, quiet: bool) -> TrainConfig:
        """These keys as a :class:`~slimfuse.config.TrainConfig` (``seed``: when none is set)."""
        keys = {k: getattr(self, k) for k in TRAIN_KEYS}
        keys["seed"] = seed if self.seed is None else self.seed  # type: ignore[attr-defined]
        return TrainConfig(**keys, quiet=quiet)


# The training keys of every stage that trains (train, distill, fuse...): TrainConfig's fields
# (types, bounds, defaults, descriptions), ``seed`` defaulting to the recipe's.
TrainingStageConfig: type[_TrainingKeys] = create_model(  # type: ignore[call-overload]
    "TrainingStageConfig",
    __base__=_TrainingKeys,
    **{
        k: (TrainConfig.model_fields[k].annotation, TrainConfig.model_fields[k]) for k in TRAIN_KEYS
    },
    seed=(int | None, Field(None, description="default: the recipe's seed")),
)


class FamilyStage(StageConfig):
    """A stage whose keys are one method's config (of ``family``, told apart by its key), the
    training keys when that method trains, and the stage's own fields (``model`` ...)::

        - stage: quantize
          mode: qat          # the method
          bits: 8            # its config's keys
          epochs: 3          # training keys: qat trains
    """

    family: ClassVar[Family]
    _method: Config = PrivateAttr()
    _train: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def parse(cls, values: dict[str, Any]) -> FamilyStage:
        own = {k: v for k, v in values.items() if k in cls.model_fields}
        method, train = cls.family.split({k: v for k, v in values.items() if k not in own})
        stage = validate(cls, own)
        stage._method, stage._train = method, train
        return stage

    @property
    def method(self) -> Any:
        """The method's config (``Static(...)``)."""
        return self._method

    def train_config(self, ctx: Context) -> TrainConfig | None:
        """The method's :class:`~slimfuse.config.TrainConfig` (``None``: it does not train)."""
        return self.family.training(self._method, self._train, seed=ctx.seed, quiet=ctx.quiet)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **self._method.to_dict(), **self._train}


@dataclass
class Context:
    """What a stage sees: the data, the task, the current model and earlier stages' models."""

    data: Data
    task: Task
    out: Path
    seed: int = 0
    threads: int = 1
    quiet: bool = False
    resume: bool = False
    model: nn.Module | None = None
    models: dict[str, nn.Module] = field(default_factory=dict)
    stage_name: str = ""
    # training-loop callbacks of the stages that train (distill, and prune's and factorize's
    # recovery): a search watches its trials' epochs and deadline through them; a recipe run
    # has none
    callbacks: list[Any] = field(default_factory=list)

    def model_named(self, name: str | None) -> nn.Module:
        """An earlier stage's model by its stage name (``None``: the current model)."""
        if name is None:
            if self.model is None:
                raise ConfigError(
                    f"stage {self.stage_name!r} needs a model; give the recipe a model or train one first"
                )
            return self.model
        if name not in self.models:
            known = ", ".join(self.models) or "none yet"
            raise ConfigError(
                f"stage {self.stage_name!r} refers to stage {name!r}; earlier stages: {known}"
            )
        return self.models[name]

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / ".checkpoints" / self.stage_name

    @property
    def resuming(self) -> bool:
        """Resume asked and this stage left a checkpoint."""
        return self.resume and (self.checkpoint_dir / "checkpoint.pt").is_file()


@dataclass(frozen=True)
class Stage:
    fn: Callable[[Context, Any], nn.Module | None]
    config: type[StageConfig]
    help: str = ""


def stage(
    config: type[StageConfig],
) -> Callable[[Callable[[Context, Any], nn.Module | None]], Stage]:
    """Decorator turning a function into a :class:`Stage` with its config class."""

    def wrap(fn: Callable[[Context, Any], nn.Module | None]) -> Stage:
        return Stage(
            fn=fn,
            config=config,
            help=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )

    return wrap


STAGES: Registry[Stage] = Registry(
    "stage",
    lazy={
        "train": "slimfuse.pipeline.builtin:train_stage",
        "eval": "slimfuse.pipeline.builtin:eval_stage",
        "export": "slimfuse.pipeline.builtin:export_stage",
        "prune": "slimfuse.pipeline.prune:prune_stage",
        "factorize": "slimfuse.pipeline.lowrank:factorize_stage",
        "train-members": "slimfuse.pipeline.fuse:train_members_stage",
        "fuse": "slimfuse.pipeline.fuse:fuse_stage",
        "merge": "slimfuse.pipeline.fuse:merge_stage",
        "mutual": "slimfuse.pipeline.fuse:mutual_stage",
        "distill": "slimfuse.pipeline.distill:distill_stage",
        "quantize": "slimfuse.pipeline.quantize:quantize_stage",
    },
)
