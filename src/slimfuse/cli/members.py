"""``slimfuse train-members``: N seeds (or K fold-members) of one model, trained by the one loop,
``--jobs`` at a time; the bundle is their mean ensemble (what the recipe stage makes)."""

from __future__ import annotations

import argparse
from typing import Any

from slimfuse.cli.common import add_common, add_data_args, add_out, add_training_args


def cmd_train_members(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg, parse_kv, print_rows, train_config_arg
    from slimfuse.errors import ConfigError
    from slimfuse.fusion.common import is_regression
    from slimfuse.fusion.ensemble import MeanFusion
    from slimfuse.fusion.members import train_members
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: expected at least 1")
    cfg = train_config_arg(args)
    data = load_data_arg(args)
    task = args.task or "classification"
    trained = train_members(
        args.model,
        data,
        n=args.n,
        kfold=args.kfold,
        config=cfg,
        task=task,
        model_kwargs=parse_kv(args.kw),
        jobs=args.jobs,
    )
    model = MeanFusion(trained.pairs, space="logits" if is_regression(task) else "probs")
    rows = measure(
        model, data, task, stage="train-members", engines=["torch"], threads=args.threads
    )
    save(model, args.out, metrics={"task": task, "metric": rows[0]["metric"], "stages": rows})
    for name, score in trained.val_scores.items():
        print(f"{name}: best val {score:.4f}")
    print_rows(rows)
    print(f"bundle: {args.out}")
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "train-members",
        help="train N seeds (or K fold-members) of a model, --jobs at a time; their mean ensemble",
        description="Train the members of an ensemble with the one training loop: seeds "
        "seed .. seed + n - 1, or K members each without one fold of the training split. "
        "--jobs N trains N at a time in separate processes (CPU: cores // N threads each; "
        "CUDA: one GPU per member) and gives the members sequential training gives.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="the members' model: a zoo name, file.py:fn or module:fn (required)",
    )
    p.add_argument(
        "--kw",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the model builder, repeatable (default: none)",
    )
    p.add_argument("--n", type=int, default=5, help="members (seeds) to train (default: 5)")
    p.add_argument(
        "--kfold",
        type=int,
        default=None,
        help="K fold-members instead of --n seeds (default: none)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="members trained at a time, one process each (default: 1, sequential)",
    )
    add_data_args(p)
    add_training_args(p, resume=False)
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_train_members)
