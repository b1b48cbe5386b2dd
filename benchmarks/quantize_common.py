"""Shared helpers of the quantization benchmarks (not a benchmark itself)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimfuse.hardware import describe_cpu

RESULTS = Path(__file__).parent / "results"


def cpu_flags() -> str:
    return describe_cpu()


def interleaved_samples(
    fns: dict[str, Callable[[], Any]], rounds: int = 9
) -> dict[str, list[float]]:
    """Latencies (ms) of each callable, one per round; one call of each per round, in turn.

    A warm-up call of each first. Alternating single calls spreads the noise of a shared CPU
    evenly over the variants, so their ratios hold even when absolute times drift.
    """
    for fn in fns.values():
        fn()
    got: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            got[name].append((time.perf_counter() - t0) * 1e3)
    return got


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int = 9) -> dict[str, float]:
    """Median latency (ms) of each callable over ``rounds`` (:func:`interleaved_samples`)."""
    return {k: statistics.median(v) for k, v in interleaved_samples(fns, rounds).items()}


def ratio_iqr(base: list[float], other: list[float]) -> tuple[float, float]:
    """Quartiles of the per-round speed-ups ``base / other`` (the spread a shared CPU adds)."""
    q = statistics.quantiles([a / b for a, b in zip(base, other, strict=True)], n=4)
    return q[0], q[2]


def ort_session(path_or_bytes: Any, threads: int, disabled: Sequence[str] = ()) -> Any:
    """An ONNX Runtime CPU session; ``disabled``: graph optimizers to leave out."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(
        src, so, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled) or None
    )


def table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
