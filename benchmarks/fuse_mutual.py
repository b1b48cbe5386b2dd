"""Deep Mutual Learning: 2 MNIST-1D CNNs trained together vs the same CNNs trained alone.

Per seed: two ``mnist1d_cnn`` peers are initialised; copies of the same initial weights are
trained (a) alone, each with the one loop, and (b) together with :class:`MutualLearning`
(cross-entropy + KL to the peer), with the same epochs, learning rate and schedule.

    python benchmarks/fuse_mutual.py            # 3 seeds (about 5 min)
    python benchmarks/fuse_mutual.py --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import slimfuse
from fuse_common import cpu_line, mean_std, verdict, write
from slimfuse.fusion.mutual import MutualLearning
from slimfuse.tasks import evaluate
from slimfuse.training import TrainConfig


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    data = slimfuse.load_data("mnist1d", seed=seed)
    test = data.loader("test", batch_size=500)
    torch.manual_seed(seed)
    peers = [slimfuse.build_model("mnist1d_cnn", data=data) for _ in range(2)]
    cfg = TrainConfig(epochs=args.epochs, lr=1e-2, seed=seed, quiet=True)
    out: dict[str, float] = {}
    for i, p in enumerate(peers):
        alone = copy.deepcopy(p)
        slimfuse.train(alone, data, config=cfg)
        out[f"peer{i} alone"] = evaluate(alone, test)
    dml = MutualLearning([(f"peer{i}", copy.deepcopy(p)) for i, p in enumerate(peers)])
    dml.fit(data, config=cfg)
    for i in range(2):
        out[f"peer{i} mutual"] = evaluate(dml.member(f"peer{i}"), test)
    out["mutual pair fused"] = evaluate(dml.fused(), test)
    print(f"seed {seed}: {out}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs = [0], 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = [run_seed(s, args) for s in args.seeds]
    minutes = (time.perf_counter() - start) / 60
    col = {k: [r[k] for r in runs] for k in runs[0]}
    m = statistics.mean
    lines = [
        "# Deep Mutual Learning: 2 MNIST-1D CNNs (`make bench-fuse`)",
        "",
        f"Test accuracy (%), mean ± std over seeds {args.seeds}; `mnist1d_cnn`, {args.epochs} "
        f"epochs, lr 1e-2, cosine; the same initial weights alone and mutual. {cpu_line()}. "
        f"Run time {minutes:.0f} min.",
        "",
        "| peer | alone | mutual | per seed alone | per seed mutual | gain (points) |",
        "|---|---|---|---|---|---|",
    ]
    targets = []
    for i in range(2):
        a, b = col[f"peer{i} alone"], col[f"peer{i} mutual"]
        gain = m(b) - m(a)
        wins = sum(y > x for x, y in zip(a, b, strict=True))
        lines.append(
            f"| peer{i} | {mean_std(a)} | {mean_std(b)} | {', '.join(f'{100 * v:.1f}' for v in a)} "
            f"| {', '.join(f'{100 * v:.1f}' for v in b)} | {100 * gain:+.2f} |"
        )
        targets.append(
            f"| peer{i} mutual > peer{i} alone | {100 * m(b):.2f} vs {100 * m(a):.2f} "
            f"(better in {wins} of {len(a)} seeds) | {verdict(gain > 0)} |"
        )
    lines += [
        "",
        f"The two mutual peers fused (MeanFusion): {mean_std(col['mutual pair fused'])}.",
        "",
        "| target | measured (mean over seeds) | verdict |",
        "|---|---|---|",
        *targets,
    ]
    write("fuse_mutual", "\n".join(lines) + "\n", {"seeds": args.seeds, "runs": runs})


if __name__ == "__main__":
    main()
