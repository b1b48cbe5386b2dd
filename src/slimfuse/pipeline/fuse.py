"""Recipe stages: ``train-members``, ``fuse``, ``merge`` and ``mutual``.

Members are named by stage: ``members: null`` takes the current model's members (the model of a
``train-members`` or ``mutual`` stage is their mean ensemble), ``members: cnns`` an earlier
stage's members, ``members: [a, b, c]`` the models of earlier stages ``a``, ``b`` and ``c``::

    - stage: train-members
      name: members
      model: mnist1d_cnn
      n: 5
      epochs: 60
    - stage: fuse
      method: weighted
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.pipeline.stages import Context, StageConfig, TrainingStageConfig, stage


def _members_of(name: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    from slimfuse.fusion.ensemble import FusionModule
    from slimfuse.fusion.mutual import MutualLearning

    if isinstance(model, (FusionModule, MutualLearning)):
        return [(n, model.members[n]) for n in model.names]
    return [(name, model)]


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
    model: str
    model_kwargs: dict = Field(default_factory=dict)
    n: int = Field(5, ge=1)
    kfold: int | None = Field(None, ge=2)


@stage(TrainMembersStage)
def train_members_stage(ctx: Context, cfg: TrainMembersStage) -> nn.Module:
    """Train N members (seeds) or K fold-members; the stage's model is their mean ensemble."""
    from slimfuse.fusion.ensemble import MeanFusion
    from slimfuse.fusion.members import train_members

    trained = train_members(
        cfg.model,
        ctx.data,
        n=cfg.n,
        kfold=cfg.kfold,
        config=cfg.train_config(ctx),
        task=ctx.task,
        model_kwargs=cfg.model_kwargs,
    )
    return MeanFusion(trained.pairs, space="probs")


class FuseStage(TrainingStageConfig):
    members: str | list[str] | None = None
    method: Literal["mean", "weighted", "vote", "soft-vote", "stack", "head"] = "mean"
    space: Literal["probs", "logits"] = "probs"
    weights: list[float] | None = None
    shrink: float | Literal["cv"] = "cv"
    cv: int | Literal["prefit"] = "prefit"
    features: Literal["probs", "log_probs", "logits"] = "probs"
    meta_c: float | Literal["cv"] = "cv"
    with_val: bool = False
    on: Literal["logits", "features", "both"] = "logits"
    hidden: int = Field(0, ge=0)
    lr: float = 1e-3
    epochs: int = 10

    def check(self) -> None:
        from slimfuse.fusion.api import OPTIONS, check_options_apply

        check_options_apply(self.method, self.model_fields_set & set(OPTIONS))


@stage(FuseStage)
def fuse_stage(ctx: Context, cfg: FuseStage) -> nn.Module:
    """Fuse members (mean, weighted, vote, soft-vote, stack, head) into one model."""
    from slimfuse.fusion.api import OPTIONS, fuse, method_options

    pairs = resolve_members(ctx, cfg.members)
    given = cfg.model_fields_set & set(OPTIONS)
    opts = method_options(cfg.method, cfg, cfg.train_config(ctx), given)
    return fuse(pairs, cfg.method, data=ctx.data, task=ctx.task, **opts)


class MergeStage(StageConfig):
    members: str | list[str] | None = None
    method: Literal["uniform", "greedy", "ties"] = "greedy"
    parent: str | None = None
    density: float = Field(0.2, gt=0, le=1)
    scale: float = Field(1.0, gt=0)

    def check(self) -> None:
        from slimfuse.fusion.merge import check_merge_options

        if self.method == "ties" and self.parent is None:
            raise ConfigError("ties needs parent: <stage name>, the model the members came from")
        check_merge_options(self.method, parent=self.parent, density=self.density, scale=self.scale)


@stage(MergeStage)
def merge_stage(ctx: Context, cfg: MergeStage) -> nn.Module:
    """Merge same-architecture members' weights (uniform soup, greedy soup, TIES)."""
    from slimfuse.fusion.merge import merge

    pairs = resolve_members(ctx, cfg.members)
    opts: dict = {}
    if cfg.method == "ties":  # with a parent: checked when the recipe was parsed
        opts = {"parent": ctx.model_named(cfg.parent), "density": cfg.density, "scale": cfg.scale}
    return merge(pairs, cfg.method, data=ctx.data, task=ctx.task, **opts)


class MutualStage(TrainingStageConfig):
    model: str
    model_kwargs: dict = Field(default_factory=dict)
    n: int = Field(2, ge=2)
    kl_weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    output: Literal["fused", "first"] = "fused"


@stage(MutualStage)
def mutual_stage(ctx: Context, cfg: MutualStage) -> nn.Module:
    """Deep Mutual Learning: N peers trained together; the output is their ensemble or peer 0."""
    from slimfuse.fusion.mutual import MutualLearning
    from slimfuse.models.source import build_model

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
