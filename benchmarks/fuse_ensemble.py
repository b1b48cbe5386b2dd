"""Prediction-level fusion of 5 MNIST-1D CNNs: mean, weighted, votes, stacking, fusion heads.

Per seed: 5 small residual CNN members (``resnet1d``, widths 4/8/8, one block per stage,
BatchNorm) are trained with the one loop (20 epochs, lr 1e-2), then fused every way slimfuse
offers (``--member mnist1d_cnn --channels 64 --epochs 60 --weight-decay 0.05`` runs the paper's
plain CNN instead: stronger alone, but its seeds make more of the same mistakes, so fusion
gains less); the peers run in the same process over the same members, wrapped as prefit
(frozen) scikit-learn estimators: ``VotingClassifier(voting="soft")`` and
``StackingClassifier`` (logistic regression, fitted on the validation split like slimfuse's
prefit stacking, and on the training split as users often do). Cost (size,
ONNX Runtime latency at batch 1 and 64, one thread) is measured once, on the first seed, with
``slimfuse.measure`` (which exports each fused model to one ONNX graph with a parity check),
after every seed has finished: the first seed's models go through ``slimfuse.save`` and come back
through ``slimfuse.load``. Seeds run in ``--jobs`` processes of one torch thread each.

    python benchmarks/fuse_ensemble.py            # 12 seeds (15-30 min on 2 cores)
    python benchmarks/fuse_ensemble.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimfuse
from fuse_common import cpu_line, frozen, mean_std, verdict, write
from slimfuse.fusion.ensemble import MeanFusion
from slimfuse.fusion.folds import labels
from slimfuse.fusion.head import HeadFusion
from slimfuse.fusion.members import train_members
from slimfuse.fusion.predict import collect
from slimfuse.fusion.stacking import StackingFusion
from slimfuse.fusion.vote import VoteFusion
from slimfuse.fusion.weighted import WeightedFusion
from slimfuse.tasks import evaluate
from slimfuse.training import TrainConfig

METHODS = [
    ("mean (probs)", "slimfuse MeanFusion(space='probs') = soft vote"),
    ("mean (logits)", "slimfuse MeanFusion(space='logits')"),
    ("weighted (probs)", "slimfuse WeightedFusion: simplex log-loss on val, CV shrinkage"),
    ("weighted (logits)", "slimfuse WeightedFusion(space='logits'), the same fitting"),
    (
        "weighted cv=K (probs)",
        "slimfuse WeightedFusion(cv=K): the same fitting on out-of-fold predictions of train "
        "(members retrained per fold)",
    ),
    ("weighted cv=K (logits)", "slimfuse WeightedFusion(space='logits', cv=K), the same"),
    ("hard vote", "slimfuse VoteFusion(voting='hard')"),
    (
        "stack prefit",
        "slimfuse StackingFusion(cv='prefit'): LR anchored at the mean logits, on val predictions",
    ),
    (
        "stack cv=K",
        "slimfuse StackingFusion(cv=K): members retrained per fold, anchored LR on OOF",
    ),
    (
        "stack cv=K + val",
        "slimfuse StackingFusion(cv=K, with_val=True): the same, plus the members' val predictions",
    ),
    (
        "stack cv=K, plain LR",
        "the same OOF predictions, meta=LogisticRegression() (no anchor, as scikit-learn)",
    ),
    ("head logits", "slimfuse HeadFusion(on='logits'), linear head, one loop"),
    ("head features", "slimfuse HeadFusion(on='features'), linear head on penultimate"),
    ("sklearn soft vote", "peer: VotingClassifier(voting='soft') over frozen members"),
    ("sklearn stack (val)", "peer: StackingClassifier(LR) over frozen members, fit on val"),
    ("sklearn stack (train)", "peer: StackingClassifier(LR) over frozen members, fit on train"),
]


def sklearn_peers(pairs: list, data: Any) -> dict[str, float]:
    from sklearn.ensemble import StackingClassifier, VotingClassifier
    from sklearn.linear_model import LogisticRegression

    est = [(n, frozen(m)) for n, m in pairs]
    xv, yv = data.arrays("val")
    xt, yt = data.arrays("train")
    xs, ys = data.arrays("test")
    out = {}
    vote = VotingClassifier(est, voting="soft").fit(xv, yv)
    out["sklearn soft vote"] = float((vote.predict(xs) == ys).mean())
    for split, (x, y) in (("val", (xv, yv)), ("train", (xt, yt))):
        stack = StackingClassifier(est, final_estimator=LogisticRegression(max_iter=2000), cv=5)
        stack.fit(x, y)
        out[f"sklearn stack ({split})"] = float((stack.predict(xs) == ys).mean())
    return out


def run_seed(seed: int, args: argparse.Namespace) -> tuple[dict[str, float], list, dict]:
    data = slimfuse.load_data("mnist1d", seed=seed)
    torch.set_num_threads(1)
    cfg = TrainConfig(
        epochs=args.epochs, lr=1e-2, weight_decay=args.weight_decay, seed=100 * seed, quiet=True
    )
    t0 = time.perf_counter()
    kw: dict[str, Any] = (
        {"widths": args.widths, "blocks_per_stage": 1}
        if args.member == "resnet1d"
        else {"channels": args.channels}
    )
    pairs = train_members(args.member, data, n=args.members, config=cfg, model_kwargs=kw).pairs
    test = data.loader("test", batch_size=500)
    singles = {n: evaluate(m, test) for n, m in pairs}
    print(f"seed {seed}: members {singles} ({time.perf_counter() - t0:.0f}s)", flush=True)
    head_cfg = TrainConfig(epochs=args.head_epochs, lr=1e-3, seed=seed, quiet=True)
    t0 = time.perf_counter()
    fused: dict[str, torch.nn.Module] = {
        "mean (probs)": MeanFusion(pairs, space="probs"),
        "mean (logits)": MeanFusion(pairs, space="logits"),
        "weighted (probs)": WeightedFusion(pairs).fit(data),
        "weighted (logits)": WeightedFusion(pairs, space="logits").fit(data),
        "hard vote": VoteFusion(pairs, voting="hard"),
        "stack prefit": StackingFusion(pairs, seed=seed).fit(data),
        "stack cv=K": StackingFusion(pairs, cv=args.cv, train_config=cfg, seed=seed).fit(data),
        "head logits": HeadFusion(pairs, on="logits").fit(data, config=head_cfg),
        "head features": HeadFusion(pairs, on="features").fit(data, config=head_cfg),
    }
    from sklearn.linear_model import LogisticRegression

    plain = StackingFusion(pairs, cv=args.cv, meta=LogisticRegression(max_iter=2000), seed=seed)
    oof = fused["stack cv=K"].oof_outputs_  # type: ignore[union-attr]
    y_oof = torch.from_numpy(labels(data))
    fused["stack cv=K, plain LR"] = plain.fit_meta(oof, y_oof)
    # WeightedFusion(cv=K) with stacking's train_config and seed retrains the same folds with the
    # same seeds (slimfuse.fusion.folds.out_of_fold): fit its weights on those predictions
    for space in ("probs", "logits"):
        w = WeightedFusion(pairs, space=space, cv=args.cv, train_config=cfg, seed=seed)
        fused[f"weighted cv=K ({space})"] = w.fit_weights(oof, y_oof)
    # with_val=True retrains the same folds with the same seeds: reuse them, add the val outputs
    val_outs, y_val = collect(pairs, data.loader("val", batch_size=256))
    with_val = StackingFusion(pairs, cv=args.cv, with_val=True, seed=seed)
    fused["stack cv=K + val"] = with_val.fit_meta(
        torch.cat([oof, val_outs], 1), torch.cat([y_oof, y_val.long()])
    )
    print(f"  fused in {time.perf_counter() - t0:.0f}s", flush=True)
    accs = {k: evaluate(m, test) for k, m in fused.items()}
    accs.update(sklearn_peers(pairs, data))
    extra = {
        k: {"weights": m.weights_.tolist(), "shrink": m.shrink_}  # type: ignore[union-attr]
        for k, m in fused.items()
        if k.startswith("weighted")
    }
    stacks = ("stack prefit", "stack cv=K", "stack cv=K + val")
    extra.update({k: {"C": fused[k].C_} for k in stacks})  # type: ignore[union-attr]
    print(f"  {accs}", flush=True)
    return {**{f"single {n}": v for n, v in singles.items()}, **accs}, [pairs, fused, data], extra


def cost_rows(pairs: list, fused: dict, data: Any) -> dict[str, dict[str, float]]:
    rows = {}
    for name, model in [("single member", pairs[0][1]), *fused.items()]:
        r = slimfuse.measure(model, data, engines=["onnxruntime"], budget_s=0.5)[0]
        rows[name] = {
            "params": r["params"],
            "size_kb": r["size_bytes"] / 1024,
            "ort_acc": r["metric_value"],
            "b1": r["latency_ms_b1"],
            "b64": r["latency_ms_b64"],
        }
        print(f"  cost {name}: {rows[name]}", flush=True)
    return rows


def seed_job(seed: int, args: argparse.Namespace, keep: str | None) -> tuple[dict, dict]:
    """One seed in its own process; ``keep``: save its members and fused models there."""
    accs, (pairs, fused, _data), extra = run_seed(seed, args)
    if keep is not None:
        slimfuse.save(pairs[0][1], Path(keep) / "single member")
        for name, model in fused.items():
            slimfuse.save(model, Path(keep) / name)
    return accs, extra


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--member", choices=["resnet1d", "mnist1d_cnn"], default="resnet1d")
    ap.add_argument("--widths", type=int, nargs="+", default=[4, 8, 8], help="resnet1d stages")
    ap.add_argument("--channels", type=int, default=64, help="mnist1d_cnn width")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--head-epochs", type=int, default=15)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="seeds run in this many processes")
    ap.add_argument("--quick", action="store_true", help="1 seed, 3 members, 2 epochs, cv 2")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.members, args.epochs, args.head_epochs, args.cv = [0], 3, 2, 1, 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as keep, ProcessPoolExecutor(args.jobs) as pool:
        jobs = [
            pool.submit(seed_job, seed, args, keep if i == 0 else None)
            for i, seed in enumerate(args.seeds)
        ]
        results = [j.result() for j in jobs]
        pool.shutdown()
        data = slimfuse.load_data("mnist1d", seed=args.seeds[0])
        models = {p.name: slimfuse.load(p) for p in Path(keep).iterdir()}
        single = models.pop("single member")
        costs = cost_rows(
            [("single", single)], {n: models[n] for n, _ in METHODS if n in models}, data
        )
    per_seed = [r[0] for r in results]
    extras = [r[1] for r in results]
    minutes = (time.perf_counter() - start) / 60
    write(
        "fuse_ensemble",
        render(per_seed, costs, args, minutes),
        {"seeds": args.seeds, "per_seed": per_seed, "weights": extras, "cost": costs},
    )


def member_text(args: Any) -> str:
    if args.member == "resnet1d":
        widths = "/".join(map(str, args.widths))
        return f"`resnet1d` (widths {widths}, one basic block per stage, BatchNorm)"
    return f"`mnist1d_cnn` with {args.channels} channels"


def render(per_seed: list[dict[str, float]], costs: dict, args: Any, minutes: float) -> str:
    def singles(d: dict[str, float]) -> list[float]:
        return [v for k, v in d.items() if k.startswith("single ")]

    best = [max(singles(d)) for d in per_seed]
    avg = [statistics.mean(singles(d)) for d in per_seed]
    col = {name: [d[name] for d in per_seed] for name, _ in METHODS}
    delta = {n: statistics.mean(v - b for v, b in zip(col[n], best, strict=True)) for n in col}
    lines = [
        f"# Fusion of {args.members} MNIST-1D {'residual ' if args.member == 'resnet1d' else ''}"
        "CNNs (`make bench-fuse`)",
        "",
        f"Test accuracy (%) on MNIST-1D's 1000 test samples, mean ± std over seeds {args.seeds}; "
        f"members: {member_text(args)}, {args.epochs} epochs, lr 1e-2, "
        f"weight decay {args.weight_decay} (one loop); stacking and weighted cv=K use "
        f"K={args.cv} folds of the training split with every member retrained per fold (the "
        f"same folds for both). {cpu_line()}. "
        f"Run time {minutes:.0f} min.",
        "",
        "| model | test acc % | per seed | Δ vs best single (points) | what |",
        "|---|---|---|---|---|",
        f"| best single member | {mean_std(best)} | {', '.join(f'{100 * b:.1f}' for b in best)} "
        "| 0 | best of the members on test |",
        f"| mean single member | {mean_std(avg)} | {', '.join(f'{100 * b:.1f}' for b in avg)} "
        f"| {100 * statistics.mean(a - b for a, b in zip(avg, best, strict=True)):+.2f} | |",
    ]
    for name, what in METHODS:
        vals = ", ".join(f"{100 * v:.1f}" for v in col[name])
        lines.append(
            f"| {name} | {mean_std(col[name])} | {vals} | {100 * delta[name]:+.2f} | {what} |"
        )
    if costs:
        base = costs["single member"]
        lines += [
            "",
            "Cost (seed 0; ONNX Runtime, 1 thread; every fused model exported to ONE ONNX graph "
            "with parity <= 1e-4; an ensemble of N members costs about N times one member):",
            "",
            "| model | params | size KiB | ORT acc % | latency b1 ms | latency b64 ms | × single (b64) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in costs.items():
            lines.append(
                f"| {name} | {r['params']:,} | {r['size_kb']:.1f} | {100 * r['ort_acc']:.2f} | "
                f"{r['b1']:.3f} | {r['b64']:.3f} | {r['b64'] / base['b64']:.1f}× |"
            )
    m = statistics.mean
    fusion = [n for n, _ in METHODS if not n.startswith("sklearn")]
    best_fusion = max(fusion, key=lambda n: m(col[n]))
    stack_best = max(m(col[n]) for n in ("stack prefit", "stack cv=K", "stack cv=K + val"))
    prefit, peer_val, peer_train = (
        m(col[k]) for k in ("stack prefit", "sklearn stack (val)", "sklearn stack (train)")
    )
    targets = [
        (
            "mean ≥ best single + 1.5 points",
            f"{100 * delta['mean (probs)']:+.2f} (probs), {100 * delta['mean (logits)']:+.2f} (logits)",
            max(delta["mean (probs)"], delta["mean (logits)"]) >= 0.015,
        ),
        *(
            (
                f"weighted{kind} ≥ mean ({space})",
                f"{100 * m(col[f'weighted{kind} ({space})']):.2f} vs "
                f"{100 * m(col[f'mean ({space})']):.2f}",
                m(col[f"weighted{kind} ({space})"]) >= m(col[f"mean ({space})"]),
            )
            for kind in ("", " cv=K")
            for space in ("probs", "logits")
        ),
        (
            "stacking ≥ mean",
            f"prefit {100 * m(col['stack prefit']):.2f}, cv {100 * m(col['stack cv=K']):.2f}, "
            f"cv + val {100 * m(col['stack cv=K + val']):.2f} vs "
            f"{100 * m(col['mean (probs)']):.2f} (probs; logits "
            f"{100 * m(col['mean (logits)']):.2f})",
            stack_best >= m(col["mean (probs)"]),
        ),
        (
            "best fusion ≥ 96%",
            f"{best_fusion}: {100 * m(col[best_fusion]):.2f}",
            m(col[best_fusion]) >= 0.96,
        ),
        (
            "slimfuse stacking ≥ sklearn StackingClassifier over the prefit members, both fit "
            "on the val split (scikit-learn's advice for prefit estimators: data they never saw)",
            f"prefit {100 * prefit:.2f} vs {100 * peer_val:.2f}; best slimfuse (out-of-fold) "
            f"{100 * stack_best:.2f}",
            prefit >= peer_val,
        ),
        (
            "slimfuse stacking ≥ sklearn StackingClassifier fit on the training split (the "
            "members' in-sample predictions)",
            f"best slimfuse {100 * stack_best:.2f} vs {100 * peer_train:.2f}",
            stack_best >= peer_train,
        ),
        (
            "soft vote = sklearn VotingClassifier(soft)",
            f"{100 * m(col['mean (probs)']):.2f} vs {100 * m(col['sklearn soft vote']):.2f}",
            abs(m(col["mean (probs)"]) - m(col["sklearn soft vote"])) < 1e-9,
        ),
    ]
    lines += ["", "| target | measured (mean over seeds) | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {v} | {verdict(ok)} |" for t, v, ok in targets]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
