"""When do learned fusion weights pay? Weighted vs mean fusion, members of equal and unequal skill.

Two ensembles of 5 MNIST-1D residual CNNs (``resnet1d``, one basic block per stage), trained with
the one loop (lr 1e-2), per seed:

- ``equal``: five seeds of one model (widths 4/8/8, 20 epochs): the members of
  ``fuse_ensemble.py`` (seeds 0-5 are its members exactly);
- ``mixed``: five different models: widths 2/4/4, 4/8/8, 4/8/8 trained for 8 epochs only,
  8/16/16 and 2/2/4 (20 epochs otherwise), as a zoo of models of different sizes would be.

Each is fused by the mean and by :class:`~slimfuse.fusion.weighted.WeightedFusion`, in
probability and in logit space: weights fitted on the 400 validation samples (``cv="prefit"``)
with the default shrinkage toward uniform chosen by cross-validation (``shrink="cv"``) and
without it (``shrink=0``, the plain log-loss optimum), and weights fitted on the out-of-fold
predictions of 5 folds of the 3,600 training samples (``cv=5``: every member retrained per
fold, each with its own epochs, through :func:`~slimfuse.fusion.folds.out_of_fold`, then
``fit_weights``). Test accuracy on the 1,000 test samples; wins and losses count the seeds
where a method beats or trails the mean of the same space. Seeds run in ``--jobs`` processes of
one torch thread each.

    python benchmarks/fuse_weighted.py            # 12 seeds per ensemble (20-35 min on 2 cores)
    python benchmarks/fuse_weighted.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

import slimfuse
from fuse_common import cpu_line, mean_std, verdict, write
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.folds import out_of_fold
from slimfuse.fusion.weighted import WeightedFusion
from slimfuse.models.source import build_model
from slimfuse.tasks import evaluate
from slimfuse.training import TrainConfig, train

ENSEMBLES: dict[str, list[tuple[list[int], int]]] = {
    "equal": [([4, 8, 8], 20)] * 5,
    "mixed": [([2, 4, 4], 20), ([4, 8, 8], 20), ([4, 8, 8], 8), ([8, 16, 16], 20), ([2, 2, 4], 20)],
}
METHODS = [
    ("mean (probs)", lambda p: MeanFusion(p, space="probs")),
    ("weighted (probs), shrink=0", lambda p: WeightedFusion(p, shrink=0.0)),
    ("weighted (probs)", lambda p: WeightedFusion(p)),
    ("mean (logits)", lambda p: MeanFusion(p, space="logits")),
    ("weighted (logits), shrink=0", lambda p: WeightedFusion(p, space="logits", shrink=0.0)),
    ("weighted (logits)", lambda p: WeightedFusion(p, space="logits")),
]
CV_METHODS = ["weighted cv=5 (probs)", "weighted cv=5 (logits)"]  # fitted on out-of-fold outputs
FOLDS = 5


def run(ensemble: str, seed: int, epochs_scale: float) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = slimfuse.load_data("mnist1d", seed=seed)
    t0 = time.perf_counter()
    pairs, configs = [], []
    for k, (widths, epochs) in enumerate(ENSEMBLES[ensemble]):
        # the seeds train_members gives its k-th member, so "equal" is fuse_ensemble's ensemble
        cfg = TrainConfig(
            epochs=max(1, round(epochs * epochs_scale)), lr=1e-2, seed=100 * seed + k, quiet=True
        )
        torch.manual_seed(cfg.seed)
        model = build_model("resnet1d", data=data, widths=widths, blocks_per_stage=1)
        train(model, data, "classification", cfg)
        pairs.append((f"m{k}", model))
        configs.append(cfg)
    test = data.loader("test", batch_size=500)
    out: dict[str, Any] = {"singles": [evaluate(m, test) for _, m in pairs], "acc": {}, "w": {}}
    for name, make in METHODS:
        fused = make(pairs)
        if isinstance(fused, WeightedFusion):
            fused.fit(data)
            out["w"][name] = {"weights": fused.weights_.tolist(), "shrink": fused.shrink_}
        out["acc"][name] = evaluate(fused, test)
    # cv=5: what WeightedFusion(cv=5).fit does, with each member's own training config
    oof, y, _ = out_of_fold(pairs, data, FOLDS, configs, seed=seed)
    for name in CV_METHODS:
        space = "probs" if "probs" in name else "logits"
        fused = WeightedFusion(pairs, space=space, cv=FOLDS, seed=seed).fit_weights(oof, y)
        out["w"][name] = {"weights": fused.weights_.tolist(), "shrink": fused.shrink_}
        out["acc"][name] = evaluate(fused, test)
    print(f"{ensemble} seed {seed} ({time.perf_counter() - t0:.0f}s): {out['acc']}", flush=True)
    return out


def render(results: dict[str, list[dict]], seeds: list[int], minutes: float) -> str:
    m = statistics.mean
    lines = [
        "# Weighted vs mean fusion, members of equal and unequal skill (`make bench-fuse`)",
        "",
        f"Test accuracy (%) on MNIST-1D's 1000 test samples, mean ± std over seeds {seeds}; "
        "5 `resnet1d` members per ensemble (one basic block per stage, lr 1e-2, one loop); "
        "weights fitted on the 400 validation samples (prefit) or on out-of-fold predictions "
        f"of {FOLDS} folds of the 3,600 training samples (cv={FOLDS}, members retrained per "
        "fold). equal: widths 4/8/8, 20 epochs, five "
        "seeds; mixed: widths 2/4/4, 4/8/8, 4/8/8 (8 epochs), 8/16/16, 2/2/4. "
        f"{cpu_line()}. Run time {minutes:.0f} min.",
        "",
        "| ensemble | members (test acc %, mean over seeds) | best single |",
        "|---|---|---|",
    ]
    for ens, runs in results.items():
        per_member = [m(r["singles"][k] for r in runs) for k in range(len(runs[0]["singles"]))]
        best = [max(r["singles"]) for r in runs]
        members = ", ".join(f"{100 * a:.1f}" for a in per_member)
        lines.append(f"| {ens} | {members} | {mean_std(best)} |")
    lines += [
        "",
        "| ensemble | fusion | test acc % | Δ vs mean of the same space | wins / losses vs it "
        "| shrinkage chosen (mean) |",
        "|---|---|---|---|---|---|",
    ]
    targets = []
    for ens, runs in results.items():
        for name in [n for n, _ in METHODS] + CV_METHODS:
            accs = [r["acc"][name] for r in runs]
            ref_name = "mean (probs)" if "probs" in name else "mean (logits)"
            ref = [r["acc"][ref_name] for r in runs]
            diff = [a - b for a, b in zip(accs, ref, strict=True)]
            wins, losses = sum(d > 0 for d in diff), sum(d < 0 for d in diff)
            shrinks = [r["w"][name]["shrink"] for r in runs] if name in runs[0]["w"] else []
            lines.append(
                f"| {ens} | {name} | {mean_std(accs)} | {100 * m(diff):+.2f} | "
                f"{wins} / {losses} | {f'{m(shrinks):.2f}' if shrinks else ''} |"
            )
            if name in ("weighted (probs)", "weighted (logits)", *CV_METHODS):
                targets.append(
                    (
                        f"{ens}: {name} ≥ {ref_name}",
                        f"{100 * m(accs):.2f} vs {100 * m(ref):.2f}",
                        m(accs) >= m(ref),
                    )
                )
    lines += ["", "| target | measured (mean over seeds) | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {verdict(ok)} |" for t, v, ok in targets]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    ap.add_argument("--jobs", type=int, default=2, help="runs in this many processes")
    ap.add_argument("--quick", action="store_true", help="1 seed, 1/10 of the epochs")
    args = ap.parse_args()
    scale = 0.1 if args.quick else 1.0
    if args.quick:
        args.seeds = [0]
    torch.set_num_threads(1)
    start = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        jobs = {
            ens: [pool.submit(run, ens, seed, scale) for seed in args.seeds] for ens in ENSEMBLES
        }
        results = {ens: [j.result() for j in js] for ens, js in jobs.items()}
    minutes = (time.perf_counter() - start) / 60
    write(
        "fuse_weighted",
        render(results, args.seeds, minutes),
        {"seeds": args.seeds, "ensembles": ENSEMBLES, "results": results},
    )


if __name__ == "__main__":
    main()
