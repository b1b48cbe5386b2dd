"""Stacking and cross-validated weights: out-of-fold predictions only (leakage tests), prefit,
meta-learners, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.data import from_arrays
from slimfuse.errors import ExportError, FusionError
from slimfuse.fusion.stacking import StackingFusion
from slimfuse.fusion.weighted import WeightedFusion
from slimfuse.training import TrainConfig

N, D, C = 90, 6, 3


def _xy(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, D)).astype(np.float32), rng.integers(0, C, N)


class Memorizer(nn.Module):
    """Knows every input of the data set; learns a label only for the samples it trains on.

    Each input attends (sharply) to its own key, so training moves only the rows of the samples
    seen; an unseen sample keeps a zero row and predicts the uniform distribution.
    """

    def __init__(self, num_classes: int = C) -> None:
        super().__init__()
        x, _ = _xy()
        self.register_buffer("keys", torch.from_numpy(x))
        self.table = nn.Parameter(torch.zeros(N, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = (-torch.cdist(x, self.keys).pow(2) * 1e3).softmax(-1)
        return attn @ self.table


def memorizer(num_classes: int = C) -> nn.Module:
    return Memorizer(num_classes)


@pytest.fixture(scope="module")
def random_labels():
    x, y = _xy()
    return from_arrays(x, y, x[:10], y[:10], name="random", val_fraction=0.2)


MEMORIZE = TrainConfig(epochs=30, lr=0.5, batch_size=8, quiet=True, restore_best=False)


@pytest.fixture(scope="module")
def memorizers(random_labels):
    """Two members that have memorised the training labels (random: nothing to generalise)."""
    members = []
    for i in range(2):
        m = slimfuse.build_model(f"{__file__}:memorizer", data=random_labels, trust_code=True)
        slimfuse.train(m, random_labels, config=MEMORIZE)
        members.append((f"mem{i}", m))
    return members


def test_stacking_uses_only_out_of_fold_predictions(random_labels, memorizers):
    members = memorizers
    # the members as given have memorised the training labels (in-sample predictions are peaked)
    x_train = random_labels.train.tensors[0]
    assert members[0][1](x_train).softmax(-1).max(-1).values.min() > 0.9
    stack = StackingFusion(members, cv=3, train_config=MEMORIZE).fit(random_labels)
    # every training sample's meta-features come from fold models that never saw it: uniform
    feats = stack.oof_features_
    assert feats.shape == (len(x_train), 2 * C)
    np.testing.assert_allclose(feats, 1.0 / C, atol=1e-3)
    tested = np.sort(np.concatenate([te for _, te in stack.fold_indices_]))
    assert np.array_equal(tested, np.arange(len(x_train)))
    for tr, te in stack.fold_indices_:
        assert not set(tr) & set(te)
    assert stack.meta_samples_ == len(x_train)
    # with_val adds the members' own predictions of the validation split, unseen by them too
    both = StackingFusion(members, cv=3, train_config=MEMORIZE, with_val=True).fit(random_labels)
    np.testing.assert_allclose(both.oof_features_, feats)
    assert both.meta_samples_ == len(x_train) + len(random_labels.val)
    with pytest.raises(FusionError, match=r"^with_val=True adds validation predictions"):
        StackingFusion(members, with_val=True)


def test_cross_validated_weights_use_only_out_of_fold_predictions(random_labels, memorizers):
    members = memorizers
    fused = WeightedFusion(members, cv=3, train_config=MEMORIZE).fit(random_labels)
    # the weights were fitted on predictions by fold models that never saw the sample: uniform
    x_train = random_labels.train.tensors[0]
    assert fused.oof_outputs_.shape == (2, len(x_train), C) and fused.fit_samples_ == len(x_train)
    np.testing.assert_allclose(fused.oof_outputs_.softmax(-1), 1.0 / C, atol=1e-3)
    held = np.sort(np.concatenate([te for _, te in fused.fold_indices_]))
    assert np.array_equal(held, np.arange(len(x_train)))
    assert np.all(fused.weights_ >= 0) and abs(fused.weights_.sum() - 1) < 1e-6
    # fit = out-of-fold predictions + fit_weights on them
    again = WeightedFusion(members).fit_weights(fused.oof_outputs_, random_labels.train.tensors[1])
    np.testing.assert_allclose(again.weights_, fused.weights_)
    with pytest.raises(FusionError, match=r"^cv=3 retrains the members per fold to learn weights"):
        WeightedFusion(members, cv=3, weights=[1, 1])
    with pytest.raises(FusionError, match=r"^cv=3 folds the training split: expected a Data"):
        WeightedFusion(members, cv=3).fit(random_labels.loader("val"))
    with pytest.raises(FusionError, match=r"^cv=0: expected an integer number of folds >= 2"):
        WeightedFusion(members, cv=0)


def test_prefit_stacking_matches_its_meta_learner(members, mnist1d, tmp_path):
    from sklearn.linear_model import LogisticRegression

    stack = StackingFusion(members, meta=LogisticRegression(C=0.5, max_iter=500))
    assert stack.fit(mnist1d) is stack
    assert 0 < stack.cv_score_ <= 1
    x = mnist1d.example_input(32)
    feats = torch.cat([m(x).softmax(-1) for _, m in members], -1).numpy()
    proba = stack.meta_.predict_proba(feats)
    np.testing.assert_allclose(stack(x).softmax(-1).detach().numpy(), proba, atol=1e-5)
    back = slimfuse.load(slimfuse.save(stack, tmp_path / "stack"))
    torch.testing.assert_close(back(x), stack(x))


def test_any_sklearn_classifier_as_meta(members, mnist1d, tmp_path):
    from sklearn.tree import DecisionTreeClassifier

    stack = StackingFusion(members, meta=DecisionTreeClassifier(max_depth=3)).fit(mnist1d)
    x = mnist1d.example_input(8)
    assert stack(x).shape == (8, 10)
    with pytest.raises(ExportError, match="DecisionTreeClassifier is not linear"):
        slimfuse.export(stack.meta_layer, stack.member_outputs(x)[0], tmp_path / "s.onnx")


def test_too_little_data_for_k_folds(members, mnist1d):
    with pytest.raises(
        FusionError,
        match=r"^50 folds need at least 50 samples of every class; in the validation data "
        r"\(400 samples\) class \d has \d+$",
    ):
        StackingFusion(members, meta_cv=50).fit(mnist1d)
    with pytest.raises(
        FusionError, match=r"^5000 folds need at least 5000 samples; the training data has 3600$"
    ):
        StackingFusion(members, cv=5000).fit(mnist1d)
    with pytest.raises(FusionError, match=r"^cv=1: expected an integer number of folds >= 2"):
        StackingFusion(members, cv=1)
    with pytest.raises(FusionError, match=r"not fitted: call fit\(data\) first"):
        StackingFusion(members)(mnist1d.example_input(1))


def test_default_meta_learner_is_anchored_at_the_mean_logits(members, mnist1d, tmp_path):
    from slimfuse.fusion.ensemble import MeanFusion
    from slimfuse.fusion.meta import C_GRID

    x = mnist1d.example_input(64)
    mean_logits = MeanFusion(members, space="logits")(x)
    # a crushing penalty leaves only the (unpenalised) class intercepts on top of the mean
    stiff = StackingFusion(members, C=1e-8).fit(mnist1d)
    shift = (stiff(x) - mean_logits).detach()
    assert float((shift - shift.mean(0)).abs().max()) < 1e-3
    # the default picks C by held-out accuracy on the validation predictions, the plain mean
    # (C 0) a candidate too: the most regularised within one standard error of the best
    stack = StackingFusion(members).fit(mnist1d)
    assert set(stack.C_curve_) == {0.0, *C_GRID}
    best = max(acc for _, acc in stack.C_curve_.values())
    n = stack.meta_samples_
    assert stack.C_curve_[stack.C_][1] >= best - (2 * n) ** 0.5 / n  # within noise of the best
    assert stack.cv_score_ == stack.C_curve_[stack.C_][1]
    fixed = StackingFusion(members, C=1.0).fit(mnist1d)
    assert not torch.allclose(fixed(x), stiff(x), atol=1e-2)
    back = slimfuse.load(slimfuse.save(stack, tmp_path / "anchored"))
    torch.testing.assert_close(back(x), stack(x))
    with pytest.raises(FusionError, match=r"^C=0: expected 'cv' or a number > 0$"):
        StackingFusion(members, C=0)


def _noisy_copies(n: int, members: int, classes: int, seed: int, flip: bool = False):
    """Member logits: one signal (the label's logit raised) plus independent noise per member,
    so their mean is the best combination there is; ``flip``: the last member's classes rolled
    by one (a systematic error only a meta-learner can undo)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    signal = torch.nn.functional.one_hot(y, classes).float() * 1.2
    outs = torch.stack([signal + torch.randn(n, classes, generator=g) for _ in range(members)])
    if flip:
        outs[-1] = outs[-1].roll(1, dims=-1) * 3
    return outs, y


def test_stacking_falls_back_to_the_mean_when_the_meta_learner_does_not_help():
    outs, y = _noisy_copies(300, 3, 3, seed=1)
    pairs = [(f"m{i}", nn.Linear(2, 3)) for i in range(3)]
    stack = StackingFusion(pairs).fit_meta(outs, y)
    assert stack.C_ == 0.0  # the plain mean: no C beat it by more than one standard error
    w = stack.meta_layer.linear
    assert not w.weight.detach().any() and not w.bias.detach().any()
    mean_acc = float((outs.mean(0).argmax(1) == y).float().mean())
    assert stack.C_curve_[0.0][1] == pytest.approx(mean_acc)  # the mean scored as it is
    # a member with a systematic error: the anchored meta-learner earns its correction
    outs, y = _noisy_copies(300, 3, 3, seed=2, flip=True)
    stack = StackingFusion(pairs).fit_meta(outs, y)
    assert stack.C_ > 0
    assert stack.C_curve_[stack.C_][1] > stack.C_curve_[0.0][1] + 0.05
    # the one-standard-error rule: the most regularised C within noise of the best
    errors = {c: (1 - acc) * 300 for c, (_, acc) in stack.C_curve_.items()}
    fewest = min(errors.values())
    assert all(errors[c] - fewest > 1 for c in errors if c < stack.C_)


def test_fold_models_standardize_with_their_own_folds_statistics():
    from slimfuse.data import fit_standardize
    from slimfuse.fusion.folds import fit_scaling
    from slimfuse.models.source import rebuild, spec_of

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 3)) * [1.0, 100.0, 0.01] + [0.0, 500.0, -3.0]
    data = from_arrays(x, (x[:, 0] > 0).astype(np.int64), name="scaled", standardize=True)
    member = slimfuse.build_model("mlp", data=data, hidden=[4])
    fresh = rebuild(spec_of(member))  # what a fold retrains: placeholders until fitted
    assert not fresh.input_mean.any() and bool((fresh.input_std == 1).all())
    idx = np.arange(0, len(data.train), 2)
    fit_scaling(fresh, data, idx)
    want = fit_standardize(data.arrays("train")[0][idx])
    np.testing.assert_allclose(fresh.input_mean.numpy(), want["mean"], rtol=1e-5)
    np.testing.assert_allclose(fresh.input_std.numpy(), want["std"], rtol=1e-5)
