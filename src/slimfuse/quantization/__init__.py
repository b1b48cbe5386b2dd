"""Quantization: dynamic and static int8 (ONNX Runtime), weight-only int8/int4, QAT, mixed
precision, weight sharing (k-means codebooks, Huffman-coded in bundles).

::

    from slimfuse.quantization import Static, quantize
    q = quantize(model, Static(calibration="percentile"), data)   # or QuantConfig(mode="static", ...)
    q = quantize(model, QuantConfig(), data)   # auto: dynamic for a transformer encoder, else static
    q(x)                       # runs the int8 graph in ONNX Runtime
    slimfuse.save(q, "runs/int8")

Calibrate and train in PyTorch, deploy int8 through ONNX Runtime. Names are loaded on first
use, so ``import slimfuse`` stays light.
"""

from __future__ import annotations

from slimfuse.lazy import lazy_names

_NAMES: dict[str, str] = {
    "QuantConfig": "slimfuse.quantization.config",
    "Dynamic": "slimfuse.quantization.config",
    "Static": "slimfuse.quantization.config",
    "WeightOnly": "slimfuse.quantization.config",
    "QAT": "slimfuse.quantization.config",
    "Shared": "slimfuse.quantization.config",
    "Auto": "slimfuse.quantization.config",
    "quantize": "slimfuse.quantization.api",
    "sqnr_db": "slimfuse.quantization.sqnr",
    "storage_report": "slimfuse.quantization.storage",
}

__all__ = sorted(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
