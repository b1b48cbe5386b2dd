"""``slimfuse quantize``: the flags are :data:`~slimfuse.quantization.config.QuantConfig`'s fields."""

from __future__ import annotations

import argparse

from slimfuse.cli.common import add_common, add_data_args, add_model_args, add_out
from slimfuse.quantization.config import QuantConfig


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="int8 dynamic/static (ONNX Runtime), weight-only int8/int4, QAT, mixed precision",
        description="Quantize a model. Each flag says which modes read it; a flag the mode does "
        "not read is an error.",
    )
    add_model_args(p)
    add_data_args(p)
    QuantConfig.add_flags(
        p,
        help="dynamic or static int8 (an ONNX Runtime graph), weight-only int8/int4 (packed "
        "weights, float compute) or qat (fake-quant training, then int8)",
    )
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from slimfuse.api import quantize
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.quantization.graph import summary

    cfg, train = QuantConfig.from_flags(args, seed=args.seed, quiet=args.quiet)  # before loading
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    q = quantize(model, cfg, data, train=train, task=args.task, seed=args.seed)
    rows = measure(q, data, args.task, stage="quantize", threads=args.threads)
    save(q, args.out, metrics={"task": args.task, "metric": rows[0]["metric"], "stages": rows})
    info = getattr(q, "info", {})
    layers = info.get("layers", [])
    if layers:
        print(summary(layers))
    for row in layers:
        if row["precision"] == "fp32":
            print(f"fp32: {row['layer']} ({row['type']}): {row['reason']}")
    mp = info.get("mixed_precision")
    if mp and not mp["met"]:
        last = mp["steps"][-1]
        print(
            f"max-drop {mp['max_drop']} not met: drop {last['drop']:.4f} with "
            f"{last['fp32_layers']} of {len(mp.get('sensitivity', []))} layer(s) kept fp32"
        )
    sqnr = getattr(q, "quant_sqnr_db", None)
    if sqnr:
        print("weight SQNR (dB): " + ", ".join(f"{k} {v}" for k, v in sqnr.items()))
    print_rows(rows)
    print(f"bundle: {args.out}")
    return 0
