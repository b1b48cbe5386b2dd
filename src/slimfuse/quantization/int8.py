"""The ``dynamic`` and ``static`` handler of :func:`slimfuse.quantize`: int8 for ONNX Runtime.

Optionally smooth activation outliers first (``smoothquant``; with ``max_drop``, only the fewest
layers that keep the budget), then quantize the exported graph, keeping the most sensitive
layers fp32 while the metric drop exceeds ``max_drop`` (mixed precision). The budget is checked
on held-out inputs, never on those that set the scales and ranges
(:func:`~slimfuse.quantization.sensitivity.held_out`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from slimfuse.quantization.api import Job
from slimfuse.quantization.config import Dynamic, Static
from slimfuse.quantization.ptq import prepare, ptq
from slimfuse.quantization.runtime import refresh_edit
from slimfuse.quantization.sensitivity import held_out, mixed_precision
from slimfuse.quantization.smoothquant import smooth, smooth_within, smoothing_of


def quantize_int8(model: nn.Module, cfg: Dynamic | Static, job: Job) -> nn.Module:
    """Post-training int8 of ``model`` (already a copy) as ``cfg`` says."""
    inputs, budget = job.inputs, None
    if cfg.max_drop is not None:
        inputs, budget = held_out(model, job.inputs, cfg, job.task, job.data, job.metric_fn)
    smoothing: dict[str, Any] | None = None
    if cfg.smoothquant is not None and budget is not None:
        model, smoothing = smooth_within(model, inputs, job.example_inputs, cfg, budget.metric)
        smoothing["decided_on"] = budget.decided_on
    elif cfg.smoothquant is not None:
        model = smooth(model, inputs, **smoothing_of(cfg))
    with tempfile.TemporaryDirectory(prefix="slimfuse-quant-") as tmp:
        prep = prepare(model, inputs, job.example_inputs, Path(tmp))
        q = mixed_precision(prep, cfg, budget) if budget is not None else ptq(prep, cfg)
    if cfg.smoothquant is not None:
        q.info["smoothed_layers"] = list(getattr(model, "smoothed_layers", []))
        q.info["smoothing_folded"] = dict(getattr(model, "smoothing_folded", {}))
        if smoothing is not None:
            q.info["smoothing_search"] = smoothing
        refresh_edit(q)
    return q
