"""Olive's accuracy-aware ONNX quantization search on an ONNX classifier: a peer of ``compress_cnn.py``.

Run by ``compress_cnn.py`` with the peers' Python (``.peers/bin/python``: olive-ai with the CPU
torch, kept out of slimfuse's environment), not imported by it::

    .peers/bin/python benchmarks/compress_cnn_olive.py model.onnx arrays.npz 0.01 out_dir

``arrays.npz`` holds ``calib_x`` (calibration inputs), ``val_x`` / ``val_y`` (the validation
split the accuracy budget is kept on). ``olive optimize --precision int8 --device cpu`` writes
a workflow of ``OnnxPeepholeOptimizer`` then ONNX Runtime static quantization calibrated on a
Hub dataset. Here: the quantization pass alone (Olive 0.13's peephole output fails ONNX
Runtime's quantizer on this model, in shape inference), calibrated on these local arrays (this
file is also the workflow's ``user_script``: it registers the dataset), and Olive's search on:
``OnnxQuantization``'s own search space (dynamic or static, QOperator or QDQ, int8 or uint8,
per-channel, reduce-range, pre-processing, MinMax / Entropy / Percentile calibration) walked
exhaustively (``sequential`` sampler), each candidate evaluated by Olive on the validation split
(accuracy with a ``max-degradation`` goal of ``max_drop``, absolute), its ONNX file size, and its
latency at batch 64 on one ONNX Runtime thread. Olive keeps the Pareto front of the candidates
that meet the goal; its pick is the front sorted by the metrics in priority order: size first
for ``size.onnx``, latency first for ``latency.onnx`` (the search does not depend on the order:
the sampler walks every point and the goal is applied afterwards).

Prints one JSON line: seconds, candidates evaluated, candidates meeting the goal, the two
picks (pass settings and Olive's metrics), Olive's version.
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

BATCH = 64
HERE = Path(__file__).resolve()
os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # nothing leaves this machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")

try:  # the workflow imports this file as its user_script: register the local data
    from olive.data.registry import Registry

    @Registry.register_dataset()
    def slimfuse_arrays(
        arrays: str, x: str, y: str | None = None, input_name: str = "input", limit: int = 0
    ) -> list[tuple[dict[str, Any], Any]]:
        """Pairs ``({input_name: x_i}, y_i)`` from an ``.npz`` (labels 0 when ``y`` is None)."""
        import torch

        a = np.load(arrays)
        xs = torch.from_numpy(a[x][: limit or None])
        ys = (
            torch.from_numpy(a[y][: limit or None]) if y else torch.zeros(len(xs), dtype=torch.long)
        )
        return [({input_name: xs[i]}, ys[i]) for i in range(len(xs))]

    @Registry.register_post_process()
    def argmax_classes(output: Any, **kwargs: Any) -> Any:
        return output.argmax(-1)

except ImportError:  # pragma: no cover - only the peers' Python has olive
    pass


def data_config(name: str, arrays: Path, x: str, y: str | None, limit: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "type": "DataContainer",
        "user_script": str(HERE),
        "load_dataset_config": {
            "type": "slimfuse_arrays",
            "params": {
                "arrays": str(arrays),
                "x": x,
                "y": y,
                "input_name": "input",
                "limit": limit,
            },
        },
        "post_process_data_config": {"type": "argmax_classes"},
        "dataloader_config": {"batch_size": BATCH},
    }


def workflow(
    src: Path, arrays: Path, max_drop: float, work: Path, input_name: str
) -> dict[str, Any]:
    configs = [
        data_config("calibration", arrays, "calib_x", None),
        data_config("validation", arrays, "val_x", "val_y"),
        data_config("batch64", arrays, "val_x", None, limit=BATCH),
    ]
    for c in configs:
        c["load_dataset_config"]["params"]["input_name"] = input_name
    size = {"name": "size", "type": "size_on_disk", "sub_types": [{"name": "bytes", "priority": 1}]}
    accuracy = {
        "name": "accuracy",
        "type": "accuracy",
        "data_config": "validation",
        "sub_types": [
            {
                "name": "accuracy_score",
                "priority": 3,
                "higher_is_better": True,
                "goal": {"type": "max-degradation", "value": max_drop},
                "metric_config": {"task": "multiclass", "num_classes": 10},
            }
        ],
        "user_config": {"inference_settings": ONE_THREAD},
    }
    passes = {
        "quantization": {
            "type": "OnnxQuantization",
            "data_config": "calibration",
            "calibration_providers": ["CPUExecutionProvider"],
        },
    }
    return olive_workflow(src, configs, [size, olive_latency("batch64", 2), accuracy], passes, work)


def main() -> None:
    src, arrays, max_drop, dst = (
        Path(sys.argv[1]).resolve(),
        Path(sys.argv[2]).resolve(),
        float(sys.argv[3]),
        Path(sys.argv[4]),
    )
    import olive
    import onnx
    from olive.workflows import run as olive_run

    fix_olive_serialization()  # else the one-thread session options never reach Olive

    input_name = onnx.load(src, load_external_data=False).graph.input[0].name
    dst.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="olive-") as tmp:
        work = Path(tmp)
        config = workflow(src, arrays, max_drop, work, input_name)
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        t0 = time.perf_counter()
        output = olive_run(config)
        seconds = time.perf_counter() - t0

        front = output.get_output_models() if output else []
        nodes = output.footprint.nodes.values() if output else []
        evaluated = [n for n in nodes if n.parent_model_id and n.metrics]
        met = [n for n in evaluated if n.metrics.if_goals_met]
        picks = {}
        for objective in ("size", "latency"):
            ranked = sorted(front, key=lambda m, o=objective: _rank(m.metrics_value, o))
            if not ranked:
                continue
            best = ranked[0]
            shutil.copyfile(best.model_path, dst / f"{objective}.onnx")
            settings = output.footprint.nodes[best.model_id].pass_run_config or {}
            settings = settings.get("config", settings)
            picks[objective] = {
                "path": str(dst / f"{objective}.onnx"),
                "metrics": {k: v["value"] for k, v in best.metrics_value.items()},
                "passes": {k: settings.get(k) for k in SETTINGS if settings.get(k) is not None},
            }
    print(
        json.dumps(
            {
                "seconds": seconds,
                "evaluated": len(evaluated),
                "within_goal": len(met),
                "front": len(front),
                "picks": picks,
                "olive": olive.__version__,
            },
            default=str,
        )
    )


SETTINGS = (
    "quant_mode",
    "quant_format",
    "precision",
    "activation_type",
    "per_channel",
    "reduce_range",
    "quant_preprocess",
    "calibrate_method",
)


def _rank(metrics: dict[str, Any], objective: str) -> tuple[float, float, float]:
    """Olive's order for its output models (metrics by priority, each best first), with the
    objective's metric first."""
    size, latency = metrics["size-bytes"]["value"], metrics["latency-avg"]["value"]
    accuracy = metrics["accuracy-accuracy_score"]["value"]
    first, second = (size, latency) if objective == "size" else (latency, size)
    return first, second, -accuracy


if __name__ == "__main__":
    main()
