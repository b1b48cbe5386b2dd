"""Phone deploy targets on one CPU: ONNX Runtime fp32/int8 against ExecuTorch (XNNPACK) fp32/int8.

Models: the MNIST-1D CNN (``mnist1d_cnn``) and the residual CNN (``resnet1d``), trained here
(accuracy on the 1000 test samples), and all-MiniLM-L6-v2 (fidelity: mean cosine of each
variant's embeddings against fp32 PyTorch's on held-out paragraphs of
``slimfuse.data.text_corpus()["test"]``, at most 128 tokens). ONNX Runtime int8: slimfuse's
static int8 for the CNNs and its dynamic int8 (the default for encoders) for MiniLM.
ExecuTorch: ``slimfuse.export(..., "m.pte")`` (XNNPACK fp32) and ``int8=True`` (PT2E, XNNPACK
quantizer, 8 calibration batches of the train split; MiniLM: 4 batches of 16 train paragraphs).
Latency at batch 1 and 64 (MiniLM: 64 paragraphs padded to the longest), one thread, interleaved
rounds (one call of each variant per round; medians); size of the file each engine loads.
Writes ``benchmarks/results/deploy_mobile.md`` and ``.json``.

    .venv/bin/python benchmarks/deploy_mobile.py [--no-minilm]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimfuse
from quantize_common import RESULTS, cpu_flags, interleaved, table
from slimfuse.deploy import runner
from slimfuse.exporting import repeat_batch
from slimfuse.tasks import forward

VARIANTS = ("ORT fp32", "ORT int8", "ExecuTorch fp32", "ExecuTorch int8")


def files(model: Any, x: Any, tmp: Path, name: str, int8_ort: Any, calibration: Any, n: int):
    """Each variant's file (or the reason it has none) and its export time."""
    out: dict[str, Any] = {}
    jobs = {
        "ORT fp32": lambda p: slimfuse.export(model, x, p.with_suffix(".onnx")),
        "ORT int8": lambda p: slimfuse.export(int8_ort, x, p.with_suffix(".onnx")),
        "ExecuTorch fp32": lambda p: slimfuse.export(model, x, p.with_suffix(".pte")),
        "ExecuTorch int8": lambda p: slimfuse.export(
            model,
            x,
            p.with_suffix(".pte"),
            int8=True,
            calibration=calibration,
            calibration_batches=n,
        ),
    }
    for variant, job in jobs.items():
        t0 = time.perf_counter()
        try:
            path = job(tmp / f"{name}-{variant.replace(' ', '-')}")
            out[variant] = (path, time.perf_counter() - t0)
        except Exception as exc:  # reported, not hidden
            out[variant] = (f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}", None)
        print(f"  {name} {variant}: {out[variant][1] or out[variant][0]}", flush=True)
    return out


def timing(runners: dict[str, Any], x: Any, batches: tuple[int, ...], rounds: int):
    got: dict[str, dict[int, float]] = {v: {} for v in runners}
    for b in batches:
        xb = x[b] if isinstance(x, dict) and b in x else repeat_batch(x, b)  # MiniLM: {b: batch}
        fns = {v: (lambda r=r, xb=xb: forward(r, xb)) for v, r in runners.items()}
        for v, ms in interleaved(fns, rounds).items():
            got[v][b] = ms
    return got


