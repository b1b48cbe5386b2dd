"""The fusion and merging configs: an option a method does not read is refused (library, recipe,
command line) naming the methods that read it; the verbs leave the caller's models untouched."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

import slimfuse
from slimfuse.cli import main
from slimfuse.errors import ConfigError
from slimfuse.fusion import (
    FuseConfig,
    Greedy,
    HeadFusion,
    Mean,
    MeanFusion,
    MergeConfig,
    Stack,
    Ties,
    Uniform,
    Weighted,
)
from slimfuse.pipeline.recipe import parse_recipe
from slimfuse.training import TrainConfig

TRAINS = re.escape("weighted and stack with cv K (every member retrained per fold), head")


def test_family_picks_the_method_and_names_who_reads_a_key():
    assert FuseConfig(method="weighted", cv=5) == Weighted(cv=5)
    assert FuseConfig.parse({}) == Mean()  # the default method
    assert MergeConfig.parse({}) == Greedy()
    assert MergeConfig.parse({"method": "ties", "density": 0.5}) == Ties(density=0.5)
    refused = [
        ("mean", "cv", "weighted, stack"),
        ("stack", "shrink", "weighted"),
        ("head", "weights", "mean, weighted, vote, soft-vote"),
        ("weighted", "features", "stack"),
        ("vote", "hidden", "head"),
        ("soft-vote", "epochs", "weighted, stack, head"),
    ]
    for method, key, readers in refused:
        with pytest.raises(
            ConfigError, match=rf"^{key} does not apply to method '{method}'; it is for {readers}$"
        ):
            FuseConfig.parse({"method": method, key: 1})
    with pytest.raises(
        ConfigError, match=r"^density does not apply to method 'uniform'; it is for"
    ):
        MergeConfig.parse({"method": "uniform", "density": 0.5})
    with pytest.raises(ConfigError, match=r"^unknown setting depth for method 'greedy'; it has no"):
        MergeConfig.parse({"method": "greedy", "depth": 1})
    with pytest.raises(ConfigError, match=r"^cv 5: unknown setting; expected some of "):
        Mean(cv=5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "weighted", "weights": [1, 2], "cv": 3}, r"^cv 3 learns the weights, but"),
        ({"method": "weighted", "weights": [1, 2], "shrink": 0}, r"^shrink applies to learned"),
        ({"method": "weighted", "shrink": 0.5, "shrink_folds": 3}, r"^shrink_folds applies to"),
        ({"method": "stack", "with_val": True}, r"^with_val adds the validation predictions"),
        ({"method": "head", "layer": "linear"}, r"^layer 'linear' applies to on 'features'"),
        ({"method": "mean", "weights": [0, 0]}, r"^weights \[0.0, 0.0\] sum to 0"),
        ({"method": "mean", "weights": [1, -1]}, r"^weights.1: Input should be greater than"),
        ({"method": "stack", "cv": 1}, r"^cv 1: Input should be greater than or equal to 2$"),
        ({"method": "weighted", "shrink": 2}, r"^shrink 2: Input should be less than or equal"),
        ({"method": "head", "hidden": -1}, r"^hidden -1: Input should be greater than or equal"),
    ],
)
def test_settings_that_cannot_go_together_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        FuseConfig.parse(values)


def test_the_verbs_refuse_what_the_method_does_not_read(members, mnist1d):
    with pytest.raises(
        ConfigError, match=r"^cv does not apply to method 'mean'; it is for weighted"
    ):
        slimfuse.fuse(members, {"method": "mean", "cv": 5})
    with pytest.raises(
        ConfigError,
        match=rf"^train= applies to the methods that train: {TRAINS}; got method 'weighted' "
        r"with cv 'prefit'$",
    ):
        slimfuse.fuse(members, Weighted(), mnist1d, train=TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match=r"^train= applies .*; got method 'mean'$"):
        slimfuse.fuse(members, Mean(), train=TrainConfig(epochs=1))
    with pytest.raises(ConfigError, match=r"^epochs: training settings go in a TrainConfig"):
        slimfuse.fuse(members, {"method": "head", "epochs": 1}, mnist1d)
    with pytest.raises(ConfigError, match=r"^density does not apply to method 'greedy'; it is for"):
        slimfuse.merge(members, {"method": "greedy", "density": 0.5}, mnist1d)
    with pytest.raises(
        ConfigError, match=r"^parent= applies to method 'ties' .*got method 'uniform'"
    ):
        slimfuse.merge(members, Uniform(), mnist1d, parent=members[0][1])
    with pytest.raises(ConfigError, match=r"^Stack is not a MergeConfig"):
        slimfuse.merge(members, Stack(), mnist1d)


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ("{stage: fuse, method: stack, hidden: 4}", r"hidden does not apply to method 'stack'"),
        (
            "{stage: fuse, method: weighted, epochs: 3}",
            rf"epochs applies to the methods that train: {TRAINS}; got method 'weighted' with "
            r"cv 'prefit'$",
        ),
        ("{stage: fuse, method: mean, lr: 0.1}", r"lr does not apply to method 'mean'; it is for"),
        ("{stage: fuse, method: vote, seed: 1}", r"unknown setting seed for method 'vote'"),
        ("{stage: merge, method: uniform, scale: 2}", r"scale does not apply to method 'uniform'"),
        ("{stage: merge, method: greedy, parent: a}", r"parent does not apply to method 'greedy'"),
        ("{stage: merge, method: ties}", r"ties needs parent"),
    ],
)
def test_a_recipe_stage_is_refused_before_anything_runs(stage, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe(f"stages: [{stage}]")


def test_a_stage_that_trains_reads_the_training_keys():
    from slimfuse.pipeline.fuse import FuseStage, MergeStage

    stage = FuseStage.parse({"members": "m", "method": "stack", "cv": 3, "epochs": 2})
    assert stage.method == Stack(cv=3) and stage.members == "m"
    ctx = type("Ctx", (), {"seed": 4, "quiet": True})()
    # members retrained per fold: the keys given go over the members' own recorded settings
    # (slimfuse.fuse; the fuse defaults for members that record none)
    assert stage.train_config(ctx) == {"epochs": 2, "seed": 4, "quiet": True}
    head = FuseStage.parse({"members": "m", "method": "head", "epochs": 2}).train_config(ctx)
    assert (head.epochs, head.lr, head.seed) == (2, 1e-3, 4)  # the fuse defaults, then keys
    assert FuseStage.parse({"method": "weighted"}).train_config(ctx) is None
    assert stage.to_dict() == {"members": "m", **Stack(cv=3).to_dict(), "epochs": 2}
    merge = MergeStage.parse({"method": "ties", "parent": "base", "density": 0.5})
    assert merge.method == Ties(density=0.5) and merge.parent == "base"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["merge", "--method", "uniform", "--density", "0.5"],
            "--density does not apply to --method 'uniform'; it is for ties",
        ),
        (
            ["merge", "--parent", "p", "--method", "greedy"],
            "--parent does not apply to --method 'greedy'; it is for ties",
        ),
        (
            ["merge", "--method", "ties"],
            "--method ties needs --parent MODEL: the model the ingredients were fine-tuned from",
        ),
        (
            ["fuse", "--method", "stack", "--shrink", "0"],
            "--shrink does not apply to --method 'stack'; it is for weighted",
        ),
        (
            ["fuse", "--method", "head", "--layer", "fc"],
            "layer 'fc' applies to on 'features' or 'both'; got on 'logits'",
        ),
    ],
)
def test_a_flag_the_method_does_not_read_is_refused_before_loading(argv, message, capsys):
    # members and data that do not exist: the flags are checked first
    argv = [*argv, "--member", "nope1", "nope2", "--data", "nope.csv", "--out", "x"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"slimfuse {argv[0]}: error: {message}"]


def _callers_models(members):
    """Copies of the members as a caller holds them: training mode, gradients on."""
    return [(n, copy.deepcopy(m).requires_grad_(True).train()) for n, m in members]


def _state(pairs):
    return [
        (
            {k: v.clone() for k, v in m.state_dict().items()},
            [mod.training for mod in m.modules()],
            [p.requires_grad for p in m.parameters()],
        )
        for _, m in pairs
    ]


def _assert_untouched(pairs, before):
    for (name, m), (state, modes, grads) in zip(pairs, before, strict=True):
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), (name, k)
        assert [mod.training for mod in m.modules()] == modes, name
        assert [p.requires_grad for p in m.parameters()] == grads, name
        for mod in m.modules():
            assert not mod._forward_hooks and not mod._forward_pre_hooks, name


@pytest.mark.parametrize(
    "config",
    [
        Mean(),
        {"method": "vote"},
        {"method": "soft-vote", "weights": [2, 1, 1]},
        Weighted(),
        Stack(meta_c=1.0),
        {"method": "head", "on": "features"},
    ],
    ids=lambda c: c["method"] if isinstance(c, dict) else c.method,
)
def test_fuse_leaves_the_callers_models_untouched(members, mnist1d, config):
    pairs = _callers_models(members)
    before = _state(pairs)
    train = TrainConfig(epochs=1, quiet=True) if FuseConfig.parse(config).trains else None
    fused = slimfuse.fuse(pairs, config, mnist1d, train=train)
    _assert_untouched(pairs, before)
    # the fused model holds frozen copies
    for name, m in pairs:
        copy_ = fused.members[name]
        assert copy_ is not m and not copy_.training
        assert not any(p.requires_grad for p in copy_.parameters())
    fused.train()
    x = mnist1d.example_input(4)
    fused(x)
    _assert_untouched(pairs, before)
    lineage = fused.slimfuse_spec.lineage[-1]
    assert lineage["stage"] == "fuse" and lineage["config"] == FuseConfig.parse(config).to_dict()
    assert ("train" in lineage) == (train is not None)


@pytest.mark.filterwarnings("ignore:the uniform soup")  # the members share no parent
@pytest.mark.parametrize("config", [Uniform(), Greedy(), Ties(density=0.5)], ids=str)
def test_merge_leaves_the_callers_models_untouched(members, mnist1d, config):
    pairs = _callers_models(members)
    parent = _callers_models(members[:1])[0][1] if config.method == "ties" else None
    before = _state([*pairs, *([("parent", parent)] if parent is not None else [])])
    merged = slimfuse.merge(pairs, config, mnist1d, parent=parent)
    _assert_untouched([*pairs, *([("parent", parent)] if parent is not None else [])], before)
    assert all(merged is not m for _, m in pairs)
    assert merged.merge_info["method"] == config.method


def test_the_classes_still_freeze_what_they_are_given(members):
    """scikit-learn's contract: the class stores what it is given (and freezes it); the verb is
    what copies."""
    pairs = _callers_models(members)
    fused = MeanFusion(pairs)
    assert all(fused.members[n] is m and not m.training for n, m in pairs)
    head = HeadFusion(_callers_models(members), on="logits")
    assert head.head is None  # nothing learned before fit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(slimfuse.fuse(members), MeanFusion)  # Mean() by default
