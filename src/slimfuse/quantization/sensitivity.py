"""Sensitivity analysis and mixed precision.

:func:`sensitivity` quantizes each candidate layer alone and measures the output SQNR against
fp32 and the metric drop. :func:`mixed_precision` quantizes everything, and while the drop is
over ``max_drop`` keeps the most sensitive layers in fp32, fewest first, until it holds.

The drop is measured on held-out inputs (:func:`held_out`), never on the calibration inputs
that set the ranges and the smoothing scales: the data's validation split when ``data`` is
given (its test split is then reported too), else calibration batches kept apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from slimfuse.quantization.calibration import (
    calibration_inputs,
    input_ranges,
    samples,
    split_held_out,
)
from slimfuse.quantization.config import Dynamic, Static
from slimfuse.quantization.graph import supported_types
from slimfuse.quantization.ptq import Prepared, ptq
from slimfuse.quantization.runtime import QuantizedModel, refresh_edit
from slimfuse.quantization.sqnr import sqnr_db
from slimfuse.tasks import forward

Metric = Callable[[nn.Module], float]
EXACT_UP_TO = 16
log = logging.getLogger("slimfuse.quantization")  # progress of the long searches (CLI: shown)


@torch.no_grad()
def _outputs(model: nn.Module, inputs: list[Any]) -> list[torch.Tensor]:
    return [forward(model.eval(), x).float() for x in inputs]


def metric_name(task: str) -> str:
    """What :func:`agreement_metric` measures for ``task``, in words."""
    return "top-1 agreement with fp32" if task == "classification" else "mean cosine to fp32"


def agreement_metric(reference: nn.Module, inputs: list[Any], task: str) -> Metric:
    """Default metric: top-1 agreement with fp32 (classification) or mean cosine (otherwise)."""
    ref = _outputs(reference, inputs)

    def metric(model: nn.Module) -> float:
        got = _outputs(model, inputs)
        if task == "classification":
            same = [(g.argmax(-1) == r.argmax(-1)).float() for g, r in zip(got, ref, strict=True)]
        else:
            same = [
                torch.nn.functional.cosine_similarity(g.flatten(1), r.flatten(1), dim=1)
                for g, r in zip(got, ref, strict=True)
            ]
        return float(torch.cat(same).mean())

    return metric


@dataclass
class Budget:
    """Where ``max_drop`` is checked: ``metric`` decides, ``report`` only records."""

    metric: Metric  # on held-out inputs (or the caller's metric_fn)
    decided_on: str  # those inputs, in words
    report: dict[str, Metric] = field(default_factory=dict)  # "calibration", "test" -> metric
    report_metric: str = ""  # what the report's metrics measure, in words

    def record(self, fp32: nn.Module, q: nn.Module, drop: float) -> dict[str, Any]:
        """The final model's drop on the held-out inputs and on the reported ones."""
        got = {f"{k}_drop": m(fp32) - m(q) for k, m in self.report.items()}
        return {
            "decided_on": self.decided_on,
            "drop": drop,
            "report_metric": self.report_metric,
            **got,
        }


def held_out(
    model: nn.Module,
    inputs: list[Any],
    cfg: Dynamic | Static,
    task: str,
    data: Any = None,
    metric_fn: Metric | None = None,
) -> tuple[list[Any], Budget]:
    """The calibration inputs left for calibration, and the :class:`Budget` of ``max_drop``.

    With ``data``: ``cfg.held_out_batches`` batches of its validation split decide (the
    calibration inputs stay whole) and as many of its test split are reported. Without:
    the calibration batches after the first ``cfg.calibration_batches`` (at most
    ``cfg.held_out_batches``, at least one, half of them when there are fewer) are kept apart to
    decide on; one batch is cut in two. A ``metric_fn`` decides instead of the default metric
    (agreement with ``model``, the fp32 reference), and then nothing is kept apart without data.
    The calibration drop is always reported, to compare.
    """
    test: list[Any] = []
    if data is not None and hasattr(data, "loader"):

        def batches(split: str) -> list[Any]:
            loader = data.loader(split, batch_size=cfg.calibration_batch_size)
            return calibration_inputs(model, loader, max_batches=cfg.held_out_batches)

        held, test = batches("val"), batches("test")
        where = f"the validation split ({samples(held)} samples)"
    elif metric_fn is None:
        inputs, held = split_held_out(inputs, cfg.calibration_batches, cfg.held_out_batches)
        where = (
            f"{len(held)} calibration batch(es) kept apart ({samples(held)} samples; "
            f"{samples(inputs)} calibrate)"
        )
    else:
        held = []
    report = {"calibration": agreement_metric(model, inputs, task)}
    if test:
        report["test"] = agreement_metric(model, test, task)
    if metric_fn is not None:
        metric, where = metric_fn, "metric_fn"
    else:
        metric = agreement_metric(model, held, task)
    return inputs, Budget(metric, where, report, metric_name(task))


