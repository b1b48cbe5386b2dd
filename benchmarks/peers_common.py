"""What the compress benchmarks share about their peers (NNCF, Olive), on both sides of the
process boundary: the benchmarks (slimfuse's Python) call :func:`run_peer` and describe Olive's
picks with :func:`olive_chain`; both sides open NNCF's MiniLM files without the ONNX Runtime
optimizer :data:`NNCF_ORT_DISABLED` names; the peer scripts (the peers' Python, ``.peers``)
build their Olive workflows with :func:`olive_workflow` and :func:`olive_latency` and patch Olive with
:func:`fix_olive_serialization`. Only the standard library is imported at the top: either
interpreter can import this file.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent / ".peers" / "bin" / "python"
# ONNX Runtime (1.31 / 1.32) fails to load NNCF's int8 MiniLM at its default optimization level:
# this pass moves a signed Q node across a Reshape with ``output_dtype`` set, then the s8-to-u8
# pass changes its zero point and not the attribute. Sessions on NNCF's files disable it.
NNCF_ORT_DISABLED = ["QDQPropagationTransformer"]
ONE_THREAD = {"onnx": {"session_options": {"intra_op_num_threads": 1, "inter_op_num_threads": 1}}}


def run_peer(script: str, *args: Any) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with the peers' Python on one thread; its last stdout line
    (JSON) with ``wall`` (seconds), or ``{"error": [its last error line]}``."""
    t0 = time.perf_counter()
    run = subprocess.run(
        [str(PEERS), str(HERE / script), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if run.returncode != 0:
        return {"error": (run.stderr or run.stdout).strip().splitlines()[-1:]}
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - t0}


def olive_chain(settings: dict[str, Any]) -> str:
    """An Olive quantization pick's settings in a few words."""
    mode = settings.get("quant_mode", "?")
    bits = [f"ORT {mode} {settings.get('precision') or ''}".strip()]
    if mode == "static":
        bits += [
            str(settings.get("quant_format") or ""),
            f"act {settings.get('activation_type') or ''}",
            str(settings.get("calibrate_method") or ""),
        ]
    bits.append("per-channel" if settings.get("per_channel") else "per-tensor")
    if settings.get("reduce_range"):
        bits.append("reduce-range")
    return ", ".join(b for b in bits if b)


def olive_latency(data_config: str, priority: int) -> dict[str, Any]:
    """Olive's latency metric on one ONNX Runtime thread (5 warm-up calls, 30 timed)."""
    return {
        "name": "latency",
        "type": "latency",
        "data_config": data_config,
        "sub_types": [
            {
                "name": "avg",
                "priority": priority,
                "metric_config": {"warmup_num": 5, "repeat_test_num": 30},
            }
        ],
        "user_config": {"inference_settings": ONE_THREAD},
    }


def olive_workflow(
    src: Path,
    data_configs: list[dict[str, Any]],
    metrics: list[dict[str, Any]],
    passes: dict[str, Any],
    work: Path,
) -> dict[str, Any]:
    """An Olive workflow on this CPU: ``passes`` searched jointly, every point in turn
    (``sequential`` sampler), each candidate evaluated by ``metrics``; cache and output in
    ``work``."""
    return {
        "input_model": {"type": "OnnxModel", "model_path": str(src)},
        "systems": {
            "local_system": {
                "type": "LocalSystem",
                "accelerators": [
                    {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
                ],
            }
        },
        "data_configs": data_configs,
        "evaluators": {"validation": {"type": "OnnxEvaluator", "metrics": metrics}},
        "passes": passes,
        "search_strategy": {"execution_order": "joint", "sampler": "sequential"},
        "evaluator": "validation",
        "evaluate_input_model": False,
        "target": "local_system",
        "host": "local_system",
        "cache_dir": str(work / "cache"),
        "output_dir": str(work / "out"),
        "log_severity_level": 3,
    }


def fix_olive_serialization() -> None:
    """Two fixes to Olive 0.13's config serialization (with pydantic 2.14), which the workflow
    passes its metrics through before evaluating:

    - a ``custom`` metric's ``backend`` is set to None, then its serializer fails ("'NoneType'
      object has no attribute 'model_dump'" in ``serialize_backend``, before anything runs):
      the serializer is given a None case (pydantic holds the class's own function, so its code
      is swapped in place);
    - a metric's ``user_config`` and a sub-metric's ``metric_config`` are declared as the base
      ``ConfigBase`` and serialized as that (no fields): the custom metric's ``metric_func``
      and ``user_script``, the one-thread session options and the latency's warm-up / repeat
      counts all come back empty ("evaluate_func or metric_func is not specified"): Olive's
      configs are serialized as their own classes (``serialize_as_any``).
    """
    from olive.common.config_utils import ConfigBase
    from olive.evaluator.metric import Metric

    def serialize_backend(self: Any, backend: Any) -> Any:
        return backend if backend is None or isinstance(backend, str) else backend.model_dump()

    Metric.serialize_backend.__code__ = serialize_backend.__code__
    dump = ConfigBase.model_dump

    def model_dump(self: Any, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("serialize_as_any", True)
        return dump(self, **kwargs)

    ConfigBase.model_dump = model_dump  # type: ignore[method-assign]
