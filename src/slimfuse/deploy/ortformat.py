"""ONNX Runtime Mobile's ``.ort`` format: the ONNX export converted by ONNX Runtime's converter.

``.ort`` is a flatbuffer that ONNX Runtime's reduced (mobile) builds load without protobuf;
the full ONNX Runtime loads it too (``InferenceSession("m.ort")``). The graph is optimized
when converted (ONNX Runtime's "fixed" style, all levels): for ``target_platform="arm"`` (the
default, phones) without the x86-only NCHWc layout, for ``"amd64"`` with it.
"""

from __future__ import annotations

import io
import logging
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from slimfuse.atomic import atomic_file
from slimfuse.errors import ExportError, ModelError
from slimfuse.exporting import PARITY_ATOL, check_parity, export_onnx

ORT_MAGIC = b"ORTM"  # the flatbuffer file identifier, bytes 4-8
PLATFORMS = ("arm", "amd64")


def check_file(path: str | Path, fmt: str) -> None:
    """One line if ``path`` is missing or is not an ``.ort`` / ``.onnx`` file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file (expected an .{fmt} file)")
    with path.open("rb") as f:
        head = f.read(8)
    if fmt == "ort":
        if head[4:8] != ORT_MAGIC:
            raise ModelError(
                f"{path.name} is not an ONNX Runtime .ort file (no ORTM identifier); "
                "expected the output of `slimfuse export --format ort`"
            )
        return
    if head[4:8] == ORT_MAGIC:
        raise ModelError(f"{path.name} is an .ort file, not ONNX: name it .ort")
    import onnx

    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(
            f"{path.name} is not an ONNX model: {str(exc).splitlines()[0][:200]}"
        ) from exc


def to_ort(onnx_path: str | Path, path: str | Path, *, target_platform: str = "arm") -> Path:
    """Convert an ONNX file to ``.ort`` with ONNX Runtime's converter; returns ``path``."""
    if target_platform not in PLATFORMS:
        raise ExportError(f"target_platform {target_platform!r}: expected one of {PLATFORMS}")
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(Path(onnx_path).read_bytes())
        out = Path(tmp) / "out"
        # the converter's loggers are at DEBUG and reach the root logger's handlers
        logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
        try:
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                convert_onnx_models_to_ort(
                    src,
                    output_dir=out,
                    optimization_styles=[OptimizationStyle.Fixed],
                    target_platform=target_platform,
                )
        except Exception as exc:
            text = str(exc).strip() or type(exc).__name__
            raise ExportError(f".ort conversion failed: {text.splitlines()[0][:300]}") from exc
        made = sorted(out.glob("*.ort"))
        if not made:
            raise ExportError(".ort conversion wrote no file (ONNX Runtime's converter)")
        with atomic_file(path) as tmp_out:
            tmp_out.write_bytes(made[0].read_bytes())
    return path


def export_ort(
    model: Any,
    example_inputs: Any,
    path: str | Path,
    *,
    target_platform: str = "arm",
    parity: bool = True,
    atol: float = PARITY_ATOL,
    parity_batch: int = 64,
    **onnx_kwargs: Any,
) -> Path:
    """Export ``model`` to ONNX (:func:`~slimfuse.exporting.export_onnx`, its checks), convert
    it to ``.ort`` and check the ``.ort`` file in ONNX Runtime against PyTorch within ``atol``."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder: expected the path of an .ort file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(
            model, example_inputs, Path(tmp) / "model.onnx", atol=atol, **onnx_kwargs
        )
        to_ort(onnx_path, path, target_platform=target_platform)
    check_file(path, "ort")
    if parity:
        check_parity(model, path, example_inputs, atol=atol, batches=(1, parity_batch))
    return path
