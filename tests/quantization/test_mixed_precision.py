"""Mixed precision decides on held-out data, never on the samples that set the ranges."""

from __future__ import annotations

from itertools import islice

import pytest
import torch
from torch import nn

from slimfuse.errors import DataError
from slimfuse.models.source import ModelSpec, set_spec
from slimfuse.quantization import QuantConfig, quantize


def _regressor() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)
    )
    return set_spec(net, ModelSpec("t", task="regression")).eval()  # drop: 1 - mean cosine


def _batches(n: int = 4, size: int = 64) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(size, 16, generator=g) for _ in range(n)]


@torch.no_grad()
def _cosine_drop(q: nn.Module, model: nn.Module, batches: list[torch.Tensor]) -> float:
    cos = torch.cat([torch.nn.functional.cosine_similarity(q(b), model(b), dim=1) for b in batches])
    return 1.0 - float(cos.mean())


def test_the_budget_is_checked_on_calibration_batches_kept_apart() -> None:
    model = _regressor()
    batches = _batches()
    batches[2][:, 5] *= 30  # held out: were it calibrated on, layer 0's input range would widen
    cfg = QuantConfig(mode="static", max_drop=1.0, calibration_batches=2, held_out_batches=2)
    q = quantize(model, cfg, calibration=batches)
    mp = q.info["mixed_precision"]
    assert mp["decided_on"] == "2 calibration batch(es) kept apart (128 samples; 128 calibrate)"
    assert mp["report_metric"] == "mean cosine to fp32"
    assert mp["steps"][0]["drop"] == pytest.approx(_cosine_drop(q, model, batches[2:]), abs=1e-6)
    assert mp["drop"] == mp["steps"][-1]["drop"]
    assert mp["calibration_drop"] == pytest.approx(_cosine_drop(q, model, batches[:2]), abs=1e-6)
    assert "test_drop" not in mp  # no data: no test split to report on
    # the ranges come from the first two batches only: the outlier batch is clipped
    assert mp["drop"] > 5 * mp["calibration_drop"]


def test_with_data_the_validation_split_decides_and_the_test_split_is_reported(
    trained_cnn, mnist1d
) -> None:
    cfg = QuantConfig(mode="dynamic", max_drop=1.0)
    q = quantize(trained_cnn, cfg, mnist1d)
    mp = q.info["mixed_precision"]
    assert mp["decided_on"] == "the validation split (256 samples)"  # 4 batches of 64
    assert mp["report_metric"] == "top-1 agreement with fp32"

    @torch.no_grad()
    def drop(split: str) -> float:  # batch by batch: dynamic int8 ranges are per call
        batches = [x for x, _ in islice(mnist1d.loader(split, batch_size=64), 4)]
        same = [(q(x).argmax(1) == trained_cnn(x).argmax(1)).float() for x in batches]
        return 1.0 - float(torch.cat(same).mean())

    assert mp["steps"][0]["drop"] == pytest.approx(drop("val"), abs=1e-9)
    assert mp["test_drop"] == pytest.approx(drop("test"), abs=1e-9)
    assert "calibration_drop" in mp


def test_one_calibration_batch_is_cut_in_two() -> None:
    model = _regressor()
    (x,) = _batches(1)
    q = quantize(model, QuantConfig(mode="dynamic", max_drop=1.0), calibration=[x])
    mp = q.info["mixed_precision"]
    assert mp["decided_on"] == "1 calibration batch(es) kept apart (32 samples; 32 calibrate)"
    assert mp["drop"] == pytest.approx(_cosine_drop(q, model, [x[32:]]), abs=1e-6)
    with pytest.raises(DataError, match="one sample"):
        quantize(model, QuantConfig(mode="dynamic", max_drop=1.0), calibration=[x[:1]])


def test_a_metric_fn_decides_and_keeps_the_calibration_whole() -> None:
    model = _regressor()
    batches = _batches(3)
    cfg = QuantConfig(mode="dynamic", smoothquant=0.5, max_drop=1.0, calibration_batches=2)
    q = quantize(model, cfg, calibration=batches, metric_fn=lambda m: 0.0)
    mp = q.info["mixed_precision"]
    assert mp["decided_on"] == "metric_fn" and mp["drop"] == 0.0
    assert mp["calibration_drop"] == pytest.approx(_cosine_drop(q, model, batches[:2]), abs=1e-6)
    assert q.info["smoothing_search"]["decided_on"] == "metric_fn"


def test_the_smoothing_search_is_decided_on_held_out_batches_too() -> None:
    model = _regressor()
    batches = _batches()
    for b in batches:
        b[:, 3] *= 40  # an outlier input channel: smoothing has something to do
    cfg = QuantConfig(
        mode="dynamic", smoothquant=0.5, max_drop=1.0, calibration_batches=2, held_out_batches=2
    )
    q = quantize(model, cfg, calibration=batches)
    search = q.info["smoothing_search"]
    assert search["decided_on"] == q.info["mixed_precision"]["decided_on"]
    assert search["decided_on"].startswith("2 calibration batch(es) kept apart")
    assert search["smoothed"] == 0  # a budget of 1.0 holds without smoothing anything
