"""Quantization: dynamic and static int8 (ONNX Runtime), weight-only int8/int4, QAT, mixed precision.

::

    from slimfuse.quantization import QuantConfig, quantize
    q = quantize(model, QuantConfig(mode="static", calibration="percentile"), calibration=loader)
    q(x)                       # runs the int8 graph in ONNX Runtime
    slimfuse.save(q, "runs/int8")

Calibrate and train in PyTorch, deploy int8 through ONNX Runtime.
"""

from slimfuse.quantization.api import quantize, sqnr_db
from slimfuse.quantization.config import QuantConfig

__all__ = ["QuantConfig", "quantize", "sqnr_db"]
