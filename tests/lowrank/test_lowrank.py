"""Low-rank factorization: exact at full rank, reload and ONNX parity, ranks within the budget,
layers that cannot shrink left alone, bad configs one line."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.errors import ConfigError, ModelError, SlimfuseWarning
from slimfuse.lowrank import Budget, Energy, LowRankConfig, LowRankConv, LowRankLinear, Ratio
from slimfuse.lowrank.budget import allocate
from slimfuse.lowrank.layers import decompose, factorized
from slimfuse.lowrank.profile import input_covariances
from slimfuse.measuring import count_macs
from tests.helpers import TINY_BERT, bert_tokens
from tests.pruning.nets import tiny_data

ENCODER = ["re:.*encoder\\.layer\\..*"]


class ConvNet(nn.Module):
    """Conv1d, Conv2d (strided), a depthwise conv and a conv that no rank can shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, 24, 1)  # 24 x 1: rank 1 would hold 25 weights
        self.c2 = nn.Conv1d(24, 32, 5, padding=2, dilation=1)
        self.dw = nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.c3 = nn.Conv2d(4, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 + 16, 40)
        self.out = nn.Linear(40, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.c2(self.c1(x.unsqueeze(1)).relu()).relu())
        img = h[:, :4].reshape(h.shape[0], 4, 3, 4)
        g = self.c3(img).relu().mean((2, 3))
        return self.out(self.fc(torch.cat([h.mean(2), g], 1)).relu())


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()


@pytest.fixture(scope="module")
def data():
    return tiny_data(n=300)


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(20, 12), torch.randn(5, 7, 20)),
        (nn.Linear(12, 20, bias=False), torch.randn(5, 12)),
        (nn.Conv1d(6, 8, 3, padding=1, stride=2), torch.randn(2, 6, 11)),
        (nn.Conv2d(4, 6, 3, stride=2, dilation=2), torch.randn(2, 4, 13, 13)),
    ],
)
def test_full_rank_equals_the_original(layer, x) -> None:
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    cov = torch.cov(torch.randn(layer.weight[0].numel(), 50)) + 0.1 * torch.eye(
        layer.weight[0].numel()
    )
    for dec in (None, decompose(layer), decompose(layer, cov)):
        new = factorized(layer, full, dec)
        assert isinstance(new, (LowRankLinear, LowRankConv))
        torch.testing.assert_close(new(x), layer(x), atol=1e-5, rtol=0)


