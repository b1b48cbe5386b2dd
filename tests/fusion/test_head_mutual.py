"""Fusion heads (members frozen, head trained by the one loop) and Deep Mutual Learning."""

from __future__ import annotations

import copy

import pytest
import torch

import slimfuse
from slimfuse.errors import FusionError
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.head import HeadFusion
from slimfuse.fusion.mutual import MutualLearning
from slimfuse.training import TrainConfig


def test_logits_head_starts_as_the_mean_and_only_the_head_trains(members, mnist1d):
    pairs = [(n, copy.deepcopy(m)) for n, m in members]
    before = {k: v.clone() for k, v in pairs[0][1].state_dict().items()}
    head = HeadFusion(pairs, on="logits")
    head._make_head(30, 10)
    x = mnist1d.example_input(8)
    torch.testing.assert_close(head(x), MeanFusion(pairs, space="logits")(x))
    head = HeadFusion(pairs, on="logits").fit(
        mnist1d, config=TrainConfig(epochs=2, lr=1e-3, quiet=True)
    )
    assert head.result_.epochs_run == 2 and 0 < head.best_val_ <= 1
    for k, v in pairs[0][1].state_dict().items():
        assert torch.equal(v, before[k]), k  # members untouched
    assert all(not p.requires_grad for p in head.members.parameters())


def test_feature_head_uses_penultimate_features(members, mnist1d, tmp_path):
    head = HeadFusion(members, on="both", hidden=16).fit(
        mnist1d, config=TrainConfig(epochs=1, lr=1e-3, quiet=True)
    )
    assert head.layers == {n: "linear" for n, _ in members}
    assert head.in_features == 3 * 60 + 3 * 10  # 12 channels x 5 positions, plus logits
    x = mnist1d.example_input(4)
    back = slimfuse.load(slimfuse.save(head, tmp_path / "head"))
    torch.testing.assert_close(back(x), head(x))
    with pytest.raises(FusionError, match=r"^on='weights': expected one of logits, features"):
        HeadFusion(members, on="weights")  # type: ignore[arg-type]


def test_mutual_learning_trains_both_peers_in_one_loop(mnist1d, tmp_path):
    torch.manual_seed(0)
    peers = [
        (f"p{i}", slimfuse.build_model("mnist1d_cnn", data=mnist1d, channels=8)) for i in range(2)
    ]
    start = [copy.deepcopy(m) for _, m in peers]
    dml = MutualLearning(peers, kl_weight=1.0)
    x, y = mnist1d.example_input(16), torch.arange(16) % 10
    out = dml(x)
    assert out.shape == (2, 16, 10)
    from slimfuse.tasks import get_task

    task = get_task("classification")
    plain = sum(task.loss(o, y) for o in out)
    # the KL term adds to the labels' loss
    assert float(dml.loss(out, y, task).detach()) > float(plain.detach())
    assert dml.fit(mnist1d, config=TrainConfig(epochs=2, quiet=True)) is dml
    assert dml.result_.epochs_run == 2
    for (name, m), s in zip(peers, start, strict=True):
        assert not torch.equal(m.conv1.weight, s.conv1.weight), name
        assert 0.1 < dml.member_scores_[name] <= 1
    alone = dml.member("p0")  # usable alone: saves and reloads as a plain CNN
    back = slimfuse.load(slimfuse.save(alone, tmp_path / "p0"))
    torch.testing.assert_close(back(x), alone(x))
    fused = dml.fused()
    assert isinstance(fused, MeanFusion) and fused(x).shape == (16, 10)
    with pytest.raises(FusionError, match=r"^1 member given: mutual learning needs at least 2"):
        MutualLearning(peers[:1])
