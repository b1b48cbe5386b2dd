"""``slimfuse fuse`` and ``slimfuse merge``: members are bundle folders (or any model argument).

The flags are the methods' config fields (:data:`~slimfuse.fusion.config.FuseConfig`,
:data:`~slimfuse.fusion.config.MergeConfig`): each says which methods read it, and a flag the
method does not read is an error. Heavy imports stay inside the handlers (``--help`` is fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from slimfuse.cli.common import add_common, add_data_args, add_out
from slimfuse.config import TRAIN_KEYS, TrainConfig, given
from slimfuse.errors import ConfigError
from slimfuse.fusion.config import (
    AnyFuseConfig,
    AnyMergeConfig,
    FuseConfig,
    MergeConfig,
    fuse_training,
)


def fuse_config_from_flags(
    args: argparse.Namespace,
) -> tuple[AnyFuseConfig, TrainConfig | dict[str, Any] | None]:
    """The fuse method's config and, for a method that trains, its training config (the fuse
    defaults, then the training flags set); for members retrained per fold (``--cv K``), the
    training flags set, which :func:`slimfuse.fuse` applies over the members' own recorded
    training settings."""
    values = given(args, [FuseConfig.key, *FuseConfig.fields(), *TRAIN_KEYS])
    values.setdefault(FuseConfig.key, FuseConfig.default)
    cfg, train = FuseConfig.split(values, flags=True)
    fixed = {"seed": args.seed, "quiet": args.quiet}
    config = fuse_training(cfg, train, flags=True, **fixed)  # type: ignore[arg-type]
    if config is not None and getattr(cfg, "cv", "prefit") != "prefit":
        return cfg, {**train, **fixed}  # type: ignore[return-value]
    return cfg, config  # type: ignore[return-value]


def merge_config_from_flags(args: argparse.Namespace) -> AnyMergeConfig:
    """The merge method's config; ``--parent`` is for ties, and ties needs it."""
    cfg, _ = MergeConfig.from_flags(args)
    if cfg.method == "ties" and not args.parent:
        raise ConfigError(
            "--method ties needs --parent MODEL: the model the ingredients were fine-tuned from"
        )
    if args.parent and cfg.method != "ties":
        raise ConfigError(f"--parent does not apply to --method {cfg.method!r}; it is for ties")
    return cfg  # type: ignore[return-value]


def _members(args: argparse.Namespace, data: Any) -> list[tuple[str, Any]]:
    from slimfuse.cli.common import check_out_is_not_an_input, resolve_task
    from slimfuse.errors import FusionError
    from slimfuse.models.resolve import load_model
    from slimfuse.models.source import check_model_fits

    if not args.member:
        raise FusionError("no members given: expected --member BUNDLE at least once")
    check_out_is_not_an_input(args, *args.member, getattr(args, "parent", None))
    pairs = []
    for i, src in enumerate(args.member):
        name = Path(src).name.replace(".", "_") or f"m{i}"
        if any(n == name for n, _ in pairs):
            name = f"{name}_{i}"
        pairs.append((name, load_model(src, data=data)))
    task = resolve_task(args, pairs[0][1])
    for src, (_, model) in zip(args.member, pairs, strict=True):
        check_model_fits(model, data, task, what=f"member {src!r}")
    return pairs


def _finish(args: argparse.Namespace, model: Any, data: Any, stage: str) -> int:
    from slimfuse.cli.common import print_rows
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save

    rows = measure(model, data, args.task, stage=stage, engines=["torch"], threads=args.threads)
    save(model, args.out, metrics={"task": args.task, "metric": rows[0]["metric"], "stages": rows})
    print_rows(rows)
    print(f"bundle: {args.out}")
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg
    from slimfuse.fusion.api import fit_summary, fuse

    cfg, train = fuse_config_from_flags(args)  # before loading anything
    data = load_data_arg(args)
    pairs = _members(args, data)
    model = fuse(pairs, cfg, data, train=train, task=args.task)
    summary = fit_summary(model)  # learned weights, the meta-learner's choice
    if summary:
        print(summary)
    return _finish(args, model, data, f"fuse-{cfg.method}")


def cmd_merge(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg
    from slimfuse.fusion.merge import merge
    from slimfuse.models.resolve import load_model
    from slimfuse.models.source import check_model_fits

    cfg = merge_config_from_flags(args)  # before loading anything
    data = load_data_arg(args)
    pairs = _members(args, data)
    parent = None
    if args.parent:
        parent = load_model(args.parent, data=data)
        check_model_fits(parent, data, args.task, what=f"parent {args.parent!r}")
    model = merge(pairs, cfg, data, parent=parent, task=args.task)
    info = getattr(model, "merge_info", {})
    kept = info.get("ingredients", [])
    line = f"merged {', '.join(kept)} ({cfg.method}, {len(kept)} of {len(pairs)})"
    if "val" in info:
        line += f"; val {info['val']:.4f}"
    print(line)
    return _finish(args, model, data, f"merge-{cfg.method}")


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "fuse",
        help="fuse trained members into one model (mean, stack, head, ...)",
        description="Fuse trained members into one model. Each flag says which methods read "
        "it; a flag the method does not read is an error.",
    )
    p.add_argument(
        "--member",
        action="extend",
        nargs="+",
        metavar="MODEL",
        help="members: bundle folders or model arguments (--member A B C, or repeated) (required)",
    )
    add_data_args(p)
    add_out(p)
    FuseConfig.add_flags(
        p,
        help="mean: the members' average; weighted: weights learned on held-out predictions "
        "(see --cv); vote / soft-vote: majority of labels / of probabilities; stack: a "
        "meta-learner on the members' predictions; head: a trained layer over the frozen "
        "members. The training flags train the head and, with --cv K, the members per fold",
    )
    add_common(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser(
        "merge",
        help="merge same-architecture models' weights (soups, TIES)",
        description="Merge same-architecture models' weights. Each flag says which methods read "
        "it; a flag the method does not read is an error.",
    )
    p.add_argument(
        "--member",
        action="extend",
        nargs="+",
        metavar="BUNDLE",
        help="ingredients: bundle folders (--member A B C, or repeated) (required)",
    )
    MergeConfig.add_flags(
        p,
        help="greedy: add an ingredient only if val does not drop; uniform: average all; "
        "ties: TIES merging of fine-tuned variants of --parent",
    )
    p.add_argument(
        "--parent", help="the model the ingredients were fine-tuned from [ties] (default: none)"
    )
    add_data_args(p)
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_merge)
