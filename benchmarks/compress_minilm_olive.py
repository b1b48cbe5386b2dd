"""Olive's ONNX quantization search on all-MiniLM-L6-v2 (cosine budget): a peer of ``compress_minilm.py``.

Run by ``compress_minilm.py`` with the peers' Python (``.peers/bin/python``: olive-ai with the CPU
torch, kept out of slimfuse's environment), not imported by it::

    .peers/bin/python benchmarks/compress_minilm_olive.py model.onnx tokens.npz 0.005,0.01 out_dir

``tokens.npz`` holds ``calib_input_ids`` / ``calib_attention_mask`` (64 training paragraphs),
``val_input_ids`` / ``val_attention_mask`` (the 200 validation paragraphs; int64, 128 tokens)
and ``val_target`` (the fp32 model's validation embeddings). This file is also the workflow's
``user_script``: it registers the dataset and the metric.

Olive evaluates each candidate itself: a ``custom`` metric (mean cosine between the candidate's
embeddings and ``val_target``, run by Olive's ONNX evaluator over the validation paragraphs)
with a ``max-degradation`` goal of the widest budget, the file size and the latency at batch 1
on one ONNX Runtime thread. The search, walked exhaustively (``sequential`` sampler), 28
points: ``OnnxDynamicQuantization``'s own search space (int8 or uint8 weights, per-channel,
reduce-range, pre-processing: 16 points), and ``OnnxStaticQuantization`` calibrated on the 64
paragraphs with MinMax or with Percentile (its format / type space: QDQ int8, QDQ uint8 or
QOperator uint8, each per-channel or not: 6 points each), reduce-range off (it lowers every
dynamic point's cosine) and pre-processing on (it changes no dynamic candidate). Left out to
keep the search near 5 minutes on 2 cores (the full static space is 144 points): Entropy
calibration (not timed here; its threshold search per activation is the costliest of the
three) and the static reduce-range / pre-processing switches; every static point found keeps
0.77 to 0.82 validation cosine, far below the loosest budget. One setting is fixed off the
pass defaults everywhere: ``op_types_to_exclude: [Attention]``, as ONNX Runtime's quantizer
rewrites the exported graph's standard (opset 23) ``Attention`` nodes into ``QAttention``
nodes that ONNX Runtime then refuses to load ("Unrecognized attribute: is_causal"): with the
defaults every candidate fails. MatMul and Gather (the embedding
tables) are quantized.

The sampler walks every point whatever the goal, so the search is run once at the widest
budget; each budget's pick is then Olive's own rule applied to the same evaluated candidates:
those within ``baseline - budget`` (the baseline is Olive's evaluation of the input model),
ranked by the metrics in priority order (latency, size, cosine). At the widest budget this is
the first of the Pareto front Olive returns (checked below).

Prints one JSON line: seconds, candidates evaluated, the baseline, every candidate (settings
and Olive's metrics), the pick per budget, Olive's version.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from peers_common import ONE_THREAD, fix_olive_serialization, olive_latency, olive_workflow

HERE = Path(__file__).resolve()
INPUTS = ("input_ids", "attention_mask")
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # nothing leaves this machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # the workflow imports this file as its user_script: register the local data
    from olive.data.registry import Registry

    @Registry.register_dataset()
    def slimfuse_tokens(
        arrays: str, split: str, target: str | None = None, limit: int = 0
    ) -> list[tuple[dict[str, Any], Any]]:
        """Pairs ``({input_ids, attention_mask}, target_i)`` from an ``.npz`` (target 0 when
        ``target`` is None)."""
        import torch

        a = np.load(arrays)
        feeds = {n: torch.from_numpy(a[f"{split}_{n}"][: limit or None]) for n in INPUTS}
        count = len(feeds["input_ids"])
        ys = (
            torch.from_numpy(a[target][: limit or None])
            if target
            else torch.zeros(count, dtype=torch.long)
        )
        return [({n: feeds[n][i] for n in INPUTS}, ys[i]) for i in range(count)]

except ImportError:  # pragma: no cover - only the peers' Python has olive
    pass


def mean_cosine(output: Any, targets: Any) -> float:
    """Olive's custom metric: mean cosine between the candidate's embeddings and the fp32
    model's (``targets``)."""
    a = np.asarray(output.preds, dtype=np.float64)
    b = np.asarray(targets, dtype=np.float64)
    num = (a * b).sum(-1)
    return float((num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).mean())


def data_config(
    name: str, arrays: Path, split: str, target: str | None, batch: int, limit: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "DataContainer",
        "user_script": str(HERE),
        "load_dataset_config": {
            "type": "slimfuse_tokens",
            "params": {"arrays": str(arrays), "split": split, "target": target, "limit": limit},
        },
        "dataloader_config": {"batch_size": batch},
    }


