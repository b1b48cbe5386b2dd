"""Weight-space merging of fine-tuned variants of one MNIST-1D CNN: uniform soup, greedy soup, TIES.

Per seed: a parent ``mnist1d_cnn`` is trained (one loop), then fine-tuned into variants with
different learning rates, weight decay and data order (the model-soups recipe: one
initialisation, several hyperparameters). The soups are compared with the best variant chosen
on validation (what one would ship without soups) and the best variant on test (an oracle);
the ensemble of the variants is shown beside them as the costlier alternative.

    python benchmarks/fuse_soup.py            # 3 seeds (about 5 min)
    python benchmarks/fuse_soup.py --quick
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import slimfuse
from fuse_common import cpu_line, mean_std, verdict, write
from slimfuse.fusion import Greedy, Ties, Uniform
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.tasks import evaluate
from slimfuse.training import TrainConfig

# (lr, weight decay) of each fine-tuning run; the seed (data order) differs for each too
VARIANTS = [(3e-3, 0.0), (1e-3, 0.0), (3e-3, 1e-2), (1e-3, 1e-2), (2e-3, 5e-3)]


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, float]:
    data = slimfuse.load_data("mnist1d", seed=seed)
    val, test = data.loader("val", batch_size=500), data.loader("test", batch_size=500)
    torch.manual_seed(seed)
    parent = slimfuse.build_model("mnist1d_cnn", data=data)
    slimfuse.train(
        parent, data, config=TrainConfig(epochs=args.parent_epochs, seed=seed, quiet=True)
    )
    variants = []
    for i, (lr, wd) in enumerate(VARIANTS[: args.variants]):
        m = copy.deepcopy(parent)
        cfg = TrainConfig(
            epochs=args.ft_epochs, lr=lr, weight_decay=wd, seed=1000 * seed + i, quiet=True
        )
        slimfuse.train(m, data, config=cfg)
        variants.append((f"ft{i}", m))
    val_acc = {n: evaluate(m, val) for n, m in variants}
    test_acc = {n: evaluate(m, test) for n, m in variants}
    by_val = max(val_acc, key=lambda n: val_acc[n])
    out = {
        "parent": evaluate(parent, test),
        "best variant (by val)": test_acc[by_val],
        "best variant (oracle, by test)": max(test_acc.values()),
        "mean variant": statistics.mean(test_acc.values()),
    }
    for name, config in [
        ("uniform soup", Uniform()),
        ("greedy soup", Greedy()),
        ("TIES (density 0.2)", Ties(density=0.2)),
        ("TIES (density 0.5)", Ties(density=0.5)),
    ]:
        base = parent if config.method == "ties" else None
        merged = slimfuse.merge(variants, config, data, parent=base)
        out[name] = evaluate(merged, test)
        if config.method == "greedy":
            info = merged.merge_info  # type: ignore[attr-defined]
            out["greedy size"] = len(info["ingredients"])
            out["greedy val"] = info["val"]
            out["best variant val"] = val_acc[by_val]
    out["ensemble of variants (5x cost)"] = evaluate(MeanFusion(variants), test)
    print(f"seed {seed}: {out}", flush=True)
    return out


ROWS = [
    ("parent", "the model the variants were fine-tuned from"),
    ("mean variant", "average accuracy of the fine-tuned variants"),
    ("best variant (by val)", "the variant with the best validation accuracy"),
    ("best variant (oracle, by test)", "the variant with the best test accuracy"),
    ("uniform soup", "slimfuse.merge(variants, Uniform()): mean of all variants' weights"),
    ("greedy soup", "slimfuse.merge(variants, Greedy()): add a variant only if val does not drop"),
    ("TIES (density 0.2)", "slimfuse.merge(variants, Ties(density=0.2), parent=parent)"),
    ("TIES (density 0.5)", "slimfuse.merge(variants, Ties(density=0.5), parent=parent)"),
    ("ensemble of variants (5x cost)", "MeanFusion of the variants, for reference"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", type=int, default=5)
    ap.add_argument("--parent-epochs", type=int, default=40)
    ap.add_argument("--ft-epochs", type=int, default=20)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.variants, args.parent_epochs, args.ft_epochs = [0], 4, 2, 1
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = [run_seed(s, args) for s in args.seeds]
    minutes = (time.perf_counter() - start) / 60
    col = {k: [r[k] for r in runs] for k in runs[0]}
    m = statistics.mean
    lines = [
        f"# Weight merging: soups and TIES over {args.variants} fine-tuned MNIST-1D CNNs "
        "(`make bench-fuse`)",
        "",
        f"Test accuracy (%), mean ± std over seeds {args.seeds}. Parent: `mnist1d_cnn`, "
        f"{args.parent_epochs} epochs at lr 1e-2; variants: {args.ft_epochs} more epochs each "
        f"with (lr, weight decay) in {VARIANTS[: args.variants]} and their own data order. "
        f"Merged models have the size and latency of ONE CNN. {cpu_line()}. "
        f"Run time {minutes:.0f} min.",
        "",
        "| model | test acc % | per seed | what |",
        "|---|---|---|---|",
    ]
    for name, what in ROWS:
        per = ", ".join(f"{100 * v:.1f}" for v in col[name])
        lines.append(f"| {name} | {mean_std(col[name])} | {per} | {what} |")
    greedy_vs = m(col["greedy soup"]) - m(col["best variant (by val)"])
    never_worse = all(
        g >= b for g, b in zip(col["greedy val"], col["best variant val"], strict=True)
    )
    lines += [
        "",
        f"Greedy soup kept {', '.join(str(int(v)) for v in col['greedy size'])} of "
        f"{args.variants} variants (per seed); its validation accuracy was never below the best "
        f"variant's: {never_worse}.",
        "",
        "| target | measured (mean over seeds) | verdict |",
        "|---|---|---|",
        f"| greedy soup ≥ best variant | {100 * m(col['greedy soup']):.2f} vs "
        f"{100 * m(col['best variant (by val)']):.2f} (by val; {100 * greedy_vs:+.2f} points), "
        f"oracle {100 * m(col['best variant (oracle, by test)']):.2f} | {verdict(greedy_vs >= 0)} |",
        f"| uniform soup reported beside it | {100 * m(col['uniform soup']):.2f} | met |",
    ]
    write("fuse_soup", "\n".join(lines) + "\n", {"seeds": args.seeds, "runs": runs})


if __name__ == "__main__":
    main()
