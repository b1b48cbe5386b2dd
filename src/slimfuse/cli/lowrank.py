"""``slimfuse factorize`` (also ``slimfuse lowrank``): the flags are
:data:`~slimfuse.lowrank.config.LowRankConfig`'s fields and recovery's training flags; the
amount given (``--energy``, ``--ratio``, ``--budget``) picks the method."""

from __future__ import annotations

import argparse
from pathlib import Path

from slimfuse.cli.common import add_common, add_data_args, add_model_args, add_out
from slimfuse.config import TrainConfig, add_flags, flag_name, help_text
from slimfuse.errors import ConfigError
from slimfuse.lowrank.config import AMOUNTS, LOWRANK_TRAINING, LowRankConfig, check_recovery


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "factorize",
        aliases=["lowrank"],
        help="low-rank factorization: Linear / conv layers as two smaller ones (truncated SVD)",
        description="Replace Linear, Conv1d and Conv2d layers by two smaller layers from their "
        "truncated SVD, then recover (--epochs). The amount given picks how ranks are chosen: "
        "--energy (per layer, share of squared singular values kept), --ratio (per layer, "
        "share of weights kept), --budget (the model's FLOPs or parameters, ranks by "
        "sensitivity on --data). A layer that would not get smaller is left alone and listed.",
    )
    add_model_args(p)
    add_data_args(p, required=False)
    fields = LowRankConfig.fields()
    what = p.add_argument_group("how ranks are chosen (one of; it picks the method)")
    what.add_argument(
        flag_name(LowRankConfig.key),
        choices=LowRankConfig.names(),
        default=None,
        help="the method (default: the one the amount given names)",
    )
    amounts = what.add_mutually_exclusive_group()
    add_flags(
        amounts,
        {k: fields[k] for k in AMOUNTS},
        readers=LowRankConfig.readers,
        defaults=dict.fromkeys(AMOUNTS),  # not required: one of
    )
    lists = ("targets", "ignore")
    add_flags(
        p,
        {k: f for k, f in fields.items() if k not in (*AMOUNTS, *lists, LowRankConfig.key)},
        readers=LowRankConfig.readers,
        group="method settings",
    )
    layers = p.add_argument_group("layers")
    for name in lists:  # a list: --ignore a b, or repeated: --ignore a --ignore b
        layers.add_argument(
            f"--{name}",
            dest=name,
            default=None,
            nargs="+",
            action="extend",
            metavar=name.upper(),
            help=help_text(fields[name]),
        )
    add_flags(
        p,
        TrainConfig.model_fields,
        skip=("seed", "quiet"),
        readers=lambda _: [],
        group="recovery training (--epochs 0: none)",
        defaults=LOWRANK_TRAINING,
    )
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_factorize)


def cmd_factorize(args: argparse.Namespace) -> int:
    from slimfuse.api import factorize
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows, text_data_arg
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import record

    cfg, train = LowRankConfig.from_flags(args, seed=args.seed, quiet=args.quiet)  # before loading
    assert train is not None  # every method recovers with the one loop
    check_recovery(cfg, train)
    data = load_data_arg(args) if args.data else None
    if data is None and (train.epochs or cfg.method == "budget"):
        raise ConfigError(
            "factorize needs --data for --budget (calibration) and for recovery epochs"
        )
    model = load_model_arg(args, data)
    data = text_data_arg(args, model, data, train_targets=train.epochs > 0)
    small = factorize(
        model, cfg, data, train=train, task=args.task, checkpoint_dir=Path(f"{args.out}.ckpt")
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func",)}
    record(small, lineage={"stage": "factorize", "config": settings})
    info = small.lowrank_info
    for row in info["layers"]:
        if row["status"] == "factorized":
            why = f" ({row['reason']})" if row["reason"] else ""
            print(f"rank {row['rank']:>5} of {row['full_rank']}: {row['layer']}{why}")
        else:
            print(f"left alone: {row['layer']} ({row['type']}): {row['reason']}")
    metrics = None
    if data is not None:
        rows = measure(
            small, data, args.task, stage="factorize", engines=["torch"], threads=args.threads
        )
        metrics = {"task": args.task, "metric": rows[0]["metric"], "stages": rows}
        print_rows(rows)
    save(small, args.out, metrics=metrics)
    (p0, p1), (m0, m1) = info["params"], info["macs"]
    macs = f"; MACs {m0:,} -> {m1:,} ({m1 / m0:.3f}x)" if m0 and m1 else ""
    print(f"params {p0:,} -> {p1:,} ({p1 / p0:.3f}x){macs}; bundle: {args.out}")
    return 0
