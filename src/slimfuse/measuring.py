"""One measure for every stage: metric, size, MACs and latency, in torch and ONNX Runtime.

:func:`measure` returns one row per engine in the ``metrics.json`` schema::

    {"stage", "bundle", "engine", "metric", "metric_value", "params", "nonzero_params",
     "size_bytes", "onnx_bytes", "macs", "latency_ms_b1", "latency_ms_b64", "latency_ms_b1_p90",
     "latency_ms_b64_p90", "threads", "file_bytes"}

Engines: ``torch`` (the module), ``onnxruntime`` (an ``.onnx`` export, or a given ``.onnx`` /
``.ort`` file) and ``executorch`` (an fp32 ``.pte`` program lowered to XNNPACK, or a given
``.pte``, run through ``executorch.runtime``: the ``mobile`` extra; ExecuTorch's thread pool is
reset to the thread count). ``file_bytes`` is the size of the file the engine ran (none for
torch).

plus, for regression, ``"mae"`` and ``"r2"`` (:attr:`slimfuse.tasks.Task.reported`).

Latency: fixed thread count (``torch.set_num_threads`` / ORT ``intra_op_num_threads``), warm-up
first, then the median (p50) and p90 of repeated timed calls.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimfuse.atomic import atomic_file
from slimfuse.data import Data
from slimfuse.exporting import OrtRunner, as_tuple, export_onnx, repeat_batch
from slimfuse.models.bundle import stored_bytes, weights_bytes
from slimfuse.tasks import Task, evaluate, forward, get_task, scores

ENGINES = ("torch", "onnxruntime")  # the default rows
ALL_ENGINES = (*ENGINES, "executorch")


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); shared tensors are counted once.

    A module whose weights are not parameters (an int8 graph, packed int4 weights) answers for
    itself and what it holds with its own ``count_params()``.
    """
    seen: set[int] = set()

    def walk(module: nn.Module) -> tuple[int, int]:
        if id(module) in seen:
            return 0, 0
        seen.add(id(module))
        if callable(getattr(module, "count_params", None)):
            return module.count_params()  # type: ignore[operator]
        total = nonzero = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                nonzero += int(torch.count_nonzero(p.detach()))
        for child in module.children():
            t, n = walk(child)
            total, nonzero = total + t, nonzero + n
        return total, nonzero

    return walk(model)


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as a bundle stores them (safetensors, and ``model.sfz`` for
    weight-shared layers)."""
    return weights_bytes(model)


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: Any) -> int | None:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (batch 1)."""
    if callable(getattr(model, "count_macs", None)):  # e.g. an int8 graph: the float model's MACs
        return model.count_macs()  # type: ignore[operator]

    inner: list[int] = []  # modules inside that count themselves (an int8 graph member)
    hooks = [
        m.register_forward_hook(lambda mod, _a, _o: inner.append(mod.count_macs() or 0))
        for m in model.modules()
        if m is not model and callable(getattr(m, "count_macs", None))
    ]
    try:
        with FlopCounterMode(display=False) as counter:
            forward(model.eval(), example_inputs)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    return int(counter.get_total_flops() // 2) + sum(inner)


def time_calls(
    fn: Callable[[], Any], *, warmup: int = 3, min_repeats: int = 10, budget_s: float = 1.0
) -> tuple[float, float]:
    """(p50, p90) in milliseconds of ``fn()`` after a warm-up."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < min_repeats or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))]


class _Threads:
    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


def latency(
    runner: Any, example_inputs: Any, batch: int, threads: int = 1, budget_s: float = 1.0
) -> tuple[float, float]:
    x = repeat_batch(example_inputs, batch)
    if isinstance(runner, OrtRunner):
        args, kwargs, _ = as_tuple(x)
        feeds = runner.feeds(*args, **kwargs)
        return time_calls(lambda: runner.run_numpy(feeds), budget_s=budget_s)
    if not isinstance(runner, nn.Module):  # another engine's runner (ExecuTorch)
        return time_calls(lambda: forward(runner, x), budget_s=budget_s)
    with _Threads(threads), torch.inference_mode():
        return time_calls(lambda: forward(runner, x), budget_s=budget_s)


def measure(
    model: nn.Module | str | Path,
    data: Data,
    task: str | Task = "classification",
    *,
    stage: str = "model",
    bundle: str | Path | None = None,
    onnx_path: str | Path | None = None,
    engines: Iterable[str] = ENGINES,
    split: str = "test",
    threads: int = 1,
    latency_batches: tuple[int, ...] = (1, 64),
    budget_s: float = 1.0,
    example_inputs: Any = None,
    loader: Any = None,
    pte_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Measure a module (and/or its deployed files) on ``data``; one row per engine.

    ``model`` may be a file instead: ``.onnx`` / ``.ort`` (one ``onnxruntime`` row) or ``.pte``
    (one ``executorch`` row), checked before it is run. ``onnx_path`` / ``pte_path`` give the
    files the engines run instead of a fresh fp32 export (an int8 ``.pte``, say).
    """
    task = get_task(task)
    x1 = example_inputs if example_inputs is not None else data.example_input(1)
    loader = loader if loader is not None else data.loader(split, batch_size=256)
    module = model if isinstance(model, nn.Module) else None
    if module is None:
        from slimfuse.deploy import ENGINE_OF, format_of

        engine = ENGINE_OF[format_of(model)]
        if engine == "executorch":
            pte_path = Path(model)
        else:
            onnx_path = Path(model)
        engines = [engine]
    if onnx_path is not None:  # a file given: checked before it is run
        from slimfuse.deploy.ortformat import check_file

        check_file(onnx_path, "ort" if Path(onnx_path).suffix.lower() == ".ort" else "onnx")
    engines = list(engines)
    unknown = [e for e in engines if e not in ALL_ENGINES]
    if unknown:
        raise ValueError(f"unknown engine {unknown[0]!r}: expected one of {ALL_ENGINES}")
    params = nonzero = size = macs = None
    if module is not None:
        module.eval()
        params, nonzero = count_params(module)
        size = state_bytes(module)
        macs = count_macs(module, x1)
    if bundle is not None and (Path(bundle) / "model.safetensors").is_file():
        size = stored_bytes(bundle)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if "onnxruntime" in engines and onnx_path is None and module is not None:
            onnx_path = export_onnx(module, x1, Path(tmp) / "model.onnx")
        if "executorch" in engines and pte_path is None and module is not None:
            from slimfuse.deploy.pte import export_pte

            pte_path = export_pte(module, x1, Path(tmp) / "model.pte")
        onnx_bytes = Path(onnx_path).stat().st_size if onnx_path else None
        for engine in engines:
            file_bytes = None
            if engine == "torch":
                if module is None:
                    continue
                runner: Any = module
            elif engine == "onnxruntime":
                runner = OrtRunner(onnx_path, threads=threads)  # type: ignore[arg-type]
                file_bytes = onnx_bytes
            else:
                from slimfuse.deploy.pte import PteRunner

                runner = PteRunner(pte_path, threads=threads)  # type: ignore[arg-type]
                file_bytes = Path(pte_path).stat().st_size  # type: ignore[arg-type]
            extra: dict[str, float] = {}
            with _Threads(threads):
                if task.reported:  # regression: MAE and R2 beside the MSE, in one pass
                    every = scores(runner, loader, task)
                    value, extra = every[task.metric], {k: every[k] for k in task.reported}
                else:
                    value = evaluate(runner, loader, task)
            row: dict[str, Any] = {
                "stage": stage,
                "bundle": str(bundle) if bundle else None,
                "engine": engine,
                "metric": task.metric,
                "metric_value": value,
                **extra,
                "params": params,
                "nonzero_params": nonzero,
                "size_bytes": size,
                "onnx_bytes": onnx_bytes,
                "macs": macs,
                "threads": threads,
                "file_bytes": file_bytes,
            }
            for b in latency_batches:
                p50, p90 = latency(runner, x1, b, threads, budget_s)
                row[f"latency_ms_b{b}"] = round(p50, 4)
                row[f"latency_ms_b{b}_p90"] = round(p90, 4)
            rows.append(row)
    return rows


def write_metrics(path: str | Path, rows: list[dict[str, Any]], task: str, metric: str) -> Path:
    """Write ``metrics.json`` (the schema of the module docstring) atomically: a run killed
    mid-write leaves the previous file, which ``--resume`` reads."""
    path = Path(path)
    with atomic_file(path) as tmp:
        tmp.write_text(
            json.dumps({"task": task, "metric": metric, "stages": rows}, indent=2) + "\n"
        )
    return path
