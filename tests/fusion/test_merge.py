"""Weight merging: uniform and greedy soups, TIES, BatchNorm re-estimation, mismatches."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import slimfuse
from slimfuse.errors import ConfigError, FusionError
from slimfuse.fusion import Greedy, Ties, Uniform
from slimfuse.fusion.merge import HANDLERS
from slimfuse.fusion.merge.common import recalibrate_bn, val_score
from slimfuse.fusion.merge.ties import ties_states, trim
from slimfuse.training import TrainConfig


@pytest.fixture(scope="module")
def variants(mnist1d):
    """A parent and 4 variants fine-tuned from it (different lr and data order)."""
    torch.manual_seed(0)
    parent = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=12)
    slimfuse.train(parent, mnist1d, config=TrainConfig(epochs=3, quiet=True))
    out = []
    for i, lr in enumerate([3e-3, 1e-3, 3e-3, 1e-2]):
        m = copy.deepcopy(parent)
        slimfuse.train(m, mnist1d, config=TrainConfig(epochs=1, lr=lr, seed=i + 1, quiet=True))
        out.append((f"ft{i}", m))
    return parent, out


def test_uniform_soup_is_the_mean_of_the_weights(variants, mnist1d):
    _, pairs = variants
    soup = slimfuse.merge(pairs, Uniform(), mnist1d)
    for k, v in soup.state_dict().items():
        mean = torch.stack([m.state_dict()[k] for _, m in pairs]).mean(0)
        torch.testing.assert_close(v, mean)
    assert soup.slimfuse_spec.lineage[-1]["method"] == "uniform"
    assert HANDLERS.names() == ["greedy", "ties", "uniform"]


def test_a_uniform_soup_of_unrelated_models_warns(variants, members, mnist1d):
    """Averaging independently trained models gives a poor model: said, not silent."""
    with pytest.warns(UserWarning, match=r"worse than every ingredient .*fine-tuned from one"):
        soup = slimfuse.merge(members, Uniform(), mnist1d)
    info = soup.merge_info
    assert info["val"] < min(info["ingredient_val"].values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # variants of one parent: no warning
        slimfuse.merge(variants[1], Uniform(), mnist1d)


def test_greedy_soup_is_never_worse_than_its_best_ingredient(variants, mnist1d):
    parent, pairs = variants
    # add a bad ingredient (the untrained-ish parent perturbed): greedy must reject it if it hurts
    noisy = copy.deepcopy(parent)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ingredients = [*pairs, ("noisy", noisy)]
    model = slimfuse.merge(ingredients, Greedy(), mnist1d)
    info = model.merge_info
    best = max(val_score(m, mnist1d) for _, m in ingredients)
    assert val_score(model, mnist1d) >= best
    assert info["val"] == pytest.approx(val_score(model, mnist1d))
    assert "noisy" not in info["ingredients"] or info["val"] >= best


def test_ties_trims_elects_and_merges(variants, mnist1d):
    t = torch.tensor([0.1, -3.0, 0.5, 2.0])
    assert torch.equal(trim(t, 0.5), torch.tensor([0.0, -3.0, 0.0, 2.0]))
    parent = {"w": torch.zeros(3)}
    a, b = {"w": torch.tensor([1.0, -2.0, 1.0])}, {"w": torch.tensor([3.0, 1.0, -1.0])}
    merged = ties_states(parent, [a, b], density=1.0)["w"]
    # elected signs: +, -, 0 -> disjoint means 2.0, -2.0, 0.0
    torch.testing.assert_close(merged, torch.tensor([2.0, -2.0, 0.0]))
    par, pairs = variants
    one = slimfuse.merge(pairs[:1], Ties(density=1.0), mnist1d, parent=par)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(v, pairs[0][1].state_dict()[k])
    with pytest.raises(FusionError, match="needs the parent"):
        slimfuse.merge(pairs, Ties())


@pytest.mark.filterwarnings("ignore:the uniform soup")  # two unrelated models
def test_batchnorm_statistics_are_re_estimated(mnist1d):
    torch.manual_seed(0)
    nets = [
        slimfuse.build_model("resnet1d", data=mnist1d, widths=[8, 8], blocks_per_stage=1)
        for _ in range(2)
    ]
    for i, n in enumerate(nets):
        slimfuse.train(n, mnist1d, config=TrainConfig(epochs=1, seed=i, quiet=True))
    soup = slimfuse.merge([("a", nets[0]), ("b", nets[1])], Uniform(), mnist1d)
    mean_stats = (nets[0].stem[1].running_mean + nets[1].stem[1].running_mean) / 2
    assert not torch.allclose(soup.stem[1].running_mean, mean_stats)
    # the same statistics as a fresh pass over the training data
    ref = copy.deepcopy(soup)
    recalibrate_bn(ref, mnist1d.loader("train", batch_size=128, shuffle=True, seed=0))
    torch.testing.assert_close(soup.stem[1].running_mean, ref.stem[1].running_mean)
    torch.testing.assert_close(soup.stem[1].running_var, ref.stem[1].running_var)
    assert not soup.training


def test_batchnorm_re_estimation_runs_only_batchnorm_in_train_mode():
    """Dropout stays off while the statistics are re-estimated: they are those of the network
    that will run (the exact mean and variance of the eval-mode features), whatever the state
    and momentum the layers had, and every module ends in eval mode with its momentum back."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5), nn.BatchNorm1d(4, momentum=0.3))
    net.train()
    x = torch.randn(96, 6)
    loader = [(x[i : i + 32], torch.zeros(32)) for i in range(0, 96, 32)]
    recalibrate_bn(net, loader, "regression")
    bn = net[2]
    with torch.no_grad():
        h = net[0](x).reshape(3, 32, 4)  # per batch, Dropout off
    torch.testing.assert_close(bn.running_mean, h.mean(1).mean(0))
    torch.testing.assert_close(bn.running_var, h.var(1, unbiased=True).mean(0))
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3
    assert not any(m.training for m in net.modules())


