"""Static int8 (QDQ) of the MNIST-1D CNN and the residual CNN, deployed with ONNX Runtime.

For each model and seed (default 0, 1, 2): train, export fp32 to ONNX, then quantize with ONNX Runtime's
``quantize_static`` at its defaults (the peer: QDQ, s8 activations, per-tensor weights, min-max)
and with slimfuse (u8 activations, s8 per-channel weights; min-max, percentile and entropy
calibration; mixed precision under ``max_drop`` 0.3 points on the validation split). All use
the same 512 calibration inputs from the train split. Reports test accuracy (1000 samples),
the drop versus fp32 in points (mean over seeds: on 1000 test samples one model's drop moves by
a few tenths of a point from seed to seed), ONNX bytes, and the ONNX Runtime latency at batch 64
(one thread, interleaved, median of rounds) with the speed-up over ONNX Runtime fp32. Writes
``benchmarks/results/quantize_cnn.md``.

    .venv/bin/python benchmarks/quantize_cnn.py          # about 10 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantize_common import RESULTS, cpu_flags, interleaved, ort_session, table

MODELS = {"mnist1d_cnn": {"epochs": 60, "lr": 1e-2}, "resnet1d": {"epochs": 15, "lr": 3e-3}}


def accuracy(sess, x: np.ndarray, y: np.ndarray) -> float:
    name = sess.get_inputs()[0].name
    pred = np.concatenate(
        [sess.run(None, {name: x[i : i + 250]})[0].argmax(1) for i in range(0, len(x), 250)]
    )
    return float((pred == y).mean())


def run(model_name: str, seed: int, threads: int, rounds: int) -> dict[str, dict]:
    """One seed: every variant's test accuracy, ONNX size, latency and fp32 layers."""
    import onnx
    from onnxruntime.quantization import quantize_static

    import slimfuse
    from slimfuse.quantization import QuantConfig, quantize
    from slimfuse.quantization.calibration import feed_reader
    from slimfuse.training import TrainConfig

    data = slimfuse.load_data("mnist1d")
    torch.manual_seed(seed)
    model = slimfuse.build_model(model_name, data=data)
    spec = MODELS[model_name]
    t0 = time.time()
    cfg = TrainConfig(epochs=spec["epochs"], lr=spec["lr"], seed=seed, quiet=True)
    slimfuse.train(model, data, config=cfg)
    print(f"{model_name} seed {seed}: trained in {time.time() - t0:.0f}s", flush=True)
    calib = data.loader("train", batch_size=64, shuffle=True, seed=0)
    x_test, y_test = data.arrays("test")
    x_test = x_test.astype(np.float32)
    xb = x_test[:64]
    tmp = Path(tempfile.mkdtemp(prefix="qbench-"))
    fp32 = slimfuse.export(model, data.example_input(1), tmp / "fp32.onnx")
    graphs: dict[str, bytes] = {"ONNX Runtime fp32": fp32.read_bytes()}

    feeds = []
    for i, (xb_, _) in enumerate(calib):
        if i == 8:
            break
        feeds.append({"input": xb_.numpy()})
    quantize_static(str(fp32), str(tmp / "peer.onnx"), feed_reader(feeds))
    graphs["ONNX Runtime quantize_static (defaults)"] = (tmp / "peer.onnx").read_bytes()

    def val_acc(m: torch.nn.Module) -> float:  # fp32 module or int8 graph alike
        return slimfuse.evaluate(m, data.loader("val", batch_size=250))

    notes = {}
    for label, cfg in [
        ("slimfuse static minmax", QuantConfig(mode="static")),
        ("slimfuse static percentile", QuantConfig(mode="static", calibration="percentile")),
        ("slimfuse static entropy", QuantConfig(mode="static", calibration="entropy")),
        (
            "slimfuse static percentile + mixed precision (max_drop 0.003)",
            QuantConfig(mode="static", calibration="percentile", max_drop=0.003),
        ),
    ]:
        t0 = time.time()
        metric = val_acc if cfg.max_drop is not None else None
        q = quantize(model, cfg, calibration=calib, metric_fn=metric)
        fp = [r["layer"] for r in q.info["layers"] if r["precision"] == "fp32"]
        notes[label] = f"{len(fp)} fp32 layer(s)" + (f": {', '.join(fp)}" if fp else "")
        print(f"  {label}: {time.time() - t0:.1f}s, {notes[label]}", flush=True)
        graphs[label] = q.graph_bytes()
    sessions = {k: ort_session(v, threads) for k, v in graphs.items()}
    acc = {k: accuracy(s, x_test, y_test) for k, s in sessions.items()}
    lat = interleaved(
        {
            k: (lambda s=s: [s.run(None, {"input": xb}) for _ in range(20)])
            for k, s in sessions.items()
        },
        rounds,
    )
    onnx.checker.check_model(onnx.load_from_string(graphs["slimfuse static minmax"]))
    return {
        k: {
            "acc": acc[k],
            "kib": len(graphs[k]) / 1024,
            "ms": lat[k] / 20,
            "note": notes.get(k, ""),
        }
        for k in graphs
    }


def rows_for(model_name: str, runs: dict[int, dict[str, dict]]) -> list[list]:
    """Mean accuracy and drop over seeds (drops per seed listed), median speed-up over seeds."""
    seeds = sorted(runs)
    base = "ONNX Runtime fp32"
    rows = []
    for k in runs[seeds[0]]:
        accs = [runs[s][k]["acc"] for s in seeds]
        drops = [100 * (runs[s][base]["acc"] - runs[s][k]["acc"]) for s in seeds]
        speed = statistics.median(runs[s][base]["ms"] / runs[s][k]["ms"] for s in seeds)
        notes = [runs[s][k]["note"] for s in seeds]
        if len(set(notes)) > 1:  # mixed precision may keep other layers for another seed
            notes = [f"seed {s}: {n}" for s, n in zip(seeds, notes, strict=True)]
        rows.append(
            [
                model_name,
                k,
                f"{statistics.mean(accs):.4f}",
                f"{statistics.mean(drops):+.2f} ({', '.join(f'{d:+.1f}' for d in drops)})",
                f"{runs[seeds[0]][k]['kib']:.1f}",
                f"{statistics.median(runs[s][k]['ms'] for s in seeds):.3f}",
                f"{speed:.2f}x",
                "; ".join(dict.fromkeys(notes)),
            ]
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows += rows_for(name, {s: run(name, s, args.threads, args.rounds) for s in args.seeds})
    header = [
        "model",
        "variant",
        "test acc (mean)",
        "drop, points: mean (per seed)",
        "ONNX KiB",
        "ORT b64 ms",
        "speed-up vs ORT fp32",
        "layers kept fp32",
    ]
    text = (
        "# Static int8 of the MNIST-1D CNNs (ONNX Runtime)\n\n"
        f"CPU: {cpu_flags()}; threads {args.threads}; one model trained per seed "
        f"{args.seeds}, each quantized every way. Latency at batch 64 = median over "
        f"{args.rounds} rounds (each: 20 calls of each variant in turn) / 20, median over seeds; "
        "fp32 is slimfuse's export (CPU graph passes on). Drop = fp32 accuracy minus int8 "
        "accuracy on the 1000 test samples (positive = worse; one sample = 0.1 point), mean "
        "over seeds. Calibration: 512 train inputs.\n\n"
        + table(header, rows)
        + "\n\nReproduce: `make bench-quantize` (or `.venv/bin/python benchmarks/quantize_cnn.py`).\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_cnn.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
