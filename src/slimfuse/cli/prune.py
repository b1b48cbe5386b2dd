"""``slimfuse prune``: unstructured, structured or transformer pruning, then recovery and a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    from slimfuse.cli.common import add_common, add_data_args, add_model_args

    p = sub.add_parser(
        "prune",
        help="prune a model (unstructured sparsity, channels, or transformer FFN/heads) and recover",
    )
    add_model_args(p)
    add_data_args(p, required=False)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--sparsity", type=float, help="unstructured: fraction of weights to zero")
    what.add_argument("--channels", type=float, help="structured: fraction of channels to remove")
    what.add_argument("--ffn", type=float, help="transformer: fraction of FFN neurons to remove")
    p.add_argument("--heads", type=float, help="transformer: fraction of attention heads to remove")
    p.add_argument("--schedule", choices=["agp", "oneshot"], default="agp")
    p.add_argument(
        "--importance", default="l1", help="l1, l2, bn, taylor (channels); l1, l2, activation (ffn)"
    )
    p.add_argument("--targets", action="append", help="layer selector (name, re:regex, type:Class)")
    p.add_argument("--ignore", action="append", help="layer selector to leave alone")
    p.add_argument("--global", dest="global_pruning", action="store_true", default=None)
    p.add_argument("--iterative-steps", type=int, default=1)
    p.add_argument(
        "--skip-unsupported",
        action="store_true",
        help="leave layers structured pruning cannot resize alone (warning) instead of failing",
    )
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--recovery", choices=["finetune", "distill"], default="finetune")
    p.add_argument("--out", required=True, help="bundle folder to write")
    add_common(p)
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows
    from slimfuse.errors import ConfigError
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import record
    from slimfuse.pruning.api import prune
    from slimfuse.pruning.sparse import storage_report

    if args.heads is not None and args.ffn is None:
        args.ffn = 0.0
    data = load_data_arg(args) if args.data else None
    if data is None and (
        args.finetune_epochs or args.channels is not None or args.sparsity is not None
    ):
        raise ConfigError("prune needs --data (example inputs and fine-tuning data)")
    model = load_model_arg(args, data)
    pruned = prune(
        model,
        data,
        sparsity=args.sparsity,
        channels=args.channels,
        ffn=args.ffn,
        heads=args.heads,
        schedule=args.schedule,
        importance=args.importance,
        targets=args.targets,
        ignore=args.ignore,
        global_pruning=args.global_pruning,
        iterative_steps=args.iterative_steps,
        unsupported="skip" if args.skip_unsupported else "error",
        finetune_epochs=args.finetune_epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        recovery=args.recovery,
        task=args.task,
        seed=args.seed,
        quiet=args.quiet,
        checkpoint_dir=Path(f"{args.out}.ckpt"),
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func",)}
    record(pruned, lineage={"stage": "prune", "config": settings})
    rep = storage_report(pruned)
    metrics = None
    if data is not None:
        rows = measure(
            pruned, data, args.task, stage="prune", engines=["torch"], threads=args.threads
        )
        metrics = {"task": args.task, "metric": rows[0]["metric"], "stages": rows}
        print_rows(rows)
    save(pruned, args.out, metrics=metrics)
    print(
        f"params {rep['params']:,} ({rep['nonzero_params']:,} non-zero); weights "
        f"{rep['dense_bytes'] / 1024:.1f} KiB dense, {rep['encoded_bytes'] / 1024:.1f} KiB stored; "
        f"bundle: {args.out}"
    )
    return 0
