"""The command line says what every flag does and its default, and its flags are the configs'
fields: the help, the recipes and the library read one set of names."""

from __future__ import annotations

import argparse

import pytest

from slimfuse.cli import build_parser
from slimfuse.config import TRAIN_KEYS, flag_name


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


COMMANDS = sorted(_commands())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_has_a_description_and_a_default(command):
    parser = _commands()[command]
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue  # positionals; -h
        if isinstance(action, argparse._HelpAction):
            continue
        text = action.help or ""
        flag = action.option_strings[-1]
        assert len(text.split()) >= 2, f"{command} {flag}: no description"
        assert "(default: " in text or "(required)" in text, f"{command} {flag}: {text!r}"


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _family_commands() -> dict[str, object]:
    from slimfuse.distillation.config import DistillConfig
    from slimfuse.fusion.config import FuseConfig, MergeConfig
    from slimfuse.lowrank.config import LowRankConfig
    from slimfuse.pruning.config import PruneConfig
    from slimfuse.quantization.config import QuantConfig

    return {
        "quantize": QuantConfig,
        "prune": PruneConfig,
        "distill": DistillConfig,
        "fuse": FuseConfig,
        "merge": MergeConfig,
        "factorize": LowRankConfig,
    }


@pytest.mark.parametrize("command", sorted(_family_commands()))
def test_the_flags_are_the_config_fields(command):
    family = _family_commands()[command]
    flags = _flags(_commands()[command])
    fields = set(family.fields())  # type: ignore[attr-defined]
    missing = sorted(flag_name(f) for f in fields if flag_name(f) not in flags)
    assert not missing, f"{command}: config fields without a flag: {missing}"
    if family.trains:  # type: ignore[attr-defined]
        assert {flag_name(k) for k in TRAIN_KEYS} <= flags


def test_the_training_flags_are_the_train_config_fields():
    flags = _flags(_commands()["train"])
    assert {flag_name(k) for k in TRAIN_KEYS} <= flags
    assert "--restore-best" in flags and "--no-restore-best" in flags
