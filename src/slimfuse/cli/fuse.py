"""``slimfuse fuse`` and ``slimfuse merge``: members are bundle folders (or any model argument)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _members(args: argparse.Namespace, data: Any) -> list[tuple[str, Any]]:
    from slimfuse.cli.common import check_out_is_not_an_input, resolve_task
    from slimfuse.errors import FusionError
    from slimfuse.models.source import check_model_fits, load_model

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
    from slimfuse.cli.common import load_data_arg, train_config_arg
    from slimfuse.config import validate
    from slimfuse.fusion.api import OPTIONS, fuse, method_options
    from slimfuse.pipeline.fuse import FuseStage

    given = {k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None}
    # the flags are a fuse stage's keys: the same defaults and checks as a recipe's
    settings = validate(FuseStage, {"method": args.method, **given}, flags=True)
    opts = method_options(args.method, settings, train_config_arg(args, FUSE_TRAINING), given)
    data = load_data_arg(args)
    pairs = _members(args, data)
    model = fuse(pairs, args.method, data=data, task=args.task, **opts)
    if hasattr(model, "weights_"):  # learned weights: what the user will want to see first
        shown = ", ".join(f"{n} {w:.3f}" for (n, _), w in zip(pairs, model.weights_, strict=True))
        shrink = getattr(model, "shrink_", None)
        print(
            f"weights: {shown}"
            + ("" if shrink is None else f" (shrink {shrink:.2f})")
            + f"; fitted on {model.fit_samples_} "
            + ("validation samples" if model.cv == "prefit" else "out-of-fold predictions")
        )
    if hasattr(model, "meta_samples_"):  # stacking: what the meta-learner was fitted on
        c = getattr(model, "C_", None)
        print(
            f"meta-learner: fitted on {model.meta_samples_} predictions"
            + ("" if c is None else f", C {c:g}")
            + f"; held-out accuracy {model.cv_score_:.4f}"
        )
    return _finish(args, model, data, f"fuse-{args.method}")


def cmd_merge(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg
    from slimfuse.errors import ConfigError
    from slimfuse.fusion.merge import check_merge_options, merge
    from slimfuse.models.source import check_model_fits, load_model

    check_merge_options(args.method, parent=args.parent, density=args.density, scale=args.scale)
    data = load_data_arg(args)
    pairs = _members(args, data)
    opts: dict[str, Any] = {}
    if args.method == "ties":
        if not args.parent:
            raise ConfigError(
                "--method ties needs --parent MODEL: the model the ingredients were fine-tuned from"
            )
        parent = load_model(args.parent, data=data)
        check_model_fits(parent, data, args.task, what=f"parent {args.parent!r}")
        opts = {"parent": parent, "density": args.density, "scale": args.scale}
    model = merge(pairs, args.method, data=data, task=args.task, **opts)
    info = getattr(model, "merge_info", {})
    kept = info.get("ingredients", [])
    line = f"merged {', '.join(kept)} ({args.method}, {len(kept)} of {len(pairs)})"
    if "val" in info:
        line += f"; val {info['val']:.4f}"
    print(line)
    return _finish(args, model, data, f"merge-{args.method}")


# a head over frozen members needs fewer epochs and a smaller learning rate (the fuse stage's)
FUSE_TRAINING = {"epochs": 10, "lr": 1e-3}


def _cv(text: str) -> str | int:
    if text != "prefit" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected prefit or a number of folds")
    return text if text == "prefit" else int(text)


def _cv_or(test: Any, expected: str) -> Any:
    """An argparse type: ``cv``, or a number that passes ``test``."""

    def parse(text: str) -> str | float:
        try:
            ok = text == "cv" or bool(test(float(text)))
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r}: expected cv or {expected}")
        return text if text == "cv" else float(text)

    return parse


def add_commands(sub: Any) -> None:
    from slimfuse.cli.common import add_common, add_data_args, add_training_args

    p = sub.add_parser("fuse", help="fuse trained members into one model (mean, stack, head, ...)")
    p.add_argument(
        "--member",
        action="extend",
        nargs="+",
        metavar="MODEL",
        help="members: bundle folders or model arguments (--member A B C, or repeated)",
    )
    p.add_argument(
        "--method",
        choices=["mean", "weighted", "vote", "soft-vote", "stack", "head"],
        default="mean",
        help="mean (default): the members' average; weighted: weights learned on held-out "
        "predictions (see --cv); "
        "vote / soft-vote: majority of labels / of probabilities; stack: a meta-learner on the "
        "members' predictions; head: a trained layer over the frozen members",
    )
    add_data_args(p)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument(
        "--space",
        choices=["probs", "logits"],
        help="mean / weighted: average probabilities (default) or logits",
    )
    p.add_argument(
        "--weights",
        type=float,
        nargs="+",
        help="mean / weighted / vote: one weight per member, given instead of uniform or learned",
    )
    p.add_argument(
        "--shrink",
        type=_cv_or(lambda a: 0.0 <= a <= 1.0, "a number in [0, 1]"),
        help="weighted: how far the fitted weights are pulled toward uniform (0: none, 1: "
        "uniform), or cv to choose it by cross-validated errors (default)",
    )
    p.add_argument(
        "--cv",
        type=_cv,
        help="stack / weighted: fit on the val split (prefit, the default) or on out-of-fold "
        "predictions of K folds of train (every member retrained K times with the training "
        "flags below: give the members' own --epochs and --lr)",
    )
    p.add_argument(
        "--features",
        choices=["probs", "log_probs", "logits"],
        help="stack: the meta-learner's inputs, default probs (it starts from the members' mean "
        "logits)",
    )
    p.add_argument(
        "--meta-c",
        type=_cv_or(lambda c: c > 0, "a number > 0"),
        help="stack: the meta-learner's inverse L2 penalty, or cv to choose it by held-out "
        "log-loss (default)",
    )
    p.add_argument(
        "--with-val",
        action="store_true",
        default=None,
        help="stack with --cv K: also fit the meta-learner on the members' validation predictions",
    )
    p.add_argument(
        "--on",
        choices=["logits", "features", "both"],
        help="head: over the members' logits (default), penultimate features, or both",
    )
    p.add_argument("--hidden", type=int, help="head: hidden width (default 0: linear)")
    # the fuse stage's defaults: a head over frozen members needs fewer epochs, a smaller lr
    add_training_args(p, defaults=FUSE_TRAINING, what="the head, the folds of --cv K", resume=False)
    add_common(p)
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("merge", help="merge same-architecture models' weights (soups, TIES)")
    p.add_argument(
        "--member",
        action="extend",
        nargs="+",
        metavar="BUNDLE",
        help="ingredients: bundle folders (--member A B C, or repeated)",
    )
    p.add_argument(
        "--method",
        choices=["uniform", "greedy", "ties"],
        default="greedy",
        help="greedy (default): add an ingredient only if val improves; uniform: average all; "
        "ties: TIES merging of fine-tuned variants of --parent",
    )
    p.add_argument("--parent", help="ties: the model the ingredients were fine-tuned from")
    p.add_argument("--density", type=float, default=0.2, help="ties: fraction of each delta kept")
    p.add_argument("--scale", type=float, default=1.0, help="ties: scale of the merged delta")
    add_data_args(p)
    p.add_argument("--out", required=True, help="bundle folder to write")
    add_common(p)
    p.set_defaults(func=cmd_merge)
