"""The command line: parse, validate, call one library function, print.

Bad input prints one line (what was seen, what was expected) and exits with code 2; ``--debug``
shows the traceback instead. Technique families add their commands through :data:`FAMILIES`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from slimfuse import __version__

# technique families: module with ``add_commands(subparsers)``; imported when the CLI starts,
# so these modules keep their heavy imports inside the handlers.
FAMILIES: tuple[str, ...] = (
    "slimfuse.fusion.cli",
    "slimfuse.pruning.cli",
    "slimfuse.distillation.cli",
    "slimfuse.quantization.cli",
)


# -- shared arguments -----------------------------------------------------------------------


def parse_kv(items: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are parsed as YAML scalars/lists (``hidden=[64,64]``)."""
    import yaml

    from slimfuse.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"model argument {item!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument(
        "--debug", action="store_true", help="show tracebacks instead of one-line errors"
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow model and data sources that are code (file.py:fn, module:fn, also inside "
        "bundles and recipes): they run. Only for code you trust",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a warning (nothing pruned, a tiny validation split, ...) stops the command with "
        "exit code 1",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="threads for latency measurement (default 1)"
    )


def add_model_args(
    p: argparse.ArgumentParser, flag: str = "--model", required: bool = True
) -> None:
    p.add_argument(
        flag,
        required=required,
        help="zoo name (mnist1d_cnn, mlp, lenet300, resnet1d, gru, minilm), file.py:fn, module:fn, "
        "a bundle folder or a Hugging Face folder",
    )
    p.add_argument(
        "--kw", action="append", metavar="KEY=VALUE", help="keyword argument for the model builder"
    )
    p.add_argument("--weights", help="weights for the model: .safetensors, or a state-dict .pt")
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow .pt files that need full pickle (runs code from the file: only for files you trust)",
    )


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data", required=required, help="mnist1d, digits, path.npz, path.csv or file.py:fn"
    )
    p.add_argument("--label-column", default="label", help="label column of a CSV (default: label)")
    p.add_argument(
        "--task",
        default=None,
        help="classification, regression, embedding or a registered task (default: the one "
        "the model records, embedding for an encoder; else classification)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for splits, initialisation and shuffling"
    )


def add_training_args(
    p: argparse.ArgumentParser,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    what: str = "",
    resume: bool = True,
) -> None:
    """The one training loop's settings, shared by every command that trains.

    ``epochs`` and ``lr`` are the command's defaults (its recipe stage's), ``what`` names what
    the loop trains there when it is not the model itself (``fuse``: the head, stacking's folds).
    """
    of = f"{what}: " if what else ""
    p.add_argument(
        "--epochs", type=int, default=epochs, help=f"{of}passes over the data (default {epochs})"
    )
    p.add_argument("--batch-size", type=int, default=100, help=f"{of}default 100")
    p.add_argument(
        "--lr", type=float, default=lr, help=f"{of}learning rate at the start (default {lr:g})"
    )
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw")
    p.add_argument("--weight-decay", type=float, default=0.0, help="default 0")
    p.add_argument(
        "--schedule",
        choices=["cosine", "constant"],
        default="cosine",
        help="learning rate over the run (default cosine)",
    )
    p.add_argument(
        "--patience", type=int, help="early stopping: epochs without a better val metric"
    )
    p.add_argument(
        "--group-by-length",
        action="store_true",
        help="token data: batch texts of similar length together (less padding)",
    )
    if resume:
        p.add_argument("--resume", action="store_true", help="continue from OUT.ckpt/checkpoint.pt")


def train_config_arg(args: argparse.Namespace) -> Any:
    """The :class:`~slimfuse.training.TrainConfig` of :func:`add_training_args`' flags.

    They are a recipe's training keys, validated and mapped by the same
    :class:`~slimfuse.pipeline.stages.TrainingStageConfig`.
    """
    from slimfuse.pipeline.stages import TrainingStageConfig

    keys = {k: getattr(args, k) for k in TrainingStageConfig.model_fields if k != "seed"}
    return TrainingStageConfig(**keys).to_train_config(seed=args.seed, quiet=args.quiet)


def load_data_arg(args: argparse.Namespace) -> Any:
    from slimfuse.data import load_data

    return load_data(args.data, seed=args.seed, label_column=args.label_column)


def check_out_is_not_an_input(args: argparse.Namespace, *sources: Any) -> None:
    """Refuse an ``--out`` folder that is one of the command's input bundles: writing the new
    model there would replace the one it was made from."""
    from slimfuse.errors import ConfigError

    out = getattr(args, "out", None)
    if not out or not Path(out).is_dir():
        return
    for src in sources:
        if src is not None and Path(str(src)).is_dir() and Path(out).samefile(str(src)):
            raise ConfigError(
                f"--out {out} is the input bundle {str(src)!r}: writing there would replace it; "
                "expected another folder"
            )


