"""Deploy targets: ONNX (ONNX Runtime), ``.ort`` (ONNX Runtime Mobile) and ``.pte`` (ExecuTorch).

:func:`export` picks the format from the file's suffix (or ``format=``) and checks what it
wrote against PyTorch; :func:`runner` opens a written file behind the call of a module
(``runner(x)`` -> tensor), after checking that the file is what its suffix says.

- ``onnx``: :func:`slimfuse.exporting.export_onnx` (checker, parity <= 1e-4).
- ``ort``: the ONNX graph converted by ONNX Runtime's own converter
  (:mod:`slimfuse.deploy.ortformat`) into the flatbuffer format that ONNX Runtime Mobile's
  reduced builds load; parity as for ONNX.
- ``pte``: an ExecuTorch program lowered to XNNPACK, fp32 or int8 through PT2E with the
  XNNPACK quantizer (:mod:`slimfuse.deploy.pte`); needs the ``mobile`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimfuse.errors import ExportError

FORMATS = ("onnx", "ort", "pte")
ENGINE_OF = {"onnx": "onnxruntime", "ort": "onnxruntime", "pte": "executorch"}


def format_of(path: str | Path, format: str | None = None) -> str:
    """``format`` if given, else the suffix of ``path`` (``.onnx``, ``.ort``, ``.pte``)."""
    if format is not None:
        if format not in FORMATS:
            raise ExportError(f"unknown export format {format!r}: expected one of {FORMATS}")
        return format
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ExportError(
            f"{Path(path).name}: cannot tell the format from the suffix {Path(path).suffix!r}; "
            "expected .onnx, .ort or .pte (or format=)"
        )
    return suffix


def export(
    model: Any,
    example_inputs: Any,
    path: str | Path,
    *,
    format: str | None = None,
    int8: bool = False,
    calibration: Any = None,
    calibration_batches: int = 8,
    atol: float | None = None,
    **kwargs: Any,
) -> Path:
    """Export ``model`` to ``path`` in the format its suffix names (or ``format``).

    ``int8`` (``.pte`` only) quantizes through PT2E with the XNNPACK quantizer, calibrated on
    ``calibration_batches`` batches of ``calibration`` (a :class:`~slimfuse.data.Data`, whose
    shuffled train split is read as for static int8, or an iterable of batches). Other keyword
    arguments go to the format's exporter (``opset``, ``parity``, ``max_batch``, ...).
    """
    fmt = format_of(path, format)
    if int8 and fmt != "pte":
        raise ExportError(
            f"int8 is for .pte (ExecuTorch); for {fmt} quantize the model first "
            "(slimfuse quantize), then export the int8 model"
        )
    if atol is not None:
        kwargs["atol"] = atol
    if fmt == "onnx":
        from slimfuse.exporting import export_onnx

        return export_onnx(model, example_inputs, path, **kwargs)
    if fmt == "ort":
        from slimfuse.deploy.ortformat import export_ort

        return export_ort(model, example_inputs, path, **kwargs)
    from slimfuse.deploy.pte import export_pte

    return export_pte(
        model,
        example_inputs,
        path,
        int8=int8,
        calibration=calibration,
        calibration_batches=calibration_batches,
        **kwargs,
    )


def runner(path: str | Path, threads: int | None = 1) -> Any:
    """A runner for a written file (``.onnx`` / ``.ort``: ONNX Runtime, ``.pte``: ExecuTorch),
    checked first: a file that is not what its suffix says is one line."""
    fmt = format_of(path)
    if fmt == "pte":
        from slimfuse.deploy.pte import PteRunner

        return PteRunner(path, threads=threads)
    from slimfuse.deploy.ortformat import check_file
    from slimfuse.exporting import OrtRunner

    check_file(path, fmt)
    return OrtRunner(path, threads=threads)
