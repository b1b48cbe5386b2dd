"""all-MiniLM-L6-v2 int8 on real held-out text: fidelity, neighbours, speed and size.

Text: held-out paragraphs of Python's own documentation (``slimfuse.data.text_corpus()["test"]``,
a seeded sample of ``--texts``), tokenized to at most 128 tokens. Fidelity: mean and minimum
cosine between each variant's embeddings and fp32's, and top-10 neighbour agreement (overlap
of each text's 10 nearest neighbours). Speed: one batch of 32 texts, ONNX Runtime (or PyTorch
for the torch.ao peer) with fixed threads, interleaved rounds (one call of each variant per
round); speed-up over ONNX Runtime fp32 = ratio of the medians, and beside it the interquartile
range of the per-round ratios (how much the shared machine moved it). Size: the int8 ONNX file
over the fp32 one (torch.ao: its state dict).

Peers in the same run: ONNX Runtime ``quantize_dynamic`` at its defaults and with per-channel
weights, and ``torch.ao.quantization.quantize_dynamic`` (Linear layers, qint8). slimfuse:
its default (dynamic int8, per-channel weights, 7-bit on CPUs without VNNI, embeddings int8,
attention fp32), the same with 8-bit weights, and smoothing calibrated on 64 *train* paragraphs:
slimfuse's outlier-channel smoothing (alpha 1, ``smooth_method="outlier"``, the default) and
SmoothQuant as published (``smooth_method="smoothquant"``; alpha 0.5, the paper's, and
``--alpha``, default 0.7, the best of 0.5-1.0 on 256 other train paragraphs), with 1/s folded
into a preceding LayerNorm where only the smoothed layers read it and, to compare, smoothed with
folding off. Last, smoothing with a budget: only the fewest inputs (layers sharing one, as
query, key and value do, count once), most int8-sensitive first, whose int8 model keeps a mean
cosine >= 0.996 (``max_drop=0.004``) on 64 *held-out* train paragraphs (never calibrated on;
each smoothed input costs one multiply at run time). Every graph is the opset-23 export
(attention as ONNX's one ``Attention`` op, which the ONNX Runtime peers are told not to
quantize: they would turn it into a contrib ``QAttention`` that does not load). Writes
``benchmarks/results/quantize_minilm.md``.

    .venv/bin/python benchmarks/quantize_minilm.py      # about 20 min on 2 cores (10 of them the two budgeted smoothing searches)
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantize_common import RESULTS, cpu_flags, interleaved_samples, ort_session, ratio_iqr, table


@torch.no_grad()
def neighbour_agreement(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    def knn(e: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(e, dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.topk(k, dim=1).indices

    na, nb = knn(a), knn(b)
    same = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(na, nb, strict=True)]
    return float(np.mean(same))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--alpha", type=float, default=0.7, help="SmoothQuant's migration strength")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    import slimfuse
    from slimfuse.data import text_corpus
    from slimfuse.models.hf import minilm, tokenize, tokenizer
    from slimfuse.quantization import QuantConfig, quantize
    from slimfuse.quantization.smoothquant import smooth as smooth_model

    corpus = text_corpus()
    rng = np.random.default_rng(0)
    test = [corpus["test"][i] for i in rng.permutation(len(corpus["test"]))[: args.texts]]
    tok = tokenizer()
    batches = [tokenize(test[i : i + 32], tok) for i in range(0, len(test), 32)]
    train = corpus["train"]
    calib = [tokenize(train[i : i + 32], tok) for i in (0, 32)]
    timing = batches[0]
    feeds = {k: v.numpy() for k, v in timing.items()}

    model = minilm()
    tmp = Path(tempfile.mkdtemp(prefix="qbench-minilm-"))
    example = {k: v[:1] for k, v in timing.items()}
    t0 = time.time()
    fp32 = slimfuse.export(model, example, tmp / "fp32.onnx", atol=1e-4)
    print(f"fp32 export {time.time() - t0:.0f}s", flush=True)
    graphs: dict[str, bytes] = {"ONNX Runtime fp32": fp32.read_bytes()}
    # ONNX Runtime's quantizer takes ONNX's own Attention op (opset 23) for its contrib one and
    # writes a QAttention that ONNX Runtime then refuses: its peers quantize every other op
    # type of their defaults.
    ort_ops = [op for op in IntegerOpsRegistry if op != "Attention"]
    quantize_dynamic(
        str(fp32), str(tmp / "ort.onnx"), weight_type=QuantType.QInt8, op_types_to_quantize=ort_ops
    )
    graphs["ONNX Runtime quantize_dynamic (defaults)"] = (tmp / "ort.onnx").read_bytes()
    quantize_dynamic(
        str(fp32),
        str(tmp / "ort_pc.onnx"),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=ort_ops,
    )
    graphs["ONNX Runtime quantize_dynamic per-channel"] = (tmp / "ort_pc.onnx").read_bytes()
    notes: dict[str, str] = {}
    smooth = "outlier smoothing (alpha 1, channels >= 4x median)"
    a = args.alpha

    def published(alpha: float) -> str:
        return f"SmoothQuant as published (alpha {alpha:g})"

    # the budget is checked on held-out text: 64 more train paragraphs, never calibrated on
    held = calib + [tokenize(train[i : i + 32], tok) for i in (64, 96)]
    budget = dict(max_drop=0.004, calibration_batches=2, held_out_batches=2)
    within = "on the fewest inputs within max_drop 0.004 (checked on 64 held-out paragraphs)"
    outlier = dict(mode="dynamic", smoothquant=1.0, smooth_method="outlier")

    def sq(alpha: float) -> dict:
        return dict(mode="dynamic", smoothquant=alpha, smooth_method="smoothquant")

    variants = [  # label, config, calibration, smoothed here first (LayerNorm folding off)
        ("slimfuse default (dynamic)", QuantConfig(mode="dynamic"), None, None),
        (
            "slimfuse dynamic, 8-bit weights",
            QuantConfig(mode="dynamic", reduce_range=False),
            None,
            None,
        ),
        (f"slimfuse dynamic + {smooth}", QuantConfig(**outlier), calib, None),
        (
            f"slimfuse dynamic + {smooth}, 8-bit weights",
            QuantConfig(**outlier, reduce_range=False),
            calib,
            None,
        ),
        (
            f"slimfuse dynamic + {smooth} {within}, 8-bit weights",
            QuantConfig(**outlier, reduce_range=False, **budget),
            held,
            None,
        ),
        (
            f"slimfuse dynamic + {published(0.5)}, LayerNorm folding",
            QuantConfig(**sq(0.5)),
            calib,
            None,
        ),
        (
            f"slimfuse dynamic + {published(a)}, LayerNorm folding",
            QuantConfig(**sq(a)),
            calib,
            None,
        ),
        (
            f"slimfuse dynamic + {published(a)}, no LayerNorm folding",
            QuantConfig(mode="dynamic"),
            None,
            dict(alpha=a, method="smoothquant", fold=False),
        ),
        (
            f"slimfuse dynamic + {published(a)} {within}",
            QuantConfig(**sq(a), **budget),
            held,
            None,
        ),
    ]
    for label, cfg, cal, presmooth in variants:
        t0 = time.time()
        source = model
        if presmooth is not None:  # smoothed here, so that folding can be turned off
            source = smooth_model(model, calib, **presmooth)
        q = quantize(source, cfg, calibration=cal, example_inputs=example)
        graphs[label] = q.graph_bytes()
        fp = [r for r in q.info["layers"] if r["precision"] == "fp32"]
        kinds = sorted({r["type"] for r in fp})
        info = q.info
        if presmooth is not None:
            info = {k: getattr(source, k) for k in ("smoothed_layers", "smoothing_folded")}
        smoothed = [n for n in info.get("smoothed_layers", []) if "pooler" not in n]
        folded = info.get("smoothing_folded", {})
        search = q.info.get("smoothing_search")
        of = (
            f" ({search['smoothed']} of {len(search['groups'])} inputs with outliers)"
            if search
            else ""
        )
        notes[label] = f"fp32: {len(fp)} ({', '.join(kinds)})" + (
            f"; {len(smoothed)} linears smoothed{of}, 1/s folded into {len(folded)} LayerNorms"
            if smoothed
            else ""
        )
        mp = q.info.get("mixed_precision")
        if mp:
            notes[label] += (
                f"; budget decided on {mp['decided_on']}: drop {mp['drop']:.4f} "
                f"(on the calibration paragraphs {mp['calibration_drop']:.4f})"
            )
        print(f"{label}: {time.time() - t0:.0f}s; {notes[label]}", flush=True)

    torch_ao = torch.ao.quantization.quantize_dynamic(
        minilm(), {torch.nn.Linear}, dtype=torch.qint8
    ).eval()
    buf = io.BytesIO()
    torch.save(torch_ao.state_dict(), buf)
    ao_bytes = buf.getbuffer().nbytes

    sessions = {k: ort_session(v, args.threads) for k, v in graphs.items()}

    def run_ort(sess, b) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in b.items()})[0])

    emb: dict[str, torch.Tensor] = {}
    for k, s in sessions.items():
        emb[k] = torch.cat([run_ort(s, b) for b in batches])
    with torch.inference_mode():
        emb["torch.ao quantize_dynamic (PyTorch)"] = torch.cat([torch_ao(**b) for b in batches])
    fns = {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}
    with torch.inference_mode():
        fns["torch.ao quantize_dynamic (PyTorch)"] = lambda: torch_ao(**timing)
        samples = interleaved_samples(fns, rounds=args.rounds)
    lat = {k: statistics.median(v) for k, v in samples.items()}
    ref = emb["ONNX Runtime fp32"]
    fp32_bytes = len(graphs["ONNX Runtime fp32"])
    sizes = {k: len(v) for k, v in graphs.items()}
    sizes["torch.ao quantize_dynamic (PyTorch)"] = ao_bytes
    rows = []
    for k in emb:
        cos = torch.nn.functional.cosine_similarity(emb[k], ref, dim=-1)
        lo, hi = ratio_iqr(samples["ONNX Runtime fp32"], samples[k])
        rows.append(
            [
                k,
                f"{float(cos.mean()):.4f}",
                f"{float(cos.min()):.4f}",
                f"{neighbour_agreement(emb[k], ref):.3f}",
                f"{lat[k]:.0f}",
                f"{lat['ONNX Runtime fp32'] / lat[k]:.2f}x",
                f"{lo:.2f}-{hi:.2f}",
                f"{sizes[k] / 1e6:.1f}",
                f"{sizes[k] / fp32_bytes:.3f}",
                notes.get(k, ""),
            ]
        )
    header = [
        "variant",
        "mean cos",
        "min cos",
        "top-10 agreement",
        "b32 ms",
        "speed-up vs ORT fp32",
        "per-round IQR",
        "MB",
        "size vs fp32",
        "notes",
    ]
    text = (
        "# all-MiniLM-L6-v2 int8 on held-out Python documentation text\n\n"
        f"CPU: {cpu_flags()}; threads {args.threads}; {len(test)} held-out paragraphs "
        f"(max 128 tokens); latency: one batch of 32, median of {args.rounds} rounds, one "
        "call of each variant per round in turn; per-round IQR: quartiles of the speed-ups "
        "measured within each round. Cosine and neighbours against ONNX Runtime fp32 embeddings.\n\n"
        + table(header, rows)
        + "\n\nReproduce: `make bench-quantize` (or `.venv/bin/python benchmarks/quantize_minilm.py`).\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_minilm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
