"""all-MiniLM-L6-v2: low-rank factorization against structured pruning at the same FLOPs.

For each target (0.5x and 0.25x of the encoder's FLOPs, the 6 transformer layers at 128
tokens):

- low rank: ``Budget`` over the attention projections and the FFN of the 6 layers (ranks by
  sensitivity on calibration paragraphs, whitened SVD);
- pruning: ``Transformer`` with the same share of heads and FFN neurons removed (importance
  ``activation``), which scales every part of a layer alike;

both recovered with the same budget: the same epochs of distillation from the original model
(cosine, the one training loop) on the same training paragraphs. Fidelity: mean cosine to the
original's sentence embeddings on held-out paragraphs of ``slimfuse.data.text_corpus()``.
Speed: ONNX Runtime fp32, fixed threads, batch x 128 tokens, interleaved rounds (one call of
each model per round; medians and the quartiles of the per-round speed-ups). A uniform
``Ratio`` row (every layer the same share, no data) shows what the sensitivity allocation buys
before recovery.

Run: ``python benchmarks/lowrank.py`` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimfuse
from quantize_common import RESULTS, cpu_flags, interleaved_samples, ort_session, ratio_iqr, table
from slimfuse.api import teacher_objective
from slimfuse.config import TrainConfig
from slimfuse.data import text_corpus
from slimfuse.exporting import export_onnx
from slimfuse.lowrank import Budget, Ratio
from slimfuse.measuring import count_macs, count_params
from slimfuse.models.hf import minilm, tokenizer
from slimfuse.pruning.config import Transformer
from slimfuse.training import freeze

ENCODER = [
    "re:.*encoder\\.layer\\.\\d+\\.(attention\\.(self\\.(query|key|value)|output\\.dense)|intermediate\\.dense|output\\.dense)"
]


def tokens(texts: list[str], n: int) -> dict[str, torch.Tensor]:
    """``n`` paragraphs (the longest first) padded or cut to 128 tokens."""
    picked = sorted(texts, key=len, reverse=True)[:n]
    enc = tokenizer()(
        picked, padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.25])
    ap.add_argument("--train-texts", type=int, default=200)
    ap.add_argument("--test-texts", type=int, default=150)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--calibration", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slimfuse.distillation.text import embedding_data

    t_start = time.perf_counter()
    teacher = minilm().eval()
    corpus = text_corpus()
    n = args.train_texts
    texts = {
        "train": corpus["train"][:n],
        "val": corpus["train"][n : n + 20],
        "test": corpus["test"][: args.test_texts],
    }
    data = embedding_data(teacher, texts, max_length=128, name="python-docs")
    test = data.loader("test", batch_size=32)
    x128 = tokens(corpus["test"], 1)
    total = count_macs(teacher, x128)
    pooler = teacher.encoder.pooler.dense.weight.numel()  # outside the 6 layers (1 token)
    encoder = total - pooler
    recovery = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=16, restore_best=False, quiet=True
    )
    objective = teacher_objective(freeze(teacher), "embedding")

    def recover(model: torch.nn.Module) -> tuple[float, float]:
        before = slimfuse.evaluate(model, test, "embedding")
        t0 = time.perf_counter()
        slimfuse.train(model, data, "embedding", recovery, objective=objective)
        model.eval()
        return before, time.perf_counter() - t0

    rows: list[dict[str, Any]] = []
    for target in args.targets:
        budget = (target * encoder + pooler) / total
        t0 = time.perf_counter()
        low = slimfuse.factorize(
            teacher,
            Budget(budget=budget, targets=ENCODER, calibration_samples=args.calibration),
            data,
            example_inputs=x128,
        )
        t_make = time.perf_counter() - t0
        ranks = {
            r["layer"].split("layer.")[1]: r["rank"]
            for r in low.lowrank_info["layers"]
            if r["status"] == "factorized"
        }
        before, t_rec = recover(low)
        rows.append(
            {
                "target": target,
                "method": "low rank (budget)",
                "model": low,
                "fid_before": before,
                "make_s": t_make,
                "recover_s": t_rec,
                "detail": f"{len(ranks)} of 36 layers factorized",
                "ranks": ranks,
            }
        )
        share = 1 - target
        t0 = time.perf_counter()
        pruned = slimfuse.prune(
            teacher,
            Transformer(ffn=share, heads=share, importance="activation"),
            data,
            task="embedding",
        )
        t_make = time.perf_counter() - t0
        before, t_rec = recover(pruned)
        att = pruned.encoder.encoder.layer[0].attention.self
        rows.append(
            {
                "target": target,
                "method": "pruning (heads + FFN)",
                "model": pruned,
                "fid_before": before,
                "make_s": t_make,
                "recover_s": t_rec,
                "detail": f"{att.num_attention_heads} heads, "
                f"{pruned.encoder.config.intermediate_size} FFN per layer",
            }
        )
    uniform = slimfuse.factorize(teacher, Ratio(ratio=args.targets[0], targets=ENCODER))
    uniform_fid = slimfuse.evaluate(uniform, test, "embedding")
    uniform_frac = (count_macs(uniform, x128) - pooler) / encoder

    for row in rows:
        m = row["model"]
        row["encoder_flops"] = (count_macs(m, x128) - pooler) / encoder
        row["fid_after"] = slimfuse.evaluate(m, test, "embedding")
        row["params"] = count_params(m)[0]

    xb = tokens(corpus["test"], args.batch)
    feeds = {k: v.numpy().astype(np.int64) for k, v in xb.items()}
    lat: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fns = {}
        names = {"original": teacher} | {f"{r['method']} {r['target']}": r["model"] for r in rows}
        for name, m in names.items():
            path = export_onnx(m, tokens(corpus["test"], 2), Path(tmp) / f"{len(fns)}.onnx")
            sizes[name] = path.stat().st_size
            sess = ort_session(path, args.threads)
            wanted = {i.name for i in sess.get_inputs()}
            fed = {k: v for k, v in feeds.items() if k in wanted}
            fns[name] = lambda s=sess, f=fed: s.run(None, f)
        lat = interleaved_samples(fns, rounds=args.rounds)
        slimfuse.save(rows[0]["model"], Path(tmp) / "b")
        back = slimfuse.load(Path(tmp) / "b")
        with torch.no_grad():
            reload_equal = bool(torch.equal(back(**x128), rows[0]["model"](**x128)))

    base = lat["original"]
    med = {k: statistics.median(v) for k, v in lat.items()}
    table_rows = [
        [
            "original",
            "1.000",
            f"{count_params(teacher)[0]:,}",
            f"{sizes['original'] / 1e6:.1f}",
            f"{med['original']:.0f}",
            "1.00x",
            "1.000",
            "1.000",
            "",
        ]
    ]
    winners = []
    for row in rows:
        name = f"{row['method']} {row['target']}"
        lo, hi = ratio_iqr(base, lat[name])
        row["latency_ms"] = med[name]
        row["speedup"] = med["original"] / med[name]
        row["speedup_iqr"] = [lo, hi]
        row["onnx_bytes"] = sizes[name]
        table_rows.append(
            [
                f"{row['method']}, {row['target']}x",
                f"{row['encoder_flops']:.3f}",
                f"{row['params']:,}",
                f"{sizes[name] / 1e6:.1f}",
                f"{med[name]:.0f}",
                f"{row['speedup']:.2f}x ({lo:.2f}-{hi:.2f})",
                f"{row['fid_before']:.3f}",
                f"**{row['fid_after']:.3f}**",
                row["detail"],
            ]
        )
    for target in args.targets:
        pair = [r for r in rows if r["target"] == target]
        best = max(pair, key=lambda r: r["fid_after"])
        fast = max(pair, key=lambda r: r["speedup"])
        winners.append(
            f"- **{target}x encoder FLOPs**: fidelity: {best['method']} "
            f"({pair[0]['fid_after']:.3f} low rank vs {pair[1]['fid_after']:.3f} pruning); "
            f"speed: {fast['method']} ({pair[0]['speedup']:.2f}x vs {pair[1]['speedup']:.2f}x)."
        )
    header = [
        "model",
        "encoder FLOPs",
        "params",
        "ONNX MB",
        f"ORT ms ({args.batch}x128)",
        "speed-up (IQR)",
        "fidelity before recovery",
        "fidelity after",
        "shape",
    ]
    elapsed = time.perf_counter() - t_start
    low_ranks = {r["target"]: r["ranks"] for r in rows if "ranks" in r}
    lines = [
        "# Low-rank factorization vs structured pruning: all-MiniLM-L6-v2 at the same FLOPs",
        "",
        f"Command: `python benchmarks/lowrank.py` ({cpu_flags()}; {args.threads} thread(s); "
        f"torch {torch.__version__}; {date.today()}). Encoder FLOPs: MACs of the 6 layers at "
        f"1 x 128 tokens, as a fraction of the original's ({encoder / 1e9:.2f} G). Low rank: "
        f"`Budget` over the 36 attention and FFN projections, {args.calibration} calibration "
        "paragraphs, whitened SVD. Pruning: `Transformer`, the same share of heads and FFN "
        f"neurons, importance activation. Recovery, the same for both: {args.epochs} epochs of "
        f"distillation from the original (cosine) on {n} paragraphs, lr {args.lr}, batch 16. "
        f"Fidelity: mean cosine to the original's embeddings on {len(texts['test'])} held-out "
        f"paragraphs. ORT: fp32, {args.threads} thread, batch {args.batch} x 128 tokens, "
        f"median of {args.rounds} interleaved rounds.",
        "",
        table(header, table_rows),
        "",
        "Which wins, per budget:",
        "",
        *winners,
        "",
        f"Uniform `Ratio(ratio={args.targets[0]})` on the same 36 layers (no data, every layer "
        f"the same share; encoder FLOPs {uniform_frac:.3f}): fidelity {uniform_fid:.3f} before "
        "recovery, against the budget's "
        f"{rows[0]['fid_before']:.3f} at {rows[0]['encoder_flops']:.3f}.",
        "",
        "Ranks the budget chose (layer.projection: rank; the others stay dense): "
        + "; ".join(
            f"{t}x: " + ", ".join(f"{k} {v}" for k, v in rk.items()) for t, rk in low_ranks.items()
        ),
        "",
        f"Bundle of the first low-rank model reloads with identical outputs: {reload_equal}. "
        f"Whole run {elapsed / 60:.1f} min; "
        + ", ".join(
            f"{r['method']} {r['target']}x made in {r['make_s']:.0f} s, recovered in "
            f"{r['recover_s']:.0f} s"
            for r in rows
        )
        + ".",
        "",
    ]
    markdown = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "cpu": cpu_flags(),
        "machine": platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "date": str(date.today()),
        "args": vars(args),
        "encoder_macs": encoder,
        "latency_ms_original": med["original"],
        "uniform_ratio": {"encoder_flops": uniform_frac, "fidelity_before": uniform_fid},
        "reload_equal": reload_equal,
        "rows": [{k: v for k, v in r.items() if k != "model"} for r in rows],
        "seconds": elapsed,
    }
    (RESULTS / "lowrank.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (RESULTS / "lowrank.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
