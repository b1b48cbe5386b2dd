"""One config per pruning method: the keys each reads, the same refusals in the library, a recipe
and the command line, the verb's contract (a new model; the caller's untouched), the layering."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
import torch

import slimfuse
from slimfuse.cli import build_parser, main
from slimfuse.config import TRAIN_KEYS, TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.pipeline.recipe import parse_recipe
from slimfuse.pruning.api import prune as prune_alone
from slimfuse.pruning.config import (
    PRUNE_TRAINING,
    Channels,
    Magnitude,
    PruneConfig,
    Threshold,
    Transformer,
)
from tests.helpers import ROOT, TINY_BERT, bert_tokens
from tests.pruning.nets import tiny_data

ONE_EPOCH = TrainConfig(epochs=1, lr=1e-3, batch_size=32, restore_best=False, quiet=True)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _mlp(data):
    torch.manual_seed(0)
    return slimfuse.build_model("mlp", data=data, hidden=[32, 32])


# -- the configs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "method"),
    [
        ({"sparsity": 0.9}, Magnitude),
        ({"threshold": 0.02}, Threshold),
        ({"channels": 0.5, "importance": "taylor"}, Channels),
        ({"ffn": 0.5}, Transformer),
        ({"heads": 0.25}, Transformer),
        ({"ffn": 0.5, "heads": 0.25, "importance": "activation"}, Transformer),
        ({"method": "channels", "channels": 0.5}, Channels),
    ],
)
def test_the_amount_given_picks_the_method(values, method) -> None:
    cfg = PruneConfig.parse(values)
    assert type(cfg) is method and slimfuse.PruneConfig is PruneConfig
    assert PruneConfig.parse(cfg.to_dict()) == cfg  # what a bundle's lineage holds reads back
    assert PruneConfig(**values) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give exactly one of sparsity, threshold, channels or ffn/heads; got none"),
        ({"threshold": 0.1, "heads": 0.5}, "got threshold, heads"),
        (
            {"sparsity": 0.5, "importance": "taylor"},
            "importance does not apply to method 'magnitude'; it is for channels, transformer",
        ),
        (
            {"sparsity": 0.5, "iterative_steps": 3},
            "iterative_steps does not apply to method 'magnitude'; it is for channels",
        ),
        (
            {"ffn": 0.5, "targets": ["re:.*"]},
            "targets does not apply to method 'transformer'; it is for magnitude, threshold, "
            "channels",
        ),
        (
            {"threshold": 0.1, "global_pruning": False},
            "global_pruning does not apply to method 'threshold'; it is for magnitude, channels",
        ),
        (
            {"method": "magnitude", "channels": 0.5},
            "channels does not apply to method 'magnitude'; it is for channels",
        ),
        ({"method": "transformer"}, "give ffn and/or heads"),
        ({"channels": 0.5, "importance": "l3"}, "importance 'l3': expected one of bn, l1, l2"),
        ({"ffn": 0.5, "importance": "bn"}, "importance 'bn': Input should be 'l1', 'l2'"),
        ({"sparsity": 1.0}, "sparsity 1.0: Input should be less than 1"),
        ({"channels": 0.5, "finetune_epochs": 3}, "finetune_epochs is now epochs"),
        ({"sparsity": 0.5, "schedule": "oneshot"}, "schedule 'oneshot' is now sparsity_schedule"),
        ({"channels": 0.5, "epochs": 3}, "training settings go in a TrainConfig"),
    ],
)
def test_a_key_the_method_does_not_read_is_refused(values, message) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PruneConfig.parse(values)


def test_a_class_has_only_the_fields_its_method_reads() -> None:
    with pytest.raises(ConfigError, match="importance 'l1': unknown setting"):
        Magnitude(sparsity=0.5, importance="l1")
    assert set(Threshold.model_fields) == {"method", "threshold", "targets", "ignore", "recovery"}
    assert "targets" not in Transformer.model_fields
    assert Magnitude(sparsity=0.5).global_pruning and not Channels(channels=0.5).global_pruning


@pytest.mark.parametrize(
    ("cfg", "train", "message"),
    [
        (Magnitude(sparsity=0.5), None, "sparsity_schedule 'agp' prunes gradually"),
        (
            Magnitude(sparsity=0.5),
            TrainConfig(epochs=2),  # restore_best: an earlier, denser epoch
            "expected restore_best off and no patience",
        ),
        (
            Magnitude(sparsity=0.5),
            TrainConfig(epochs=2, restore_best=False, patience=1),
            "expected restore_best off and no patience",
        ),
        (Channels(channels=0.5, recovery="distill"), None, "recovery 'distill' trains"),
    ],
)
def test_checks_across_config_and_training(data, cfg, train, message) -> None:
    with pytest.raises(ConfigError, match=message):
        slimfuse.prune(_mlp(data), cfg, data, train=train)


def test_distill_without_an_objective_says_to_use_slimfuse_prune(data) -> None:
    cfg = Channels(channels=0.5, recovery="distill")
    with pytest.raises(ConfigError, match=r"use slimfuse\.prune, which passes the distillation"):
        prune_alone(_mlp(data), cfg, data, train=ONE_EPOCH)
    seen = []

    def mine(teacher, task):
        seen.append((teacher.training, task.name))
        return None  # the task loss: distillation in name only

    small = prune_alone(_mlp(data), cfg, data, train=ONE_EPOCH, teacher_objective=mine)
    assert seen == [(False, "classification")] and small.net[0].out_features == 16


# -- the verb returns a new model ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [
        Magnitude(sparsity=0.5, recovery="distill"),
        Magnitude(sparsity=0.5, sparsity_schedule="oneshot"),
        Threshold(threshold=0.05),
        Channels(channels=0.5, recovery="distill", importance="taylor", iterative_steps=2),
    ],
    ids=lambda c: c.method,
)
def test_prune_leaves_the_callers_model_untouched(data, cfg) -> None:
    model = _mlp(data).train()
    model.net[0].requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = slimfuse.prune(model, cfg, data, train=ONE_EPOCH)
    assert pruned is not model and model.training
    assert all(m.training for m in model.modules())
    assert not model.net[0].weight.requires_grad and model.net[2].weight.requires_grad
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    x = data.example_input(4)
    assert not torch.equal(pruned.eval()(x), model.eval()(x))


def test_transformer_pruning_leaves_the_callers_encoder_untouched() -> None:
    torch.manual_seed(0)
    bert = slimfuse.build_model("hf_encoder", config=TINY_BERT).train()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    cfg = Transformer(ffn=0.5, heads=0.25, importance="activation")
    small = slimfuse.prune(bert, cfg, inputs=[bert_tokens()])
    assert bert.training and all(torch.equal(before[k], v) for k, v in bert.state_dict().items())
    assert small.encoder.config.intermediate_size == 32


# -- the recipe stage and the command -----------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        (
            "{stage: prune, sparsity: 0.5, importance: taylor, epochs: 2}",
            "importance does not apply to method 'magnitude'; it is for channels, transformer",
        ),
        ("{stage: prune, ffn: 0.5, ignore: [x]}", "ignore does not apply to method 'transformer'"),
        ("{stage: prune, sparsity: 0.5}", "sparsity_schedule 'agp' prunes gradually"),
        ("{stage: prune, channels: 0.5, epochs: -1}", "epochs -1: Input should be greater"),
        ("{stage: prune, channels: 0.5, finetune_epochs: 3}", "finetune_epochs is now epochs"),
    ],
)
def test_a_recipe_stage_is_refused_before_anything_runs(stage, message) -> None:
    with pytest.raises(ConfigError, match=rf"stage 'prune' \(prune\): {message}"):
        parse_recipe(f"data: digits\nstages: [{{stage: train}}, {stage}]")


def test_a_recipe_stage_is_the_config_and_its_training() -> None:
    from slimfuse.pipeline.prune import PruneStage

    stage = PruneStage.parse({"channels": 0.25, "epochs": 30, "lr": 0.003, "recovery": "distill"})
    stage.check()
    assert stage.method == Channels(channels=0.25, recovery="distill")
    train = PruneConfig.training(stage.method, {"epochs": 30, "lr": 0.003})
    assert train == TrainConfig(**{**PRUNE_TRAINING, "epochs": 30, "lr": 0.003})
    assert stage.to_dict()["epochs"] == 30 and stage.to_dict()["method"] == "channels"


PRUNE = ["prune", "--model", "mlp", "--data", "digits", "--out", "x"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--sparsity", "0.5", "--importance", "taylor"],
            "--importance does not apply to --method 'magnitude'; it is for channels, transformer",
        ),
        (
            ["--channels", "0.5", "--sparsity-schedule", "oneshot"],
            "--sparsity-schedule does not apply to --method 'channels'; it is for magnitude",
        ),
        (
            ["--heads", "0.5", "--targets", "a"],
            "--targets does not apply to --method 'transformer'",
        ),
        ([], "give exactly one of --sparsity, --threshold, --channels or --ffn/--heads; got none"),
        (["--sparsity", "0.5"], "sparsity_schedule 'agp' prunes gradually during fine-tuning"),
        (["--channels", "0.5", "--recovery", "distill"], "recovery 'distill' trains"),
    ],
)
def test_the_command_refuses_in_one_line(flags, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main([*PRUNE, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def _prune_parser():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["prune"]


def test_the_help_gives_every_flag_a_description_and_its_default() -> None:
    parser = _prune_parser()
    keys = {*PruneConfig.fields(), *TRAIN_KEYS}
    flags = {a.dest: a for a in parser._actions if a.dest in keys}
    assert set(flags) == keys
    for name, action in flags.items():
        text = action.help or ""
        assert "(default: " in text and len(text.split("(default: ")[0].strip()) > 10, name
    helptext = parser.format_help()
    assert "(default: on for magnitude, off for channels)" in " ".join(helptext.split())
    assert "--epochs N" in helptext and "(default: 0)" in helptext


def test_the_command_builds_the_config_a_recipe_would() -> None:
    flags = ["--model", "m", "--out", "o", "--channels", "0.5", "--ignore", "a", "b"]
    flags += ["--ignore", "c", "--epochs", "3", "--lr", "0.01", "--no-global-pruning"]
    args = _prune_parser().parse_args([*flags, "--importance", "l2"])
    cfg, train = PruneConfig.from_flags(args, seed=4, quiet=True)
    stage = {"channels": 0.5, "ignore": ["a", "b", "c"], "global_pruning": False}
    assert cfg == PruneConfig.parse({**stage, "importance": "l2"})
    assert train == TrainConfig(**{**PRUNE_TRAINING, "epochs": 3, "lr": 0.01}, seed=4, quiet=True)


# -- layering -----------------------------------------------------------------------------------


def test_pruning_imports_no_other_technique_and_its_configs_no_torch() -> None:
    script = """
import sys
import slimfuse.pruning.config
assert "torch" not in sys.modules, "the configs import torch"
import slimfuse.pruning.api, slimfuse.pruning.schedule, slimfuse.pruning.structured
import slimfuse.pruning.transformer, slimfuse.pruning.sparse
others = ("distillation", "quantization", "fusion", "cli", "pipeline")
bad = [m for m in sys.modules if m.split(".")[1:2] and m.split(".")[1] in others
       and m.startswith("slimfuse.")]
assert not bad, bad
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
