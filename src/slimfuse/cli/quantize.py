"""``slimfuse quantize``: parse, build a :class:`QuantConfig`, call :func:`quantize`, save, print."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    from slimfuse.cli.common import add_common, add_data_args, add_model_args

    p = sub.add_parser(
        "quantize",
        help="int8 dynamic/static (ONNX Runtime), weight-only int8/int4, QAT, mixed precision",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--mode", choices=["dynamic", "static", "weight-only", "qat"], default="static")
    p.add_argument("--bits", type=int, choices=[8, 4], default=8)
    p.add_argument("--calibration", choices=["minmax", "percentile", "entropy"], default="minmax")
    p.add_argument("--percentile", type=float, default=99.999)
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor")
    p.add_argument(
        "--reduce-range",
        choices=["auto", "yes", "no"],
        default="auto",
        help="7-bit int8 weights, exact on CPUs without VNNI (auto: yes where this CPU lacks VNNI)",
    )
    p.add_argument("--targets", nargs="+", help="layers: names, re:<regex>, type:<Class>")
    p.add_argument("--ignore", nargs="+", default=[], help="layers to keep fp32 (same syntax)")
    p.add_argument(
        "--max-drop",
        type=float,
        help="mixed precision: largest metric drop allowed (fraction, 0.003 = 0.3 points)",
    )
    p.add_argument(
        "--smoothquant",
        type=float,
        help="outlier-channel scaling strength (0..1); with --max-drop, only the fewest "
        "layers that keep the budget are smoothed",
    )
    p.add_argument("--group-size", type=int, default=32, help="weights per scale (weight-only)")
    p.add_argument("--calibration-batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64, help="calibration batch size")
    p.add_argument("--qat-epochs", type=int, default=5)
    p.add_argument("--qat-lr", type=float, default=1e-3)
    p.add_argument("--distill", action="store_true", help="QAT with the fp32 model as teacher")
    p.add_argument("--out", required=True, help="bundle folder to write")
    add_common(p)
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.quantization.api import quantize
    from slimfuse.quantization.config import QuantConfig

    cfg = QuantConfig(
        mode=args.mode,
        bits=args.bits,
        calibration=args.calibration,
        percentile=args.percentile,
        per_channel=not args.per_tensor,
        reduce_range={"auto": None, "yes": True, "no": False}[args.reduce_range],
        targets=tuple(args.targets) if args.targets else None,
        ignore=tuple(args.ignore),
        max_drop=args.max_drop,
        smoothquant=args.smoothquant,
        group_size=args.group_size,
        calibration_batches=args.calibration_batches,
        qat_epochs=args.qat_epochs,
        qat_lr=args.qat_lr,
        distill=args.distill,
    )
    cfg.check_applies()  # before the data and model load
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    loader = data.loader("train", batch_size=args.batch_size, shuffle=True, seed=args.seed)
    q = quantize(
        model,
        cfg,
        calibration=loader if cfg.mode != "weight-only" else None,
        example_inputs=data.example_input(1),
        data=data,
        task=args.task,
    )
    rows = measure(q, data, args.task, stage="quantize", threads=args.threads)
    save(q, args.out, metrics={"task": args.task, "metric": rows[0]["metric"], "stages": rows})
    info = getattr(q, "info", {})
    layers = info.get("layers", [])
    if layers:
        from slimfuse.quantization.graph import summary

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
