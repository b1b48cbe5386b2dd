"""Weighted fusion (weights learned on the simplex) and voting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimfuse
from slimfuse.errors import FusionError
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.predict import collect
from slimfuse.fusion.vote import VoteFusion
from slimfuse.fusion.weighted import WeightedFusion, cv_shrinkage, simplex_log_loss_weights


@pytest.mark.parametrize("space", ["probs", "logits"])
def test_learned_weights_lie_on_the_simplex_and_beat_uniform(members, mnist1d, space):
    shrunk = WeightedFusion(members, space=space).fit(mnist1d)  # cross-validated shrinkage
    assert np.all(shrunk.weights_ >= 0) and abs(shrunk.weights_.sum() - 1) < 1e-6
    fused = WeightedFusion(members, space=space, shrink=0.0)  # the log-loss optimum itself
    assert fused.fit(mnist1d) is fused
    w = fused.weights_
    assert w.shape == (3,) and np.all(w >= 0) and abs(w.sum() - 1) < 1e-6
    outputs, y = collect(members, mnist1d.loader("val"))
    _, uniform_loss = simplex_log_loss_weights(outputs[:1], y, space)  # one member alone
    assert fused.log_loss_ <= uniform_loss + 1e-6
    uniform = WeightedFusion(members, space=space, weights=[1, 1, 1]).fit(mnist1d)
    assert fused.log_loss_ <= uniform.log_loss_ + 1e-6
    torch.testing.assert_close(fused.weights.double(), torch.from_numpy(w))


def test_weights_favour_the_informative_member():
    # member 0 predicts the labels, members 1 and 2 are noise: the simplex optimum is all on 0
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (400,), generator=g)
    good = torch.nn.functional.one_hot(y, 4).float() * 4
    noise = [torch.randn(400, 4, generator=g) for _ in range(2)]
    w, _ = simplex_log_loss_weights(torch.stack([good, *noise]), y, "probs")
    assert w[0] > 0.9 and abs(w.sum() - 1) < 1e-9 and (w >= 0).all()


def test_weights_are_never_worse_than_uniform_when_the_solver_stops_early(monkeypatch):
    # a solver that gives up at a bad point (all weight on the noise member): uniform is kept
    import types

    from slimfuse.fusion import weighted

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g)
    good = torch.nn.functional.one_hot(y, 4).float() * 4
    outputs = torch.stack([torch.randn(200, 4, generator=g), good, good])
    bad = types.SimpleNamespace(x=np.array([1.0, 0.0, 0.0]))
    monkeypatch.setattr(weighted, "minimize", lambda *a, **k: bad)
    w, loss = simplex_log_loss_weights(outputs, y, "probs")
    np.testing.assert_allclose(w, np.full(3, 1 / 3))
    assert np.isfinite(loss)


def test_given_weights_are_kept(members, mnist1d):
    fused = WeightedFusion(members, weights=[3, 1, 0]).fit(mnist1d)
    np.testing.assert_allclose(fused.weights_, [0.75, 0.25, 0.0], atol=1e-7)


def test_hard_vote_is_the_majority_and_soft_vote_the_mean_probability(members, mnist1d):
    x = mnist1d.example_input(64)
    preds = torch.stack([m(x).argmax(-1) for _, m in members])  # (3, 64)
    votes = VoteFusion(members, voting="hard")(x)
    counts = torch.stack([(preds == c).sum(0) for c in range(10)], dim=-1).float() / 3
    torch.testing.assert_close(votes, counts)
    majority = torch.mode(preds, dim=0).values
    agree = counts.max(-1).values > 0.5  # a strict majority exists
    assert torch.equal(votes.argmax(-1)[agree], majority[agree])
    soft = VoteFusion(members, voting="soft")(x)
    torch.testing.assert_close(soft, MeanFusion(members, space="probs")(x))


def test_weighted_vote_and_bad_voting(members, mnist1d):
    x = mnist1d.example_input(16)
    only_first = VoteFusion(members, weights=[1, 0, 0])(x)
    assert torch.equal(only_first.argmax(-1), members[0][1](x).argmax(-1))
    with pytest.raises(FusionError, match=r"^voting 'majority': expected one of hard, soft$"):
        VoteFusion(members, voting="majority")  # type: ignore[arg-type]


def test_vote_round_trip(members, mnist1d, tmp_path):
    fused = VoteFusion(members, voting="hard", weights=[2, 1, 1])
    back = slimfuse.load(slimfuse.save(fused, tmp_path / "vote"))
    x = mnist1d.example_input(32)
    assert torch.equal(back(x), fused(x))


def test_shrinkage_toward_uniform_is_chosen_by_cross_validation(members, mnist1d):
    plain = WeightedFusion(members, shrink=0.0).fit(mnist1d)
    cv = WeightedFusion(members).fit(mnist1d)
    assert 0.0 <= cv.shrink_ <= 1.0 and set(cv.shrink_curve_) >= {0.0, 1.0}
    fewest = min(errors for errors, _ in cv.shrink_curve_.values())
    assert cv.shrink_curve_[cv.shrink_][0] >= fewest  # within one standard error of it
    expect = (1 - cv.shrink_) * plain.weights_ + cv.shrink_ / 3
    np.testing.assert_allclose(cv.weights_, expect, atol=1e-5)
    with pytest.raises(FusionError, match=r"^shrink=2: expected 'cv' or a number in \[0, 1\]$"):
        WeightedFusion(members, shrink=2)


def _noisy_members(strengths: list[float], seed: int, n: int = 400, classes: int = 10):
    """Logits ``strength * onehot(y) + N(0, 1)``: a member's skill grows with its strength."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(y, classes).float()
    return torch.stack([s * onehot + torch.randn(n, classes, generator=g) for s in strengths]), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_members_of_equal_skill_keep_uniform_weights(seed):
    outputs, y = _noisy_members([2.0] * 5, seed)
    shrink, curve = cv_shrinkage(outputs, y, "probs", folds=5)
    assert shrink == 1.0
    # in two of these seeds some fitted weights had fewer held-out errors, by one sample: noise
    assert curve[1.0][0] - min(e for e, _ in curve.values()) <= 1


@pytest.mark.parametrize("space", ["probs", "logits"])
def test_one_stronger_member_moves_the_weights_off_uniform(space):
    outputs, y = _noisy_members([3.0, 0.5, 0.5, 0.5, 0.5], seed=0)
    shrink, curve = cv_shrinkage(outputs, y, space, folds=5)
    assert shrink < 1.0 and curve[shrink][0] < curve[1.0][0] - 20
