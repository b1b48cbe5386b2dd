"""Static int8 (QDQ) of the MNIST-1D CNN and the residual CNN, deployed with ONNX Runtime.

For each model and seed (default 0, 1, 2): train, export fp32 to ONNX, then quantize with ONNX Runtime's
``quantize_static`` at its defaults (the peer: QDQ, s8 activations, per-tensor weights, min-max)
and with slimfuse (u8 activations, s8 per-channel weights; min-max, percentile and entropy
calibration; mixed precision under ``max_drop`` 0.3 points of accuracy on the validation split,
its row noting the agreement with fp32 lost on the test and calibration inputs). All use
the same 512 calibration inputs from the train split. Reports test accuracy (1000 samples),
the drop versus fp32 in points (mean over seeds: on 1000 test samples one model's drop moves by
a few tenths of a point from seed to seed), ONNX bytes, and the ONNX Runtime latency at batch 64
(one thread, interleaved, median of rounds) with the speed-up over ONNX Runtime fp32.

Then the int8 file size of every zoo model against its fp32 export (static int8; MiniLM dynamic,
its default; sizes do not depend on training, so the models are untrained, seed 0), and, where
this slimfuse compacts its int8 graphs, whether ONNX Runtime's outputs on real inputs are
bit-identical to those of the graph as ONNX Runtime's quantizer wrote it.

``--json`` keeps the raw results; ``--before JSON`` (an earlier run, e.g. of the previous
version of slimfuse: ``PYTHONPATH=<old checkout>/src``) adds them as "before" columns. Writes
``benchmarks/results/quantize_cnn.md`` and ``.json``.

    .venv/bin/python benchmarks/quantize_cnn.py          # about 12 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
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
        budget = cfg.max_drop is not None  # decided on val accuracy; data: test reported too
        metric = val_acc if budget else None
        q = quantize(model, cfg, data if budget else None, calibration=calib, metric_fn=metric)
        fp = [r["layer"] for r in q.info["layers"] if r["precision"] == "fp32"]
        notes[label] = f"{len(fp)} fp32 layer(s)" + (f": {', '.join(fp)}" if fp else "")
        mp = q.info.get("mixed_precision")
        if mp and "drop" in mp:  # (older versions record less)
            notes[label] += (
                f" (val accuracy drop {100 * mp['drop']:+.2f} points; top-1 agreement with fp32 "
                f"lost on test {100 * mp['test_drop']:.2f}, on calibration "
                f"{100 * mp['calibration_drop']:.2f})"
            )
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


def zoo_sizes(with_minilm: bool) -> list[dict]:
    """fp32 and int8 bytes of every zoo model; identical outputs where the graph is compacted."""
    import slimfuse
    from slimfuse.quantization import QuantConfig, quantize
    from slimfuse.quantization import ptq as ptq_module

    compacts = hasattr(ptq_module, "compact_graph")
    data = slimfuse.load_data("mnist1d")
    x_test, _ = data.arrays("test")
    tmp = Path(tempfile.mkdtemp(prefix="qbench-zoo-"))
    cases = [(n, "static") for n in ("mnist1d_cnn", "mlp", "lenet300", "resnet1d", "gru")]
    if with_minilm:
        cases.append(("minilm", "dynamic"))
    out = []
    for name, mode in cases:
        t0 = time.time()
        torch.manual_seed(0)
        if name == "minilm":
            from slimfuse.data import text_corpus
            from slimfuse.models.hf import tokenize, tokenizer

            corpus, tok = text_corpus(), tokenizer()
            calib = [tokenize(corpus["train"][i : i + 32], tok) for i in (0, 32)]
            test = tokenize(corpus["test"][:32], tok)
            model = slimfuse.build_model("minilm").eval()
            kwargs = {"calibration": calib, "example_inputs": {k: v[:1] for k, v in test.items()}}
            example = kwargs["example_inputs"]
            feeds = {k: v.numpy() for k, v in test.items()}
        else:
            model = slimfuse.build_model(name, data=data).eval()
            kwargs = {"data": data}
            example = data.example_input(1)
            feeds = {"input": x_test.astype(np.float32)}
        fp32 = slimfuse.export(model, example, tmp / f"{name}.onnx").stat().st_size
        int8 = quantize(model, QuantConfig(mode=mode), **kwargs).graph_bytes()
        same = ""
        if compacts:
            real = ptq_module.compact_graph
            ptq_module.compact_graph = lambda d: d
            try:
                raw = quantize(model, QuantConfig(mode=mode), **kwargs).graph_bytes()
            finally:
                ptq_module.compact_graph = real
            a, b = (ort_session(g, 1).run(None, feeds)[0] for g in (raw, int8))
            same = "identical" if np.array_equal(a, b) else f"max diff {np.abs(a - b).max():.2g}"
        out.append({"model": name, "mode": mode, "fp32": fp32, "int8": len(int8), "same": same})
        print(f"  {name} {mode}: {len(int8)} / {fp32} bytes ({time.time() - t0:.0f}s)", flush=True)
    return out


def summarise(model_name: str, runs: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per variant: mean accuracy, drops per seed, size, median latency and speed-up over seeds."""
    seeds = sorted(runs)
    base = "ONNX Runtime fp32"
    out = {}
    for k in runs[seeds[0]]:
        notes = [runs[s][k]["note"] for s in seeds]
        if len(set(notes)) > 1:  # mixed precision may keep other layers for another seed
            notes = [f"seed {s}: {n}" for s, n in zip(seeds, notes, strict=True)]
        out[k] = {
            "acc": statistics.mean(runs[s][k]["acc"] for s in seeds),
            "drops": [100 * (runs[s][base]["acc"] - runs[s][k]["acc"]) for s in seeds],
            "kib": runs[seeds[0]][k]["kib"],
            "ms": statistics.median(runs[s][k]["ms"] for s in seeds),
            "speed": statistics.median(runs[s][base]["ms"] / runs[s][k]["ms"] for s in seeds),
            "note": "; ".join(dict.fromkeys(notes)),
        }
    return out


