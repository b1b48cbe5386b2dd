"""MNIST-1D: distil an average ensemble of 5 CNNs into a CNN with < 1/4 of one teacher's parameters.

Teachers: 5 residual CNNs (``resnet1d``, widths 16/32/32, one basic block per stage, BatchNorm,
14,714 parameters; 20 epochs each, seeds 100..104), the members of ``make demo``. Student: the
MNIST-1D paper's plain CNN (``mnist1d_cnn``) with 10 channels, 1,190 parameters.

Rows (test accuracy, mean and spread over seeds): the 5 teachers (each and their probability
average), the student trained from scratch on the labels (the peer), KD from one teacher, KD
from the ensemble, and output matching (MSE to the ensemble's mean logits). Reports the
fraction of the scratch-to-teacher gap that KD closes (Hinton et al. closed 93% on MNIST).

The teachers are saved as bundles under ``runs/bench_distill/`` (a folder named after their
architecture and epochs) and reused; the DDP benchmark distils from the same bundles. Writes
``benchmarks/results/distill_mnist1d.md`` and the per-seed figures to ``distill_mnist1d.json``;
``--before FILE.json`` (such a file from an earlier version, same seeds) puts its figures in a
column beside this run's. KD from the ensemble matches ``--ensemble-space`` (default ``probs``:
the mean of the teachers' probabilities softened at T; ``probs-t1``: the mean at T = 1, softened
afterwards, the earlier target).

    .venv/bin/python benchmarks/distill_mnist1d.py        # about 25 min on one free core
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import slimfuse
from slimfuse.distillation import KD, MSE
from slimfuse.distillation.teachers import TeacherEnsemble
from slimfuse.hardware import describe_cpu
from slimfuse.tasks import evaluate
from slimfuse.training import TrainConfig

RESULTS = Path(__file__).parent / "results" / "distill_mnist1d.md"
N_TEACHERS = 5
TEACHER = "resnet1d"
TEACHER_WIDTHS = (16, 32, 32)
TEACHER_EPOCHS = 20
STUDENT_CHANNELS = 10
# what a run's figures depend on (its JSON records them)
RUN_SETTINGS = ("seeds", "epochs", "teacher_epochs", "temperature", "alpha", "ensemble_space")


def teacher_dir(epochs: int = TEACHER_EPOCHS) -> Path:
    """Where the teacher bundles live: named after the architecture, so none is reused stale."""
    widths = "-".join(map(str, TEACHER_WIDTHS))
    return Path("runs/bench_distill") / f"teachers-{TEACHER}-{widths}-{epochs}ep"


def teacher_bundles(data: slimfuse.data.Data, epochs: int = TEACHER_EPOCHS) -> list[Path]:
    """Train (or reuse) the 5 teacher CNNs, seeds 100..104."""
    paths = []
    for i in range(N_TEACHERS):
        path = teacher_dir(epochs) / f"t{i}"
        if not (path / "slimfuse.json").is_file():
            torch.manual_seed(100 + i)
            model = slimfuse.build_model(
                TEACHER, data=data, widths=list(TEACHER_WIDTHS), blocks_per_stage=1
            )
            cfg = TrainConfig(epochs=epochs, lr=1e-2, seed=100 + i, quiet=True)
            slimfuse.train(model, data, config=cfg)
            slimfuse.save(model, path)
        paths.append(path)
    return paths


def student(data: slimfuse.data.Data, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return slimfuse.build_model("mnist1d_cnn", data=data, channels=STUDENT_CHANNELS)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--teacher-epochs", type=int, default=TEACHER_EPOCHS)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument(
        "--ensemble-space",
        default="probs",
        choices=["probs", "probs-t1"],
        help="the ensemble KD target: mean softmax(z_i/T), or the T = 1 mean softened after",
    )
    ap.add_argument("--before", type=Path, help="an earlier run's JSON, shown beside this run")
    ap.add_argument("--before-label", default="before", help="the earlier run's column name")
    ap.add_argument(
        "--from-json", type=Path, help="write the tables from this run's JSON; train nothing"
    )
    args = ap.parse_args()
    done = json.loads(args.from_json.read_text()) if args.from_json else None
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = slimfuse.load_data("mnist1d")
    test = data.loader("test", batch_size=500)
    teachers = [slimfuse.load(p) for p in teacher_bundles(data, args.teacher_epochs)]
    t_acc = [evaluate(t, test) for t in teachers]
    # the teacher the students learn from: the mean of the 5 teachers' probabilities
    ensemble = TeacherEnsemble([(f"t{i}", t) for i, t in enumerate(teachers)], space="probs")
    ensemble.eval()
    ens_acc = evaluate(ensemble, test)
    if done is not None:
        args.ensemble_space = done["args"]["ensemble_space"]

    kd = KD(temperature=args.temperature, alpha=args.alpha)
    kd_ens = KD(temperature=args.temperature, alpha=args.alpha, ensemble_space=args.ensemble_space)
    mse = MSE(alpha=args.alpha, ensemble_space="logits")
    results: dict[str, list[float]] = {
        "scratch": [],
        "kd_single": [],
        "kd_ensemble": [],
        "mse_ensemble": [],
    }
    for seed in range(args.seeds) if done is None else ():
        tc = TrainConfig(epochs=args.epochs, lr=1e-2, seed=seed, quiet=True)
        s = student(data, seed)
        slimfuse.train(s, data, config=tc)
        results["scratch"].append(evaluate(s, test))
        s = slimfuse.distill(student(data, seed), teachers[seed % N_TEACHERS], kd, data, train=tc)
        results["kd_single"].append(evaluate(s, test))
        s = slimfuse.distill(student(data, seed), teachers, kd_ens, data, train=tc)
        results["kd_ensemble"].append(evaluate(s, test))
        s = slimfuse.distill(student(data, seed), teachers, mse, data, train=tc)
        results["mse_ensemble"].append(evaluate(s, test))
        print(
            f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()), flush=True
        )

    if done is not None:
        results = done["results"]

    def fmt(v: list[float]) -> str:
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{100 * statistics.mean(v):.2f} ± {100 * sd:.2f}"

    before = json.loads(args.before.read_text()) if args.before else None
    mean = {k: statistics.mean(v) for k, v in results.items()}
    gap = ens_acc - mean["scratch"]
    closed = (mean["kd_ensemble"] - mean["scratch"]) / gap if gap > 0 else float("nan")
    closed_single = (mean["kd_single"] - mean["scratch"]) / gap if gap > 0 else float("nan")
    gain = 100 * (mean["kd_ensemble"] - mean["scratch"])
    p_t, p_s = n_params(teachers[0]), n_params(student(data, 0))
    minutes = (time.perf_counter() - start) / 60 if done is None else done["minutes"]
    target = {
        "probs": "mean of the teachers' probabilities at T",
        "probs-t1": "mean probability at T = 1, softened after",
    }[args.ensemble_space]
    rows = [
        ("one teacher (mean of 5)", p_t, fmt(t_acc), "teachers"),
        (
            "ensemble of 5 teachers (mean probabilities)",
            5 * p_t,
            f"{100 * ens_acc:.2f}",
            "ensemble",
        ),
        ("student from scratch, labels only (peer)", p_s, fmt(results["scratch"]), "scratch"),
        ("student, KD from one teacher", p_s, fmt(results["kd_single"]), "kd_single"),
        (
            "student, KD from the ensemble (slimfuse)"
            if before is not None
            else f"student, KD from the ensemble (slimfuse; target: {target})",
            p_s,
            fmt(results["kd_ensemble"]),
            "kd_ensemble",
        ),
        (
            "student, MSE to the ensemble's mean logits",
            p_s,
            fmt(results["mse_ensemble"]),
            "mse_ensemble",
        ),
    ]
    payload = {
        "args": {k: getattr(args, k) for k in RUN_SETTINGS},
        "teachers": t_acc,
        "ensemble": ens_acc,
        "results": results,
        "minutes": minutes,
    }
    if before is not None:
        payload["before"] = {"label": args.before_label, **before}
        old = {
            "teachers": fmt(before["teachers"]),
            "ensemble": f"{100 * before['ensemble']:.2f}",
            **{k: fmt(v) for k, v in before["results"].items()},
        }
        table = [
            f"| model | params | test accuracy %: {args.before_label} | now |",
            "|---|---|---|---|",
            *(f"| {name} | {n:,} | {old[key]} | {now} |" for name, n, now, key in rows),
        ]
    else:
        table = [
            "| model | params | test accuracy % |",
            "|---|---|---|",
            *(f"| {name} | {n:,} | {now} |" for name, n, now, _ in rows),
        ]
    lines = [
        "# Distillation: MNIST-1D, an ensemble of 5 CNNs into a small CNN",
        "",
        f"Teachers: 5 × `{TEACHER}` (residual CNN, widths {'/'.join(map(str, TEACHER_WIDTHS))}, "
        f"BatchNorm, {p_t:,} parameters each, {args.teacher_epochs} epochs). Student: "
        f"`mnist1d_cnn` (the MNIST-1D paper's plain CNN) with {STUDENT_CHANNELS} channels, "
        f"{p_s:,} parameters "
        f"({p_s / p_t:.2f} of one teacher). Every student: {args.epochs} epochs, AdamW lr 0.01, "
        f"cosine schedule, batch 100, best val epoch kept; KD at T = {args.temperature}, "
        f"alpha = {args.alpha}. Test accuracy on the 1000 MNIST-1D test samples, mean ± sd over "
        f"{args.seeds} seeds (student initialisation and shuffling). CPU: {describe_cpu()}; "
        f"torch {torch.__version__}.",
        "",
    ]
    if before is not None:
        lines += [
            f"Column *{args.before_label}*: the same script, seeds and CPU on "
            f"{args.before_label}, whose ensemble KD target was the mean probability at T = 1 "
            'softened afterwards (∝ p̄^(1/T), now `ensemble_space="probs-t1"`); *now*: the '
            "mean of the teachers' probabilities softened at T, mean softmax(z_i/T) (the default "
            "`probs`). Per seed (kd_ensemble): "
            + ", ".join(
                f"{100 * a:.1f} → {100 * b:.1f}"
                for a, b in zip(
                    before["results"]["kd_ensemble"], results["kd_ensemble"], strict=True
                )
            )
            + ".",
            "",
        ]
    lines += [
        *table,
        "",
        f"- KD from the ensemble vs scratch: **{gain:+.2f} points** (target >= +2: "
        f"{'met' if gain >= 2 else 'not met'}); vs KD from one teacher: "
        f"{100 * (mean['kd_ensemble'] - mean['kd_single']):+.2f} points "
        f"({'met' if mean['kd_ensemble'] > mean['kd_single'] else 'not met'}; better in "
        f"{sum(a > b for a, b in zip(results['kd_ensemble'], results['kd_single'], strict=True))} "
        f"of {args.seeds} seeds)",
        f"- scratch-to-ensemble gap closed by KD from the ensemble: **{100 * closed:.0f}%** "
        f"(one teacher: {100 * closed_single:.0f}%; Hinton et al. on MNIST: 93%)",
        *(
            [
                f"- {args.before_label} (the earlier target): "
                f"{100 * (statistics.mean(before['results']['kd_ensemble']) - statistics.mean(before['results']['scratch'])):+.2f} "
                "points vs scratch, "
                f"{100 * (statistics.mean(before['results']['kd_ensemble']) - statistics.mean(before['results']['kd_single'])):+.2f} "
                f"vs one teacher (better in "
                f"{sum(a > b for a, b in zip(before['results']['kd_ensemble'], before['results']['kd_single'], strict=True))} "
                f"of {args.seeds} seeds)"
            ]
            if before is not None
            else []
        ),
        f"- wall time {minutes:.1f} min (1 torch thread, CPU shared with other jobs: not a timing)",
        "",
        "Reproduce: `.venv/bin/python benchmarks/distill_mnist1d.py` (or `make bench-distill`).",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
