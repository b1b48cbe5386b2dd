"""Residual CNN on MNIST-1D, 50% of channels removed: MACs, ONNX Runtime speed-up, accuracy.

The zoo's ``resnet1d`` (widths 64/128/128, BatchNorm, residual adds) is trained, then

- slimfuse: ``slimfuse.prune(model, Channels(channels=0.5, importance="l1"), data, train=...)``
  (Torch-Pruning dependency graph underneath, then recovery through the one training loop);
- peer: Torch-Pruning used directly as its README shows (``MagnitudeImportance(p=2)``,
  ``BasePruner``, classifier ignored), no recovery.

Latency: ONNX Runtime, batch 64, one intra-op thread, interleaved medians of p50s.
Targets: MACs <= 0.3x; speed-up >= 0.8 x the MACs reduction; accuracy within 1 point.

Run: ``python benchmarks/prune_structured.py`` (about 8 minutes on one thread).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch_pruning as tp

import slimfuse
from prune_common import cpu_line, interleaved, ort_fn, verdict, write
from slimfuse.measuring import count_macs, count_params
from slimfuse.pruning.config import Channels
from slimfuse.training import TrainConfig


def peer_torch_pruning(model: torch.nn.Module, example: torch.Tensor, ratio: float):
    model = copy.deepcopy(model).eval()
    imp = tp.importance.MagnitudeImportance(p=2)
    pruner = tp.pruner.BasePruner(
        model, example, importance=imp, pruning_ratio=ratio, ignored_layers=[model.fc]
    )
    pruner.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = slimfuse.load_data("mnist1d")
    test = data.loader("test", batch_size=500)
    x1 = data.example_input(1)
    torch.manual_seed(0)
    dense = slimfuse.build_model("resnet1d", data=data, widths=[64, 128, 128])
    t0 = time.perf_counter()
    slimfuse.train(dense, data, config=TrainConfig(epochs=args.epochs, lr=1e-2, quiet=True))
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    recovery = TrainConfig(epochs=args.finetune_epochs, lr=1e-2, quiet=True, restore_best=False)
    ours = slimfuse.prune(
        dense, Channels(channels=args.ratio, importance="l1"), data, train=recovery
    )
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    peer = peer_torch_pruning(dense, x1, args.ratio)
    t_peer = time.perf_counter() - t0
    models = {"dense": dense, "slimfuse (l1, recovery)": ours, "Torch-Pruning direct": peer}
    secs = {"dense": t_dense, "slimfuse (l1, recovery)": t_ours, "Torch-Pruning direct": t_peer}
    x64 = data.example_input(64)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for i, (name, m) in enumerate(models.items()):
            paths[name] = slimfuse.export(m, x1, Path(tmp) / f"m{i}.onnx")
        onnx_bytes = {k: p.stat().st_size for k, p in paths.items()}
        lat = interleaved(
            {k: ort_fn(p, x64, args.threads) for k, p in paths.items()}, rounds=args.rounds
        )
        # the pruned bundle reloads (resize edit) with identical outputs
        slimfuse.save(ours, Path(tmp) / "b")
        back = slimfuse.load(Path(tmp) / "b")
        reload_equal = bool(torch.equal(back(x64), ours(x64)))
    rows = []
    base_macs = count_macs(dense, x1)
    for name, m in models.items():
        macs = count_macs(m, x1)
        params = count_params(m)[0]
        rows.append(
            {
                "model": name,
                "accuracy": slimfuse.evaluate(m, test),
                "params": params,
                "macs": macs,
                "macs_ratio": macs / base_macs,
                "onnx_bytes": onnx_bytes[name],
                "latency_ms_b64": lat[name],
                "speedup": lat["dense"] / lat[name],
                "efficiency": (lat["dense"] / lat[name]) / (base_macs / macs),
                "seconds": secs[name],
            }
        )
    d, o = rows[0], rows[1]
    checks = {
        "MACs <= 0.3x": (o["macs_ratio"] <= 0.3, f"{o['macs_ratio']:.3f}x"),
        "speed-up >= 0.8 x MACs reduction": (
            o["efficiency"] >= 0.8,
            f"{o['speedup']:.2f}x for {1 / o['macs_ratio']:.2f}x fewer MACs = {o['efficiency']:.3f}",
        ),
        "accuracy within 1 point": (
            o["accuracy"] >= d["accuracy"] - 0.01,
            f"{100 * (o['accuracy'] - d['accuracy']):+.1f} points",
        ),
        "bundle reloads with identical outputs": (reload_equal, str(reload_equal)),
    }
    lines = [
        "# Structured pruning: residual CNN (resnet1d 64/128/128) on MNIST-1D, 50% of channels",
        "",
        f"Command: `python benchmarks/prune_structured.py` ({cpu_line(args.threads)}). Dense: "
        f"{args.epochs} epochs; slimfuse recovery: {args.finetune_epochs} epochs. Latency: ONNX "
        f"Runtime, batch 64, {args.threads} thread, median of {args.rounds} interleaved rounds.",
        "",
        "| model | test acc | params | MACs (b1) | MACs ratio | ONNX KiB | ORT b64 ms | speed-up | speed-up / MACs reduction |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {100 * r['accuracy']:.1f}% | {r['params']:,} | {r['macs']:,} | "
            f"{r['macs_ratio']:.3f} | {r['onnx_bytes'] / 1024:.0f} | {r['latency_ms_b64']:.2f} | "
            f"{r['speedup']:.2f}x | {r['efficiency']:.3f} |"
        )
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    for k, (ok, txt) in checks.items():
        lines.append(f"| {k} | {txt} | {verdict(ok)} |")
    lines.append("")
    write(
        "prune_structured",
        "\n".join(lines),
        {"args": vars(args), "rows": rows, "checks": {k: v[1] for k, v in checks.items()}},
    )


if __name__ == "__main__":
    main()
