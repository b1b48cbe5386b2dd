"""``slimfuse distill``: one or several teachers into a student, through the one training loop.

The loss flags are :data:`~slimfuse.distillation.config.DistillConfig`'s fields (each says
which losses read it; a flag the loss does not read is an error), the training flags
:class:`~slimfuse.config.TrainConfig`'s::

    slimfuse distill --teacher runs/t0 --teacher runs/t1 --student mnist1d_cnn --kw channels=10 \\
        --data mnist1d --loss kd --temperature 4 --alpha 0.9 --out runs/student
    slimfuse distill --teacher runs/resnet --student-from-teacher depth=2 --data mnist1d --out runs/s
    torchrun --nproc_per_node 2 -m slimfuse distill ...      # DDP (gloo on CPU)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slimfuse.cli.common import (
    add_common,
    add_data_args,
    add_out,
    add_training_args,
    check_out_is_not_an_input,
    load_data_arg,
    parse_kv,
    resolve_task,
    text_data_arg,
)
from slimfuse.config import add_flags, help_text
from slimfuse.distillation.config import (
    DistillConfig,
    StudentFromTeacher,
    check_student,
    check_teachers,
)
from slimfuse.errors import ConfigError


class _Hints(argparse.Action):
    """``--hint STUDENT_LAYER=TEACHER_LAYER`` (repeatable, or several after one flag)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        out = dict(getattr(namespace, self.dest, None) or {})
        for item in values:
            student, sep, teacher = item.partition("=")
            if not sep or not student or not teacher:
                parser.error(f"{option} {item!r}: expected STUDENT_LAYER=TEACHER_LAYER")
            out[student] = teacher
        setattr(namespace, self.dest, out)


def cmd_distill(args: argparse.Namespace) -> int:
    from slimfuse.api import distill_run
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.leakage import check_same_split
    from slimfuse.models.resolve import load_model
    from slimfuse.models.source import check_model_fits
    from slimfuse.training import is_main_process

    # the settings first: a flag the loss does not read stops before anything loads
    cfg, train = DistillConfig.from_flags(args, seed=args.seed, quiet=args.quiet)
    sources = args.teacher or []
    if not sources:
        raise ConfigError("no --teacher given; expected at least one teacher model")
    check_teachers(cfg, len(sources))
    from_teacher = None
    if args.student_from_teacher:
        from_teacher = StudentFromTeacher.from_dict(
            parse_kv(args.student_from_teacher), "--student-from-teacher"
        )
    check_student(args.student, from_teacher)
    if from_teacher is not None and (args.kw or args.weights):
        raise ConfigError(
            f"{'--kw' if args.kw else '--weights'} does not apply to --student-from-teacher; "
            "it is for --student"
        )
    check_out_is_not_an_input(args, *sources, args.student)
    data = load_data_arg(args)
    teachers = [load_model(t, data=data, unsafe_pickle=args.unsafe_pickle) for t in sources]
    task = resolve_task(args, teachers[0])
    for src, teacher in zip(sources, teachers, strict=True):
        check_model_fits(teacher, data, task, what=f"teacher {src!r}")
        check_same_split(teacher, data, f"teacher {src!r}")
    # text: the first teacher tokenizes it and its embeddings are the reference measured
    data = text_data_arg(
        args,
        teachers[0],
        data,
        source=sources[0],
        what=f"teacher {sources[0]!r}",
    )
    import torch

    torch.manual_seed(args.seed)  # the same student initialisation in every process and run
    student: Any = from_teacher
    if args.student is not None:
        student = load_model(
            args.student,
            data=data,
            weights=args.weights,
            unsafe_pickle=args.unsafe_pickle,
            **parse_kv(args.kw),
        )
        check_model_fits(student, data, task, what="the student")
    out = Path(args.out)
    run = distill_run(
        student,
        teachers,
        cfg,
        data,
        train=train,
        task=task,
        checkpoint_dir=Path(f"{out}.ckpt"),
        resume=args.resume,
    )
    if not is_main_process():
        return 0
    rows = measure(
        run.student, data, task, stage="distill", engines=["torch"], threads=args.threads
    )
    save(run.student, out, metrics={"task": task, "metric": rows[0]["metric"], "stages": rows})
    best = run.train.best_metric
    print(
        f"distilled {len(teachers)} teacher(s) into {rows[0]['params']:,} parameters in "
        f"{run.train.epochs_run} epochs ({run.train.seconds:.1f}s); best val "
        f"{best if best is None else round(best, 4)}"
    )
    print(f"test {rows[0]['metric']} {rows[0]['metric_value']:.4f}; bundle: {out}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "distill",
        help="distil one or several teachers (an ensemble) into a smaller student",
        description="Distil teachers into a student. Each loss flag says which losses read it; "
        "a flag the loss does not read is an error.",
    )
    p.add_argument(
        "--teacher",
        action="extend",
        nargs="+",
        metavar="MODEL",
        help="teacher bundle / model; several (--teacher A B, or repeated) are an ensemble, "
        "averaged as --ensemble-space says (required)",
    )
    p.add_argument(
        "--student",
        help="student: zoo name, file.py:fn, module:fn, bundle or HF folder (default: none; "
        "give it or --student-from-teacher)",
    )
    p.add_argument(
        "--student-from-teacher",
        action="append",
        metavar="KEY=VALUE",
        help="build the student from the first teacher: depth=3, keep=[0,2,4] and/or width=0.5 "
        "(with importance=l1, blocks_path=NAME) (default: none)",
    )
    p.add_argument(
        "--kw",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the --student builder (default: none)",
    )
    p.add_argument(
        "--weights",
        help="initial weights for --student, .safetensors or a state dict (default: its own)",
    )
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow .pt files that need full pickle (only for files you trust) (default: off)",
    )
    add_data_args(p)
    group = p.add_argument_group("loss settings")
    group.add_argument(
        "--loss",
        choices=DistillConfig.names(),
        default=None,
        help="kd (soft targets), mse (output matching), cosine (embeddings) or hint (FitNets "
        f"features) (default: {DistillConfig.default})",
    )
    fields = {n: f for n, f in DistillConfig.fields().items() if n != "loss"}
    add_flags(group, fields, readers=DistillConfig.readers, skip=("hints",))
    group.add_argument(
        "--hint",
        "--hints",
        dest="hints",
        action=_Hints,
        nargs="+",
        default=None,
        metavar="STUDENT_LAYER=TEACHER_LAYER",
        help=help_text(fields["hints"], DistillConfig.readers("hints")),
    )
    add_training_args(p)
    add_out(p, "student bundle folder to write")
    add_common(p)
    p.set_defaults(func=cmd_distill)
