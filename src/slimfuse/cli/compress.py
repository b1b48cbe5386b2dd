"""``slimfuse compress``: the smallest or fastest model within an accuracy budget, found by a
search across techniques (:mod:`slimfuse.autocompress`)::

    slimfuse compress --model runs/m0 --model runs/m1 --data mnist1d --max-drop 0.01 \\
        --objective size --budget-minutes 10 --out runs/compress
    slimfuse compress ... --out runs/compress --resume     # an interrupted search goes on
"""

from __future__ import annotations

import argparse
from typing import Any

from slimfuse.autocompress.config import CompressConfig
from slimfuse.cli.common import add_common, add_data_args
from slimfuse.config import add_flags, given, validate


def cmd_compress(args: argparse.Namespace) -> int:
    from slimfuse.autocompress.results import drop_text
    from slimfuse.autocompress.search import compress

    values = {**given(args, tuple(CompressConfig.model_fields)), "threads": args.threads}
    values["seed"] = args.seed
    cfg = validate(CompressConfig, values, flags=True)  # bad budgets stop before anything loads
    data_kwargs: dict[str, Any] = {}
    if args.label_column != "label":
        data_kwargs["label_column"] = args.label_column
    if args.no_standardize:
        data_kwargs["standardize"] = False
    if args.max_length is not None:
        data_kwargs["max_length"] = args.max_length
    result = compress(
        args.model,
        args.data,
        out=args.out,
        split_seed=args.split_seed,
        data_kwargs=data_kwargs,
        resume=args.resume,
        trust_code=args.trust_code or None,
        **cfg.to_dict(),
    )
    print((result.out / "pareto.md").read_text(), end="")
    if result.chosen is None:
        print(f"no trial kept within --max-drop {cfg.max_drop}; see {result.out / 'pareto.md'}")
        return 1
    t = result.test
    task = result.reference.get("task", "classification")
    print(
        f"chosen: trial {result.chosen['number']}: test {t['metric']} {t['chosen']:.4f} vs "
        f"{t['reference']:.4f} for the reference (drop {drop_text(t['drop'], task)}), "
        f"{t['size_ratio']:.3f}x the reference's file size, {t['latency_ratio']:.2f}x its "
        f"batch-{t['batch']} latency"
    )
    print(
        f"model: {result.out / ('model.pte' if t['engine'] == 'executorch' else 'model.onnx')}; "
        f"bundle: {result.out / 'chosen'}; recipe: "
        f"{result.out / 'recipe.yaml'}"
    )
    return 0


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "compress",
        help="search across techniques for the smallest or fastest model within an accuracy budget",
        description="Search chains of techniques (post-training int8, distilled students, "
        "channel pruning, int8 endings) with Optuna for the model that minimises --objective "
        "while its validation accuracy stays within --max-drop of the reference's (the fused "
        "models when several are given). A text encoder with text --data is held to the mean "
        "cosine to its own embeddings instead, and its space is int8, FFN / head pruning, low "
        "rank and a shallower student.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL",
        help="a trained model (bundle folder, file.py:fn...); repeat it for several models, "
        "fused into the reference (required)",
    )
    add_data_args(p)
    add_flags(p, CompressConfig.model_fields, skip=("seed", "threads"), group="search")
    p.add_argument("--out", required=True, help="folder of the search and its results (required)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the search in --out (its search.db); finished trials are kept "
        "(default: off)",
    )
    add_common(p)
    p.set_defaults(func=cmd_compress)
