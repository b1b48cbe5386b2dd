"""Bytes per stage of Deep Compression, as in the paper's tables, for a weight-shared model.

:func:`storage_report` takes a model with weight-shared layers (``slimfuse.quantize(model,
Shared(...))``) or its bundle folder and gives, for those layers:

- ``dense``: fp32, every weight;
- ``pruned``: the non-zero weights in fp32 plus their relative indices (the gaps between
  non-zero positions in fixed-width fields, fillers where a gap is longer: the paper's format,
  the width chosen per layer for the fewest bytes);
- ``quantized``: the cluster index of each entry in ``bits`` bits plus the same gaps, plus the
  fp32 codebook;
- ``huffman``: both streams Huffman coded, as ``model.sfz`` stores them;

the other tensors (biases, layers left dense) in fp32 in every stage, and for comparison
general-purpose compressors (zlib and lzma, both at their strongest) on the same weights:
dense fp32, int8 (symmetric per tensor) and the shared indices (one byte per weight) with
their codebooks. A bundle also reports the files it holds (``model.safetensors``,
``model.sfz``).
"""

from __future__ import annotations

import lzma
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimfuse.errors import ModelError
from slimfuse.models.bundle import SHARED, WEIGHTS, load
from slimfuse.models.sfz import MAX_GAP_BITS, SharedTensor, encode_layer

STAGES = ("dense", "pruned", "quantized", "huffman")


def _entries(codes: np.ndarray, gap_bits: int) -> int:
    pos = np.flatnonzero(codes.reshape(-1) >= 0)
    gaps = np.diff(np.concatenate([[-1], pos]))
    return int(((gaps - 1) // (1 << gap_bits) + 1).sum())


def _fixed(codes: np.ndarray, value_bits: int) -> tuple[int, int]:
    """(bytes, gap bits) of entries of ``value_bits`` + a fixed-width gap, the best width."""
    best = min(
        (math.ceil(_entries(codes, g) * (value_bits + g) / 8), g)
        for g in range(1, MAX_GAP_BITS + 1)
    )
    return best


def _compressed(raw: bytes) -> dict[str, int]:
    return {
        "zlib": len(zlib.compress(raw, 9)),
        "lzma": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }


def _int8(w: np.ndarray) -> bytes:
    scale = float(np.abs(w).max()) / 127 or 1.0
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8).tobytes()


def storage_report(model: nn.Module | str | Path) -> dict[str, Any]:
    """Bytes of the weight-shared model (or bundle folder) at each Deep Compression stage, per
    layer and in total, with ``ratio`` (dense / stage) and general-purpose compressors on the
    same weights; see the module's text."""
    files: dict[str, int] = {}
    if isinstance(model, (str, Path)):
        folder = Path(model)
        model = load(folder)
        files = {
            f: (folder / f).stat().st_size for f in (WEIGHTS, SHARED) if (folder / f).is_file()
        }
    layers = {n: m for n, m in model.named_modules() if callable(getattr(m, "stored", None))}
    if not layers:
        raise ModelError(
            f"{type(model).__name__} has no weight-shared layer; quantize it with mode shared first"
        )
    rows = []
    shared_keys = set()
    dense_w, int8_w, index_w = [], [], []
    for name, layer in layers.items():
        t: SharedTensor = layer.stored()
        shared_keys |= {f"{name}.codes", f"{name}.codebook"}
        w = t.dense()
        n, nnz, k = w.size, int((t.codes >= 0).sum()), len(t.codebook)
        pruned, pruned_gap = _fixed(t.codes, 32)
        quant, quant_gap = _fixed(t.codes, t.bits)
        rows.append(
            {
                "layer": name,
                "weights": n,
                "nonzero": nnz,
                "density": round(nnz / n, 4) if n else 0.0,
                "bits": t.bits,
                "values": k,
                "gap_bits": {"pruned": pruned_gap, "quantized": quant_gap},
                "dense": 4 * n,
                "pruned": pruned,
                "quantized": quant + 4 * k,
                "huffman": len(encode_layer(name, t)),
            }
        )
        dense_w.append(w.astype("<f4").tobytes())
        int8_w.append(_int8(w))
        index_w.append(
            (t.codes.astype(np.int16) + 1).astype(np.uint16 if k > 255 else np.uint8).tobytes()
        )
        index_w.append(t.codebook.astype("<f4").tobytes())
    other = 0
    for key, v in model.state_dict().items():
        if key not in shared_keys and isinstance(v, torch.Tensor):
            other += v.numel() * (4 if v.is_floating_point() else v.element_size())
    totals = {s: sum(r[s] for r in rows) + other for s in STAGES}
    report = {
        "layers": rows,
        "other_bytes": other,
        "total": totals,
        "ratio": {s: round(totals["dense"] / totals[s], 2) for s in STAGES},
        "general_purpose": {
            "fp32": _compressed(b"".join(dense_w)),
            "int8": _compressed(b"".join(int8_w)),
            "shared_indices": _compressed(b"".join(index_w)),
        },
    }
    if files:
        report["files"] = files
        report["ratio"]["files"] = round(totals["dense"] / sum(files.values()), 2)
    return report


def storage_table(report: dict[str, Any]) -> str:
    """The report as a markdown table: bytes per stage, per layer and in total."""
    lines = [
        "| layer | weights | density | bits (values) | dense | pruned + index | quantized | Huffman |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| {r['layer']} | {r['weights']:,} | {100 * r['density']:.1f}% | {r['bits']} "
            f"({r['values']}) | {r['dense']:,} | {r['pruned']:,} | {r['quantized']:,} | "
            f"{r['huffman']:,} |"
        )
    t, ratio = report["total"], report["ratio"]
    lines.append(
        f"| total (+{report['other_bytes']:,} B other, fp32) | | | | {t['dense']:,} | "
        f"{t['pruned']:,} ({ratio['pruned']}x) | {t['quantized']:,} ({ratio['quantized']}x) | "
        f"{t['huffman']:,} ({ratio['huffman']}x) |"
    )
    return "\n".join(lines)