def output_sqnr(reference: list[torch.Tensor], model: nn.Module, inputs: list[Any]) -> float:

    got = _outputs(model, inputs)
    return sqnr_db(
        torch.cat([r.flatten() for r in reference]), torch.cat([g.flatten() for g in got])
    )


def _fake_act(x: torch.Tensor, rng: tuple[float, float] | None) -> torch.Tensor:
    """uint8 asymmetric fake-quant of an activation: per call (dynamic) or a fixed range (static)."""
    lo, hi = (float(x.min()), float(x.max())) if rng is None else rng
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 255) - zp) * scale


def _fake_weight(w: torch.Tensor, per_channel: bool, qmax: int = 127) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)
    amax = (
        flat.abs().amax(1, keepdim=True) if per_channel else flat.abs().amax().expand(len(flat), 1)
    )
    scale = (amax / qmax).clamp_min(1e-12)
    return (torch.clamp(torch.round(flat / scale), -qmax, qmax) * scale).reshape(w.shape)


def _add_row(
    rows: list[dict[str, Any]], total: int, name: str, sqnr: float, value: float, base: float
) -> None:
    """One layer's sensitivity row (``{"layer", "sqnr_db", "metric", "drop"}``), logged."""
    rows.append({"layer": name, "sqnr_db": round(sqnr, 2), "metric": value, "drop": base - value})
    log.info(
        "sensitivity %d/%d %s: drop %.5f, SQNR %.1f dB", len(rows), total, name, base - value, sqnr
    )


@torch.no_grad()
def emulated_sensitivity(
    model: nn.Module,
    layers: list[str],
    inputs: list[Any],
    metric: Metric,
    static: bool,
    per_channel: bool,
    weight_qmax: int = 127,
) -> list[dict[str, Any]]:
    """Each layer alone under an int8 emulation in PyTorch (fast): ``{"layer", "sqnr_db", "drop"}``.

    Dynamic mode: the input range is taken per call, as ``DynamicQuantizeLinear`` does; static:
    the min/max over the calibration inputs. Weights: int8 symmetric (``weight_qmax``: 127, or
    64 with the reduced range), per channel or per tensor.
    """
    ranges = input_ranges(model, layers, inputs) if static else {}
    ref = _outputs(model, inputs)
    base = metric(model)
    rows = []
    for name in layers:
        layer = model.get_submodule(name)
        saved = layer.weight.data.clone()
        layer.weight.data.copy_(_fake_weight(saved, per_channel, weight_qmax))
        handle = None
        if not isinstance(layer, nn.Embedding):
            rng = tuple(ranges[name]) if static and name in ranges else None
            handle = layer.register_forward_pre_hook(
                lambda _m, a, r=rng: (_fake_act(a[0], r), *a[1:])
            )
        try:
            got = _outputs(model, inputs)
            value = metric(model)
        finally:
            layer.weight.data.copy_(saved)
            if handle is not None:
                handle.remove()
        sq = sqnr_db(torch.cat([r.flatten() for r in ref]), torch.cat([g.flatten() for g in got]))
        _add_row(rows, len(layers), name, sq, value, base)
    rows.sort(key=lambda r: (-r["drop"], r["sqnr_db"]))
    return rows


