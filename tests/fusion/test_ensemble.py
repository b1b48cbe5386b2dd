"""MeanFusion: equals its member when members are identical, averages correctly, exports, reloads."""

from __future__ import annotations

import copy

import pytest
import torch

import slimfuse
from slimfuse.errors import FusionError
from slimfuse.fusion import MeanFusion


def test_identical_members_equal_the_member(members, mnist1d):
    _, m = members[0]
    x = mnist1d.example_input(32)
    ref = m(x)
    copies = [(f"c{i}", copy.deepcopy(m)) for i in range(3)]
    logits = MeanFusion(copies, space="logits")(x)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    logp = MeanFusion(copies, space="probs")(x)
    torch.testing.assert_close(logp, ref.log_softmax(-1), atol=1e-5, rtol=1e-5)


def test_probs_space_is_mean_probability_and_weights_apply(members, mnist1d):
    x = mnist1d.example_input(16)
    probs = torch.stack([m(x).softmax(-1) for _, m in members])
    fused = MeanFusion(members, space="probs")
    torch.testing.assert_close(fused(x).softmax(-1), probs.mean(0), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused(x).exp().sum(-1), torch.ones(16), atol=1e-5, rtol=0)
    w = [2.0, 1.0, 1.0]
    weighted = MeanFusion(members, space="logits", weights=w)
    expect = sum(wi / 4 * m(x) for wi, (_, m) in zip(w, members, strict=True))
    torch.testing.assert_close(weighted(x), expect, atol=1e-5, rtol=1e-5)
    # a member with weight 0 does not count
    only_first = MeanFusion(members, space="probs", weights=[1, 0, 0])
    torch.testing.assert_close(
        only_first(x), members[0][1](x).log_softmax(-1), atol=1e-5, rtol=1e-5
    )


def test_members_are_frozen_and_stay_in_eval(members):
    fused = MeanFusion(members)
    fused.train()
    assert not any(p.requires_grad for p in fused.parameters())
    assert all(not m.training for m in fused.members.values())


def test_bundle_round_trip_and_export(members, mnist1d, tmp_path):
    fused = MeanFusion(members, space="probs", weights=[0.5, 0.3, 0.2])
    x = mnist1d.example_input(8)
    back = slimfuse.load(slimfuse.save(fused, tmp_path / "mean"))
    assert isinstance(back, MeanFusion)
    torch.testing.assert_close(back(x), fused(x), atol=0, rtol=0)
    slimfuse.export(fused, mnist1d.example_input(1), tmp_path / "mean.onnx")
    slimfuse.export(MeanFusion(members, space="logits"), x[:1], tmp_path / "lg.onnx")


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0, 2.0], r"^2 weights for 3 members: expected one weight per member$"),
        ([1.0, -1.0, 1.0], r"include negative values: expected weights >= 0$"),
        ([1.0, float("nan"), 1.0], r"are not all finite: expected finite numbers$"),
        ([1.0, float("inf"), 1.0], r"are not all finite: expected finite numbers$"),
        ([0.0, 0.0, 0.0], r"sum to 0: expected at least one positive weight$"),
    ],
)
def test_bad_weights(members, weights, message):
    with pytest.raises(FusionError, match=message):
        MeanFusion(members, weights=weights)


def test_empty_and_mismatched_members(members, mnist1d):
    with pytest.raises(FusionError, match=r"^no members given: expected at least one"):
        MeanFusion([])
    five = slimfuse.build_model("mnist1d_cnn", num_classes=5)
    with pytest.raises(FusionError, match=r"different output sizes \(cnn0: 10, five: 5\)"):
        MeanFusion([members[0], ("five", five)])
    bare = torch.nn.Linear(40, 7)  # no spec: caught at the first forward
    fused = MeanFusion([members[0], ("bare", bare)])
    with pytest.raises(FusionError, match=r"cnn0: 10, bare: 7"):
        fused(mnist1d.example_input(2))
    with pytest.raises(FusionError, match=r"space 'votes': expected one of probs, logits"):
        MeanFusion(members, space="votes")  # type: ignore[arg-type]


def test_sklearn_classifiers_as_members(members, mnist1d, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    from slimfuse.errors import ExportError, ModelError
    from slimfuse.fusion.sklearn import SklearnMember

    x_tr, y_tr = mnist1d.arrays("train")
    lr = LogisticRegression(max_iter=100).fit(x_tr[:1000], y_tr[:1000])
    linear = SklearnMember(lr)  # a torch layer: softmax of its output is predict_proba
    x = mnist1d.example_input(16)
    np_proba = lr.predict_proba(x.numpy())
    torch.testing.assert_close(linear(x).softmax(-1), torch.from_numpy(np_proba).float())
    fused = MeanFusion([members[0], ("logreg", linear)])
    back = slimfuse.load(slimfuse.save(fused, tmp_path / "with_lr"))
    torch.testing.assert_close(back(x), fused(x))
    slimfuse.export(fused, x[:1], tmp_path / "with_lr.onnx", dynamo=False)
    tree = SklearnMember(DecisionTreeClassifier(max_depth=4).fit(x_tr[:1000], y_tr[:1000]))
    with_tree = MeanFusion([members[0], ("tree", tree)])
    assert with_tree(x).shape == (16, 10)  # runs in PyTorch
    with pytest.raises(ExportError, match="DecisionTreeClassifier is not linear"):
        slimfuse.export(with_tree, x[:1], tmp_path / "tree.onnx")
    with pytest.raises(ModelError, match="MeanFusion has no recorded source"):
        slimfuse.save(with_tree, tmp_path / "tree")  # a bundle holds torch layers only


def test_a_pruned_member_reloads_inside_the_fused_bundle(members, mnist1d, tmp_path):
    trainable = copy.deepcopy(members[1][1]).requires_grad_(True)  # fusion froze the original
    pruned = slimfuse.prune(trainable, {"channels": 0.5}, mnist1d)
    assert pruned.conv1.weight.shape[0] < members[1][1].conv1.weight.shape[0]
    fused = MeanFusion([members[0], ("pruned", pruned)])
    assert fused.slimfuse_spec.edits == [{"kind": "fusion_members"}]
    back = slimfuse.load(slimfuse.save(fused, tmp_path / "with_pruned"))
    x = mnist1d.example_input(8)
    torch.testing.assert_close(back(x), fused(x), atol=0, rtol=0)
