"""all-MiniLM-L6-v2, depth 6 -> 3: distillation vs the same student with copied layers only.

Data: ``slimfuse.data.text_corpus()`` (Python documentation topics and standard-library
docstrings); the held-out ``test`` topics are never trained on. Training texts are the train
paragraphs plus their sentences; 5% of the train paragraphs are split off for validation.

Student: teacher layers ``--keep`` (default 0,3,5) copied (DistilBERT-style). Losses:
token-level hidden states (``1 - cos`` per token by default, padding masked; each student layer
matched to the teacher layer whose output the next kept layer was trained on: with 0,3,5 ->
teacher outputs 2,4,5) plus
``alpha * (1 - cos) + (1 - alpha) * MSE`` on the sentence embeddings.

Reports on the held-out text: mean cosine to the teacher's embeddings, top-10 neighbour
agreement (overlap of each text's 10 nearest neighbours under teacher and student), and the
ONNX Runtime latency of teacher and student at batch 32 (interleaved, medians). Writes
``benchmarks/results/distill_minilm.md``.

    .venv/bin/python benchmarks/distill_minilm.py            # about 18 min on 2 cores
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "distill_minilm.md"
LAYERS = "encoder.encoder.layer"


def sentences(paragraphs: list[str], min_chars: int = 40) -> list[str]:
    out = []
    for p in paragraphs:
        for s in re.split(r"(?<=[.!?])\s+", p):
            if len(s) >= min_chars and s != p:
                out.append(s)
    return out


def hint_map(keep: list[int], n_teacher: int) -> dict[str, str]:
    """Student layer k -> the teacher output that the next kept teacher layer reads."""
    out = {}
    for k in range(len(keep)):
        t = keep[k + 1] - 1 if k + 1 < len(keep) else n_teacher - 1
        out[f"{LAYERS}.{k}"] = f"{LAYERS}.{t}"
    return out


@torch.no_grad()
def neighbour_agreement(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean overlap of the k nearest neighbours (cosine, self excluded) under a and b."""

    def knn(e: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(e, dim=-1)
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.topk(k, dim=-1).indices

    na, nb = knn(a), knn(b)
    overlap = [len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(na, nb, strict=True)]
    return float(sum(overlap) / len(overlap))


def ort_latency(models: dict[str, torch.nn.Module], inputs: dict, threads: int) -> dict[str, float]:
    """Median ms per batch in ONNX Runtime, the models timed in alternation over 3 rounds."""
    from slimfuse.exporting import OrtRunner, export_onnx
    from slimfuse.measuring import time_calls

    tmp = Path(tempfile.mkdtemp(prefix="distill_minilm_"))
    runners = {}
    for name, m in models.items():
        path = export_onnx(m.eval(), inputs, tmp / f"{name}.onnx", atol=1e-3)
        runners[name] = OrtRunner(path, threads=threads)
    feeds = {n: r.feeds(**inputs) for n, r in runners.items()}
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(3):
        for n, r in runners.items():
            p50, _ = time_calls(
                lambda r=r, n=n: r.run_numpy(feeds[n]), warmup=1, min_repeats=3, budget_s=1.0
            )
            times[n].append(p50)
    return {n: statistics.median(t) for n, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", default="0,3,5")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--hint-weight", type=float, default=1.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-max-length", type=int, default=128)
    ap.add_argument("--hint-metric", default="cosine", choices=["mse", "cosine"])
    ap.add_argument("--max-train", type=int, default=0, help="cap on training texts (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--no-group-by-length", action="store_true", help="random batches (more padding)"
    )
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    from slimfuse.data import text_corpus
    from slimfuse.distillation import Cosine, distill_run
    from slimfuse.distillation.students import depth_student
    from slimfuse.distillation.text import embed, embedding_data
    from slimfuse.models.hf import minilm, tokenizer
    from slimfuse.training import TrainConfig

    keep = [int(i) for i in args.keep.split(",")]
    corpus = text_corpus(seed=0)
    g = torch.Generator().manual_seed(args.seed)
    paras = [corpus["train"][i] for i in torch.randperm(len(corpus["train"]), generator=g)]
    n_val = max(1, len(paras) // 20)
    train_texts = paras[n_val:] + sentences(paras[n_val:])
    order = torch.randperm(len(train_texts), generator=g).tolist()
    train_texts = [train_texts[i] for i in order]
    if args.max_train:
        train_texts = train_texts[: args.max_train]
    tok = tokenizer()
    teacher = minilm().eval()
    n_layers = teacher.encoder.config.num_hidden_layers
    data = embedding_data(
        teacher,
        {"train": train_texts, "val": paras[:n_val], "test": corpus["test"]},
        tokenizer=tok,
        train_max_length=args.train_max_length,
        train_targets=False,
        name="pydoc",
    )
    prep_s = time.perf_counter() - start
    print(
        f"data: {len(data.train)} train / {len(data.val)} val / {len(data.test)} held-out texts "
        f"({prep_s:.0f}s)",
        flush=True,
    )

    test = data.test
    test_inputs = {"input_ids": test.input_ids, "attention_mask": test.attention_mask}
    t_emb = test.target

    peer = depth_student(teacher, keep=keep).eval()
    student = depth_student(teacher, keep=keep)
    # the token/position embeddings (12M of the 17M parameters) stay as copied from the teacher
    for p in student.encoder.embeddings.parameters():
        p.requires_grad_(False)
    hints = hint_map(keep, n_layers)
    cfg = Cosine(
        alpha=args.alpha,
        hints=hints,
        hint_weight=args.hint_weight,
        hint_metric=args.hint_metric,
        max_cache_mb=1500,
    )
    steps = args.epochs * ((len(data.train) + args.batch_size - 1) // args.batch_size)
    tc = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        max_grad_norm=1.0,
        seed=args.seed,
        quiet=False,
        group_by_length=not args.no_group_by_length,
    )
    t0 = time.perf_counter()
    run = distill_run(student, teacher, cfg, data, train=tc, task="embedding")
    student = run.student  # the trained copy (the model passed in is left as it was)
    train_s = time.perf_counter() - t0

    load_avg = " / ".join(f"{x:.1f}" for x in __import__("os").getloadavg())
    rows = []
    for name, m in (
        ("teacher (6 layers)", teacher),
        ("copied layers only (peer)", peer),
        ("distilled (slimfuse)", student),
    ):
        e = embed(m, test_inputs)
        cos = float(torch.nn.functional.cosine_similarity(e, t_emb, dim=-1).mean())
        rows.append(
            {
                "name": name,
                "cos": cos,
                "nn10": neighbour_agreement(e, t_emb),
                "params": sum(p.numel() for p in m.parameters()),
            }
        )
    total_s = time.perf_counter() - start

    bench = {k: v[:32] for k, v in test_inputs.items()}
    width = int(bench["attention_mask"].sum(1).max())
    bench = {k: v[:, :width] for k, v in bench.items()}
    lat = ort_latency({"teacher": teacher, "student": student}, bench, threads=1)
    speedup = lat["teacher"] / lat["student"]

    ms = {
        "teacher (6 layers)": lat["teacher"],
        "distilled (slimfuse)": lat["student"],
        "copied layers only (peer)": lat["student"],
    }
    lines = [
        "# Distillation: all-MiniLM-L6-v2, depth 6 -> 3",
        "",
        f"Held-out text: {len(test)} paragraphs of Python documentation topics and standard-library "
        f"docstrings never trained on; training: {len(data.train)} texts (paragraphs and their "
        f"sentences, truncated to {args.train_max_length} tokens), {len(data.val)} for validation. Student keeps teacher layers {keep}; "
        f"token-level hints ({args.hint_metric}, padding masked; student -> teacher layer output): {', '.join(f'{k[-1]}->{v[-1]}' for k, v in hints.items())}; "
        f"{args.epochs} epochs, batch {args.batch_size}"
        f"{' (texts of similar length batched together)' if not args.no_group_by_length else ''}, "
        f"lr {args.lr}, AdamW with warm-up and cosine "
        f"decay, token/position embeddings frozen, seed {args.seed}. torch threads {args.threads} (load average after training, "
        f"this run included: {load_avg}).",
        "",
        "| model | layers | params | mean cosine to teacher (held-out) | top-10 neighbour agreement | ORT ms / batch 32 (1 thread) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        depth = n_layers if r["name"].startswith("teacher") else len(keep)
        lines.append(
            f"| {r['name']} | {depth} | {r['params'] / 1e6:.2f}M | {r['cos']:.4f} | "
            f"{r['nn10']:.3f} | {ms[r['name']]:.1f} |"
        )
    cos_s = rows[2]["cos"]
    lines += [
        "",
        f"- ONNX Runtime speed-up of the student at batch 32 (sequence {width} tokens): "
        f"**{speedup:.2f}x** (target >= 1.8x: {'met' if speedup >= 1.8 else 'not met'})",
        f"- mean cosine to the teacher on held-out text: **{cos_s:.4f}** "
        f"(target >= 0.90: {'met' if cos_s >= 0.90 else 'not met'}); copied layers only: {rows[1]['cos']:.4f}",
        f"- wall time: data and teacher embeddings {prep_s / 60:.1f} min, distillation "
        f"{train_s / 60:.1f} min, total to the trained student {total_s / 60:.1f} min "
        f"(budget 30 min on 2 cores); best val cosine {run.train.best_metric:.4f} at epoch "
        f"{run.train.best_epoch}; teacher cache: {run.cache_hits} samples served, "
        f"{run.cache_misses} computed",
        f"- machine: {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        "Reproduce: `.venv/bin/python benchmarks/distill_minilm.py` (or `make bench-distill`).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