def sensitivity(
    prep: Prepared, cfg: Dynamic | Static, metric: Metric, base: float | None = None
) -> list[dict[str, Any]]:
    """Each candidate layer quantized alone in ONNX Runtime: ``{"layer", "sqnr_db", "metric", "drop"}``, worst first."""
    supported = supported_types(cfg.mode, cfg.quantize_embeddings)
    layers = [
        n
        for n, m in cfg.targeting.select(
            prep.model, default_types=supported, what="quantization"
        ).items()
        if isinstance(m, supported)
    ]
    base = metric(prep.model) if base is None else base
    ref = _outputs(prep.model, prep.calibration_inputs)
    rows = []
    for name in layers:
        alone = cfg.replace(targets=(name,), ignore=())
        q = ptq(prep, alone)
        value = metric(q)
        _add_row(rows, len(layers), name, output_sqnr(ref, q, prep.calibration_inputs), value, base)
    rows.sort(key=lambda r: (-r["drop"], r["sqnr_db"]))
    return rows


def _ranked(
    prep: Prepared, cfg: Dynamic | Static, metric: Metric, base: float
) -> list[dict[str, Any]]:
    """Layers by sensitivity: each quantized alone in ONNX Runtime (exact) when there are at
    most ``EXACT_UP_TO`` of them, else under the PyTorch emulation (one float pass per layer)."""
    supported = supported_types(cfg.mode, cfg.quantize_embeddings)
    chosen = cfg.targeting.select(prep.model, default_types=supported, what="quantization")
    layers = [n for n, m in chosen.items() if isinstance(m, supported)]
    how = cfg.sensitivity
    if how == "auto":
        how = "onnxruntime" if len(layers) <= EXACT_UP_TO else "emulated"
    if how == "onnxruntime":
        return sensitivity(prep, cfg, metric, base)
    return emulated_sensitivity(
        prep.model,
        layers,
        prep.calibration_inputs,
        metric,
        cfg.mode != "dynamic",
        cfg.per_channel,
        cfg.weight_qmax,
    )


def mixed_precision(prep: Prepared, cfg: Dynamic | Static, budget: Budget) -> QuantizedModel:
    """Fewest fp32 layers (most sensitive first) so that the metric drop is <= ``cfg.max_drop``.

    The drop is ``budget.metric`` (held-out inputs) of ``prep.model`` minus the int8 model's;
    ``q.info["mixed_precision"]`` records each step, where it was decided, and the final
    model's drop on the calibration (and test) inputs as well.
    """
    assert cfg.max_drop is not None
    metric = budget.metric
    base = metric(prep.model)
    q = ptq(prep, cfg)
    drop = base - metric(q)
    steps = [{"fp32_layers": 0, "drop": drop}]
    log.info("mixed precision: all int8, drop %.5f (budget %.5f)", drop, cfg.max_drop)
    rows: list[dict[str, Any]] = []
    met = drop <= cfg.max_drop
    if not met:
        rows = _ranked(prep, cfg, metric, base)
    keep: dict[str, str] = {}
    for row in rows:
        keep[row["layer"]] = (
            f"kept fp32 by mixed precision (alone it costs {row['drop']:.4f}, "
            f"output SQNR {row['sqnr_db']} dB)"
        )
        if len(keep) == len(rows):
            break
        candidate = ptq(prep, cfg, keep_fp32=keep)
        drop = base - metric(candidate)
        steps.append({"fp32_layers": len(keep), "drop": drop})
        log.info("mixed precision: %d layer(s) fp32, drop %.5f", len(keep), drop)
        q = candidate
        if drop <= cfg.max_drop:
            met = True
            break
    q.info["mixed_precision"] = {
        "base": base,
        "max_drop": cfg.max_drop,
        "steps": steps,
        "met": met,
        **({"sensitivity": rows} if rows else {}),
        **budget.record(prep.model, q, drop),
    }
    return refresh_edit(q)
