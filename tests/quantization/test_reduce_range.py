"""The automatic int8 weight range (7 bits without VNNI) and the ONNX Runtime it needs."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import tomllib

from slimfuse.quantization import QuantConfig, quantize

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# quantize_static(calibration_cache_path=...) and calibrate.save_tensors_data / load_tensors_data
# first shipped in onnxruntime 1.27.0 (microsoft/onnxruntime#28221; 1.26.0 has neither)
ORT_FLOOR = (1, 27)


def test_the_onnxruntime_floor_has_the_apis_the_code_uses() -> None:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"onnxruntime\b", d)]
    floor = tuple(int(p) for p in re.search(r">=\s*([\d.]+)", spec).group(1).split(".")[:2])
    assert floor >= ORT_FLOOR, spec
    from onnxruntime.quantization import calibrate, quantize_static

    assert "calibration_cache_path" in inspect.signature(quantize_static).parameters
    assert callable(calibrate.save_tensors_data) and callable(calibrate.load_tensors_data)


def _peak_int8_weight(q) -> int:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(q.graph_bytes()).graph
    arrays = [numpy_helper.to_array(i) for i in graph.initializer]
    weights = [a for a in arrays if a.dtype == np.int8 and a.ndim >= 2]
    assert weights
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
@pytest.mark.parametrize("vnni", [True, False])
def test_reduce_range_none_follows_the_cpus_vnni(monkeypatch, trained_cnn, mnist1d, mode, vnni):
    import slimfuse.quantization.config as config

    monkeypatch.setattr(config, "has_vnni", lambda: vnni)
    cfg = QuantConfig(mode=mode)
    assert cfg.reduce_range is None and cfg.reduced_range is (not vnni)
    q = quantize(trained_cnn, cfg, calibration=mnist1d.loader("train", batch_size=64))
    assert q.info["reduce_range"] is (not vnni)
    assert _peak_int8_weight(q) == (127 if vnni else 64)  # 8-bit weights, or 7-bit