def _drop(d: list[float]) -> str:
    return f"{statistics.mean(d):+.2f} ({', '.join(f'{x:+.1f}' for x in d)})"


def rows_for(model_name: str, after: dict[str, dict], before: dict[str, dict] | None) -> list[list]:
    rows = []
    for k, a in after.items():
        b = (before or {}).get(k)
        row = [model_name, k]
        if before is not None:
            row += [
                f"{b['acc']:.4f}" if b else "",
                _drop(b["drops"]) if b else "",
                f"{b['kib']:.1f}" if b else "",
                f"{b['speed']:.2f}x" if b else "",
            ]
        row += [f"{a['acc']:.4f}", _drop(a["drops"]), f"{a['kib']:.1f}"]
        row += [f"{a['ms']:.3f}", f"{a['speed']:.2f}x", a["note"]]
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-minilm", dest="minilm", action="store_false", help="zoo sizes without it")
    ap.add_argument("--json", type=Path, default=RESULTS / "quantize_cnn.json")
    ap.add_argument("--md", type=Path, default=RESULTS / "quantize_cnn.md")
    ap.add_argument("--before", type=Path, help="an earlier run's --json: the before columns")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    after = {
        name: summarise(name, {s: run(name, s, args.threads, args.rounds) for s in args.seeds})
        for name in args.models
    }
    load.append(os.getloadavg()[0])
    zoo = zoo_sizes(args.minilm)
    before = json.loads(args.before.read_text()) if args.before else None
    raw = {"cpu": cpu_flags(), "load": load, "models": after, "zoo": zoo}
    if before is not None:
        raw["before"] = before
    rows = []
    for name in args.models:
        rows += rows_for(name, after[name], before["models"].get(name, {}) if before else None)
    header = ["model", "variant"]
    if before is not None:
        header += ["test acc before", "drop before", "KiB before", "speed-up before"]
    header += [
        "test acc (mean)",
        "drop, points: mean (per seed)",
        "ONNX KiB",
        "ORT b64 ms",
        "speed-up vs ORT fp32",
        "layers kept fp32",
    ]
    zoo_before = {(z["model"], z["mode"]): z for z in before["zoo"]} if before else {}
    zoo_header = ["model", "int8 mode", "fp32 bytes"]
    if before is not None:
        zoo_header += ["int8 bytes before", "ratio before"]
    zoo_header += ["int8 bytes", "int8 / fp32", "ORT outputs vs the quantizer's own graph"]
    zoo_rows = []
    for z in zoo:
        row = [z["model"], z["mode"], z["fp32"]]
        if before is not None:
            zb = zoo_before.get((z["model"], z["mode"]))
            row += [zb["int8"], f"{zb['int8'] / zb['fp32']:.3f}"] if zb else ["", ""]
        row += [z["int8"], f"{z['int8'] / z['fp32']:.3f}", z["same"]]
        zoo_rows.append(row)
    loads = f"load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} after the timing"
    if before is not None:
        b = before["load"]
        loads += f" (before run: {b[0]:.1f} / {b[1]:.1f})"
    text = (
        "# Static int8 of the MNIST-1D CNNs (ONNX Runtime)\n\n"
        f"CPU: {cpu_flags()}; threads {args.threads}; one model trained per seed "
        f"{args.seeds}, each quantized every way. Latency at batch 64 = median over "
        f"{args.rounds} rounds (each: 20 calls of each variant in turn) / 20, median over seeds; "
        "fp32 is slimfuse's export (CPU graph passes on). Drop = fp32 accuracy minus int8 "
        "accuracy on the 1000 test samples (positive = worse; one sample = 0.1 point), mean "
        "over seeds. Calibration: 512 train inputs. "
        + (
            "Before = the same script and seeds on the previous version (int8 graphs as ONNX "
            "Runtime's quantizer wrote them); each run's speed-ups are its own interleaved "
            "ratios. "
            if before is not None
            else ""
        )
        + f"{loads} (2 cores: above about 1, other work shared the CPU).\n\n"
        + table(header, rows)
        + "\n\n## int8 file size of every zoo model\n\n"
        "Untrained models (seed 0; sizes do not depend on the weights), static int8 at the "
        "defaults (MiniLM: dynamic, its default), against slimfuse's fp32 export. Outputs: the "
        "test inputs (MiniLM: 32 held-out paragraphs) through ONNX Runtime, this graph against "
        "the one ONNX Runtime's quantizer wrote.\n\n"
        + table(zoo_header, zoo_rows)
        + "\n\nReproduce: `make bench-quantize` (or `.venv/bin/python benchmarks/quantize_cnn.py`).\n"
    )
    args.md.parent.mkdir(exist_ok=True)
    args.md.write_text(text)
    args.json.write_text(json.dumps(raw, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
