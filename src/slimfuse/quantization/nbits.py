"""Weight-only Linear layers as ONNX Runtime's ``com.microsoft::MatMulNBits`` in an ONNX export.

``MatMulNBits`` multiplies a float input by a weight stored block-quantized along the input
dimension: ``B`` is ``uint8`` of shape ``(N, k_blocks, block_size * bits / 8)``, codes packed low
nibble first, one float scale per block, and without ``zero_points`` the zero point is
``2 ** (bits - 1)``. That is the layout slimfuse's bundles already hold (``qweight`` is ``(out,
groups, group_size / 2)``, the int4 code ``q`` stored as ``q + 8``; ``scales`` is ``(out,
groups)``), so the file keeps the bundle's packed int4 weights byte for byte. int8 weights are
stored signed (``q``); the op reads ``q + 128`` as ``uint8``, which the graph computes from the
int8 tensor (the exporter or ONNX Runtime folds it at load, the file keeps int8).

ONNX Runtime runs the op with its blocked n-bit GEMM kernels on the packed weights instead of
folding them into fp32 weights at load (the float decoding): the weights stay 4 or 8 bits in
memory too. ``accuracy_level`` says how it may compute: unset (``0``, the default here) or ``1``
keep the input in fp32, so the export's parity check against PyTorch holds at 1e-4; ``4``
quantizes the input to int8 per block and uses integer dot products (VNNI where the CPU has it):
faster on MiniLM's layers, no longer the numbers PyTorch computes. Measured on MiniLM (one
thread, AVX-512 VNNI, ``benchmarks/results/quantize_weight_only.md``): int4 with fp32 input runs
at about fp32 speed, with int8 input 1.1-1.15x; int8 with int8 input 1.27x, but with fp32 input
0.49x at batch 1, so int8 layers export as ``MatMulNBits`` only once an accuracy level is set
(:func:`set_accuracy_level`) and keep the float decoding otherwise. The op needs a power-of-two
``block_size`` of at least 16; other group sizes, convolutions and inputs of rank 1 keep the
float decoding too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch

DOMAIN = "com.microsoft"
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
_ENABLED = [True]


@contextlib.contextmanager
def float_decoding() -> Iterator[None]:
    """Exports inside this block keep the float decoding of every weight-only layer (the
    graph before ``MatMulNBits``): what the benchmark and the tests compare against."""
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


def block_size_ok(group_size: int) -> bool:
    """MatMulNBits takes power-of-two blocks of at least 16 weights."""
    return group_size >= 16 and group_size & (group_size - 1) == 0


@functools.cache
def ort_supports(bits: int) -> bool:
    """Whether the installed ONNX Runtime runs ``MatMulNBits`` with ``bits`` on the CPU and gets
    the right numbers (int8 came later than int4): one tiny session, cached."""
    import numpy as np

    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return False
    k, n = 32, 2
    codes = np.arange(k * n, dtype=np.int64).reshape(n, k) % (1 << bits)
    if bits == 8:
        packed = codes.astype(np.uint8).reshape(n, 1, k)
    elif bits == 4:
        packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8).reshape(n, 1, k // 2)
    else:
        return False
    scales = np.full((n, 1), 0.5, dtype=np.float32)
    node = helper.make_node(
        "MatMulNBits", ["a", "b", "s"], ["y"], domain=DOMAIN, K=k, N=n, bits=bits, block_size=k
    )
    graph = helper.make_graph(
        [node],
        "probe",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales, "s")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)]
    )
    a = np.linspace(-1, 1, k, dtype=np.float32)[None]
    want = a @ ((codes - (1 << (bits - 1))) * 0.5).T.astype(np.float32)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4
        sess = ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )
        got = sess.run(None, {"a": a})[0]
    except Exception:
        return False
    return bool(np.allclose(got, want, atol=1e-4))


@functools.cache
def ort_takes_bias() -> bool:
    """Whether this ONNX Runtime's ``MatMulNBits`` has the ``bias`` input (added after int4)."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as capi

        schemas = capi.get_all_operator_schema()
    except Exception:
        return False
    return any(
        s.name == "MatMulNBits" and s.domain == DOMAIN and "bias" in [i.name for i in s.inputs]
        for s in schemas
    )


def can_export(layer: Any) -> bool:
    """Whether ``layer`` (a ``WeightOnlyLayer``) has a ``MatMulNBits`` form in this ONNX Runtime."""
    return (
        _ENABLED[-1]
        and layer.kind == "Linear"
        and block_size_ok(layer.group_size)
        and hasattr(torch.onnx, "ops")
        and hasattr(torch.onnx.ops, "symbolic")
        and ort_supports(layer.bits)
    )


def exportable(layer: Any) -> bool:
    """Whether ``layer`` exports as ``MatMulNBits``: int4 always (where it can), int8 once an
    ``accuracy_level`` is set (unset, 8-bit ``MatMulNBits`` with fp32 input ran 0.49x (batch 1)
    and 0.92x (batch 32) of fp32 on MiniLM, where the float decoding runs at fp32 speed)."""
    level = int(getattr(layer, "accuracy_level", 0) or 0)
    return can_export(layer) and (layer.bits == 4 or level > 0)


def in_dynamo_export() -> bool:
    """Inside ``torch.onnx.export(dynamo=True)``: where ``torch.onnx.ops.symbolic`` applies (the
    TorchScript exporter has no translation for it)."""
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def matmul_nbits(layer: Any, x: torch.Tensor) -> torch.Tensor:
    """The ``MatMulNBits`` node of ``layer`` applied to ``x`` (only meaningful inside an export)."""
    out_features, in_features = layer.shape
    weights = layer.qweight
    if layer.bits == 8:  # the op reads unsigned codes with zero point 128
        weights = (weights.to(torch.int16) + 128).to(torch.uint8)
    attrs: dict[str, int] = {
        "K": in_features,
        "N": out_features,
        "bits": layer.bits,
        "block_size": layer.group_size,
    }
    level = int(getattr(layer, "accuracy_level", 0) or 0)
    if level:
        attrs["accuracy_level"] = level
    inputs: list[torch.Tensor | None] = [x, weights, layer.scales]
    fused_bias = layer.bias is not None and ort_takes_bias()
    if fused_bias:
        inputs += [None, None, layer.bias]
    y = torch.onnx.ops.symbolic(
        f"{DOMAIN}::MatMulNBits",
        inputs,
        attrs,
        dtype=x.dtype,
        shape=(*x.shape[:-1], out_features),
        version=1,
    )
    return y + layer.bias if layer.bias is not None and not fused_bias else y


def set_accuracy_level(model: torch.nn.Module, level: int) -> int:
    """Set ``accuracy_level`` on every weight-only layer of ``model`` that can export as
    ``MatMulNBits``; returns how many. ``1`` exports int8 layers as ``MatMulNBits`` too (fp32
    input, PyTorch's numbers); ``4`` computes with int8 input (faster on MiniLM's layers, not
    PyTorch's numbers: give the export an ``atol`` that fits, or ``parity=False``); ``0`` is the
    default. Not stored in the bundle: a setting of the export."""
    if level not in ACCURACY_LEVELS:
        raise ValueError(f"accuracy_level must be one of {ACCURACY_LEVELS}; got {level!r}")
    n = 0
    for m in model.modules():
        if hasattr(m, "qweight") and hasattr(m, "accuracy_level") and can_export(m):
            m.accuracy_level = level
            n += 1
    return n
