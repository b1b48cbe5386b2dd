"""The objective contract: usable as train(..., objective=...), frozen teachers, hints, errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.distillation import KD, ShapeMismatchError, distill_run, objective
from slimfuse.distillation.hints import make_adapter
from slimfuse.distillation.teachers import sample_keys
from slimfuse.errors import ConfigError
from slimfuse.training import TrainConfig

FAST = TrainConfig(epochs=2, batch_size=100, lr=1e-2, quiet=True)


@pytest.fixture(scope="module")
def small_data(mnist1d):
    """The first 600 MNIST-1D training samples (keeps each run well under a second)."""
    from slimfuse.data import from_arrays

    x, y = mnist1d.arrays("train")
    xt, yt = mnist1d.arrays("test")
    return from_arrays(x[:600], y[:600], xt[:200], yt[:200], name="mnist1d-small")


def _cnn(data, channels: int = 25, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return slimfuse.build_model("mnist1d_cnn", data=data, channels=channels)


def test_objective_trains_through_the_one_loop_and_leaves_teacher_unchanged(
    small_data, trained_cnn
) -> None:
    teacher = trained_cnn
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = _cnn(small_data, channels=8)
    obj = objective(teacher, "classification", KD(temperature=4.0, alpha=0.9))
    result = slimfuse.train(student, small_data, "classification", FAST, objective=obj)
    assert result.steps > 0 and result.best_metric is not None
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not obj.teacher.training  # a frozen copy runs; the caller's teacher is left as it is
    assert all(not p.requires_grad for p in obj.teacher.parameters())
    assert obj.teacher is not teacher and all(p.requires_grad for p in teacher.parameters())
    # the second epoch is served from the cache: the teacher ran on each sample once
    n = len(small_data.train)
    assert obj.cache is not None and len(obj.cache) == n
    assert obj.cache.misses == n and obj.cache.hits == n


def test_cache_returns_the_teacher_outputs(small_data, trained_cnn) -> None:
    obj = objective(trained_cnn, "classification")
    x, _ = next(iter(small_data.loader("train", batch_size=16)))
    first, _ = obj.teacher_outputs(x, sample_keys(x), None)
    again, _ = obj.teacher_outputs(x.flip(0), sample_keys(x.flip(0)), None)
    assert obj.cache.hits == 16
    torch.testing.assert_close(again, first.flip(0))
    with torch.no_grad():
        torch.testing.assert_close(first, trained_cnn(x))
    # a cache too small for the batch serves what it holds and runs the teacher on the rest
    small = objective(trained_cnn, "classification", max_cache_mb=6 * 10 * 4 / 2**20)
    small.teacher_outputs(x[:6], sample_keys(x[:6]), None)
    mixed, _ = small.teacher_outputs(x, sample_keys(x), None)
    assert len(small.cache) == 6 and small.cache.hits == 6 and small.cache.misses == 6 + 10
    torch.testing.assert_close(mixed, first)


def test_ensemble_teacher_averages_and_distills(small_data, trained_cnn) -> None:
    other = _cnn(small_data, seed=1)
    student = _cnn(small_data, channels=8)
    run = distill_run(student, [trained_cnn, other], None, small_data, train=FAST)
    assert type(run.student) is type(student)
    assert run.train.best_metric is not None
    x = small_data.example_input(4)
    with torch.no_grad():
        a, b = trained_cnn.eval()(x), other.eval()(x)
        probs = (a.softmax(-1) + b.softmax(-1)) / 2  # at T = 1
        soft = ((a / 4).softmax(-1) + (b / 4).softmax(-1)) / 2  # at KD()'s T = 4
        weighted = 0.25 * (a / 4).softmax(-1) + 0.75 * (b / 4).softmax(-1)
        for cfg, expect, t in [
            (KD(), soft, 4.0),
            (KD(ensemble_weights=[1, 3]), weighted, 4.0),
            (KD(ensemble_space="probs-t1"), probs, 1.0),  # the earlier target, softened after
            (KD(ensemble_space="logits"), ((a + b) / 2).softmax(-1), 1.0),
            (slimfuse.distillation.MSE(), probs, 1.0),  # a loss that does not soften: T = 1
        ]:
            teacher = objective([trained_cnn, other], config=cfg).teacher
            torch.testing.assert_close((teacher(x) / t).softmax(-1), expect)
    with pytest.raises(ConfigError, match=r"^ensemble_weights: 3 weights for 2 teachers"):
        objective([trained_cnn, other], config=KD(ensemble_weights=[1, 1, 1]))


def test_ensemble_kd_matches_the_mean_of_the_softened_teacher_probabilities(
    small_data, trained_cnn
) -> None:
    """KD from an ensemble at temperature T matches mean_i softmax(z_i / T) (the default), not
    the T = 1 mean softened afterwards, p^(1/T) (``ensemble_space="probs-t1"``)."""
    from slimfuse.distillation import KD

    other = _cnn(small_data, seed=1)
    student = _cnn(small_data, channels=8).eval()
    x, y = next(iter(small_data.loader("train", batch_size=32)))
    t = 4.0
    with torch.no_grad():
        za, zb, zs = trained_cnn.eval()(x), other.eval()(x), student(x)
        target = ((za / t).softmax(-1) + (zb / t).softmax(-1)) / 2
        p = (za.softmax(-1) + zb.softmax(-1)) / 2
        earlier = p ** (1 / t) / (p ** (1 / t)).sum(-1, keepdim=True)
    assert not torch.allclose(target, earlier, atol=1e-3)  # the two targets differ

    def kl(q: torch.Tensor) -> float:
        return float((q * (q.log() - (zs / t).log_softmax(-1))).sum(-1).mean() * t * t)

    for space, q in (("probs", target), ("probs-t1", earlier)):
        obj = objective(
            [trained_cnn, other], config=KD(temperature=t, alpha=1.0, ensemble_space=space)
        )
        with torch.no_grad():
            loss = obj(student, (x, y))
        assert float(loss) == pytest.approx(kl(q), rel=1e-4), space


class _Tagger(nn.Module):
    """A per-token classifier: ``(B, S)`` token ids -> ``(B, S, 5)`` logits."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(20, 8)
        self.out = nn.Linear(8, 5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(input_ids))


