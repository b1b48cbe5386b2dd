"""Recipe stages: ``train-members``, ``fuse``, ``merge`` and ``mutual``.

A ``fuse`` stage's keys are a :data:`~slimfuse.fusion.config.FuseConfig`'s (and the training
keys, for a method that trains), a ``merge`` stage's a
:data:`~slimfuse.fusion.config.MergeConfig`'s. Members are named by stage: ``members: null``
takes the current model's members (the model of a ``train-members`` or ``mutual`` stage is their
mean ensemble), ``members: cnns`` an earlier stage's members, ``members: [a, b, c]`` the models
of earlier stages ``a``, ``b`` and ``c``::

    - stage: train-members
      name: members
      model: mnist1d_cnn
      n: 5
      epochs: 60
    - stage: fuse
      method: weighted
      cv: 5          # members retrained per fold: the training keys apply
      epochs: 60
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from slimfuse.config import Family, TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.fusion.api import fit_summary, fuse
from slimfuse.fusion.common import is_regression
from slimfuse.fusion.config import FuseConfig, MergeConfig, fuse_training
from slimfuse.fusion.ensemble import FusionModule, MeanFusion
from slimfuse.fusion.members import train_members
from slimfuse.fusion.merge import merge
from slimfuse.fusion.mutual import MutualLearning
from slimfuse.models.source import build_model
from slimfuse.pipeline.stages import Context, FamilyStage, TrainingStageConfig, stage
from slimfuse.tasks import evaluate

log = logging.getLogger("slimfuse.fusion")


def _members_key() -> Any:
    return Field(
        None,
        description="an earlier stage whose ensemble's members to take, a list of earlier "
        "stages (one member each), or none: the current model's members",
    )


def _members_of(name: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    if isinstance(model, (FusionModule, MutualLearning)):
        return [(n, model.members[n]) for n in model.names]
    return [(name, model)]


def member_scores(model: nn.Module, ctx: Context) -> dict[str, float]:
    """An ensemble's members (a fused model's, mutual peers'), each on the test split, for the
    report to show beside the fused model; ``{}`` for any other model."""
    if not isinstance(model, (FusionModule, MutualLearning)):
        return {}
    loader = ctx.data.loader("test", batch_size=256)
    return {name: evaluate(m, loader, ctx.task) for name, m in _members_of("", model)}


def resolve_members(ctx: Context, members: str | list[str] | None) -> list[tuple[str, nn.Module]]:
    """Members from the current model, an earlier stage's ensemble, or a list of stages."""
    if members is None or isinstance(members, str):
        model = ctx.model_named(members)
        pairs = _members_of(members or "current", model)
        if len(pairs) == 1 and members is None:
            raise ConfigError(
                f"stage {ctx.stage_name!r}: the current model is not an ensemble; expected "
                "members: [stage, ...] or a train-members stage before it"
            )
        return pairs
    pairs = []
    for name in members:
        pairs += _members_of(name, ctx.model_named(name))
    return pairs


class TrainMembersStage(TrainingStageConfig):
    model: str = Field(description="the members' model: a zoo name, file.py:fn or module:fn")
    model_kwargs: dict = Field(
        default_factory=dict, description="keyword arguments of the model's builder"
    )
    n: int = Field(5, ge=1, description="members, trained from seeds seed .. seed + n - 1")
    kfold: int | None = Field(
        None,
        ge=2,
        description="K members instead, member k trained without fold k of the training split",
    )
    jobs: int = Field(
        1,
        ge=1,
        description="members trained at a time, one process each (CPU: cores // jobs threads "
        "each; CUDA: one GPU per member); the members are the sequential ones",
    )


@stage(TrainMembersStage)
def train_members_stage(ctx: Context, cfg: TrainMembersStage) -> nn.Module:
    """Train N members (seeds) or K fold-members; the stage's model is their mean ensemble."""
    trained = train_members(
        cfg.model,
        ctx.data,
        n=cfg.n,
        kfold=cfg.kfold,
        config=cfg.train_config(ctx),
        task=ctx.task,
        model_kwargs=cfg.model_kwargs,
        jobs=cfg.jobs,
    )
    space = "logits" if is_regression(ctx.task) else "probs"  # regression: mean prediction
    return MeanFusion(trained.pairs, space=space)


