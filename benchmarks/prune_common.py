"""Shared pieces of the pruning benchmarks: interleaved latency, CPU line, table writing."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slimfuse.hardware import describe_cpu
from slimfuse.measuring import time_calls

RESULTS = Path(__file__).parent / "results"


def cpu_line(threads: int) -> str:
    return f"{describe_cpu()}; {threads} thread(s); torch {torch.__version__}"


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int = 5, budget_s: float = 0.5, min_repeats: int = 5
) -> dict[str, float]:
    """Median over ``rounds`` of each function's p50 (ms), the functions timed in turn each round."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            per[k].append(time_calls(fn, warmup=1, min_repeats=min_repeats, budget_s=budget_s)[0])
    return {k: statistics.median(v) for k, v in per.items()}


def ort_fn(path: Path, inputs: Any, threads: int) -> Callable[[], Any]:
    """A zero-argument call of an ONNX Runtime session on fixed inputs."""
    from slimfuse.exporting import OrtRunner, as_tuple

    runner = OrtRunner(path, threads=threads)
    args, kwargs, _ = as_tuple(inputs)
    feeds = runner.feeds(*args, **kwargs)
    return lambda: runner.run_numpy(feeds)


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def write(name: str, markdown: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(markdown)
    print(markdown)
    return path
