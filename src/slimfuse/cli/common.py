"""What every command shares: the model, data and training flags, loading them, printing.

The technique commands (:mod:`slimfuse.cli.prune`, ...) and the core ones use these; nothing
here imports torch at module level, so ``slimfuse --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from slimfuse.config import TRAIN_KEYS, TrainConfig, add_flags, given, validate


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
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars or per-epoch lines (default: off)"
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks (with their causes) instead of one-line errors (default: off)",
    )
    p.add_argument(
        "--trust-code",
        action="store_true",
        help="allow model and data sources that are code (file.py:fn, module:fn, also inside "
        "bundles and recipes): they run. Only for code you trust (default: off)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a warning (nothing pruned, a tiny validation split, ...) stops the command with "
        "exit code 1 (default: off)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="threads for latency measurement (default: 1)"
    )


def add_out(p: argparse.ArgumentParser, what: str = "bundle folder to write") -> None:
    """``--out``: where the command writes its bundle (required)."""
    p.add_argument("--out", required=True, help=f"{what} (required)")


def add_model_args(
    p: argparse.ArgumentParser, flag: str = "--model", required: bool = True
) -> None:
    p.add_argument(
        flag,
        required=required,
        help="zoo name (mnist1d_cnn, mlp, lenet300, resnet1d, gru, minilm), file.py:fn, module:fn, "
        "a bundle folder or a Hugging Face folder"
        + (" (required)" if required else " (default: none)"),
    )
    p.add_argument(
        "--kw",
        action="append",
        metavar="KEY=VALUE",
        help="keyword argument for the model builder, repeatable (default: none)",
    )
    p.add_argument(
        "--weights", help="weights for the model: .safetensors, or a state-dict .pt (default: none)"
    )
    p.add_argument(
        "--unsafe-pickle",
        action="store_true",
        help="allow .pt files that need full pickle (runs code from the file: only for files you "
        "trust) (default: off)",
    )


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data",
        required=required,
        help="mnist1d, digits, path.npz, path.csv or file.py:fn; text for encoders: notes.txt/.md "
        "(a paragraph per line), a folder of .txt/.md (paragraphs between blank lines), a .jsonl "
        'with a "text" field per line, or pydocs'
        + (" (required)" if required else " (default: none)"),
    )
    p.add_argument("--label-column", default="label", help="label column of a CSV (default: label)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="text data: tokens an encoder reads per paragraph, the rest cut off (default: 128)",
    )
    p.add_argument(
        "--task",
        default=None,
        help="classification, regression, embedding or a registered task (default: the one "
        "the model records, embedding for an encoder; else classification)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for initialisation and shuffling; the split follows --split-seed (default: 0)",
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="seed of the train/val/test split (stratified by class); models to fuse or distill "
        "from must share it (default: 0)",
    )
    p.add_argument(
        "--no-standardize",
        action="store_true",
        help=".csv/.npz data: do not standardize the features (by default the models built for "
        "it standardize their raw inputs with the train split's mean and std) (default: off)",
    )


def add_training_args(
    p: argparse.ArgumentParser,
    *,
    defaults: dict[str, Any] | None = None,
    what: str = "",
    resume: bool = True,
) -> None:
    """The one training loop's settings (:class:`~slimfuse.config.TrainConfig`'s fields as
    flags), shared by every command that trains.

    ``defaults`` are the command's own (its recipe stage's, e.g. ``fuse``: 10 epochs), ``what``
    names what the loop trains there when it is not the model itself (the head, the folds).
    """
    title = f"training ({what})" if what else "training"
    add_flags(p, TrainConfig.model_fields, skip=("seed", "quiet"), group=title, defaults=defaults)
    if resume:
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue from OUT.ckpt/checkpoint.pt (default: off)",
        )


def train_config_arg(
    args: argparse.Namespace, defaults: dict[str, Any] | None = None
) -> TrainConfig:
    """The :class:`~slimfuse.config.TrainConfig` of :func:`add_training_args`' flags."""
    values = {**(defaults or {}), **given(args, TRAIN_KEYS)}
    return validate(TrainConfig, {**values, "seed": args.seed, "quiet": args.quiet}, flags=True)


def load_data_arg(args: argparse.Namespace) -> Any:
    from slimfuse.data import load_data

    return load_data(
        args.data,
        split_seed=args.split_seed,
        standardize=False if args.no_standardize else None,
        label_column=args.label_column,
        max_length=args.max_length,
        # regression: whole-number targets are amounts, not classes
        task=getattr(args, "task", None) or _bundle_task(getattr(args, "model", None)),
    )


def _bundle_task(source: Any) -> str | None:
    """The task a bundle folder records (read from its ``slimfuse.json`` alone), else
    ``None``: the data of a command on a regression bundle reads as regression without
    ``--task``."""
    if not isinstance(source, str) or not (Path(source) / "slimfuse.json").is_file():
        return None
    from slimfuse.models.bundle import read_meta

    task = read_meta(source)["model"].get("task")
    return task if isinstance(task, str) else None


def text_data_arg(
    args: argparse.Namespace,
    model: Any,
    data: Any,
    *,
    train_targets: bool = True,
    source: Any = None,
    what: str | None = None,
) -> Any:
    """``data`` as ``model`` (given as ``source``, default ``--model``) reads it: text data
    becomes token data, tokenized by the model's tokenizer (a Hugging Face folder's own, or the
    copy a bundle of it keeps; else all-MiniLM-L6-v2's) with the model's embeddings as
    targets; other data is returned as is.
    ``train_targets=False`` skips embedding the train split (when nothing trains on it)."""
    from slimfuse.data.text import is_text

    if not is_text(data):
        return data
    from slimfuse.distillation.text import encode_text

    source = args.model if source is None else source
    return encode_text(
        model,
        data,
        train_targets=train_targets,
        what=what or f"the model {str(source)!r}",
    )


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

    from slimfuse.models.resolve import load_model
    from slimfuse.models.source import check_model_fits

    check_out_is_not_an_input(args, getattr(args, flag))
    torch.manual_seed(args.seed)  # a fresh model's initialisation follows the seed too
    model = load_model(
        getattr(args, flag),
        data=data,
        weights=args.weights,
        unsafe_pickle=args.unsafe_pickle,
        **parse_kv(args.kw),
    )
    check_model_fits(
        model, data, resolve_task(args, model), what=f"the model {getattr(args, flag)!r}"
    )
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


def os_error_line(exc: OSError) -> str:
    """``cannot write 'runs/x': No space left on device`` from an ``OSError``."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {what}"
    return what
