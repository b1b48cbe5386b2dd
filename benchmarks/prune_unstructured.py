"""MNIST-1D CNN, 90% unstructured sparsity: slimfuse (cubic AGP + fine-tuning) vs torch.nn.utils.prune.

Both start from the same trained dense CNN and get the same fine-tuning budget (epochs, lr,
optimizer, the one training loop). The peer is what a user would do with PyTorch alone:
``torch.nn.utils.prune.global_unstructured(..., L1Unstructured, amount=0.9)`` once, then fine-tune.
Target: slimfuse's pruned CNN within 1 point of the dense test accuracy.

Run: ``python benchmarks/prune_unstructured.py`` (about 6 minutes on one thread).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from torch import nn
from torch.nn.utils import prune as tprune

import slimfuse
from prune_common import cpu_line, verdict, write
from slimfuse.measuring import count_params, state_bytes
from slimfuse.pruning.sparse import storage_report
from slimfuse.training import TrainConfig


def peer_torch_prune(model: nn.Module, data, sparsity: float, cfg: TrainConfig) -> nn.Module:
    model = copy.deepcopy(model)
    params = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Linear))]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=sparsity)
    slimfuse.train(model, data, config=cfg, description="torch prune finetune")
    for m, name in params:
        tprune.remove(m, name)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 25])
    ap.add_argument("--epochs", type=int, default=60, help="dense training epochs")
    ap.add_argument("--finetune-epochs", type=int, default=60)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--sparsity", type=float, default=0.9)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = slimfuse.load_data("mnist1d")
    test = data.loader("test", batch_size=500)
    ft = TrainConfig(epochs=args.finetune_epochs, lr=args.lr, quiet=True, restore_best=False)
    rows, payload = [], {"args": vars(args), "runs": []}
    target_ok = None
    for width in args.widths:
        torch.manual_seed(0)
        dense = slimfuse.build_model("mnist1d_cnn", data=data, channels=width)
        t0 = time.perf_counter()
        slimfuse.train(dense, data, config=TrainConfig(epochs=args.epochs, lr=1e-2, quiet=True))
        t_dense = time.perf_counter() - t0
        acc_dense = slimfuse.evaluate(dense, test)
        t0 = time.perf_counter()
        ours = slimfuse.prune(
            dense,
            data,
            sparsity=args.sparsity,
            schedule="agp",
            finetune_epochs=args.finetune_epochs,
            lr=args.lr,
        )
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        peer = peer_torch_prune(dense, data, args.sparsity, ft)
        t_peer = time.perf_counter() - t0
        rep = storage_report(ours)
        for name, model, secs, stored in (
            ("dense", dense, t_dense, state_bytes(dense)),
            ("slimfuse AGP (cubic) + fine-tune", ours, t_ours, rep["encoded_bytes"]),
            ("torch.nn.utils.prune global L1 + fine-tune", peer, t_peer, state_bytes(peer)),
        ):
            acc = slimfuse.evaluate(model, test)
            params, nonzero = count_params(model)
            row = {
                "width": width,
                "method": name,
                "accuracy": acc,
                "delta_points": 100 * (acc - acc_dense),
                "sparsity": 1 - nonzero / params,
                "nonzero": nonzero,
                "params": params,
                "stored_bytes": stored,
                "seconds": secs,
            }
            rows.append(row)
            payload["runs"].append(row)
        if width == args.widths[0]:
            target_ok = rows[-2]["delta_points"] >= -1.0
        # the pruned bundle reloads with identical outputs and exports with parity
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            slimfuse.save(ours, f"{tmp}/b")
            back = slimfuse.load(f"{tmp}/b")
            x = data.example_input(64)
            assert torch.equal(back(x), ours(x))
            slimfuse.export(back, data.example_input(1), f"{tmp}/m.onnx")

    lines = [
        "# Unstructured pruning: MNIST-1D CNN at 90% sparsity",
        "",
        f"Command: `python benchmarks/prune_unstructured.py` ({cpu_line(1)}). Dense CNN trained "
        f"{args.epochs} epochs; both pruned models fine-tuned {args.finetune_epochs} epochs, "
        f"AdamW lr {args.lr}, cosine, the same loop. Test split: 1000 samples.",
        "",
        "| CNN width | method | test acc | Δ vs dense (points) | sparsity | non-zeros / params | stored weights | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['method']} | {100 * r['accuracy']:.1f}% | {r['delta_points']:+.1f} | "
            f"{100 * r['sparsity']:.1f}% | {r['nonzero']:,} / {r['params']:,} | "
            f"{r['stored_bytes'] / 1024:.1f} KiB | {r['seconds']:.0f} |"
        )
    lines += [
        "",
        f"Target (width {args.widths[0]}): slimfuse within 1 point of dense: {verdict(bool(target_ok))}.",
        "Stored weights: slimfuse bundles keep non-zero values + a 1-bit mask per weight; the "
        "peer's and the dense model's are plain safetensors.",
        "",
    ]
    write("prune_unstructured", "\n".join(lines), payload)


if __name__ == "__main__":
    main()
