"""``slimfuse quantize``: the flags are :data:`~slimfuse.quantization.config.QuantConfig`'s fields."""

from __future__ import annotations

import argparse
import warnings

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
        "weights, float compute), qat (fake-quant training, then int8) or shared (weight "
        "sharing: k-means codebooks, Huffman-coded in the bundle); auto: dynamic for "
        "transformer encoders (token inputs or attention layers), static otherwise (static "
        "too when --calibration or --percentile is given)",
    )
    _bits_for_every_mode(p)
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_quantize)


def _bits_for_every_mode(p: argparse.ArgumentParser) -> None:
    """``--bits`` is two fields (weight bits 8 or 4; shared index bits 2..8): one flag that
    takes what either accepts (the mode's config checks the value) and says both defaults."""
    from slimfuse.quantization.config import Shared, WeightOnly

    action = next(a for a in p._actions if a.dest == "bits")
    action.choices = list(range(2, 9))
    wo, sh = WeightOnly.model_fields["bits"], Shared.model_fields["bits"]
    action.help = (
        f"{wo.description}: 8 or 4 [weight-only, qat] (default: {wo.default}); "
        f"{sh.description} [shared] (default: {sh.default})"
    )


def cmd_quantize(args: argparse.Namespace) -> int:
    from slimfuse.api import quantize
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows, text_data_arg
    from slimfuse.errors import SlimfuseWarning
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import is_transformer_encoder
    from slimfuse.quantization.graph import summary

    cfg, train = QuantConfig.from_flags(args, seed=args.seed, quiet=args.quiet)  # before loading
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    if cfg.mode == "static" and is_transformer_encoder(model, data):
        warnings.warn(
            "static int8 on a transformer encoder: one calibrated range per activation cannot "
            "hold its outlier channels (all-MiniLM-L6-v2: 0.81 mean cosine static, 0.99 "
            "dynamic); --mode dynamic (or auto, the default) keeps them",
            SlimfuseWarning,
            stacklevel=1,
        )
    data = text_data_arg(args, model, data, train_targets=cfg.mode == "qat")
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
    if cfg.mode == "shared":
        from slimfuse.quantization.storage import storage_report, storage_table

        print(storage_table(storage_report(q)))
    sqnr = getattr(q, "quant_sqnr_db", None)
    if sqnr:
        print("weight SQNR (dB): " + ", ".join(f"{k} {v}" for k, v in sqnr.items()))
    print_rows(rows)
    print(f"bundle: {args.out}")
    return 0