@pytest.mark.parametrize("loss", ["kd", "mse"])
def test_token_level_distillation_leaves_padding_out(loss) -> None:
    """Per-token outputs with an attention mask: what sits at padded positions counts in no
    loss, and cached rows of one batch width serve a batch of another."""
    teacher, student = _Tagger(0), _Tagger(1)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [7, 8, 9, 0, 0, 0], [3, 3, 4, 0, 0, 0]])
    mask = (torch.arange(6) < torch.tensor([[6], [3], [3]])).long()
    obj = objective(teacher, "classification", loss=loss, alpha=1.0)
    first = obj(student, ({"input_ids": ids, "attention_mask": mask}, None))
    noisy = ids.clone()
    noisy[1:, 3:] = torch.tensor([11, 12, 13])  # other tokens where the mask is 0
    again = obj(student, ({"input_ids": noisy, "attention_mask": mask}, None))
    torch.testing.assert_close(again, first)
    # the short samples alone (a batch trimmed to 3 tokens) are served from the cache, where
    # the first batch (6 tokens wide) left them
    assert obj.cache is not None
    hits = obj.cache.hits
    short = obj(student, ({"input_ids": ids[1:], "attention_mask": mask[1:]}, None))
    assert obj.cache.hits == hits + 2
    fresh = objective(teacher, "classification", loss=loss, alpha=1.0, cache=False)
    torch.testing.assert_close(
        short, fresh(student, ({"input_ids": ids[1:], "attention_mask": mask[1:]}, None))
    )
    # and the loss is the one over the real tokens only
    real = mask.bool()
    with torch.no_grad():
        s, t = student(ids, mask)[real], teacher(ids, mask)[real]
    if loss == "kd":
        expect = (t / 4).softmax(-1) * ((t / 4).log_softmax(-1) - (s / 4).log_softmax(-1))
        expect = expect.sum(-1).mean() * 16
    else:
        expect = ((s - t) ** 2).mean()
    torch.testing.assert_close(first.detach(), expect, rtol=1e-5, atol=1e-6)


