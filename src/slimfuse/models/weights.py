"""Weights files read without trusting them.

A safetensors file is checked before a byte of it is used: the header's length, JSON, dtypes,
shapes and offsets (in the file, non-overlapping, no gaps, sizes that match the shapes). A
``.pt`` file is loaded with ``weights_only=True``; one that needs full pickle is refused unless
the caller opts in, and a file that is neither is "not a PyTorch file". :func:`check_fits`
compares the tensors a file holds with the ones a model expects (names, shapes, dtypes) and
says everything that differs in one line, so a F32 tensor relabelled I32 or a transposed
weight is refused instead of being loaded.
"""

from __future__ import annotations

import json
import math
import pickle
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import ModelError, UnsafeFileError

UNSAFE_FLAG = "--unsafe-pickle"
# a sparse weight in a bundle: its non-zero values and one bit per weight (slimfuse.pruning.sparse)
VALUES = ".__values"
BITMASK = ".__bitmask"
MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header

# safetensors dtype -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_TORCH_NAMES = {
    torch.bool: "BOOL",
    torch.uint8: "U8",
    torch.int8: "I8",
    torch.int16: "I16",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int32: "I32",
    torch.float32: "F32",
    torch.int64: "I64",
    torch.float64: "F64",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _TORCH_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def read_header(path: str | Path) -> dict[str, tuple[str, list[int]]]:
    """``{name: (dtype, shape)}`` of a safetensors file, after checking its whole layout."""
    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size < 8:
        raise ModelError(
            f"{name}: {size} bytes, truncated (a safetensors file starts with an 8-byte header length)"
        )
    with path.open("rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > min(size - 8, MAX_HEADER):
            raise ModelError(
                f"{name}: header length {n} but the file has {size} bytes; not a safetensors "
                "file, or truncated"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{name}: the header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise ModelError(f"{name}: the header is not a JSON object; not a safetensors file")
    header.pop("__metadata__", None)
    spans = []
    out: dict[str, tuple[str, list[int]]] = {}
    for key, entry in header.items():
        ok = (
            isinstance(entry, dict)
            and entry.get("dtype") in DTYPE_BYTES
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"])
        )
        if not ok:
            raise ModelError(
                f"{name}: tensor {key!r} has a malformed entry ({str(entry)[:80]}); expected "
                "dtype, shape and data_offsets"
            )
        start, end = entry["data_offsets"]
        want = math.prod(entry["shape"]) * DTYPE_BYTES[entry["dtype"]]
        if end - start != want:
            raise ModelError(
                f"{name}: tensor {key!r} ({entry['dtype']} {entry['shape']}) needs {want} bytes "
                f"but its offsets span {end - start}"
            )
        spans.append((start, end, key))
        out[key] = (entry["dtype"], list(entry["shape"]))
    data = size - 8 - n
    at = 0
    for start, end, key in sorted(spans):
        if start != at:
            what = "overlaps the one before" if start < at else "leaves a gap before it"
            raise ModelError(f"{name}: tensor {key!r} {what} (offset {start}, expected {at})")
        at = end
    if at != data:
        raise ModelError(
            f"{name}: the tensors take {at} bytes but the file holds {data} after the header "
            f"({'truncated' if at > data else 'trailing bytes'})"
        )
    return out


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, after :func:`read_header` checked its layout."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_header(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{Path(path).name}: cannot read ({str(exc)[:160]})") from exc


def _kind_of_torch_file(path: Path) -> str:
    """``zip`` (torch.save's format), ``pickle`` (the legacy one) or ``other``."""
    with path.open("rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in {bytes([p]) for p in range(2, 6)}:
        return "pickle"
    return "other"


def load_weights(
    path: str | Path, *, unsafe_pickle: bool = False
) -> dict[str, torch.Tensor] | nn.Module:
    """Weights from ``.safetensors``, or a ``.pt``/``.pth`` state dict loaded with ``weights_only=True``.

    A ``.pt`` that needs full pickle is refused unless ``unsafe_pickle`` is set (CLI: ``--unsafe-pickle``);
    with it, a pickled whole module is returned as is.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    if _kind_of_torch_file(path) == "other":
        raise ModelError(
            f"{path.name}: not a PyTorch file (neither torch.save's zip format nor a pickle); "
            "expected a state-dict .pt or a .safetensors file"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not unsafe_pickle:
            raise UnsafeFileError(
                f"{path.name} is a full pickle, which can run arbitrary code when loaded "
                f"({str(exc).splitlines()[0][:120]}); refusing. Pass {UNSAFE_FLAG} "
                "(unsafe_pickle=True) only if you trust the file, or save a state dict / safetensors"
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit opt-in
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(
            f"{path.name}: not a readable PyTorch file ({str(exc).splitlines()[0][:120]})"
        ) from exc
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"{path.name}: expected a state dict of tensors, found {type(obj).__name__}"
        )
    return obj


def _describe(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def expected_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors ``model.load_state_dict`` asks for (parameters and persistent buffers by
    their state-dict names), before any state-dict hook encodes them."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for name, p in module._parameters.items():
            if p is not None:
                out[dot + name] = p
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                out[dot + name] = b
    return out


def check_fits(
    model: nn.Module, state: dict[str, Any], what: str, *, partial: bool = False
) -> None:
    """One line saying everything in which ``state`` (from a file) differs from what ``model``
    expects: missing and unexpected names, shapes (a transposed weight named as such), dtypes.

    A sparse weight stored as ``<name>.__values`` + ``<name>.__bitmask`` counts as ``<name>``
    with its values' dtype and a bitmask of the right length. ``partial`` allows missing names
    (weights given for part of a model).
    """
    want = expected_tensors(model)
    problems: list[str] = []
    missing: list[str] = []
    used: set[str] = set()
    for key, ref in want.items():
        if key in state:
            used.add(key)
            got = state[key]
            shape, dtype = list(got.shape), got.dtype
            if shape != list(ref.shape):
                hint = " (transposed?)" if shape == list(ref.shape)[::-1] and len(shape) > 1 else ""
                problems.append(
                    f"{key!r} has shape {shape} in the file, the model expects {list(ref.shape)}{hint}"
                )
            elif dtype != ref.dtype:
                problems.append(
                    f"{key!r} is {dtype_name(dtype)} in the file, the model expects {dtype_name(ref.dtype)}"
                )
        elif key + VALUES in state and key + BITMASK in state:
            used |= {key + VALUES, key + BITMASK}
            values, bits = state[key + VALUES], state[key + BITMASK]
            ok = (
                values.dtype == ref.dtype
                and values.dim() == 1
                and bits.dtype == torch.uint8
                and bits.numel() == (ref.numel() + 7) // 8
                and values.numel() == _ones(bits, ref.numel())
            )
            if not ok:
                problems.append(f"{key!r}'s sparse encoding does not fit {list(ref.shape)}")
        elif not partial:
            missing.append(key)
    unexpected = sorted(set(state) - used)
    if missing:
        problems.insert(0, f"missing {_describe(missing)}")
    if unexpected:
        problems.insert(1 if missing else 0, f"unexpected {_describe(unexpected)}")
    if problems:
        raise ModelError(f"{what}: the weights do not fit the model: {'; '.join(problems[:4])}")


def _ones(bits: torch.Tensor, n: int) -> int:
    return int(np.unpackbits(bits.numpy())[:n].sum())
