"""DDP: the MNIST-1D ensemble distillation under ``torchrun --nproc_per_node 2`` vs one process.

Both runs are the same CLI command (``slimfuse distill`` with the 5 teacher bundles of
``distill_mnist1d.py``, trained first if missing); DDP splits each batch of 100 over 2 gloo
processes. Test accuracy per seed and the mean difference; writes
``benchmarks/results/distill_ddp.md``.

    .venv/bin/python benchmarks/distill_ddp.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "distill_ddp.md"
BIN = Path(sys.executable).parent


def _mnist_bench():
    spec = importlib.util.spec_from_file_location(
        "distill_mnist1d", Path(__file__).parent / "distill_mnist1d.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(cmd: list[str]) -> tuple[float, float]:
    """(test accuracy, seconds) of one CLI run; a finished bundle is read back (seconds: nan)."""
    out = Path(cmd[-1]) / "metrics.json"
    if out.is_file() and "--fresh" not in sys.argv:
        return float(json.loads(out.read_text())["stages"][0]["metric_value"]), float("nan")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    m = re.search(r"test accuracy ([0-9.]+)", proc.stdout)
    if m is None:
        raise SystemExit(f"no test accuracy in the output of {' '.join(cmd)}:\n{proc.stdout}")
    return float(m.group(1)), seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--fresh", action="store_true", help="rerun finished seeds too")
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    bench = _mnist_bench()
    import slimfuse

    data = slimfuse.load_data("mnist1d")
    teachers = bench.teacher_bundles(data)
    runs = bench.teacher_dir().parent / f"ddp-{bench.teacher_dir().name}"
    common = ["distill", "--data", "mnist1d", "--student", "mnist1d_cnn"]
    common += ["--kw", f"channels={bench.STUDENT_CHANNELS}", "--epochs", str(args.epochs)]
    common += ["--loss", "kd", "--temperature", "4", "--alpha", "0.9", "--quiet"]
    for t in teachers:
        common += ["--teacher", str(t)]
    rows = []
    for seed in range(args.seeds):
        tail = ["--seed", str(seed)]
        one = [str(BIN / "python"), "-m", "slimfuse", *common, *tail, "--out"]
        ddp = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "slimfuse"]
        ddp += [*common, *tail, "--out"]
        acc1, s1 = run([*one, str(runs / f"one_{seed}")])
        acc2, s2 = run([*ddp, str(runs / f"ddp_{seed}")])
        rows.append((seed, acc1, acc2, s1, s2))
        print(f"seed {seed}: one process {acc1:.4f} ({s1:.0f}s), DDP x2 {acc2:.4f} ({s2:.0f}s)")
    m1 = statistics.mean(r[1] for r in rows)
    m2 = statistics.mean(r[2] for r in rows)
    diff = 100 * (m2 - m1)
    lines = [
        "# Distillation under DDP: MNIST-1D, ensemble of 5 CNNs -> 10-channel CNN",
        "",
        "Same `slimfuse distill` command (KD, T = 4, alpha = 0.9, "
        f"{args.epochs} epochs, batch 100) in one process and under "
        "`torchrun --standalone --nproc_per_node 2` (gloo, 50 samples per process per step).",
        "",
        "| seed | one process: test acc % | DDP 2 processes: test acc % | one process s | DDP s |",
        "|---|---|---|---|---|",
    ]
    for seed, a1, a2, s1, s2 in rows:
        lines.append(
            f"| {seed} | {100 * a1:.2f} | {100 * a2:.2f} | {s1:.0f} | {s2:.0f} |".replace(
                "nan", "-"
            )
        )
    lines += [
        f"| mean | {100 * m1:.2f} | {100 * m2:.2f} | | |",
        "",
        f"- DDP minus one process: **{diff:+.2f} points** (target: within 1 point: "
        f"{'met' if abs(diff) <= 1 else 'not met'})",
        "- wall times include process start-up; the CPU is shared with other jobs, so they "
        "say little about DDP speed here ('-': seed read back from an earlier run's bundle; "
        "`--fresh` reruns it)",
        "",
        "Reproduce: `.venv/bin/python benchmarks/distill_ddp.py` (or `make bench-distill`).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