def test_hint_adapters_have_the_right_shapes(small_data, trained_cnn) -> None:
    student = _cnn(small_data, channels=8)
    obj = objective(
        trained_cnn,
        "classification",
        {"loss": "hint", "hints": {"conv2": "conv2", "linear": "linear"}},
        student=student,
        example_inputs=small_data.example_input(4),
    )
    conv = obj.adapters[obj.pair_key("conv2", "conv2")]
    assert isinstance(conv, nn.Conv1d)
    assert conv.weight.shape == (25, 8, 1)
    assert isinstance(obj.adapters[obj.pair_key("linear", "linear")], nn.Identity)
    module = obj.trainable(student)
    n_student = sum(p.numel() for p in student.parameters())
    assert sum(p.numel() for p in module.parameters()) == n_student + 25 * 8 + 25
    slimfuse.train(module, small_data, "classification", FAST, objective=obj)
    obj.close()


def test_make_adapter_rules() -> None:
    assert make_adapter((2, 16), (2, 32)).weight.shape == (32, 16)
    assert make_adapter((2, 7, 16), (2, 7, 32)).weight.shape == (32, 16)  # tokens
    assert make_adapter((2, 4, 8, 8), (2, 6, 8, 8)).weight.shape == (6, 4, 1, 1)
    pooled = make_adapter((2, 4, 10), (2, 6, 5))
    assert pooled(torch.randn(2, 4, 10)).shape == (2, 6, 5)


# -- bad input: one clear line each ---------------------------------------------------------


def test_output_shape_mismatch_names_both(small_data, trained_cnn) -> None:
    student = slimfuse.build_model("mnist1d_cnn", in_length=40, num_classes=5)
    with pytest.raises(
        ShapeMismatchError,
        match=r"student MNIST1DCNN outputs shape \(2, 5\) but teacher MNIST1DCNN outputs "
        r"\(2, 10\); expected equal shapes",
    ):
        objective(trained_cnn, student=student, example_inputs=small_data.example_input(2))


def test_missing_hint_layer_lists_close_names(small_data, trained_cnn) -> None:
    student = _cnn(small_data, channels=8)
    with pytest.raises(
        ConfigError,
        match=r"student has no layer 'conv4'; close names: conv3, conv2, conv1 \(expected a name",
    ):
        objective(
            trained_cnn,
            loss="hint",
            hints={"conv4": "conv2"},
            student=student,
            example_inputs=small_data.example_input(2),
        )
    with pytest.raises(ConfigError, match=r"teacher has no layer 'lineer'; close names: linear"):
        objective(
            trained_cnn,
            hints={"conv2": "lineer"},
            student=student,
            example_inputs=small_data.example_input(2),
        )


def test_empty_teacher_list() -> None:
    with pytest.raises(ConfigError, match=r"^the teacher list is empty; expected at least one"):
        objective([], "classification")


@pytest.mark.parametrize("temp", [0.0, -1.0])
def test_temperature_must_be_positive(trained_cnn, temp: float) -> None:
    with pytest.raises(ConfigError, match=rf"^temperature {temp}: Input should be greater than 0$"):
        objective(trained_cnn, temperature=temp)