def check_out_is_a_file(args: argparse.Namespace, expected: str) -> None:
    """Refuse an ``--out`` that is an existing folder where a file is written (before any work)."""
    from slimfuse.errors import ConfigError

    if args.out and Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a folder: expected the path of {expected} to write")


def load_model_arg(args: argparse.Namespace, data: Any, flag: str = "model") -> Any:
    import torch

    from slimfuse.models.source import check_model_fits, load_model

    check_out_is_not_an_input(args, getattr(args, flag))
    torch.manual_seed(args.seed)  # a fresh model's initialisation follows the seed too
    model = load_model(
        getattr(args, flag),
        data=data,
        weights=args.weights,
        unsafe_pickle=args.unsafe_pickle,
        **parse_kv(args.kw),
    )
    check_model_fits(model, data, resolve_task(args, model))
    return model


def resolve_task(args: argparse.Namespace, model: Any) -> str:
    """``--task``, else the task ``model`` records (an encoder: embedding), else classification.

    Sets ``args.task`` so the rest of the command reads one value.
    """
    if args.task is None:
        from slimfuse.models.source import task_of

        args.task = task_of(model)
    return args.task


def print_rows(rows: list[dict[str, Any]]) -> None:
    from slimfuse.report.write import render_markdown

    print(
        render_markdown(
            {"task": "", "metric": rows[0]["metric"] if rows else "", "stages": rows}
        ).split("\n", 2)[2]
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


def cmd_eval(args: argparse.Namespace) -> int:
    from slimfuse.errors import SlimfuseWarning
    from slimfuse.measuring import measure, write_metrics

    check_out_is_a_file(args, "a metrics .json file")
    data = load_data_arg(args)
    model = load_model_arg(args, data)
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
    from slimfuse.exporting import check_parity, export_onnx

    check_out_is_a_file(args, "an .onnx file")
    data = load_data_arg(args)
    model = load_model_arg(args, data)
    x = data.example_input(1)
    path = export_onnx(model, x, args.out, opset=args.opset, atol=args.atol)
    diff = check_parity(model, path, x, atol=args.atol)
    print(
        f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB); max abs diff vs PyTorch {diff:.2e}"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from slimfuse.pipeline.run import run_recipe

    run_recipe(args.recipe, args.out, quiet=args.quiet, resume=args.resume)
    return 0


DEMO_RECIPE = Path(__file__).parent / "recipes" / "demo.yaml"


def cmd_demo(args: argparse.Namespace) -> int:
    from slimfuse.pipeline.run import run_recipe

    result = run_recipe(DEMO_RECIPE, args.out, quiet=args.quiet, resume=args.resume)
    print_rows(result["stages"])
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
        "--out", required=True, help="bundle folder to write (checkpoints go to OUT.ckpt/)"
    )
    add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval", help="measure a model: metric, size, MACs, latency (torch / ONNX Runtime)"
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument(
        "--engine",
        choices=["torch", "onnxruntime", "both"],
        default="both",
        help="both (default): ONNX Runtime too where the model exports, else torch with a warning",
    )
    p.add_argument("--out", help="write metrics.json here")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export", help="export to ONNX with a checker pass and a parity check")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default: 23 for transformer encoders, where attention exports as one "
        "Attention op; 18 otherwise)",
    )
    p.add_argument(
        "--atol", type=float, default=1e-4, help="parity tolerance vs PyTorch (default 1e-4)"
    )
    add_common(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "run", help="run a YAML recipe: stages in order, measured after each, report"
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument(
        "--out", required=True, help="run folder: one bundle per stage, metrics.json, report"
    )
    p.add_argument(
        "--resume", action="store_true", help="skip finished stages, resume the interrupted one"
    )
    add_common(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the end-to-end demo (what `make demo` runs)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--resume", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    for module in FAMILIES:
        importlib.import_module(module).add_commands(sub)
    for command in sub.choices.values():  # --epoch must not silently mean --epochs
        command.allow_abbrev = False
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (tests and redirections swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def show_progress(on: bool) -> None:
    """Progress lines of the long library steps (the ``slimfuse`` logger at INFO) on stderr."""
    logger = logging.getLogger("slimfuse")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # ONNX Runtime's quantizers configure the root logger
    logger.setLevel(logging.INFO if on else logging.WARNING)


@contextlib.contextmanager
def one_line_warnings(command: str) -> Iterator[None]:
    """Warnings as ``slimfuse CMD: warning: ...`` on stderr, without file, line and source."""
    shown = warnings.showwarning

    def show(message: Any, *_args: Any, **_kwargs: Any) -> None:
        print(f"slimfuse {command}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse; an unknown flag is reported with its command's usage, not the top-level one."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def os_error_line(exc: OSError) -> str:
    """``cannot write 'runs/x': No space left on device`` from an ``OSError``."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what


def main(argv: Sequence[str] | None = None) -> int:
    from slimfuse.errors import SlimfuseError, SlimfuseWarning
    from slimfuse.models.code import trusting

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