def test_truncation_is_the_best_approximation() -> None:
    """The plain SVD keeps the largest singular values (Eckart-Young): its error is what is
    dropped; the whitened one loses less output on the data it was measured on."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 16, bias=False)
    x = torch.randn(400, 16) * torch.linspace(0.05, 3, 16)  # uneven input directions
    s = torch.linalg.svdvals(layer.weight.detach().double())
    plain = factorized(layer, 4)
    with torch.no_grad():
        err = (plain.second.weight @ plain.first.weight - layer.weight).norm() ** 2
    assert float(err) == pytest.approx(float((s[4:] ** 2).sum()), rel=1e-4)
    cov = input_covariances(nn.Sequential(layer), {"0": layer}, [x])["0"]
    dec = decompose(layer, cov)
    white = factorized(layer, 4, dec)
    with torch.no_grad():
        lost = (white(x) - layer(x)).norm() ** 2
        assert float(lost) == pytest.approx(len(x) * float((dec.s[4:] ** 2).sum()), rel=1e-3)
        assert lost < 0.8 * (plain(x) - layer(x)).norm() ** 2


def test_energy_and_ratio_on_convs_and_linears(data) -> None:
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = data.example_input(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small = slimfuse.factorize(model, Ratio(ratio=0.5), data)
    rows = {r["layer"]: r for r in small.lowrank_info["layers"]}
    assert isinstance(small.c2, LowRankConv) and isinstance(small.c3, LowRankConv)
    assert isinstance(small.fc, LowRankLinear) and small.fc.rank == (48 * 40 // 2) // 88
    for name in ("c2", "c3", "fc"):
        before, after = rows[name]["weights"]
        assert after <= 0.5 * before
    # no rank shrinks c1 (24 x 1); the depthwise conv is grouped
    assert isinstance(small.c1, nn.Conv1d) and isinstance(small.dw, nn.Conv1d)
    assert "no rank makes it smaller" in rows["c1"]["reason"]
    assert "grouped" in rows["dw"]["reason"]
    assert small(x).shape == model(x).shape
    assert isinstance(model.c2, nn.Conv1d)  # the caller's model is unchanged
    p0, p1 = small.lowrank_info["params"]
    assert p1 < p0
    # energy 1: every rank is full, so no layer would get smaller: all left alone, a warning
    with pytest.warns(SlimfuseWarning, match="changed no layer"):
        same = slimfuse.factorize(model, Energy(energy=1.0), data)
    assert all(r["status"] == "left alone" for r in same.lowrank_info["layers"])
    assert "at most rank" in {r["layer"]: r for r in same.lowrank_info["layers"]}["c2"]["reason"]
    torch.testing.assert_close(same(x), model(x))


def test_energy_rank(bert) -> None:
    small = slimfuse.factorize(bert, Energy(energy=0.5, targets=ENCODER))
    for row in small.lowrank_info["layers"]:
        if row["status"] == "factorized":
            assert row["energy"] >= 0.5
            layer = small.get_submodule(row["layer"])
            assert layer.rank == row["rank"]


@pytest.mark.parametrize("of, whiten", [("flops", True), ("params", False), ("flops", False)])
def test_budget_ranks_respect_it(bert, of, whiten) -> None:
    x = bert_tokens(6, length=16)
    example = bert_tokens(1, length=16)
    cfg = Budget(budget=0.6, of=of, whiten=whiten, targets=ENCODER)
    small = slimfuse.factorize(bert, cfg, inputs=[x], example_inputs=example)
    info = small.lowrank_info
    if of == "flops":
        before, after = count_macs(bert, example), count_macs(small, example)
        assert info["macs"] == [before, after]
    else:
        before, after = info["params"]
    assert after <= 0.6 * before
    assert info["budget"]["after"] == pytest.approx(after)
    assert after >= 0.5 * before  # the slack is spent: close to the budget, not far below
    ranks = [r["rank"] for r in info["layers"] if r["status"] == "factorized"]
    assert ranks and len(set(ranks)) > 1  # ranks differ by sensitivity
    with torch.no_grad():
        cos = nn.functional.cosine_similarity(small(**x), bert(**x))
    assert float(cos.mean()) > 0.7


def test_allocation_is_the_best_within_the_budget() -> None:
    """The ranks the allocation picks fit the budget and lose no more than the best of every
    combination (dense included) that fits it with room for the cost rounding (a thousandth)."""
    import itertools

    import numpy as np

    curves = [
        np.array([1, 0.5, 0.02, 0.01, 0.005, 0.002, 0]),  # nearly rank 2
        1 - np.arange(7) / 6,  # a flat spectrum
        1 - (np.arange(9) / 8) ** 0.5,
    ]
    unit, dense, rmax = [10.0, 10.0, 7.0], [36.0, 36.0, 64.0], [3, 3, 4]
    for target in (60.0, 75.0, 100.0):
        ranks = allocate(curves, unit, dense, rmax, target)
        cost = sum(d if r is None else u * r for r, u, d in zip(ranks, unit, dense, strict=True))
        lost = sum(0 if r is None else c[r] for r, c in zip(ranks, curves, strict=True))
        best = min(
            sum(0 if r is None else c[r] for r, c in zip(combo, curves, strict=True))
            for combo in itertools.product(*[[None, *range(1, m + 1)] for m in rmax])
            if sum(d if r is None else u * r for r, u, d in zip(combo, unit, dense, strict=True))
            <= target * 0.999
        )
        assert cost <= target and lost <= best + 1e-9
    assert allocate(curves, unit, dense, rmax, 60.0)[0] == 2  # its error is gone at rank 2


def test_reload_and_onnx_parity(bert, tmp_path) -> None:
    x = bert_tokens()
    small = slimfuse.factorize(
        bert, {"budget": 0.6, "targets": ENCODER}, inputs=[bert_tokens(6, 16)], example_inputs=x
    )
    slimfuse.save(small, tmp_path / "b")
    back = slimfuse.load(tmp_path / "b")
    assert torch.equal(back(**x), small(**x))
    kinds = [e["kind"] for e in back.slimfuse_spec.edits]
    assert kinds == ["lowrank"]
    slimfuse.export(back, bert_tokens(1), tmp_path / "m.onnx", atol=1e-4)  # ORT parity checked


def test_conv_model_reloads_and_exports(data, tmp_path) -> None:
    model = slimfuse.build_model("mnist1d_cnn", data=slimfuse.load_data("mnist1d"))
    small = slimfuse.factorize(model, Ratio(ratio=0.4))
    assert any(isinstance(m, LowRankConv) for m in small.modules())
    slimfuse.save(small, tmp_path / "c")
    back = slimfuse.load(tmp_path / "c")
    x = torch.randn(3, 40)
    assert torch.equal(back.eval()(x), small(x))
    slimfuse.export(back, x[:1], tmp_path / "c.onnx", atol=1e-4)


def test_recovery_trains(data) -> None:
    torch.manual_seed(0)
    model = ConvNet()
    slimfuse.train(model, data, config=slimfuse.TrainConfig(epochs=3, quiet=True))
    cfg = Ratio(ratio=0.3, recovery="distill")
    small = slimfuse.factorize(
        model, cfg, data, train=slimfuse.TrainConfig(epochs=2, lr=1e-3, quiet=True)
    )
    plain = slimfuse.factorize(model, Ratio(ratio=0.3), data)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(small.state_dict().values(), plain.state_dict().values(), strict=True)
    )


def test_bad_configs_are_one_line(bert, tmp_path) -> None:
    for values, msg in [
        ({"energy": 0.0}, r"energy 0.0: expected a fraction in \(0, 1\]"),
        ({"energy": 1.5}, r"energy 1.5: expected a fraction in \(0, 1\]"),
        ({"ratio": 0}, r"ratio 0: expected a fraction in \(0, 1\]"),
        ({"ratio": -0.5}, r"ratio -0.5: expected a fraction in \(0, 1\]"),
        ({"budget": 1.0}, r"budget 1.0: expected a fraction in \(0, 1\)"),
        ({"energy": 0.9, "ratio": 0.5}, "give exactly one of energy, ratio, budget"),
        ({"energy": 0.9, "whiten": False}, "whiten does not apply to method 'energy'"),
    ]:
        with pytest.raises(ConfigError, match=msg) as err:
            LowRankConfig.parse(values)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"budget 0.01 of the model's flops is out of reach"):
        slimfuse.factorize(bert, Budget(budget=0.01, targets=ENCODER), inputs=[bert_tokens()])
    with pytest.raises(ConfigError, match="sensitivity on data; give data"):
        slimfuse.factorize(bert, Budget(budget=0.5))
    with pytest.raises(ConfigError, match="distill' trains the factorized model"):
        slimfuse.factorize(bert, Ratio(ratio=0.5, recovery="distill"))


def test_a_bundle_whose_rank_disagrees_is_refused(bert, tmp_path) -> None:
    import json

    small = slimfuse.factorize(bert, Ratio(ratio=0.5, targets=ENCODER))
    slimfuse.save(small, tmp_path / "b")
    meta = json.loads((tmp_path / "b" / "slimfuse.json").read_text())
    edit = next(e for e in meta["model"]["edits"] if e["kind"] == "lowrank")
    name = next(iter(edit["modules"]))
    edit["modules"][name]["rank"] += 1
    (tmp_path / "b" / "slimfuse.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="but the weights file holds"):
        slimfuse.load(tmp_path / "b")
