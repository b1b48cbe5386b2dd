"""QAT (int8 QDQ and int4 weight-only), sensitivity, mixed precision and outlier smoothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimfuse
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize
from slimfuse.quantization.qat import FakeQuantLayer
from slimfuse.quantization.runtime import QuantizedModel
from slimfuse.quantization.sensitivity import agreement_metric, emulated_sensitivity
from slimfuse.quantization.smoothquant import SmoothedLinear, smooth
from slimfuse.quantization.weight_only import WeightOnlyLayer

# The int8 graph also quantizes each layer's output (one more rounding per layer than the
# fake-quant model, which quantizes inputs and weights): agreement is checked to 5% relative L2.
QAT_REL_TOL = 0.05
ONE_EPOCH = slimfuse.TrainConfig(epochs=1, lr=1e-3, quiet=True)


@pytest.fixture(scope="module")
def qat_int8(trained_cnn, mnist1d):
    cfg = QuantConfig(mode="qat")
    loader = mnist1d.loader("train", batch_size=64)
    return quantize(trained_cnn, cfg, mnist1d, calibration=loader, train=ONE_EPOCH)


def test_qat_int8_graph_agrees_with_fake_quant_model(qat_int8, mnist1d) -> None:
    assert isinstance(qat_int8, QuantizedModel) and qat_int8.info["mode"] == "qat"
    fq = qat_int8.fake_quant_model.eval()
    assert any(isinstance(m, FakeQuantLayer) for m in fq.modules())
    x = mnist1d.example_input(256)
    with torch.no_grad():
        ref = fq(x)
    got = qat_int8(x)
    assert float((got - ref).norm() / ref.norm()) <= QAT_REL_TOL
    ranges = qat_int8.info["qat"]["learned_ranges"]
    assert set(ranges) == {"conv1", "conv2", "conv3", "linear"}
    assert ranges["conv2"][0] == pytest.approx(0.0, abs=1e-6)  # after a ReLU: nothing below 0


def test_qat_int4_gives_packed_weight_only_model(trained_cnn, mnist1d) -> None:
    cfg = QuantConfig(mode="qat", bits=4)
    loader = mnist1d.loader("train", batch_size=64)
    q = quantize(trained_cnn, cfg, mnist1d, calibration=loader, train=ONE_EPOCH)
    assert isinstance(q.conv2, WeightOnlyLayer) and q.conv2.bits == 4
    acc = slimfuse.evaluate(q, mnist1d.loader("test", batch_size=500))
    base = slimfuse.evaluate(trained_cnn, mnist1d.loader("test", batch_size=500))
    assert acc > base - 0.05


def test_emulated_sensitivity_ranks_layers(trained_cnn, mnist1d) -> None:
    inputs = [mnist1d.example_input(128)]
    metric = agreement_metric(trained_cnn, inputs, "classification")
    assert metric(trained_cnn) == 1.0
    layers = ["conv1", "conv2", "conv3", "linear"]
    rows = emulated_sensitivity(trained_cnn, layers, inputs, metric, static=True, per_channel=True)
    assert sorted(r["layer"] for r in rows) == layers
    drops = [r["drop"] for r in rows]
    assert drops == sorted(drops, reverse=True)
    assert all(r["sqnr_db"] > 15 for r in rows)
    torch.testing.assert_close(metric(trained_cnn), 1.0)  # weights restored afterwards


def test_mixed_precision_zero_budget_keeps_sensitive_layers(trained_cnn, mnist1d) -> None:
    calib = mnist1d.loader("train", batch_size=128)
    cfg = QuantConfig(mode="static", max_drop=0.0, calibration_batches=2)
    q = quantize(trained_cnn, cfg, calibration=calib)
    mp = q.info["mixed_precision"]
    assert mp["steps"][0]["fp32_layers"] == 0
    if mp["steps"][0]["drop"] > 0:
        kept = [r for r in q.info["layers"] if r["reason"].startswith("kept fp32 by mixed")]
        assert kept and len(mp["sensitivity"]) == 4
    assert mp["met"] or len(mp["steps"]) == 4


def test_smoothing_preserves_the_float_function() -> None:
    torch.manual_seed(0)
    model = set_spec(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), ModelSpec("t"))
    x = torch.randn(64, 16)
    x[:, 3] *= 40  # an outlier channel
    smoothed = smooth(model, [x], alpha=1.0)
    assert smoothed.smoothed_layers == ["0"]
    assert isinstance(smoothed[0], SmoothedLinear) and isinstance(model[0], nn.Linear)
    torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-4)


def test_mixed_precision_holds_an_embedding_model_to_cosine() -> None:
    """The model's recorded task picks the default metric: an encoder's drop is 1 - cosine."""
    from tests.helpers import TINY_BERT, bert_tokens

    torch.manual_seed(0)
    model = slimfuse.build_model("hf_encoder", config=TINY_BERT).eval()
    batches = [bert_tokens(8, 12, seed=seed, pad_from=9) for seed in (1, 2)]
    q = quantize(model, QuantConfig(mode="dynamic", max_drop=0.05), calibration=batches)
    with torch.no_grad():
        cos = torch.cat(
            [torch.nn.functional.cosine_similarity(q(**b), model(**b), dim=-1) for b in batches]
        )
    step = q.info["mixed_precision"]["steps"][0]
    assert step["fp32_layers"] == 0
    assert step["drop"] == pytest.approx(1 - float(cos.mean()), abs=1e-4)
    assert 0 < step["drop"] < 0.05


def test_fewest_finds_the_smallest_passing_count_without_repeats() -> None:
    from slimfuse.quantization.smoothquant import fewest

    for n in range(12):
        for need in [*range(n + 1), None]:
            calls: list[int] = []

            def ok(k: int, need: int | None = need, calls: list[int] = calls) -> bool:
                calls.append(k)
                return need is not None and k >= need

            assert fewest(n, ok) == need
            assert len(calls) == len(set(calls))


def test_smoothing_within_a_budget_smooths_only_what_it_needs() -> None:
    torch.manual_seed(0)
    model = set_spec(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)),
        ModelSpec("t"),
    ).eval()
    x = torch.randn(256, 16)
    x[:, 3] *= 60  # an outlier input channel: int8 of layer 0's input loses the others
    with torch.no_grad():
        ref = model(x)

    def metric(m: nn.Module) -> float:  # minus the relative error of the outputs
        with torch.no_grad():
            return -float((m(x) - ref).norm() / ref.norm())

    def drop(**kw) -> tuple[float, nn.Module]:
        q = quantize(model, QuantConfig(mode="dynamic", **kw), calibration=[x], metric_fn=metric)
        return -metric(q), q

    plain, _ = drop()
    smoothed, _ = drop(smoothquant=1.0)
    assert smoothed < 0.9 * plain
    _, q = drop(smoothquant=1.0, max_drop=(plain + smoothed) / 2)
    search = q.info["smoothing_search"]
    assert search["met"] and search["smoothed"] >= 1
    assert q.info["smoothed_layers"] == [
        n for g in search["groups"][: search["smoothed"]] for n in g
    ]
    assert search["tried"]["0"] == pytest.approx(plain, rel=1e-3)
    _, q = drop(smoothquant=1.0, max_drop=2 * plain)
    assert q.info["smoothing_search"]["smoothed"] == 0 and q.info["smoothed_layers"] == []


class _SharedInput(nn.Module):
    """Two linears reading one tensor (as query, key and value do), a third reading another."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x) * self.b(x)
        return self.c(h)


