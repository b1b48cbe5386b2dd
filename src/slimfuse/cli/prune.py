"""``slimfuse prune``: the flags are :data:`~slimfuse.pruning.config.PruneConfig`'s fields and
recovery's training flags; the amount given (``--sparsity``, ``--threshold``, ``--channels``,
``--ffn`` / ``--heads``) picks the method."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from pydantic.fields import FieldInfo

from slimfuse.cli.common import add_common, add_data_args, add_model_args, add_out
from slimfuse.config import TrainConfig, _default_text, add_flags, flag_name, help_text
from slimfuse.errors import ConfigError
from slimfuse.pruning.config import AMOUNTS, PRUNE_TRAINING, PruneConfig, check_recovery


def _settings() -> tuple[dict[str, FieldInfo], dict[str, str]]:
    """Every method's settings but the amounts, for their flags: where methods define a setting
    differently (``importance``, ``global_pruning``), the help gives each method's description
    and default."""
    fields: dict[str, FieldInfo] = {}
    defaults: dict[str, str] = {}
    for name, info in PruneConfig.fields().items():
        if name in AMOUNTS or name == PruneConfig.key:
            continue
        per = {m: PruneConfig.variants[m].model_fields[name] for m in PruneConfig.readers(name)}
        texts = {m: f.description for m, f in per.items()}
        if len(set(texts.values())) > 1:
            info = copy.copy(info)
            info.description = "; ".join(f"{m}: {t}" for m, t in texts.items())
        shown = {m: _default_text(f) for m, f in per.items()}
        if len(set(shown.values())) > 1:
            defaults[name] = ", ".join(f"{d} for {m}" for m, d in shown.items())
        fields[name] = info
    return fields, defaults


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="prune a model (unstructured sparsity, channels, or transformer FFN/heads) and recover",
        description="Prune a model, then recover (--epochs). The amount given picks the method: "
        "--sparsity (magnitude), --threshold, --channels, --ffn/--heads (transformer). Each flag "
        "says which methods read it; a flag the method does not read is an error.",
    )
    add_model_args(p)
    add_data_args(p, required=False)
    fields = PruneConfig.fields()
    what = p.add_argument_group("what to prune (one of; it picks the method)")
    what.add_argument(
        flag_name(PruneConfig.key),
        choices=PruneConfig.names(),
        default=None,
        help="the pruning method (default: the one the amount given names)",
    )
    amounts = what.add_mutually_exclusive_group()
    add_flags(
        amounts,
        {k: fields[k] for k in AMOUNTS if k != "heads"},
        readers=PruneConfig.readers,
        defaults={"sparsity": None, "threshold": None, "channels": None},  # not required: one of
    )
    add_flags(what, {"heads": fields["heads"]}, readers=PruneConfig.readers)
    settings, defaults = _settings()
    lists = ("targets", "ignore")
    add_flags(
        p,
        {k: f for k, f in settings.items() if k not in lists},
        readers=PruneConfig.readers,
        group="method settings",
        defaults=defaults,
    )
    layers = p.add_argument_group("layers (magnitude, threshold, channels)")
    for name in lists:  # a list: --ignore a b, or repeated: --ignore a --ignore b
        layers.add_argument(
            f"--{name}",
            dest=name,
            default=None,
            nargs="+",
            action="extend",
            metavar=name.upper(),
            help=help_text(settings[name], PruneConfig.readers(name)),
        )
    add_flags(
        p,
        TrainConfig.model_fields,
        skip=("seed", "quiet"),
        readers=lambda _: [],
        group="recovery training (--epochs 0: none)",
        defaults=PRUNE_TRAINING,
    )
    add_out(p)
    add_common(p)
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from slimfuse.api import prune
    from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows, text_data_arg
    from slimfuse.measuring import measure
    from slimfuse.models.bundle import save
    from slimfuse.models.source import record
    from slimfuse.pruning.sparse import storage_report

    cfg, train = PruneConfig.from_flags(args, seed=args.seed, quiet=args.quiet)  # before loading
    assert train is not None  # every method recovers with the one loop
    check_recovery(cfg, train)
    data = load_data_arg(args) if args.data else None
    if data is None and (train.epochs or cfg.method != "transformer"):
        raise ConfigError("prune needs --data (example inputs and fine-tuning data)")
    model = load_model_arg(args, data)
    data = text_data_arg(args, model, data, train_targets=train.epochs > 0)
    pruned = prune(
        model, cfg, data, train=train, task=args.task, checkpoint_dir=Path(f"{args.out}.ckpt")
    )
    settings = {k: v for k, v in vars(args).items() if k not in ("func",)}
    record(pruned, lineage={"stage": "prune", "config": settings})
    rep = storage_report(pruned)
    metrics = None
    if data is not None:
        rows = measure(
            pruned, data, args.task, stage="prune", engines=["torch"], threads=args.threads
        )
        metrics = {"task": args.task, "metric": rows[0]["metric"], "stages": rows}
        print_rows(rows)
    save(pruned, args.out, metrics=metrics)
    print(
        f"params {rep['params']:,} ({rep['nonzero_params']:,} non-zero); weights "
        f"{rep['dense_bytes'] / 1024:.1f} KiB dense, {rep['encoded_bytes'] / 1024:.1f} KiB stored; "
        f"bundle: {args.out}"
    )
    return 0
