"""ExecuTorch programs (``.pte``): lowered to XNNPACK, fp32 or int8 (PT2E), and run on the host.

:func:`export_pte` exports with ``torch.export`` (dynamic batch, and dynamic sequence for token
inputs), optionally quantizes through PT2E with the XNNPACK quantizer (symmetric per-channel
int8 weights; activations static int8, calibrated on the batches given, or for a transformer
encoder dynamic int8 in the linear layers, as ``quantize``'s ``auto`` mode picks for ONNX
Runtime: static ranges cannot hold an encoder's outlier activations), lowers every op XNNPACK
takes to it (``to_edge_transform_and_lower``) and writes the program. The program also holds a
constant method ``slimfuse_inputs`` with the input names, so :class:`PteRunner` can be called
like the model, with keyword inputs.

:class:`PteRunner` runs a program through ``executorch.runtime``. Threads: ExecuTorch's one
process-wide thread pool (which XNNPACK runs on) is reset to ``threads`` when the runner is
made and again before a call if something else changed it (the runtime's
``_unsafe_reset_threadpool``). A program's inputs have upper bounds (``max_batch``, the
sequence length): a larger batch runs in chunks; a longer sequence is one line.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.atomic import atomic_file
from slimfuse.errors import ExportError, ModelError
from slimfuse.exporting import PARITY_ATOL, as_tuple, repeat_batch
from slimfuse.lazy import quiet_import_logs
from slimfuse.models.source import check_float_model, is_transformer_encoder
from slimfuse.tasks import forward

MOBILE_EXTRA = "pip install 'slimfuse[mobile]'"
PTE_MAGIC = b"ET12"  # the flatbuffer file identifier at bytes 4-8 (schema version 12)
INPUTS_METHOD = "slimfuse_inputs"
MAX_BATCH = 64
MAX_SEQUENCE = 512
log = logging.getLogger(__name__)


def _require(what: str, module: str) -> None:
    quiet_import_logs()  # ExecuTorch imports torchao
    try:
        importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the mobile extra: {MOBILE_EXTRA}") from None


def max_sequence(model: nn.Module) -> int:
    """The longest token sequence ``model`` takes: a transformer config's
    ``max_position_embeddings``, else :data:`MAX_SEQUENCE`."""
    for m in model.modules():
        n = getattr(getattr(m, "config", None), "max_position_embeddings", None)
        if isinstance(n, int) and n > 1:
            return n
    return MAX_SEQUENCE


def _dynamic_shapes(
    inputs: Any, max_batch: int, max_seq: int
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    from torch.export import Dim

    args, kwargs, _ = as_tuple(inputs)
    batch = Dim("batch", min=1, max=max_batch)
    seq = Dim("sequence", min=1, max=max_seq)

    def dims(t: torch.Tensor) -> dict[int, Any]:
        d = {0: batch}
        if not t.is_floating_point() and t.dim() == 2:  # token ids / masks
            d[1] = seq
        return d

    if kwargs:
        return args, kwargs, {k: dims(v) for k, v in kwargs.items()}
    return args, kwargs, tuple(dims(t) for t in args)


def _quantizer(dynamic: bool) -> Any:
    """The XNNPACK quantizer: symmetric per-channel int8 weights; activations int8 per tensor,
    static (calibrated ranges: every supported op) or ``dynamic`` (ranges per call: the linear
    layers only, XNNPACK's dynamically quantized fully connected op)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    class Quantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model: Any) -> Any:
            integer = [
                n
                for n in model.graph.nodes
                if n.op == "call_function"
                and n.target in (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)
                and not (
                    isinstance(n.meta.get("val"), torch.Tensor)
                    and n.meta["val"].is_floating_point()
                )
            ]
            targets = {n: n.target for n in integer}
            for n in integer:  # hidden from the float conversion below
                n.target = torch.ops.aten.sub.Tensor
            try:
                return super().transform_for_annotation(model)
            finally:
                for n, t in targets.items():
                    n.target = t

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    return Quantizer().set_global(config)


def _batches(calibration: Any, n: int, seed: int = 0) -> list[Any]:
    """Model inputs of the first ``n`` batches of ``calibration`` (a Data: its shuffled train
    split, 64 a batch, as static int8 calibrates; or an iterable of batches)."""
    if calibration is None:
        raise ExportError("int8 .pte export needs calibration data (data=, or batches)")
    if hasattr(calibration, "loader") and hasattr(calibration, "train"):
        calibration = calibration.loader("train", batch_size=64, shuffle=True, seed=seed)
    found: list[Any] = []
    for batch in calibration if isinstance(calibration, Iterable) else [calibration]:
        if isinstance(batch, Mapping):
            batch = {k: v for k, v in batch.items() if k not in ("target", "labels")}
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch = batch[0]
        found.append(batch)
        if len(found) >= n:
            break
    if not found:
        raise ExportError("int8 .pte export: the calibration data gave no batches")
    for b in found:
        for t in as_tuple(b)[0] + tuple(as_tuple(b)[1].values()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ExportError("int8 .pte export: a calibration batch holds NaN/Inf")
    return found


def _chunks(inputs: Any, size: int) -> list[Any]:
    args, kwargs, _ = as_tuple(inputs)
    n = ([*args, *kwargs.values()][0]).shape[0]
    out = []
    for i in range(0, n, size):
        part = slice(i, i + size)
        if kwargs:
            out.append({k: v[part] for k, v in kwargs.items()})
        elif isinstance(inputs, (tuple, list)):
            out.append(tuple(t[part] for t in args))
        else:
            out.append(args[0][part])
    return out


@torch.no_grad()
def export_pte(
    model: nn.Module,
    example_inputs: Any,
    path: str | Path,
    *,
    int8: bool = False,
    calibration: Any = None,
    calibration_batches: int = 8,
    max_batch: int = MAX_BATCH,
    max_seq: int | None = None,
    parity: bool = True,
    atol: float = PARITY_ATOL,
    parity_batch: int = 64,
) -> Path:
    """Write ``model`` as an ExecuTorch program lowered to XNNPACK at ``path``; returns it.

    fp32 programs are checked against PyTorch (max abs difference <= ``atol`` at batch 1 and
    ``parity_batch``); int8 ones (PT2E, XNNPACK quantizer; static: ``calibration_batches``
    batches of ``calibration``; dynamic for a transformer encoder, which needs none) run once
    at both batches and must give PyTorch's output shape (their accuracy is what :func:`slimfuse.measure` reports). An int8 ONNX Runtime graph
    (``QuantizedModel``) cannot become a program: export the float model with ``int8``.
    """
    check_float_model(
        model, "ExecuTorch export", "export the float model with --int8 (int8=True) instead"
    )
    _require("ExecuTorch export", "executorch.exir")
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder: expected the path of a .pte file to write")
    if max_batch < 1:
        raise ExportError(f"max_batch {max_batch}: expected at least 1")
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    max_seq = max_seq or max_sequence(model)
    _, _, names = as_tuple(example_inputs)
    example = repeat_batch(example_inputs, 2)  # batch 1 would be specialised by torch.export
    dynamic = int8 and is_transformer_encoder(model)
    calib = []
    if dynamic:  # ranges per call: one call only lets the weights' observers see them
        calib = [example]
    elif int8:
        calib = _batches(calibration, calibration_batches)
    with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantizer = _quantizer(dynamic) if int8 else None
        program = _lower(model, example, names, calib, max_batch, max_seq, quantizer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(program)
        runner = PteRunner(tmp)
        for b in (1, parity_batch):
            x = repeat_batch(example_inputs, b)
            ref = forward(model, x)
            got = forward(runner, x)
            if got.shape != ref.shape:
                raise ExportError(
                    f"ExecuTorch output shape {tuple(got.shape)} at batch {b}; PyTorch gives "
                    f"{tuple(ref.shape)}"
                )
            diff = float((got - ref).abs().max())
            if parity and not int8 and not diff <= atol:
                raise ExportError(
                    f"ExecuTorch differs from PyTorch by {diff:.3g} at batch {b} (allowed {atol:g})"
                )
    kind = ("dynamic int8" if dynamic else "static int8") if int8 else "fp32"
    log.info("wrote %s (%.1f KiB, %s)", path, path.stat().st_size / 1024, kind)
    return path


def _lower(
    model: nn.Module,
    example: Any,
    names: list[str],
    calibration: list[Any],
    max_batch: int,
    max_seq: int,
    quantizer: Any = None,
) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    args, kwargs, shapes = _dynamic_shapes(example, max_batch, max_seq)
    try:
        ep = torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes)
        if quantizer is not None:
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            prepared = prepare_pt2e(ep.module(), quantizer)
            for batch in calibration:
                for part in _chunks(batch, max_batch):
                    forward(prepared, part)
            converted = convert_pt2e(prepared)
            ep = torch.export.export(converted, args, kwargs or None, dynamic_shapes=shapes)
        edge = to_edge_transform_and_lower(
            ep, partitioner=[XnnpackPartitioner()], constant_methods={INPUTS_METHOD: names}
        )
        return edge.to_executorch().buffer
    except Exception as exc:
        what = "int8 (PT2E) " if quantizer is not None else ""
        text = str(exc).strip()
        raise ExportError(
            f"ExecuTorch {what}export of {type(model).__name__} failed: "
            f"{(text.splitlines()[0] if text else type(exc).__name__)[:300]}"
        ) from exc


def check_pte(path: str | Path) -> Path:
    """``path`` if it is an ExecuTorch program, else one line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file (expected a .pte ExecuTorch program)")
    with path.open("rb") as f:
        head = f.read(8)
    if head[4:8] != PTE_MAGIC:
        raise ModelError(
            f"{path.name} is not an ExecuTorch program (no {PTE_MAGIC.decode()} identifier); "
            "expected the output of `slimfuse export --format pte`"
        )
    return path


def set_threads(threads: int | None) -> None:
    """Reset ExecuTorch's process-wide thread pool to ``threads`` (when it has another size)."""
    if not threads:
        return
    with _native_stderr_quiet():  # the runtime's C++ logs its CPU probing and every reset
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(int(threads))


@contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (native code's own log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class PteRunner:
    """An ExecuTorch program behind the call of a module: ``runner(x)`` -> tensor."""

    def __init__(self, path: str | Path, threads: int | None = 1) -> None:
        _require("running a .pte", "executorch.runtime")
        from executorch.runtime import Runtime

        self.path = check_pte(path)
        self.threads = threads
        set_threads(threads)
        try:
            self.program = Runtime.get().load_program(self.path)
            self.method = self.program.load_method("forward")
            meta = self.method.metadata
            self.input_meta = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        except Exception as exc:
            raise ModelError(f"{self.path.name}: ExecuTorch cannot load it ({exc})") from exc
        self.input_names = [f"input_{i}" for i in range(len(self.input_meta))]
        if INPUTS_METHOD in self.program.method_names:
            names = self.program.load_method(INPUTS_METHOD).execute([])
            if len(names) == len(self.input_meta) and all(isinstance(n, str) for n in names):
                self.input_names = list(names)
        self.max_batch = int(self.input_meta[0].sizes()[0]) if self.input_meta else 1
        self.training = False

    def _values(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
        values = list(args) + [kwargs[k] for k in self.input_names[len(args) :] if k in kwargs]
        if len(values) != len(self.input_names):
            raise ExportError(
                f"{self.path.name} takes inputs {self.input_names}; got {len(values)} values"
            )
        out = []
        for name, v, meta in zip(self.input_names, values, self.input_meta, strict=True):
            t = torch.as_tensor(v).contiguous()
            limit = list(meta.sizes())
            if t.dim() != len(limit) or any(
                s > m for s, m in zip(t.shape[1:], limit[1:], strict=True)
            ):
                raise ExportError(
                    f"{self.path.name}: input {name!r} of shape {tuple(t.shape)}; the program "
                    f"takes at most {tuple(limit)}"
                )
            out.append(t)
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        values = self._values(args, kwargs)
        set_threads(self.threads)
        n = values[0].shape[0]
        outs = [
            self.method.execute([v[i : i + self.max_batch] for v in values])[0]
            for i in range(0, n, self.max_batch)
        ]
        return outs[0].clone() if len(outs) == 1 else torch.cat(outs)

    def eval(self) -> PteRunner:
        return self
