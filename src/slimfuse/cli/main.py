"""The command line: parse, validate, call one library function, print.

Bad input prints one line (what was seen, what was expected) and exits with code 2; ``--debug``
shows the traceback instead. Technique families add their commands through :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slimfuse import __version__
from slimfuse.cli.common import (
    add_common,
    add_data_args,
    add_model_args,
    add_training_args,
    check_out_is_a_file,
    load_data_arg,
    load_model_arg,
    one_line_warnings,
    os_error_line,
    print_rows,
    show_progress,
    text_data_arg,
    train_config_arg,
)
from slimfuse.cli.demo import DEMO_RECIPE, run_demo

# technique families: module with ``add_commands(subparsers)``; imported when the CLI starts,
# so these modules keep their heavy imports inside the handlers.
FAMILIES: tuple[str, ...] = (
    "slimfuse.cli.fuse",
    "slimfuse.cli.prune",
    "slimfuse.cli.distill",
    "slimfuse.cli.quantize",
    "slimfuse.cli.lowrank",
    "slimfuse.cli.compress",
    "slimfuse.cli.members",
)


# -- core commands --------------------------------------------------------------------------


def cmd_env(args: argparse.Namespace) -> int:
    import os
    import platform
    from importlib import metadata

    print(f"slimfuse {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for pkg in (
        "torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "torch-pruning",
        "transformers",
        "numpy",
        "scikit-learn",
    ):
        try:
            print(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            print(f"{pkg} (not installed)")
    import torch

    print(f"cpu cores {os.cpu_count()}, torch threads {torch.get_num_threads()}")
    from slimfuse.hardware import SHOWN_FLAGS, cpu_flags, has_vnni

    flags = cpu_flags()
    print("cpu flags " + ", ".join(f"{f}={'yes' if f in flags else 'no'}" for f in SHOWN_FLAGS))
    print(
        "int8 fast path (VNNI): "
        + ("yes" if has_vnni() else "no (int8 weights use 7 bits by default: reduce_range)")
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import record
    from slimfuse.training import is_main_process, train

    data = load_data_arg(args)
    model = load_model_arg(args, data)
    data = text_data_arg(args, model, data)
    cfg = train_config_arg(args)
    out = Path(args.out)
    result = train(
        model, data, args.task, cfg, checkpoint_dir=Path(f"{out}.ckpt"), resume=args.resume
    )
    if not is_main_process():
        return 0
    record(
        model, lineage={"stage": "train", "config": cfg.to_dict(), "best_val": result.best_metric}
    )
    rows = measure(model, data, args.task, stage="train", engines=["torch"], threads=args.threads)
    save(model, out, metrics={"task": args.task, "metric": rows[0]["metric"], "stages": rows})
    print(
        f"trained {result.epochs_run} epochs in {result.seconds:.1f}s; best val {result.best_metric:.4f}"
    )
    print(f"test {rows[0]['metric']} {rows[0]['metric_value']:.4f}; bundle: {out}")
    return 0


def _eval_text(args: argparse.Namespace, model: Any, data: Any) -> Any:
    """Text data for ``eval``: token data whose targets are ``--reference``'s embeddings (the
    model's own without it: a cosine of 1 by construction, said in a warning)."""
    from slimfuse.data.text import is_text
    from slimfuse.errors import ConfigError, SlimfuseWarning

    if args.reference is not None and not is_text(data):
        raise ConfigError("--reference applies to text data (an encoder's reference embeddings)")
    if not is_text(data):
        return data
    reference = model
    if args.reference is None:
        warnings.warn(
            "the reference embeddings are the model's own, so its cosine is 1 by construction; "
            "--reference MODEL (the model it was made from) measures fidelity",
            SlimfuseWarning,
            stacklevel=1,
        )
    else:
        from slimfuse.models.resolve import load_model
        from slimfuse.models.source import check_model_fits

        reference = load_model(args.reference, data=data, unsafe_pickle=args.unsafe_pickle)
        check_model_fits(reference, data, args.task, what=f"the reference {args.reference!r}")
    return text_data_arg(
        args,
        reference,
        data,
        train_targets=args.split == "train",
        source=args.reference or args.model,
        what=f"the {'reference' if args.reference else 'model'} {args.reference or args.model!r}",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from slimfuse.errors import SlimfuseWarning
    from slimfuse.measuring import measure, write_metrics

    check_out_is_a_file(args, "a metrics .json file")
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    data = _eval_text(args, model, data)
    from slimfuse.errors import ExportError

    def rows_for(engines: list[str]) -> list[dict[str, Any]]:
        return measure(
            model,
            data,
            args.task,
            stage="eval",
            engines=engines,
            split=args.split,
            threads=args.threads,
        )

    if args.engine != "both":
        rows = rows_for([args.engine])
    else:
        try:
            rows = rows_for(["torch", "onnxruntime"])
        except ExportError as exc:  # what can be measured is measured; --engine onnxruntime fails
            warnings.warn(f"no ONNX Runtime row: {exc}", SlimfuseWarning, stacklevel=1)
            rows = rows_for(["torch"])
    if args.out:
        write_metrics(args.out, rows, args.task, rows[0]["metric"])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_rows(rows)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from slimfuse.deploy import export, format_of
    from slimfuse.errors import ConfigError

    fmt = args.format or Path(args.out).suffix.lower().lstrip(".")
    check_out_is_a_file(
        args, {"pte": "a .pte file", "ort": "an .ort file"}.get(fmt, "an .onnx file")
    )
    fmt = format_of(args.out, args.format)
    if args.int8 and fmt != "pte":
        raise ConfigError(
            f"--int8 is for --format pte (ExecuTorch); for {fmt}, quantize first "
            "(slimfuse quantize), then export the int8 bundle"
        )
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    data = text_data_arg(args, model, data, train_targets=args.int8)
    x = data.example_input(1)
    if args.accuracy_level:
        from slimfuse.quantization.nbits import set_accuracy_level

        if not set_accuracy_level(model, args.accuracy_level):
            raise ConfigError(
                "--accuracy-level applies to weight-only layers that export as MatMulNBits; "
                "this model has none (slimfuse quantize --mode weight-only first)"
            )
        if args.accuracy_level == 4 and args.atol == 1e-4:
            args.atol = 5e-2  # int8 input blocks: parity within the int8 rounding, not 1e-4
    kwargs: dict[str, Any] = {"atol": args.atol}
    if fmt != "pte":
        kwargs["opset"] = args.opset
    if fmt == "ort":
        kwargs["target_platform"] = args.ort_platform
    if args.int8:
        kwargs.update(calibration=data, calibration_batches=args.calibration_batches)
    path = export(model, x, args.out, format=fmt, int8=args.int8, **kwargs)
    what = {"onnx": "ONNX", "ort": "ONNX Runtime Mobile (.ort)", "pte": "ExecuTorch (XNNPACK)"}
    check = "its accuracy: slimfuse.measure on the file"
    if not args.int8:
        import torch

        from slimfuse.deploy import runner
        from slimfuse.tasks import forward

        with torch.no_grad():
            diff = float((forward(runner(path), x) - forward(model, x)).abs().max())
        check = f"max abs diff vs PyTorch {diff:.2e}"
    print(
        f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB, {what[fmt]}"
        f"{', int8' if args.int8 else ''}); {check}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from slimfuse.pipeline.run import run_recipe

    run_recipe(args.recipe, args.out, quiet=args.quiet, resume=args.resume)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from slimfuse.autocompress.results import describe

    result = run_demo(args.out, recipe=DEMO_RECIPE, quiet=args.quiet, resume=args.resume)
    found, out = result["search"], Path(args.out)
    print((found.out / "pareto.md").read_text())
    print_rows(result["stages"])
    t = found.test
    print(
        f"compressed: {describe(found.chosen['chain'])}\n"
        f"test accuracy {t['chosen']:.4f} vs {t['reference']:.4f} for the ensemble "
        f"({t['drop'] * 100:+.2f} points drop), ONNX {t['size_ratio']:.3f}x its size, "
        f"{t['latency_ratio']:.2f}x its batch-{t['batch']} latency\n"
        f"model: {out / 'model.onnx'}; report: {out / 'report.html'}; search: {found.out}; "
        f"recipe of the chosen chain: {found.out / 'recipe.yaml'}\n"
        f"{result['seconds'] / 60:.1f} min wall, {result['cpu_seconds'] / 60:.1f} min CPU"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="slimfuse",
        allow_abbrev=False,
        description="Make trained PyTorch models smaller and faster, fuse several into a better one, "
        "measure every step and export to ONNX.",
    )
    parser.add_argument("--version", action="version", version=f"slimfuse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("env", help="versions, threads and CPU flags (AVX-512 VNNI)")
    p.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("train", help="train a model with the one training loop")
    add_model_args(p)
    add_data_args(p)
    add_training_args(p)
    p.add_argument(
        "--out", required=True, help="bundle folder to write, checkpoints in OUT.ckpt/ (required)"
    )
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="measure a model: metric, size, MACs, latency (torch / ONNX Runtime)"
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument(
        "--split",
        choices=["train", "val", "test"],
        default="test",
        help="the split the metric is measured on (default: test)",
    )
    p.add_argument(
        "--reference",
        metavar="MODEL",
        help="text data: the encoder whose embeddings the cosine is measured against, e.g. the "
        "model a quantized or pruned one was made from (default: the model itself)",
    )
    p.add_argument(
        "--engine",
        choices=["torch", "onnxruntime", "executorch", "both"],
        default="both",
        help="both: ONNX Runtime too where the model exports, else torch with a warning; "
        "executorch: an fp32 .pte program (the mobile extra) (default: both)",
    )
    p.add_argument("--out", help="write metrics.json here (default: none)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON (default: off)")
    add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "export",
        help="export to ONNX, ONNX Runtime Mobile (.ort) or ExecuTorch (.pte), checked "
        "against PyTorch",
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="the .onnx, .ort or .pte file to write (required)")
    p.add_argument(
        "--format",
        choices=["onnx", "ort", "pte"],
        default=None,
        help="onnx (ONNX Runtime), ort (ONNX Runtime Mobile), pte (ExecuTorch, XNNPACK; the "
        "mobile extra) (default: from the suffix of --out)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="pte: int8 through PT2E with the XNNPACK quantizer: static, calibrated on the "
        "train split; dynamic (linear layers) for transformer encoders (default: off, fp32)",
    )
    p.add_argument(
        "--calibration-batches",
        type=int,
        default=8,
        help="--int8: batches of 64 training samples calibration reads (default: 8)",
    )
    p.add_argument(
        "--ort-platform",
        choices=["arm", "amd64"],
        default="arm",
        help="ort: the CPU the graph is optimized for; amd64 adds x86-only layouts "
        "(default: arm, phones)",
    )
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset for onnx and ort (default: 23 for transformer encoders, where "
        "attention exports as one Attention op; 18 otherwise)",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="parity tolerance vs PyTorch, fp32 (default: 1e-4; 5e-2 with --accuracy-level 4)",
    )
    p.add_argument(
        "--accuracy-level",
        type=int,
        choices=(0, 1, 4),
        default=0,
        help="weight-only layers as ONNX Runtime MatMulNBits: 0 keeps fp32 input (int4 layers "
        "only; PyTorch's numbers), 1 exports int8 layers too, 4 quantizes each input block to "
        "int8 (MiniLM: 1.1-1.3x of fp32 where 0 runs at about fp32 speed; not PyTorch's numbers) "
        "(default: 0)",
    )
    add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "run", help="run a YAML recipe: stages in order, measured after each, report"
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument(
        "--out",
        required=True,
        help="run folder: one bundle per stage, metrics.json, report (required)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="skip finished stages, resume the interrupted one (default: off)",
    )
    add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo",
        help="the end-to-end demo (what `make demo` runs): 5 members, fused, then compress",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument(
        "--resume", action="store_true", help="continue an interrupted demo (default: off)"
    )
    add_common(p)
    p.set_defaults(func=cmd_demo)

    for module in FAMILIES:
        importlib.import_module(module).add_commands(sub)
    for command in sub.choices.values():  # --epoch must not silently mean --epochs
        command.allow_abbrev = False
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag is reported with its command's usage, not the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from slimfuse.errors import SlimfuseError, SlimfuseWarning
    from slimfuse.trust import trusting

    args = parse_args(build_parser(), argv)
    show_progress(not getattr(args, "quiet", False))
    debug = getattr(args, "debug", False)
    try:
        with (
            contextlib.nullcontext() if debug else one_line_warnings(args.command),
            warnings.catch_warnings(),
            trusting(getattr(args, "trust_code", False)),
        ):
            if getattr(args, "strict", False):
                warnings.simplefilter("error", SlimfuseWarning)
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at exit
        return code
    except SlimfuseError as exc:
        if debug:
            raise
        print(f"slimfuse {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SlimfuseWarning as exc:  # --strict
        if debug:
            raise
        print(f"slimfuse {args.command}: error: {exc} (a warning, --strict)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"slimfuse {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (``| head``): the work is done, stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 141
    except OSError as exc:  # disk full, permission denied: the machine said no
        if debug:
            raise
        print(f"slimfuse {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