def test_mismatched_models_and_empty_lists(variants, mnist1d):
    _, pairs = variants
    wide = slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=16)
    with pytest.raises(
        FusionError,
        match=r"^'wide' does not match 'ft0': conv1.weight has shape \(16, 1, 5\), expected "
        r"\(12, 1, 5\)$",
    ):
        slimfuse.merge([pairs[0], ("wide", wide)], Uniform())
    mlp = slimfuse.build_model("mlp", data=mnist1d)
    with pytest.raises(FusionError, match=r"^'mlp' does not match 'ft0': missing keys \["):
        slimfuse.merge([pairs[0], ("mlp", mlp)], Uniform())
    with pytest.raises(FusionError, match=r"^no members given"):
        slimfuse.merge([], Greedy(), mnist1d)
    with pytest.raises(
        ConfigError, match=r"^method 'soup': expected one of uniform, greedy, ties$"
    ):
        slimfuse.merge(pairs, {"method": "soup"})


def test_merging_pruned_variants_keeps_every_pruned_weight_zero(tmp_path):
    """Variants pruned apart (different masks): each soup and TIES zero every weight any of them
    pruned, so the merge is at least as sparse as each, and its bundle stores it sparse."""
    from slimfuse.models.bundle import sparse_keys
    from slimfuse.pruning.config import Magnitude
    from tests.pruning.nets import tiny_data

    data = tiny_data()
    torch.manual_seed(0)
    parent = slimfuse.build_model("mlp", data=data, hidden=[64, 64])
    slimfuse.train(parent, data, config=TrainConfig(epochs=2, lr=1e-2, quiet=True))
    pairs = []
    for i in range(3):
        m = copy.deepcopy(parent)
        slimfuse.train(m, data, config=TrainConfig(epochs=1, lr=1e-2, seed=i + 1, quiet=True))
        pairs.append(
            (f"p{i}", slimfuse.prune(m, Magnitude(sparsity=0.5, sparsity_schedule="oneshot")))
        )
    keys = sparse_keys(pairs[0][1])
    assert keys
    masks = {k: [m.state_dict()[k] == 0 for _, m in pairs] for k in keys}
    assert any(not torch.equal(v[0], v[1]) for v in masks.values())  # pruned apart
    for config, extra in ((Uniform(), {}), (Greedy(), {}), (Ties(density=0.5), {"parent": parent})):
        merged = slimfuse.merge(pairs, config, data, **extra)
        for k in keys:
            w = merged.state_dict()[k]
            pruned_anywhere = torch.stack(masks[k]).any(0)
            assert bool((w[pruned_anywhere] == 0).all()), (type(config).__name__, k)
    merged = slimfuse.merge(pairs, Uniform(), data)
    rest = {k: v for k, v in merged.state_dict().items() if k not in keys}
    for k, v in rest.items():  # the other tensors are the plain mean
        torch.testing.assert_close(v, torch.stack([m.state_dict()[k] for _, m in pairs]).mean(0))
    bundle = slimfuse.save(merged, tmp_path / "soup")
    again = slimfuse.load(bundle)
    assert all(torch.equal(again.state_dict()[k], merged.state_dict()[k]) for k in keys)
