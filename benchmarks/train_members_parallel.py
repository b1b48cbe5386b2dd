"""train-members: 5 MNIST-1D CNN members trained sequentially vs ``jobs=2`` processes.

Three runs of ``train_members("mnist1d_cnn", mnist1d, n=5)``: sequential with all cores' torch
threads, sequential with 1 thread, and ``jobs=2`` (each process at ``cores // 2`` threads). Wall
time of each (process start-up included), whether the members are bit for bit the same, the
load average before and after (other work on the CPU slows every row). Writes
``benchmarks/results/train_members_parallel.md`` and ``.json``.

    .venv/bin/python benchmarks/train_members_parallel.py [--epochs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import slimfuse
from quantize_common import RESULTS, cpu_flags, table
from slimfuse.config import TrainConfig
from slimfuse.fusion.members import Members, train_members


def _same(a: Members, b: Members) -> bool:
    for (_, x), (_, y) in zip(a.pairs, b.pairs, strict=True):
        sx, sy = x.state_dict(), y.state_dict()
        if not all(torch.equal(sx[k], sy[k]) for k in sx):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    data = slimfuse.load_data("mnist1d")
    cfg = TrainConfig(epochs=args.epochs, quiet=True, device="cpu")
    load_before = os.getloadavg()
    runs: dict[str, tuple[float, Members]] = {}
    for name, threads, jobs in [
        (f"sequential, {cores} threads", cores, 1),
        ("sequential, 1 thread", 1, 1),
        (f"jobs={args.jobs}, {max(1, cores // args.jobs)} thread(s) each", cores, args.jobs),
    ]:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        members = train_members("mnist1d_cnn", data, n=args.n, config=cfg, jobs=jobs)
        runs[name] = (time.perf_counter() - t0, members)
        print(f"{name}: {runs[name][0]:.1f} s", flush=True)
    load_after = os.getloadavg()
    names = list(runs)
    base = runs[names[0]][0]
    par = runs[names[2]][1]
    rows = []
    for name, (seconds, members) in runs.items():
        val = sum(members.val_scores.values()) / len(members.val_scores)
        rows.append(
            [
                name,
                f"{seconds:.1f}",
                f"{base / seconds:.2f}x",
                f"{val:.4f}",
                "yes" if _same(members, par) else "no",
            ]
        )
    result = {
        "cpu": cpu_flags(),
        "cores": cores,
        "torch": torch.__version__,
        "epochs": args.epochs,
        "members": args.n,
        "jobs": args.jobs,
        "load_before": load_before,
        "load_after": load_after,
        "seconds": {k: v[0] for k, v in runs.items()},
        "same_as_parallel": {k: _same(v[1], par) for k, v in runs.items()},
    }
    busy = max(load_before[0], load_after[0]) > cores
    md = [
        "# train-members: sequential vs parallel processes",
        "",
        f"{args.n} mnist1d_cnn members, {args.epochs} epochs each (batch 100, AdamW), "
        f"`benchmarks/train_members_parallel.py`. CPU: {cpu_flags()}, {cores} cores available, "
        f"torch {torch.__version__}.",
        "",
        table(
            ["run", "wall s", "speed-up", "mean best val acc", "members = jobs run's, bit for bit"],
            rows,
        ),
        "",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.2f}' for x in load_after)}."
        + (
            f" The load was above the {cores} cores: other work shared the CPU during these "
            "runs, so every time here is slower than on an idle machine and the speed-up is "
            "not the one an idle machine gives."
            if busy
            else ""
        ),
        "Wall time includes starting the worker processes (spawn: each imports torch and "
        "slimfuse) and sending the data to them.",
    ]
    if not result["same_as_parallel"][names[0]]:
        md.append(
            f"Bit-for-bit equality holds between runs at the same thread count: the {cores}-thread "
            "sequential members differ (torch's CPU kernels split their sums by thread)."
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_members_parallel.md").write_text("\n".join(md) + "\n")
    (RESULTS / "train_members_parallel.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