def classify(name: str, data: Any, epochs: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from slimfuse.quantization import Static

    torch.manual_seed(0)
    model = slimfuse.build_model(name, data=data)
    t0 = time.perf_counter()
    slimfuse.train(model, data, config=slimfuse.TrainConfig(epochs=epochs, lr=1e-2, quiet=True))
    print(f"{name}: trained {epochs} epochs in {time.perf_counter() - t0:.0f} s", flush=True)
    model.eval()
    q = slimfuse.quantize(model, Static(), data)
    x = data.example_input(1)
    made = files(model, x, tmp, name, q, data, 8)
    test = data.loader("test", batch_size=256)
    runners = {v: runner(p) for v, (p, _) in made.items() if isinstance(p, Path)}
    metric = {"PyTorch fp32": slimfuse.evaluate(model, test)}
    metric.update({v: slimfuse.evaluate(r, test) for v, r in runners.items()})
    return {"made": made, "metric": metric, "latency": timing(runners, x, (1, 64), rounds)}


def minilm(rounds: int, texts: int, tmp: Path) -> dict[str, Any]:
    from slimfuse.data import text_corpus
    from slimfuse.models.hf import minilm as load_minilm
    from slimfuse.models.hf import tokenize, tokenizer
    from slimfuse.quantization import QuantConfig

    model = load_minilm().eval()
    tok = tokenizer()
    corpus = text_corpus()
    rng = np.random.default_rng(0)
    held = [corpus["test"][i] for i in rng.permutation(len(corpus["test"]))[:texts]]
    calibration = [tokenize(corpus["train"][i * 16 : (i + 1) * 16], tok) for i in range(4)]
    x = tokenize(held[:2], tok)
    q = slimfuse.quantize(model, QuantConfig(mode="dynamic"), example_inputs=x)
    made = files(model, x, tmp, "minilm", q, calibration, 4)
    runners = {v: runner(p) for v, (p, _) in made.items() if isinstance(p, Path)}
    batches = [tokenize(held[i : i + 32], tok) for i in range(0, len(held), 32)]
    with torch.no_grad():
        ref = torch.cat([forward(model, b) for b in batches])
        metric = {"PyTorch fp32": 1.0}
        for v, r in runners.items():
            got = torch.cat([forward(r, b) for b in batches])
            metric[v] = float(torch.nn.functional.cosine_similarity(got, ref).mean())
    inputs = {1: tokenize(held[:1], tok), 64: tokenize(held[:64], tok)}
    return {"made": made, "metric": metric, "latency": timing(runners, inputs, (1, 64), rounds)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cnn-epochs", type=int, default=60)
    ap.add_argument("--resnet-epochs", type=int, default=10)
    ap.add_argument("--texts", type=int, default=128)
    ap.add_argument("--no-minilm", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = slimfuse.load_data("mnist1d")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        results["mnist1d_cnn"] = classify("mnist1d_cnn", data, args.cnn_epochs, args.rounds, tmp)
        results["resnet1d"] = classify("resnet1d", data, args.resnet_epochs, args.rounds, tmp)
        if not args.no_minilm:
            results["minilm"] = minilm(max(3, args.rounds // 3), args.texts, tmp)
        rows, record = [], {}
        for name, r in results.items():
            record[name] = {}
            kind = "cosine vs fp32" if name == "minilm" else "test accuracy"
            for v in VARIANTS:
                path, secs = r["made"][v]
                if not isinstance(path, Path):
                    rows.append([name, v, f"not made: {path}", "", "", "", ""])
                    record[name][v] = {"error": path}
                    continue
                lat = r["latency"][v]
                value = r["metric"][v]
                rec = {
                    kind: value,
                    "ms_b1": lat[1],
                    "ms_b64": lat[64],
                    "bytes": path.stat().st_size,
                    "export_s": secs,
                }
                record[name][v] = rec
                shown = f"{value:.4f}" if name == "minilm" else f"{100 * value:.1f}%"
                rows.append(
                    [
                        name,
                        v,
                        f"{shown} ({kind})",
                        f"{lat[1]:.3f}",
                        f"{lat[64]:.2f}",
                        f"{rec['bytes'] / 1024:.1f}",
                        f"{secs:.0f}",
                    ]
                )
            ref = r["metric"]["PyTorch fp32"]
            record[name]["PyTorch fp32"] = {"metric": ref}
    total = time.perf_counter() - start
    header = ["model", "variant", "accuracy / fidelity", "ms b1", "ms b64", "KiB", "export s"]
    text = "\n".join(
        [
            "# Deploy targets: ONNX Runtime vs ExecuTorch (XNNPACK)",
            "",
            f"CPU: {cpu_flags()}; 1 thread; {args.rounds} interleaved rounds (MiniLM: "
            f"{max(3, args.rounds // 3)}); run time {total / 60:.1f} min. "
            f"PyTorch fp32 reference: "
            + ", ".join(f"{n} {r['metric']['PyTorch fp32']:.4f}" for n, r in results.items()),
            "",
            table(header, rows),
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "deploy_mobile.md").write_text(text)
    meta = {"cpu": cpu_flags(), "threads": 1, "rounds": args.rounds, "minutes": total / 60}
    (RESULTS / "deploy_mobile.json").write_text(
        json.dumps({"meta": meta, "results": record}, indent=2) + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
