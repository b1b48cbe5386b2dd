"""The ``distill`` recipe stage: its keys are a :data:`~slimfuse.distillation.config.DistillConfig`'s
(``loss`` and the settings that loss reads), the training keys, and the stage's own (the
teachers and the student)::

    - stage: train                      # teachers first (or a fuse stage: an ensemble teacher)
      name: teacher
      model: mnist1d_cnn
    - stage: distill
      name: assistant
      teachers: [teacher]               # earlier stage names or bundle folders (default: current)
      student_from_teacher: {width: 0.5}
    - stage: distill                    # a chain: teacher -> assistant -> student
      name: student
      teachers: [assistant]
      student: mnist1d_cnn              # or an earlier stage (a pruned model trains on sparse)
      student_kwargs: {channels: 8}
      loss: kd                          # kd | mse | cosine | hint
      temperature: 4                    # kd, hint
      epochs: 150                       # training keys
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from slimfuse.api import distill_run
from slimfuse.config import Family, TrainConfig
from slimfuse.distillation.config import (
    DistillConfig,
    StudentFromTeacher,
    check_student,
    check_teachers,
)
from slimfuse.errors import ConfigError
from slimfuse.models.resolve import load_model
from slimfuse.models.source import check_model_fits
from slimfuse.pipeline.stages import Context, FamilyStage, stage


class DistillStage(FamilyStage):
    family: ClassVar[Family] = DistillConfig
    teachers: list[str] | None = Field(
        None,
        min_length=1,
        description="earlier stages' names or bundle folders; several are an ensemble "
        "(default: the current model)",
    )
    student: str | None = Field(
        None,
        description="the student: an earlier stage's name (its model, trained on from its "
        "weights: a pruned model keeps its zeros), zoo name, file.py:fn, module:fn or bundle "
        "folder",
    )
    student_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for the student's builder"
    )
    student_from_teacher: StudentFromTeacher | None = Field(
        None,
        description="build the student from the first teacher: {depth: 3}, {keep: [0, 2]} or "
        "{width: 0.5}",
    )
    seed: int | None = Field(None, description="training seed (default: the recipe's seed)")

    def check(self) -> None:
        check_student(self.student, self.student_from_teacher)
        if self.student_kwargs and self.student is None:
            raise ConfigError(
                "student_kwargs does not apply to student_from_teacher; it is for student"
            )
        check_teachers(self.method, len(self.teachers or [None]))

    def train_config(self, ctx: Context) -> TrainConfig:
        seed = ctx.seed if self.seed is None else self.seed
        tc = self.family.training(self.method, self._train, seed=seed, quiet=ctx.quiet)
        assert tc is not None  # every loss trains
        return tc


def _teachers(ctx: Context, names: list[str] | None) -> list[nn.Module]:
    if not names:
        return [ctx.model_named(None)]
    out = []
    for name in names:
        if name in ctx.models:
            out.append(ctx.models[name])
        elif Path(name).is_dir():
            out.append(load_model(name, data=ctx.data))
            check_model_fits(out[-1], ctx.data, ctx.task.name, what=f"teacher {name!r}")
        else:
            out.append(ctx.model_named(name))  # raises, listing the earlier stages
    return out


@stage(DistillStage)
def distill_stage(ctx: Context, cfg: DistillStage) -> nn.Module:
    """Distil one or several teachers (an ensemble) into a student with the one training loop."""
    teachers = _teachers(ctx, cfg.teachers)
    student: nn.Module | StudentFromTeacher | None = cfg.student_from_teacher
    if cfg.student is not None and cfg.student in ctx.models:
        if cfg.student_kwargs:
            raise ConfigError(
                f"student_kwargs does not apply to student {cfg.student!r}, an earlier stage's "
                "model; it is for a student built from a source"
            )
        student = ctx.models[cfg.student]  # distill trains a copy
    elif cfg.student is not None:
        student = load_model(cfg.student, data=ctx.data, **cfg.student_kwargs)
    assert student is not None  # check(): one of them
    run = distill_run(
        student,
        teachers,
        cfg.method,
        ctx.data,
        train=cfg.train_config(ctx),
        task=ctx.task,
        checkpoint_dir=ctx.checkpoint_dir,
        resume=ctx.resuming,
        callbacks=ctx.callbacks,
        description=ctx.stage_name,
    )
    return run.student
