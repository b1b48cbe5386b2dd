"""``slimfuse.quantize(model, Static(...), data)``: config in, model out; one handler per mode."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from slimfuse.config import TrainConfig
from slimfuse.errors import ConfigError
from slimfuse.models.source import check_float_model, task_of
from slimfuse.quantization.auto import record_resolved, resolve_mode
from slimfuse.quantization.calibration import CalibrationSource, calibration_inputs
from slimfuse.quantization.config import AnyQuantConfig, QuantConfig
from slimfuse.registry import Registry


def _first_example(inputs: Any) -> Any:
    """Batch 1 of the first calibration batch (the export example)."""
    if isinstance(inputs, dict):
        return {k: v[:1] for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(v[:1] for v in inputs)
    return inputs[:1]


@dataclass
class Job:
    """What a mode's handler gets besides the model (a copy) and its config."""

    inputs: list[Any]  # calibration batches, checked (empty for weight-only)
    example_inputs: Any  # batch-1 inputs for the export
    data: Any  # the training data (QAT, mixed precision's task)
    task: str
    train: TrainConfig | None  # QAT's training
    metric_fn: Callable[[nn.Module], float] | None  # what mixed precision keeps within max_drop
    teacher_objective: Callable[[nn.Module, str], Any] | None  # QAT distill: teacher -> objective


Handler = Callable[[nn.Module, Any, Job], nn.Module]

# mode -> "module:function(model, config, job) -> model"; add a mode with HANDLERS.register
HANDLERS: Registry[Handler] = Registry(
    "quantization mode",
    lazy={
        "dynamic": "slimfuse.quantization.int8:quantize_int8",
        "static": "slimfuse.quantization.int8:quantize_int8",
        "weight-only": "slimfuse.quantization.weight_only:quantize_weight_only",
        "qat": "slimfuse.quantization.qat:quantize_qat",
        "shared": "slimfuse.quantization.shared:quantize_shared",
    },
)


def quantize(
    model: nn.Module,
    config: AnyQuantConfig | dict[str, Any],
    data: Any = None,
    *,
    calibration: CalibrationSource | None = None,
    train: TrainConfig | None = None,
    example_inputs: Any = None,
    task: str | None = None,
    metric_fn: Callable[[nn.Module], float] | None = None,
    teacher_objective: Callable[[nn.Module, str], Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Quantize ``model`` as ``config`` says and return the new model (the input is not changed).

    - ``config``: a :data:`~slimfuse.quantization.config.QuantConfig` (``Static(...)``, a dict
      with ``mode``); dispatched to the handler registered for its mode (:data:`HANDLERS`).
      ``auto`` (``QuantConfig()``, the default) is resolved for ``model`` first
      (:func:`~slimfuse.quantization.auto.resolve_mode`: dynamic for a transformer encoder,
      static otherwise), logged, and recorded in the result's lineage.
    - ``data``: the training data: calibration batches come from its train split (unless
      ``calibration`` is given: a loader / iterable of batches or a ``forward_loop(model)``),
      and QAT trains on it. Calibration data is read and checked before any compute.
    - ``train``: the :class:`~slimfuse.config.TrainConfig` of QAT and of weight sharing's
      centroid fine-tuning (default 5 epochs at lr 1e-3; ``epochs=0``: no fine-tuning).
    - ``task``: defaults to the one the model records, else classification (mixed precision's
      default metric: top-1 agreement; an embedding model is held to cosine).
    - ``metric_fn(model) -> float``: what mixed precision keeps within ``max_drop`` (default:
      agreement with fp32 on held-out inputs: ``data``'s validation split, else calibration
      batches kept apart).
    - ``teacher_objective(teacher, task)``: the distillation objective QAT's ``distill`` uses
      (``slimfuse.quantize`` passes the distillation family's).

    ``dynamic`` / ``static`` / ``qat`` (and ``auto``) return a :class:`~slimfuse.quantization.runtime.QuantizedModel`
    (an int8 ONNX Runtime graph); ``weight-only`` returns the model with packed int8/int4 layers;
    ``shared`` the model with weight-shared layers (a codebook and an index per weight, stored
    Huffman coded in the bundle's ``model.sfz``).
    """
    cfg = QuantConfig.parse(config)
    check_float_model(
        model, "quantizing", "quantize the float model it came from (its bundle before quantize)"
    )
    cfg, auto = resolve_mode(cfg, model, data)
    handler = HANDLERS.get(cfg.mode)
    if train is not None and cfg.mode not in QuantConfig.trains:
        raise ConfigError(
            f"train= applies to modes {', '.join(QuantConfig.trains)} (they train); got mode "
            f"{cfg.mode!r}"
        )
    task = task or task_of(model)
    inputs: list[Any] = []
    if cfg.mode not in ("weight-only", "shared"):
        if calibration is None and data is not None:
            calibration = data.loader(
                "train", batch_size=cfg.calibration_batch_size, shuffle=True, seed=seed
            )
        needs = cfg.mode != "dynamic" or cfg.max_drop is not None or cfg.smoothquant is not None
        if calibration is None and (needs or example_inputs is None):
            raise ConfigError(
                f"mode {cfg.mode!r} needs calibration data (data=, or calibration= a loader or "
                "a forward_loop); got none"
            )
        if calibration is not None:
            # max_drop without data or metric_fn: batches past these are held out to check it
            held = getattr(cfg, "max_drop", None) is not None and data is None and not metric_fn
            extra = cfg.held_out_batches if held else 0
            inputs = calibration_inputs(
                model, calibration, max_batches=cfg.calibration_batches + extra
            )
        if example_inputs is None:
            example_inputs = _first_example(inputs[0])
    if cfg.mode in QuantConfig.trains:
        train = train or TrainConfig(**QuantConfig.trains[cfg.mode], seed=seed, quiet=True)
    job = Job(inputs, example_inputs, data, task, train, metric_fn, teacher_objective)
    out = handler(copy.deepcopy(model).eval(), cfg, job)
    if auto is not None:
        record_resolved(out, cfg, auto)
    return out
