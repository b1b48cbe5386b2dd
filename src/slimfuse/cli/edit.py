"""The commands that edit a model's structure, then recover (``prune``, ``factorize``): one
flag layout and one load / edit / measure / save sequence; each family's configs, checks and
words are passed in (:class:`EditCommand`).

The flags are the family's fields and recovery's training flags: the amounts (the first one
of each method in a group of which one is given; the amount given picks the method), the
method settings, the layer lists and the training flags with the family's recovery defaults.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from slimfuse.cli.common import add_common, add_data_args, add_model_args, add_out
from slimfuse.config import Family, TrainConfig, _default_text, add_flags, flag_name, help_text
from slimfuse.errors import ConfigError

LISTS = ("targets", "ignore")  # a list: --ignore a b, or repeated: --ignore a --ignore b


def setting_fields(
    family: Family, amounts: Sequence[str]
) -> tuple[dict[str, FieldInfo], dict[str, str]]:
    """Every method's settings but the amounts, for their flags: where methods define a setting
    differently (pruning's ``importance``, ``global_pruning``), the help gives each method's
    description and default."""
    fields: dict[str, FieldInfo] = {}
    defaults: dict[str, str] = {}
    for name, info in family.fields().items():
        if name in amounts or name == family.key:
            continue
        per = {m: family.variants[m].model_fields[name] for m in family.readers(name)}
        texts = {m: f.description for m, f in per.items()}
        if len(set(texts.values())) > 1:
            info = copy.copy(info)
            info.description = "; ".join(f"{m}: {t}" for m, t in texts.items())
        shown = {m: _default_text(f) for m, f in per.items()}
        if len(set(shown.values())) > 1:
            defaults[name] = ", ".join(f"{d} for {m}" for m, d in shown.items())
        fields[name] = info
    return fields, defaults


@dataclass(frozen=True)
class EditCommand:
    """One structural edit's command: ``name`` is the command, the ``slimfuse.<name>`` verb it
    calls and the stage its bundle records."""

    name: str
    family: Family
    check: Callable[[Any, TrainConfig], None]  # config x recovery checks, before loading
    amounts: dict[str, str]  # amount -> the method it names
    summary: str  # the one-line help
    description: str
    choose: str  # the amounts' group: "what to prune"
    method_help: str  # the --method flag's help, before its default
    data_for: tuple[str, ...]  # the methods that need --data even without recovery epochs
    no_data: str  # the error when they, or recovery epochs, have none
    report: Callable[[Any], str]  # the edited model -> its summary line (may print rows first)
    aliases: tuple[str, ...] = ()

    def add(self, sub: argparse._SubParsersAction) -> None:
        """The command's parser: model and data flags, the family's, recovery's, --out."""
        family = self.family
        p = sub.add_parser(
            self.name, aliases=list(self.aliases), help=self.summary, description=self.description
        )
        add_model_args(p)
        add_data_args(p, required=False)
        fields = family.fields()
        what = p.add_argument_group(f"{self.choose} (one of; it picks the method)")
        what.add_argument(
            flag_name(family.key),
            choices=family.names(),
            default=None,
            help=f"{self.method_help} (default: the one the amount given names)",
        )
        firsts: dict[str, str] = {}  # method -> its first amount
        for amount, method in self.amounts.items():
            firsts.setdefault(method, amount)
        first = list(firsts.values())
        add_flags(
            what.add_mutually_exclusive_group(),
            {k: fields[k] for k in first},
            readers=family.readers,
            defaults={k: None for k in first if fields[k].is_required()},  # not required: one of
        )
        rest = {k: fields[k] for k in self.amounts if k not in first}
        add_flags(what, rest, readers=family.readers)
        own, defaults = setting_fields(family, list(self.amounts))
        add_flags(
            p,
            {k: f for k, f in own.items() if k not in LISTS},
            readers=family.readers,
            group="method settings",
            defaults=defaults,
        )
        readers = family.readers(LISTS[0])
        some = readers if len(readers) < len(family.names()) else None  # named when not all
        layers = p.add_argument_group(f"layers ({', '.join(some)})" if some else "layers")
        for name in LISTS:
            layers.add_argument(
                f"--{name}",
                dest=name,
                default=None,
                nargs="+",
                action="extend",
                metavar=name.upper(),
                help=help_text(own[name], some),
            )
        add_flags(
            p,
            TrainConfig.model_fields,
            skip=("seed", "quiet"),
            readers=lambda _: [],
            group="recovery training (--epochs 0: none)",
            defaults=next(iter(family.trains.values())),
        )
        add_out(p)
        add_common(p)
        p.set_defaults(func=self.run)

    def run(self, args: argparse.Namespace) -> int:
        """Check the flags, load, edit and recover, record, measure (torch), save, summarise."""
        from slimfuse import api
        from slimfuse.cli.common import load_data_arg, load_model_arg, print_rows, text_data_arg
        from slimfuse.measuring import measure
        from slimfuse.models.bundle import save
        from slimfuse.models.source import record

        cfg, train = self.family.from_flags(args, seed=args.seed, quiet=args.quiet)  # unloaded
        assert train is not None  # every method recovers with the one loop
        self.check(cfg, train)
        data = load_data_arg(args) if args.data else None
        if data is None and (train.epochs or getattr(cfg, self.family.key) in self.data_for):
            raise ConfigError(self.no_data)
        model = load_model_arg(args, data)
        data = text_data_arg(args, model, data, train_targets=train.epochs > 0)
        edited = getattr(api, self.name)(
            model, cfg, data, train=train, task=args.task, checkpoint_dir=Path(f"{args.out}.ckpt")
        )
        settings = {k: v for k, v in vars(args).items() if k not in ("func",)}
        record(edited, lineage={"stage": self.name, "config": settings})
        line = self.report(edited)
        metrics = None
        if data is not None:
            rows = measure(
                edited, data, args.task, stage=self.name, engines=["torch"], threads=args.threads
            )
            metrics = {"task": args.task, "metric": rows[0]["metric"], "stages": rows}
            print_rows(rows)
        save(edited, args.out, metrics=metrics)
        print(f"{line}; bundle: {args.out}")
        return 0
