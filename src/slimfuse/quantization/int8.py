"""The ``dynamic`` and ``static`` handler of :func:`slimfuse.quantize`: int8 for ONNX Runtime.

Optionally smooth activation outliers first (``smoothquant``; with ``max_drop``, only the fewest
layers that keep the budget), then quantize the exported graph, keeping the most sensitive
layers fp32 while the metric drop exceeds ``max_drop`` (mixed precision).
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
from slimfuse.quantization.sensitivity import agreement_metric, mixed_precision
from slimfuse.quantization.smoothquant import smooth, smooth_within


def quantize_int8(model: nn.Module, cfg: Dynamic | Static, job: Job) -> nn.Module:
    """Post-training int8 of ``model`` (already a copy) as ``cfg`` says."""
    smoothing: dict[str, Any] | None = None
    if cfg.smoothquant is not None and cfg.max_drop is not None:
        budget_metric = job.metric_fn or agreement_metric(model, job.inputs, job.task)
        model, smoothing = smooth_within(model, job.inputs, job.example_inputs, cfg, budget_metric)
    elif cfg.smoothquant is not None:
        model = smooth(model, job.inputs, cfg.smoothquant, min_ratio=cfg.smooth_min_ratio)
    with tempfile.TemporaryDirectory(prefix="slimfuse-quant-") as tmp:
        prep = prepare(model, job.inputs, job.example_inputs, Path(tmp))
        if cfg.max_drop is not None:
            q = mixed_precision(prep, cfg, job.metric_fn, job.task)
        else:
            q = ptq(prep, cfg)
    if cfg.smoothquant is not None:
        q.info["smoothed_layers"] = list(getattr(model, "smoothed_layers", []))
        if smoothing is not None:
            q.info["smoothing_search"] = smoothing
        refresh_edit(q)
    return q
