"""NNCF accuracy-aware int8 of all-MiniLM-L6-v2 (cosine budget): a peer of ``compress_minilm.py``.

Run by ``compress_minilm.py`` with the peers' Python (``.peers/bin/python``: nncf, onnx and
onnxruntime, kept out of slimfuse's environment), not imported by it::

    .peers/bin/python benchmarks/compress_minilm_nncf.py model.onnx tokens.npz 0.005,0.01 out_dir

``tokens.npz`` is the Olive peer's file (``compress_minilm_olive.py``): ``calib_*`` (64 training
paragraphs), ``val_*`` (the 200 validation paragraphs; int64, 128 tokens) and ``val_target``
(the fp32 model's validation embeddings).

``nncf.quantize_with_accuracy_control`` (ONNX backend) once per budget on the fp32 file:
post-training int8 calibrated on the 64 paragraphs (one item each, all used), then, while the
validation drop is above ``max_drop`` (``drop_type=ABSOLUTE``), NNCF reverts the quantizers that
cost the most to fp32. The validation function is the Olive peer's metric: mean cosine between the
model's embeddings and ``val_target`` (ONNX Runtime, one thread, batches of 32); it also returns
each paragraph's cosine, which NNCF uses to pick its ranking subset and to rank quantizers.
``model_type=nncf.ModelType.TRANSFORMER`` is NNCF's documented setting for transformers: it turns
on SmoothQuant (activation outliers moved into the weights before calibration), the mixed preset
(asymmetric activations, symmetric weights) and NNCF's transformer ignored patterns; everything
else is NNCF's default (without ``model_type``, NNCF's int8 of this file kept 0.857 validation
cosine in a separate run, against 0.9976 with it). No ``ignored_scope`` is needed: NNCF has no
quantizable metatype for the standard ``Attention`` nodes, so they stay fp32 and only the 36
MatMuls are quantized.

ONNX Runtime (1.31 / 1.32) will not load NNCF's output at its default optimization level ("Node
(view_q) Op (QuantizeLinear) [TypeInferenceError] output_dtype INT8 does not match y_zero_point
type UINT8"): its ``QDQPropagationTransformer`` moves a signed-int8 Q node across a Reshape
(setting ``output_dtype``), then its ``QDQS8ToU8Transformer`` switches the zero point to uint8
and not the attribute. The file itself is valid (it loads with the graph optimizations off);
every session on it here and in ``compress_minilm.py`` disables that one optimizer
(:data:`peers_common.NNCF_ORT_DISABLED`; disabling the s8-to-u8 pass instead is 2x slower).

Prints one JSON line: NNCF's version, seconds, and per budget the file, NNCF's seconds, how many
times NNCF validated a model on more than one paragraph and the mean cosines it got, the
QuantizeLinear nodes kept.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import onnx
import onnxruntime as ort

from peers_common import NNCF_ORT_DISABLED

INPUTS = ("input_ids", "attention_mask")
BATCH = 32


class Validator:
    """NNCF's ``validation_fn``: mean cosine to the fp32 embeddings, and each item's cosine.
    Items are ``(feeds, target)`` pairs of one paragraph; they are run in batches of 32. The
    last model's session is kept (NNCF may call this once per item)."""

    def __init__(self) -> None:
        self.model: onnx.ModelProto | None = None
        self.session: Any = None
        self.seen: list[float] = []

    def session_for(self, model: onnx.ModelProto) -> Any:
        if model is not self.model:
            so = ort.SessionOptions()
            so.intra_op_num_threads = 1
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            self.session = ort.InferenceSession(
                model.SerializeToString(),
                so,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=NNCF_ORT_DISABLED,
            )
            self.model = model
        return self.session

    def __call__(self, model: onnx.ModelProto, items: Any) -> tuple[float, list[float]]:
        session = self.session_for(model)
        items = list(items)
        per: list[float] = []
        for i in range(0, len(items), BATCH):
            chunk = items[i : i + BATCH]
            feeds = {n: np.concatenate([x[n] for x, _ in chunk]) for n in INPUTS}
            a = session.run(None, feeds)[0].astype(np.float64)
            b = np.stack([y for _, y in chunk]).astype(np.float64)
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            per += [float(c) for c in cos]
        value = float(np.mean(per))
        if len(items) > 1:  # whole-set validations (one-item calls are NNCF's per-item pass)
            self.seen.append(value)
        return value, per


def main() -> None:
    src, arrays, dst = sys.argv[1], sys.argv[2], Path(sys.argv[4])
    budgets = sorted(float(b) for b in sys.argv[3].split(","))
    a = np.load(arrays)
    model = onnx.load(src)
    dst.mkdir(parents=True, exist_ok=True)
    calib = [
        {n: a[f"calib_{n}"][i : i + 1] for n in INPUTS} for i in range(len(a["calib_input_ids"]))
    ]
    val = [
        ({n: a[f"val_{n}"][i : i + 1] for n in INPUTS}, a["val_target"][i])
        for i in range(len(a["val_input_ids"]))
    ]
    runs: dict[str, Any] = {}
    t_all = time.perf_counter()
    for budget in budgets:
        validate = Validator()
        t0 = time.perf_counter()
        quantized = nncf.quantize_with_accuracy_control(
            model,
            calibration_dataset=nncf.Dataset(calib),
            validation_dataset=nncf.Dataset(val),
            validation_fn=validate,
            max_drop=budget,
            drop_type=nncf.DropType.ABSOLUTE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calib),
        )
        seconds = time.perf_counter() - t0
        path = dst / f"nncf-{budget:g}.onnx"
        onnx.save(quantized, str(path))
        runs[f"{budget:g}"] = {
            "path": str(path),
            "seconds": seconds,
            "validations": len(validate.seen),
            "cosines_seen": validate.seen,
            "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node),
        }
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - t_all,
                "runs": runs,
                "disabled_optimizers": NNCF_ORT_DISABLED,
                "nncf": nncf.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
