"""NNCF accuracy-aware int8 of an ONNX classifier: the peer of ``compress_cnn.py``.

Run by ``compress_cnn.py`` with the peers' Python (``.peers/bin/python``: nncf, onnx and
onnxruntime, kept out of slimfuse's environment), not imported by it::

    .peers/bin/python benchmarks/compress_cnn_nncf.py model.onnx arrays.npz 0.01 out.onnx

``arrays.npz`` holds ``calib_x`` (calibration inputs), ``val_x`` / ``val_y`` (the validation
split the accuracy budget is kept on). ``nncf.quantize_with_accuracy_control`` (ONNX backend)
quantizes, then reverts the layers that cost the most accuracy to fp32 until the validation
drop is at most ``max_drop`` (absolute). Prints one JSON line: seconds, how many times NNCF
called the validation function, NNCF's version.
"""

from __future__ import annotations

import json
import sys
import time

import nncf
import numpy as np
import onnx
import onnxruntime as ort

BATCH = 64


def accuracy(model: onnx.ModelProto, batches: list[tuple[np.ndarray, np.ndarray]]) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    session = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    right = total = 0
    for x, y in batches:
        out = session.run(None, {name: x})[0]
        right += int((out.argmax(-1) == y).sum())
        total += len(y)
    return right / total


def main() -> None:
    src, arrays, max_drop, dst = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    a = np.load(arrays)
    model = onnx.load(src)
    name = model.graph.input[0].name
    calib = [a["calib_x"][i : i + BATCH] for i in range(0, len(a["calib_x"]), BATCH)]
    val = [
        (a["val_x"][i : i + BATCH], a["val_y"][i : i + BATCH])
        for i in range(0, len(a["val_x"]), BATCH)
    ]
    seen: list[float] = []

    def validate(m: onnx.ModelProto, batches: object) -> float:
        value = accuracy(m, list(batches))  # type: ignore[call-overload]
        seen.append(value)
        return value

    t0 = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=nncf.Dataset(calib, lambda x: {name: x}),
        validation_dataset=nncf.Dataset(val),
        validation_fn=validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(calib),  # items: batches of 64
    )
    seconds = time.perf_counter() - t0
    onnx.save(quantized, dst)
    print(json.dumps({"seconds": seconds, "validations": len(seen), "nncf": nncf.__version__}))


if __name__ == "__main__":
    main()