def test_unknown_loss_and_hint_without_hints(trained_cnn) -> None:
    with pytest.raises(ConfigError, match=r"loss 'kl': expected one of kd, mse, cosine, hint"):
        objective(trained_cnn, loss="kl")
    with pytest.raises(ConfigError, match=r"loss 'hint' needs hints"):
        objective(trained_cnn, loss="hint")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            dict(loss="mse", temperature=2.0),
            "temperature does not apply to loss 'mse'; it is for kd, hint",
        ),
        (
            dict(loss="cosine", temperature=8.0),
            "temperature does not apply to loss 'cosine'; it is for kd, hint",
        ),
        (dict(hint_weight=0.5), "hint_weight does not apply without hints; give hints"),
        (dict(hint_metric="cosine"), "hint_metric does not apply without hints"),
        (
            dict(ensemble_space="logits"),
            "ensemble_space does not apply to one teacher; it is for an ensemble",
        ),
        (dict(ensemble_weights=[1.0]), "ensemble_weights does not apply to one teacher"),
    ],
)
def test_a_setting_the_loss_does_not_read_is_refused(trained_cnn, settings, message) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        objective(trained_cnn, **settings)
    objective([trained_cnn, trained_cnn], temperature=4.0, ensemble_space="logits")  # an ensemble


def test_the_family_names_the_losses_that_read_an_option() -> None:
    from slimfuse.distillation.config import MSE, DistillConfig

    with pytest.raises(
        ConfigError, match=r"^temperature does not apply to loss 'mse'; it is for kd, hint$"
    ):
        DistillConfig(loss="mse", temperature=2)
    with pytest.raises(ConfigError, match=r"^temperature 2: unknown setting"):
        MSE(temperature=2)
    assert DistillConfig(loss="mse", alpha=0.5) == MSE(alpha=0.5)
    with pytest.raises(ConfigError, match=r"^epochs: training settings go in a TrainConfig"):
        DistillConfig(epochs=3)


def test_hint_temperature_only_where_its_output_loss_is_kd(trained_cnn) -> None:
    with pytest.raises(
        ConfigError,
        match=r"^temperature does not apply to loss 'hint' on task 'regression' \(its output loss "
        r"is mse\); it is for kd, and hint on classification",
    ):
        objective(trained_cnn, "regression", loss="hint", hints={"conv2": "conv2"}, temperature=2)


def test_a_registered_loss_gets_a_config(small_data, trained_cnn, monkeypatch) -> None:
    from slimfuse.distillation.config import DistillConfig
    from slimfuse.distillation.losses import LOSSES, kd_term

    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))  # registered for this test only
    monkeypatch.setattr(DistillConfig, "variants", dict(DistillConfig.variants))
    monkeypatch.setattr(DistillConfig, "trains", dict(DistillConfig.trains))

    @LOSSES.register("half-kd")
    def half_kd(student, teacher, target, ctx):
        return 0.5 * kd_term(student, teacher, ctx.temperature)

    cfg = DistillConfig(loss="half-kd", temperature=2.0)
    assert cfg.loss == "half-kd" and cfg.temperature == 2.0
    assert DistillConfig.readers("temperature") == ["kd", "hint", "half-kd"]
    obj = objective(trained_cnn, config=cfg)
    batch = next(iter(small_data.loader("train", batch_size=8)))
    loss = obj(_cnn(small_data, channels=8), batch)
    assert loss.requires_grad and obj.loss_fn is half_kd


def test_mixup_feeds_blends_and_skips_the_cache(small_data, trained_cnn) -> None:
    obj = objective(trained_cnn, "classification", mixup=0.4)
    assert obj.cache is None
    student = _cnn(small_data, channels=8).train()
    batch = next(iter(small_data.loader("train", batch_size=32)))
    torch.manual_seed(0)
    loss = obj(student, batch)
    torch.manual_seed(0)
    blended, (lam, perm) = obj._mix(batch[0])
    torch.testing.assert_close(blended, lam * batch[0] + (1 - lam) * batch[0][perm])
    assert 0.0 <= lam <= 1.0 and loss.requires_grad
    with pytest.raises(
        ConfigError, match=r"^mixup -1: Input should be greater than or equal to 0$"
    ):
        objective(trained_cnn, mixup=-1)
    with pytest.raises(ConfigError, match=r"mixup needs floating-point tensor inputs; got dict"):
        obj._mix({"input_ids": torch.zeros(2, 3, dtype=torch.long)})