def test_layers_sharing_an_input_are_smoothed_as_one_group() -> None:
    torch.manual_seed(0)
    model = set_spec(_SharedInput(), ModelSpec("t")).eval()
    x = torch.randn(128, 16)
    x[:, 3] *= 40
    smoothed = smooth(model, [x, x[:64]], alpha=1.0, min_ratio=1.0)
    assert smoothed.smoothing_groups == [["a", "b"], ["c"]]
    assert torch.equal(smoothed.a.inv_scale, smoothed.b.inv_scale)  # one multiply serves both
    torch.testing.assert_close(smoothed(x), model(x), rtol=1e-4, atol=1e-3)
    q = quantize(
        model,
        QuantConfig(mode="dynamic", smoothquant=1.0, max_drop=1.0),
        calibration=[x],
        metric_fn=lambda m: 0.0,
    )
    search = q.info["smoothing_search"]
    assert search["smoothed"] == 0 and search["groups"] == [["a", "b"]]  # c: no outliers (4x)


def test_the_searches_report_progress_on_the_cli_logger(capsys) -> None:
    from slimfuse.cli.common import show_progress

    torch.manual_seed(0)
    model = set_spec(_SharedInput(), ModelSpec("t")).eval()
    x = torch.randn(64, 16)
    x[:, 3] *= 40
    cfg = QuantConfig(mode="dynamic", smoothquant=1.0, max_drop=1.0)
    try:
        show_progress(True)
        quantize(model, cfg, calibration=[x], metric_fn=lambda m: 0.0)
        err = capsys.readouterr().err.splitlines()
        assert any(line.startswith("sensitivity 1/2 ") for line in err)
        assert "smoothing 0 of 1 inputs: drop 0.00000 (budget 1.00000)" in err
        assert "mixed precision: all int8, drop 0.00000 (budget 1.00000)" in err
        show_progress(False)  # --quiet
        quantize(model, cfg, calibration=[x], metric_fn=lambda m: 0.0)
        assert capsys.readouterr().err == ""
    finally:
        show_progress(False)