class FuseStage(FamilyStage):
    family: ClassVar[Family] = FuseConfig
    members: str | list[str] | None = _members_key()

    def check(self) -> None:
        fuse_training(self.method, self._train)  # training keys only where the method trains

    def train_config(self, ctx: Context) -> TrainConfig | dict[str, Any] | None:  # type: ignore[override]
        """The training config of a method that trains; for members retrained per fold
        (``cv: K``), the stage's training keys, applied over the members' own recorded
        settings (:func:`slimfuse.fuse`)."""
        fixed = {"seed": ctx.seed, "quiet": ctx.quiet}
        config = fuse_training(self.method, self._train, **fixed)
        if config is not None and getattr(self.method, "cv", "prefit") != "prefit":
            return {**self._train, **fixed}
        return config


@stage(FuseStage)
def fuse_stage(ctx: Context, cfg: FuseStage) -> nn.Module:
    """Fuse members (mean, weighted, vote, soft-vote, stack, head) into one model."""
    pairs = resolve_members(ctx, cfg.members)
    fused = fuse(pairs, cfg.method, ctx.data, train=cfg.train_config(ctx), task=ctx.task)
    summary = fit_summary(fused)  # what the CLI prints: the weights, the meta-learner's choice
    if summary:
        log.info("%s: %s", ctx.stage_name, summary)
    return fused


class MergeStage(FamilyStage):
    family: ClassVar[Family] = MergeConfig
    members: str | list[str] | None = _members_key()
    parent: str | None = Field(
        None, description="ties: the earlier stage whose model the members were fine-tuned from"
    )

    def check(self) -> None:
        if self.method.method == "ties" and self.parent is None:
            raise ConfigError("ties needs parent: <stage name>, the model the members came from")
        if self.parent is not None and self.method.method != "ties":
            raise ConfigError(
                f"parent does not apply to method {self.method.method!r}; it is for ties"
            )


@stage(MergeStage)
def merge_stage(ctx: Context, cfg: MergeStage) -> nn.Module:
    """Merge same-architecture members' weights (uniform soup, greedy soup, TIES)."""
    pairs = resolve_members(ctx, cfg.members)
    parent = None if cfg.parent is None else ctx.model_named(cfg.parent)
    return merge(pairs, cfg.method, ctx.data, parent=parent, task=ctx.task)


class MutualStage(TrainingStageConfig):
    model: str = Field(description="the peers' model: a zoo name, file.py:fn or module:fn")
    model_kwargs: dict = Field(
        default_factory=dict, description="keyword arguments of the model's builder"
    )
    n: int = Field(2, ge=2, description="peers trained together")
    kl_weight: float = Field(
        1.0, ge=0, description="weight of the KL divergence to the other peers' predictions"
    )
    temperature: float = Field(
        1.0, gt=0, description="temperature of the peers' softened predictions"
    )
    output: Literal["fused", "first"] = Field(
        "fused", description="the stage's model: the peers' mean ensemble, or the first peer"
    )


@stage(MutualStage)
def mutual_stage(ctx: Context, cfg: MutualStage) -> nn.Module:
    """Deep Mutual Learning: N peers trained together; the output is their ensemble or peer 0."""
    tc = cfg.train_config(ctx)
    torch.manual_seed(tc.seed)
    peers = [
        (f"peer{i}", build_model(cfg.model, data=ctx.data, **cfg.model_kwargs))
        for i in range(cfg.n)
    ]
    dml = MutualLearning(peers, kl_weight=cfg.kl_weight, temperature=cfg.temperature)
    dml.fit(
        ctx.data, config=tc, task=ctx.task, checkpoint_dir=ctx.checkpoint_dir, resume=ctx.resuming
    )
    return dml.fused() if cfg.output == "fused" else dml.member("peer0")
