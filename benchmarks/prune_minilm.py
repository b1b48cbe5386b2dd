"""all-MiniLM-L6-v2: 50% of FFN neurons and 25% of attention heads removed.

Reports parameters, ONNX size, ONNX Runtime fp32 latency at batch 32 x 128 tokens (one thread,
interleaved medians) and fidelity: the mean cosine between the pruned and the unpruned model's
embeddings of held-out Python documentation paragraphs, before and after a short recovery
(the unpruned model as teacher, cosine loss, through the one training loop).
Targets: ORT speed-up >= 1.4x; parameters and ONNX size reduced accordingly.

Run: ``python benchmarks/prune_minilm.py`` (about 15 minutes on one thread).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import slimfuse
from prune_common import cpu_line, interleaved, ort_fn, verdict, write
from slimfuse.config import TrainConfig
from slimfuse.data import text_corpus
from slimfuse.measuring import count_params
from slimfuse.models.hf import minilm, tokenize, tokenizer
from slimfuse.pruning.config import Transformer
from slimfuse.pruning.transformer import heads_per_layer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ffn", type=float, default=0.5)
    ap.add_argument("--heads", type=float, default=0.25)
    ap.add_argument("--importance", default="activation")
    ap.add_argument("--train-texts", type=int, default=800)
    ap.add_argument("--test-texts", type=int, default=200)
    ap.add_argument("--recovery-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from slimfuse.distillation.text import embedding_data

    teacher = minilm().eval()
    corpus = text_corpus()
    n_val = max(20, args.test_texts // 4)
    texts = {
        "train": corpus["train"][: args.train_texts],
        "val": corpus["train"][args.train_texts : args.train_texts + n_val],
        "test": corpus["test"][: args.test_texts],
    }
    data = embedding_data(teacher, texts, max_length=128, name="python-docs")
    test = data.loader("test", batch_size=32)

    t0 = time.perf_counter()
    cfg = Transformer(ffn=args.ffn, heads=args.heads, importance=args.importance)
    small = slimfuse.prune(teacher, cfg, data, task="embedding")
    t_prune = time.perf_counter() - t0
    fid_before = slimfuse.evaluate(small, test, "embedding")
    t0 = time.perf_counter()
    recovery = TrainConfig(
        epochs=args.recovery_epochs, lr=args.lr, batch_size=16, quiet=True, restore_best=False
    )
    recovered = slimfuse.prune(
        teacher, cfg.replace(recovery="distill"), data, train=recovery, task="embedding"
    )
    t_recover = time.perf_counter() - t0
    fid_after = slimfuse.evaluate(recovered, test, "embedding")

    # batch 32 x 128 real tokens
    long = [t for t in corpus["test"] if len(t) > 700][:32]
    long += corpus["test"][: 32 - len(long)]
    enc = tokenizer()(
        long, padding="max_length", truncation=True, max_length=128, return_tensors="pt"
    )
    x = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    x1 = tokenize(texts["test"][:2])
    with tempfile.TemporaryDirectory() as tmp:
        pd = slimfuse.export(teacher, x1, Path(tmp) / "dense.onnx")
        pp = slimfuse.export(recovered, x1, Path(tmp) / "pruned.onnx")
        sizes = {"dense": pd.stat().st_size, "pruned": pp.stat().st_size}
        lat = interleaved(
            {"dense": ort_fn(pd, x, args.threads), "pruned": ort_fn(pp, x, args.threads)},
            rounds=args.rounds,
            budget_s=0.1,
            min_repeats=3,
        )
        slimfuse.save(recovered, Path(tmp) / "b")
        back = slimfuse.load(Path(tmp) / "b")
        reload_equal = bool(torch.equal(back(**x1), recovered(**x1)))
    p_dense, p_pruned = count_params(teacher)[0], count_params(recovered)[0]
    enc_dense = sum(p.numel() for n, p in teacher.named_parameters() if ".layer." in n)
    enc_pruned = sum(p.numel() for n, p in recovered.named_parameters() if ".layer." in n)
    speedup = lat["dense"] / lat["pruned"]
    lines = [
        "# Transformer pruning: all-MiniLM-L6-v2, 50% FFN neurons + 25% attention heads",
        "",
        f"Command: `python benchmarks/prune_minilm.py` ({cpu_line(args.threads)}). Importance: "
        f"{args.importance}. Fidelity: mean cosine to the unpruned model's embeddings on "
        f"{len(texts['test'])} held-out Python documentation paragraphs. Recovery: "
        f"{args.recovery_epochs} epoch(s) on {len(texts['train'])} paragraphs, distillation from "
        f"the unpruned model (cosine), lr {args.lr}. Latency: ONNX Runtime fp32, batch 32 x 128 "
        f"tokens, {args.threads} thread, median of {args.rounds} interleaved rounds.",
        "",
        "| model | heads/layer | FFN/layer | params | encoder-layer params | ONNX MB | ORT ms (32x128) | fidelity |",
        "|---|---|---|---|---|---|---|---|",
        f"| unpruned | {heads_per_layer(teacher)[0]} | {teacher.encoder.config.intermediate_size} | "
        f"{p_dense:,} | {enc_dense:,} | {sizes['dense'] / 1e6:.1f} | {lat['dense']:.0f} | 1.000 |",
        f"| pruned, before recovery | {heads_per_layer(small)[0]} | "
        f"{small.encoder.config.intermediate_size} | {count_params(small)[0]:,} | {enc_pruned:,} | "
        f"{sizes['pruned'] / 1e6:.1f} | {lat['pruned']:.0f} | {fid_before:.3f} |",
        f"| pruned, after recovery | {heads_per_layer(recovered)[0]} | "
        f"{recovered.encoder.config.intermediate_size} | {p_pruned:,} | {enc_pruned:,} | "
        f"{sizes['pruned'] / 1e6:.1f} | {lat['pruned']:.0f} | {fid_after:.3f} |",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| ORT fp32 speed-up >= 1.4x at 32 x 128 | {speedup:.2f}x | {verdict(speedup >= 1.4)} |",
        f"| parameters reduced | {p_pruned / p_dense:.3f}x overall, {enc_pruned / enc_dense:.3f}x in "
        f"the encoder layers (embeddings untouched) | {verdict(p_pruned < p_dense)} |",
        f"| ONNX size reduced | {sizes['pruned'] / sizes['dense']:.3f}x | "
        f"{verdict(sizes['pruned'] < sizes['dense'])} |",
        f"| bundle reloads with identical outputs | {reload_equal} | {verdict(reload_equal)} |",
        "",
        f"Prune time {t_prune:.0f} s; prune + recovery {t_recover:.0f} s.",
        "",
    ]
    write(
        "prune_minilm",
        "\n".join(lines),
        {
            "args": vars(args),
            "latency_ms": lat,
            "speedup": speedup,
            "fidelity_before": fid_before,
            "fidelity_after": fid_after,
            "params": [p_dense, p_pruned],
            "encoder_layer_params": [enc_dense, enc_pruned],
            "onnx_bytes": sizes,
        },
    )


if __name__ == "__main__":
    main()
