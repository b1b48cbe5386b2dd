"""Unstructured magnitude pruning: masks, schedules, sparse bundles."""

from __future__ import annotations

import pytest
import torch

import slimfuse
from slimfuse.errors import ConfigError, SlimfuseWarning
from slimfuse.pruning.config import Magnitude, Threshold
from slimfuse.pruning.schedule import AGPCallback, cubic_sparsity
from slimfuse.pruning.sparse import storage_report
from slimfuse.pruning.unstructured import (
    MaskCallback,
    finalize,
    magnitude_masks,
    prune_unstructured,
    select_weights,
)
from slimfuse.training import TrainConfig
from tests.pruning.nets import tiny_data

FAST = TrainConfig(epochs=2, lr=1e-2, batch_size=32, quiet=True, restore_best=False)


@pytest.fixture(scope="module")
def data():
    return tiny_data()


def _mlp(data):
    return slimfuse.build_model("mlp", data=data, hidden=[32, 32])


def test_per_layer_and_global_sparsity_are_exact(data) -> None:
    model = _mlp(data)
    masks = prune_unstructured(model, sparsity=0.75)
    for name, s in masks.per_layer().items():
        assert s == pytest.approx(0.75, abs=0.01), name
    model = _mlp(data)
    masks = prune_unstructured(model, sparsity=0.75, global_pruning=True)
    assert masks.sparsity() == pytest.approx(0.75, abs=0.001)
    assert len(set(round(s, 2) for s in masks.per_layer().values())) > 1  # uneven across layers


def test_threshold_drops_exactly_the_small_weights(data) -> None:
    model = _mlp(data)
    w = model.net[0].weight.detach().clone()
    prune_unstructured(model, threshold=0.1, targets=["net.0"])
    assert torch.equal(model.net[0].weight != 0, w.abs() > 0.1)
    assert int((model.net[2].weight == 0).sum()) == 0  # not targeted
    dense = _mlp(data)
    one_epoch = TrainConfig(epochs=1, lr=1e-3, quiet=True)
    tau = slimfuse.prune(dense, Threshold(threshold=0.1), data, train=one_epoch)  # masks kept
    for k in (0, 2, 4):
        small = dense.net[k].weight.abs() <= 0.1
        assert bool((tau.net[k].weight[small] == 0).all()) and bool(small.any())


def test_masks_survive_fine_tuning(data) -> None:
    model = _mlp(data)
    masks = prune_unstructured(model, sparsity=0.8, ignore=["net.4"])
    zero = {n: (m.weight == 0).clone() for n, m in masks.modules.items()}
    before = model.net[0].weight.detach().clone()
    slimfuse.train(model, data, config=FAST, callbacks=[MaskCallback(masks)])
    assert not torch.equal(before, model.net[0].weight)  # it did train
    for n, m in masks.modules.items():
        assert bool((m.weight[zero[n]] == 0).all()), n
    assert int((model.net[4].weight == 0).sum()) == 0


def test_zero_sparsity_is_lossless(data) -> None:
    model = _mlp(data)
    x = data.example_input(16)
    ref = model(x)
    with pytest.warns(SlimfuseWarning, match="pruning removed nothing"):
        pruned = slimfuse.prune(model, Magnitude(sparsity=0.0, sparsity_schedule="oneshot"), data)
    assert torch.equal(pruned(x), ref)


def test_cubic_schedule_matches_zhu_gupta() -> None:
    kw = dict(initial=0.0, final=0.9, start=10, n=10, every=5)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    assert cubic_sparsity(35, **kw) == pytest.approx(0.9 + (0.0 - 0.9) * (1 - 25 / 50) ** 3)
    assert cubic_sparsity(60, **kw) == pytest.approx(0.9)
    assert cubic_sparsity(500, **kw) == pytest.approx(0.9)


def test_agp_reaches_target_and_keeps_it(data) -> None:
    model = _mlp(data)
    cb = AGPCallback(model, 0.9, end=0.5)
    slimfuse.train(
        model,
        data,
        config=TrainConfig(epochs=4, batch_size=32, quiet=True, restore_best=False),
        callbacks=[cb],
    )
    steps = [s for s, _ in cb.history]
    levels = [v for _, v in cb.history]
    assert levels == sorted(levels) and levels[-1] == pytest.approx(0.9)
    assert steps[-1] < 4 * 7  # reached within the first half, then fine-tuned at 0.9
    finalize(model, cb.masks)
    nz = sum(int((m.weight != 0).sum()) for m in cb.masks.modules.values())
    total = sum(m.weight.numel() for m in cb.masks.modules.values())
    assert 1 - nz / total == pytest.approx(0.9, abs=0.002)


def test_sparse_bundle_is_compact_and_reloads(data, tmp_path) -> None:
    big = slimfuse.build_model("mlp", data=data, hidden=[128, 128])
    oneshot = Magnitude(sparsity=0.9, sparsity_schedule="oneshot")
    model = slimfuse.prune(big, oneshot, data, train=TrainConfig(epochs=1, lr=1e-3, quiet=True))
    rep = storage_report(model)
    assert rep["nonzero_params"] < 0.2 * rep["params"]
    assert rep["encoded_bytes"] < 0.2 * rep["dense_bytes"]  # 4 B per non-zero + 1 bit per weight
    slimfuse.save(model, tmp_path / "b")
    on_disk = (tmp_path / "b" / "model.safetensors").stat().st_size
    assert abs(on_disk - rep["encoded_bytes"]) < 64  # the bundle adds a little metadata
    back = slimfuse.load(tmp_path / "b")
    x = data.example_input(8)
    assert torch.equal(back(x), model(x))
    assert storage_report(back) == rep
    slimfuse.export(back, data.example_input(1), tmp_path / "m.onnx")


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "x", True])
def test_bad_sparsity_is_refused(data, bad) -> None:
    with pytest.raises(ConfigError, match=r"sparsity .*: expected a number in \[0, 1\)"):
        prune_unstructured(_mlp(data), sparsity=bad)


def test_bad_requests_are_refused(data) -> None:
    model = _mlp(data)
    with pytest.raises(ConfigError, match=r"give exactly one of sparsity .* or threshold"):
        magnitude_masks(select_weights(model), sparsity=0.5, threshold=0.1)
    with pytest.raises(ConfigError, match="pruning target selector 'fc9' matches no module"):
        prune_unstructured(model, sparsity=0.5, targets=["fc9"])
    with pytest.raises(ConfigError, match="schedule 'agp' prunes gradually during fine-tuning"):
        slimfuse.prune(model, {"sparsity": 0.5}, data)
    with pytest.raises(
        ConfigError,
        match="give exactly one of sparsity, threshold, channels or ffn/heads; got sparsity, channels",
    ):
        slimfuse.prune(model, {"sparsity": 0.5, "channels": 0.5}, data)