def workflow(src: Path, arrays: Path, max_drop: float, work: Path) -> dict[str, Any]:
    cosine = {
        "name": "cosine",
        "type": "custom",
        "data_config": "validation",
        "sub_types": [
            {
                "name": "mean",
                "priority": 3,
                "higher_is_better": True,
                "metric_config": {},  # None fails Olive's serializer
                "goal": {"type": "max-degradation", "value": max_drop},
            }
        ],
        "user_config": {
            "user_script": str(HERE),
            "metric_func": "mean_cosine",
            "inference_settings": ONE_THREAD,
        },
    }
    size = {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes", "priority": 2}]}
    static = (
        {
            "type": "OnnxStaticQuantization",
            "op_types_to_exclude": ["Attention"],
            "data_config": "calibration",
            "calibration_providers": ["CPUExecutionProvider"],
            "calibrate_method": method,
            "reduce_range": False,
            "quant_preprocess": True,
        }
        for method in ("MinMax", "Percentile")
    )
    return olive_workflow(
        src,
        [
            data_config("calibration", arrays, "calib", None, 8),
            data_config("validation", arrays, "val", "val_target", 32),
            data_config("batch1", arrays, "val", None, 1, limit=1),
        ],
        [olive_latency("batch1", 1), size, cosine],
        {
            "quantization": [
                {"type": "OnnxDynamicQuantization", "op_types_to_exclude": ["Attention"]},
                *static,
            ]
        },
        work,
    )


SETTINGS = (
    "quant_mode",
    "precision",
    "per_channel",
    "reduce_range",
    "quant_preprocess",
    "quant_format",
    "activation_type",
    "calibrate_method",
)


def _values(metrics: Any) -> dict[str, float]:
    return {k: v.value for k, v in metrics.value.items()}


def _rank(values: dict[str, float]) -> tuple[float, float, float]:
    """Olive's order for its output models: metrics by priority, each best first."""
    return values["latency-avg"], values["size-bytes"], -values["cosine-mean"]


def main() -> None:
    src, arrays, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), Path(sys.argv[4])
    budgets = sorted(float(b) for b in sys.argv[3].split(","))
    import olive
    from olive.workflows import run as olive_run

    fix_olive_serialization()
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="olive-") as tmp:
        work = Path(tmp)
        config = workflow(src, arrays, max(budgets), work)
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        t0 = time.perf_counter()
        output = olive_run(config)
        seconds = time.perf_counter() - t0

        footprint = output.footprint
        nodes = list(footprint.nodes.values())
        base = next(n for n in nodes if n.parent_model_id is None)
        baseline = _values(base.metrics)["cosine-mean"] if base.metrics else None
        candidates = []
        for n in nodes:
            if not (n.parent_model_id and n.metrics):
                continue
            settings = n.pass_run_config or {}
            settings = settings.get("config", settings)
            candidates.append(
                {
                    "id": n.model_id,
                    "settings": {k: settings.get(k) for k in SETTINGS},
                    "metrics": _values(n.metrics),
                    "olive_goal_met": bool(n.metrics.if_goals_met),
                }
            )
        front = output.get_output_models()
        olive_first = min(front, key=lambda m: _rank(_values_of(m))).model_id if front else None
        picks: dict[str, Any] = {}
        for budget in budgets:
            within = [c for c in candidates if c["metrics"]["cosine-mean"] >= baseline - budget]
            if not within:
                picks[f"{budget:g}"] = None
                continue
            best = min(within, key=lambda c: _rank(c["metrics"]))
            path = dst / f"pick-{budget:g}.onnx"
            shutil.copyfile(_model_path(footprint, best["id"]), path)
            picks[f"{budget:g}"] = {**best, "path": str(path), "within_goal": len(within)}
        widest = picks.get(f"{max(budgets):g}")
        agrees = (widest or {}).get("id") == olive_first
    print(
        json.dumps(
            {
                "seconds": seconds,
                "evaluated": len(candidates),
                "baseline": baseline,
                "olive_front": len(front),
                "olive_pick_agrees": agrees,
                "candidates": candidates,
                "picks": picks,
                "olive": olive.__version__,
            },
            default=str,
        )
    )


def _values_of(model_output: Any) -> dict[str, float]:
    return {k: v["value"] for k, v in model_output.metrics_value.items()}


def _model_path(footprint: Any, model_id: str) -> str:
    from olive.model import ModelConfig

    node = footprint.nodes[model_id]
    config = ModelConfig.model_validate(node.model_config_data)
    return str(config.config["model_path"])


if __name__ == "__main__":
    main()
