"""``slimfuse distill``: one or several teachers into a student, through the one training loop.

::

    slimfuse distill --teacher runs/t0 --teacher runs/t1 --student mnist1d_cnn --kw channels=10 \\
        --data mnist1d --loss kd --temperature 4 --alpha 0.9 --out runs/student
    slimfuse distill --teacher runs/resnet --student-from-teacher depth=2 --data mnist1d --out runs/s
    torchrun --nproc_per_node 2 -m slimfuse distill ...      # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_distill(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import (
        check_out_is_not_an_input,
        load_data_arg,
        parse_kv,
        resolve_task,
        train_config_arg,
    )
    from slimfuse.distillation.api import DistillConfig, distill_run
    from slimfuse.distillation.students import make_student
    from slimfuse.errors import ConfigError
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import check_model_fits, load_model
    from slimfuse.training import is_main_process

    check_out_is_not_an_input(args, *(args.teacher or []), args.student)
    data = load_data_arg(args)
    teachers = [
        load_model(t, data=data, unsafe_pickle=args.unsafe_pickle) for t in args.teacher or []
    ]
    if not teachers:
        raise ConfigError("no --teacher given; expected at least one teacher model")
    task = resolve_task(args, teachers[0])
    for src, teacher in zip(args.teacher, teachers, strict=True):
        check_model_fits(teacher, data, task, what=f"teacher {src!r}")
    from_teacher = None
    if args.student_from_teacher:
        from_teacher = parse_kv(args.student_from_teacher)
    import torch

    torch.manual_seed(args.seed)  # the same student initialisation in every process and run
    student: Any = args.student
    if student is not None and args.weights:
        student = load_model(
            student,
            data=data,
            weights=args.weights,
            unsafe_pickle=args.unsafe_pickle,
            **parse_kv(args.kw),
        )
    student = make_student(teachers, data, student, parse_kv(args.kw), from_teacher)
    check_model_fits(student, data, task, what="the student")
    hints = parse_kv(args.hint) if args.hint else {}
    dc = DistillConfig(
        loss=args.loss,
        temperature=args.temperature,
        alpha=args.alpha,
        hints={str(k): str(v) for k, v in hints.items()},
        hint_weight=args.hint_weight,
        hint_metric=args.hint_metric,
        ensemble_space=args.ensemble_space,
        cache=not args.no_cache,
    )
    tc = train_config_arg(args)
    out = Path(args.out)
    run = distill_run(
        student,
        teachers if len(teachers) > 1 else teachers[0],
        data,
        args.task,
        dc,
        train_config=tc,
        checkpoint_dir=Path(f"{out}.ckpt"),
        resume=args.resume,
    )
    if not is_main_process():
        return 0
    rows = measure(
        run.student, data, args.task, stage="distill", engines=["torch"], threads=args.threads
    )
    save(run.student, out, metrics={"task": args.task, "metric": rows[0]["metric"], "stages": rows})
    best = run.train.best_metric
    print(
        f"distilled {len(teachers)} teacher(s) into {rows[0]['params']:,} parameters in "
        f"{run.train.epochs_run} epochs ({run.train.seconds:.1f}s); best val "
        f"{best if best is None else round(best, 4)}"
    )
    print(f"test {rows[0]['metric']} {rows[0]['metric_value']:.4f}; bundle: {out}")
    return 0


def add_commands(sub: Any) -> None:
    from slimfuse.cli.common import add_common, add_data_args, add_training_args

    p = sub.add_parser(
        "distill", help="distil one or several teachers (an ensemble) into a smaller student"
    )
    p.add_argument(
        "--teacher",
        action="extend",
        nargs="+",
        metavar="MODEL",
        help="teacher bundle / model; several (--teacher A B, or repeated) are an ensemble, "
        "their probabilities averaged",
    )
    p.add_argument(
        "--student", help="student: zoo name, file.py:fn, module:fn, bundle or HF folder"
    )
    p.add_argument(
        "--student-from-teacher",
        action="append",
        metavar="KEY=VALUE",
        help="build the student from the first teacher: depth=3, keep=[0,2,4] or width=0.5",
    )
    p.add_argument(
        "--kw", action="append", metavar="KEY=VALUE", help="keyword argument for the student"
    )
    p.add_argument("--weights", help="initial weights for --student (.safetensors or state dict)")
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow .pt files that need full pickle (only for files you trust)",
    )
    add_data_args(p)
    p.add_argument("--loss", default="kd", help="kd, mse, hint or cosine (default kd)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument(
        "--alpha", type=float, default=0.9, help="weight of the teacher term vs the labels"
    )
    p.add_argument(
        "--hint",
        action="append",
        metavar="STUDENT_LAYER=TEACHER_LAYER",
        help="feature hint between named layers (repeatable)",
    )
    p.add_argument("--hint-weight", type=float, default=1.0)
    p.add_argument(
        "--hint-metric", choices=["mse", "cosine"], default="mse", help="feature distance"
    )
    p.add_argument("--ensemble-space", choices=["probs", "logits"], default="probs")
    p.add_argument("--no-cache", action="store_true", help="run the teachers on every batch")
    add_training_args(p)
    p.add_argument("--out", required=True, help="student bundle folder to write")
    add_common(p)
    p.set_defaults(func=cmd_distill)
