"""The ``distill`` recipe stage.

::

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
      student: mnist1d_cnn
      student_kwargs: {channels: 8}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from torch import nn

from slimfuse.distillation.students import make_student
from slimfuse.pipeline.stages import Context, TrainingStageConfig, stage


class DistillStage(TrainingStageConfig):
    teachers: list[str] | None = None  # stage names or bundle folders; default: the current model
    student: str | None = None  # a model source (zoo name, file.py:fn, bundle folder)
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    student_from_teacher: dict[str, Any] | None = None  # {depth: 3} | {keep: [0, 2]} | {width: 0.5}
    loss: str = "kd"
    temperature: float = 4.0
    alpha: float = 0.9
    hints: dict[str, str] = Field(default_factory=dict)
    hint_weight: float = 1.0
    hint_metric: Literal["mse", "cosine"] = "mse"
    ensemble_space: Literal["probs", "logits"] = "probs"
    cache: bool = True
    mixup: float = Field(default=0.0, ge=0)  # > 0: the teacher labels mixup blends of inputs

    def check(self) -> None:
        from slimfuse.distillation.objectives import check_options_apply
        from slimfuse.distillation.teachers import check_ensemble_options

        check_options_apply(
            self.loss, None, self.temperature, self.hints, self.hint_weight, self.hint_metric
        )
        check_ensemble_options(len(self.teachers or [None]), self.ensemble_space)


def _teachers(ctx: Context, names: list[str] | None) -> list[nn.Module]:
    if not names:
        return [ctx.model_named(None)]
    out = []
    for name in names:
        if name in ctx.models:
            out.append(ctx.models[name])
        elif Path(name).is_dir():
            from slimfuse.models.source import check_model_fits, load_model

            out.append(load_model(name, data=ctx.data))
            check_model_fits(out[-1], ctx.data, ctx.task.name, what=f"teacher {name!r}")
        else:
            out.append(ctx.model_named(name))  # raises, listing the earlier stages
    return out


@stage(DistillStage)
def distill_stage(ctx: Context, cfg: DistillStage) -> nn.Module:
    """Distil one or several teachers (an ensemble) into a student with the one training loop."""
    from slimfuse.distillation.api import DistillConfig, distill_run

    teachers = _teachers(ctx, cfg.teachers)
    student = make_student(
        teachers, ctx.data, cfg.student, cfg.student_kwargs, cfg.student_from_teacher
    )
    tc = cfg.train_config(ctx)
    dc = DistillConfig(
        loss=cfg.loss,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        hints=cfg.hints,
        hint_weight=cfg.hint_weight,
        hint_metric=cfg.hint_metric,
        ensemble_space=cfg.ensemble_space,
        cache=cfg.cache,
        mixup=cfg.mixup,
    )
    ckpt = ctx.checkpoint_dir
    run = distill_run(
        student,
        teachers if len(teachers) > 1 else teachers[0],
        ctx.data,
        ctx.task,
        dc,
        train_config=tc,
        checkpoint_dir=ckpt,
        resume=ctx.resuming,
        description=ctx.stage_name,
    )
    return run.student
