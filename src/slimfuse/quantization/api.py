"""``slimfuse.quantize(model, QuantConfig(mode=...), calibration=loader)``: config in, model out."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimfuse.errors import ConfigError
from slimfuse.quantization.calibration import CalibrationSource, calibration_inputs
from slimfuse.quantization.config import QuantConfig
from slimfuse.quantization.runtime import refresh_edit


def _first_example(inputs: Any) -> Any:
    """Batch 1 of the first calibration batch (the export example)."""
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(v[:1] for v in inputs)
    return inputs[:1]


def quantize(
    model: nn.Module,
    config: QuantConfig | dict[str, Any] | None = None,
    calibration: CalibrationSource | None = None,
    *,
    example_inputs: Any = None,
    data: Any = None,
    task: str | None = None,
    metric_fn: Callable[[nn.Module], float] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Quantize ``model`` as ``config`` says and return the new model (the input is not changed).

    - ``calibration``: a loader / iterable of batches or a ``forward_loop(model)``; needed by
      ``static``, ``qat``, ``smoothquant`` and mixed precision; read before any compute.
    - ``example_inputs``: batch-1 inputs for export when there is no calibration data.
    - ``data`` / ``task``: the training data and task for ``qat`` and mixed precision's default
      metric (``task`` defaults to the one the model records, else classification: top-1
      agreement; an embedding model is held to cosine).
    - ``metric_fn(model) -> float``: the metric that mixed precision keeps within
      ``max_drop`` (default: agreement with the fp32 model on the calibration inputs).

    ``dynamic`` / ``static`` / ``qat`` return a :class:`~slimfuse.quantization.runtime.QuantizedModel`
    (an int8 ONNX Runtime graph); ``weight-only`` returns the model with packed int8/int4 layers.
    """
    if isinstance(config, dict):
        config = QuantConfig.from_dict(config)
    config = config or QuantConfig()
    if overrides:
        config = QuantConfig.from_dict({**config.to_dict(), **overrides})
    config.check_applies()
    from slimfuse.models.source import check_float_model, task_of

    check_float_model(
        model, "quantizing", "quantize the float model it came from (its bundle before quantize)"
    )
    model = model.eval()
    if task is None:
        task = task_of(model)
    if config.mode == "weight-only":
        import copy

        from slimfuse.quantization.weight_only import quantize_weights

        return quantize_weights(copy.deepcopy(model), config)
    needs_data = (
        config.mode in ("static", "qat") or config.max_drop is not None or config.smoothquant
    )
    inputs: list[Any] = []
    if calibration is not None or needs_data:
        if calibration is None:
            raise ConfigError(
                f"mode {config.mode!r} with these settings needs calibration data "
                "(a loader or a forward_loop); got none"
            )
        inputs = calibration_inputs(model, calibration, max_batches=config.calibration_batches)
    if example_inputs is None:
        if not inputs:
            raise ConfigError(
                "dynamic quantization needs example_inputs (or calibration data) to export the model"
            )
        example_inputs = _first_example(inputs[0])
    if config.mode == "qat":
        from slimfuse.quantization.qat import qat

        return qat(model, config, inputs, example_inputs, data=data, task=task)
    smoothing: dict[str, Any] | None = None
    if config.smoothquant is not None and config.max_drop is not None:
        from slimfuse.quantization.sensitivity import agreement_metric
        from slimfuse.quantization.smoothquant import smooth_within

        budget_metric = metric_fn or agreement_metric(model, inputs, task)
        model, smoothing = smooth_within(model, inputs, example_inputs, config, budget_metric)
    elif config.smoothquant is not None:
        from slimfuse.quantization.smoothquant import smooth

        model = smooth(model, inputs, config.smoothquant, min_ratio=config.smooth_min_ratio)
    from slimfuse.quantization.ptq import prepare, ptq

    with tempfile.TemporaryDirectory(prefix="slimfuse-quant-") as tmp:
        prep = prepare(model, inputs, example_inputs, Path(tmp))
        if config.max_drop is not None:
            from slimfuse.quantization.sensitivity import mixed_precision

            q = mixed_precision(prep, config, metric_fn, task)
        else:
            q = ptq(prep, config)
    if config.smoothquant is not None:
        q.info["smoothed_layers"] = list(getattr(model, "smoothed_layers", []))
        if smoothing is not None:
            q.info["smoothing_search"] = smoothing
        refresh_edit(q)
    return q


@torch.no_grad()
def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: ``10 log10(|ref|^2 / |ref - approx|^2)``."""
    ref = reference.detach().double()
    noise = (ref - approx.detach().double()).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
