"""Quantization-aware training recovers what post-training quantization loses.

The MNIST-1D CNN (trained 40 epochs, 3 seeds) quantized to int4 weight-only (group size 32,
round-to-nearest) loses accuracy; QAT (fake-quant int4 weights with a straight-through
estimator, 10 epochs at lr 3e-3 through ``slimfuse.train``, optionally with the fp32 model as
distillation teacher) is compared on the same model. The int8 static pair (PTQ vs QAT with
learned activation ranges, deployed as an ONNX Runtime QDQ graph) is reported too. Test
accuracy on 1000 samples; recovered = (QAT - PTQ) / (fp32 - PTQ).

A model with BatchNorm, ``resnet1d`` (the demo's members: widths 16/32/32, one block per
stage, trained 20 epochs, the same 3 seeds), gets the int8 pair as well; for its QAT the
accuracy of the fake-quant model in PyTorch (``q.fake_quant_model``) and of the int8 graph in
ONNX Runtime (``q``) are both reported, with the number of test samples whose predicted class
differs between the two: the int8 grid that deploys should be the one that was trained.

Writes ``benchmarks/results/quantize_qat.md``; ``--json RUN.json`` keeps the raw accuracies,
and ``--before OLD.json`` (such a file from a run of an earlier version, same seeds) adds its
means as a "before" column.

    .venv/bin/python benchmarks/quantize_qat.py      # several minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from quantize_common import RESULTS, cpu_flags, table

RESNET = {"widths": [16, 32, 32], "blocks_per_stage": 1}
QAT_PT, QAT_ORT = "int8 QAT, fake-quant model (PyTorch)", "int8 QAT, int8 graph (ORT QDQ)"


def cnn(args: argparse.Namespace, data, qat) -> dict[str, list[float]]:
    import slimfuse
    from slimfuse.quantization import QuantConfig
    from slimfuse.training import TrainConfig

    test = data.loader("test", batch_size=500)
    calib = data.loader("train", batch_size=64, shuffle=True, seed=0)
    variants = {
        "int4 weight-only PTQ (g32)": QuantConfig(mode="weight-only", bits=4, group_size=32),
        "int4 weight-only QAT": QuantConfig(mode="qat", bits=4, group_size=32),
        "int4 weight-only QAT + fp32 teacher": QuantConfig(
            mode="qat", bits=4, group_size=32, distill=True
        ),
        "int8 static PTQ (ORT QDQ)": QuantConfig(mode="static"),
        "int8 static QAT (ORT QDQ, learned ranges)": QuantConfig(mode="qat"),
    }
    acc: dict[str, list[float]] = {"fp32": [], **{k: [] for k in variants}}
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = slimfuse.build_model("mnist1d_cnn", data=data)
        slimfuse.train(model, data, config=TrainConfig(epochs=40, lr=1e-2, seed=seed, quiet=True))
        acc["fp32"].append(slimfuse.evaluate(model, test))
        for name, cfg in variants.items():
            train = qat if cfg.mode == "qat" else None
            q = slimfuse.quantize(model, cfg, data, calibration=calib, train=train)
            acc[name].append(slimfuse.evaluate(q, test))
        print(f"cnn seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in acc.items()))
    return acc


@torch.no_grad()
def predictions(model, loader) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.as_tensor(model(x)).argmax(1) for x, _ in loader])


def resnet(args: argparse.Namespace, data, qat) -> dict[str, list[float]]:
    import slimfuse
    from slimfuse.quantization import QuantConfig
    from slimfuse.training import TrainConfig

    test = data.loader("test", batch_size=500)
    calib = data.loader("train", batch_size=64, shuffle=True, seed=0)
    acc: dict[str, list[float]] = {
        "fp32": [],
        "int8 static PTQ (ORT QDQ)": [],
        QAT_PT: [],
        QAT_ORT: [],
        "test samples predicted differently (PyTorch vs ORT)": [],
    }
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = slimfuse.build_model("resnet1d", data=data, **RESNET)
        slimfuse.train(model, data, config=TrainConfig(epochs=20, lr=3e-3, seed=seed, quiet=True))
        acc["fp32"].append(slimfuse.evaluate(model, test))
        ptq = slimfuse.quantize(model, QuantConfig(mode="static"), data, calibration=calib)
        acc["int8 static PTQ (ORT QDQ)"].append(slimfuse.evaluate(ptq, test))
        q = slimfuse.quantize(model, QuantConfig(mode="qat"), data, calibration=calib, train=qat)
        fq = q.fake_quant_model.eval()
        acc[QAT_PT].append(slimfuse.evaluate(fq, test))
        acc[QAT_ORT].append(slimfuse.evaluate(q, test))
        differ = int((predictions(fq, test) != predictions(q, test)).sum())
        acc["test samples predicted differently (PyTorch vs ORT)"].append(differ)
        print(f"resnet1d seed {seed}: " + ", ".join(f"{k} {v[-1]}" for k, v in acc.items()))
    return acc


def rows(acc: dict[str, list[float]], before: dict[str, list[float]] | None) -> list[list]:
    mean = {k: statistics.mean(v) for k, v in acc.items()}
    out = []
    for k, v in acc.items():
        if k.startswith("test samples"):
            cells = [k, " / ".join(str(int(a)) for a in v), f"{mean[k]:.1f}", "", ""]
            if before is not None:
                old = before.get(k)
                cells.insert(3, f"{statistics.mean(old):.1f}" if old else "")
            out.append(cells)
            continue
        loss = 100 * (mean["fp32"] - mean[k])
        recovered = ""
        if "QAT" in k and "int4" in k:
            ptq = "int4 weight-only PTQ (g32)"
            lost = mean["fp32"] - mean[ptq]
            recovered = f"{(mean[k] - mean[ptq]) / lost:.0%}" if lost > 0 else "n/a"
        elif "QAT" in k and "int8 static PTQ (ORT QDQ)" in acc:
            lost = mean["fp32"] - mean["int8 static PTQ (ORT QDQ)"]
            recovered = (
                f"{(mean[k] - mean['int8 static PTQ (ORT QDQ)']) / lost:.0%}" if lost > 0 else "n/a"
            )
        cells = [k, " / ".join(f"{a:.3f}" for a in v), f"{mean[k]:.4f}", f"{loss:+.2f}", recovered]
        if before is not None:
            old = before.get(k)
            cells.insert(3, f"{statistics.mean(old):.4f}" if old else "")
        out.append(cells)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--before", type=Path, help="an earlier run's quantize_qat.json")
    ap.add_argument("--out", type=Path, default=RESULTS / "quantize_qat.md")
    ap.add_argument("--json", type=Path, help="also write the raw accuracies there")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import slimfuse
    from slimfuse.training import TrainConfig

    data = slimfuse.load_data("mnist1d")
    qat = TrainConfig(epochs=10, lr=3e-3, quiet=True)  # QAT's training (the one loop)
    got = {"cpu": cpu_flags(), "cnn": cnn(args, data, qat), "resnet1d": resnet(args, data, qat)}
    before = json.loads(args.before.read_text()) if args.before else None
    header = ["variant", "test acc per seed", "mean", "loss vs fp32 (points)", "PTQ loss recovered"]
    if before is not None:
        header.insert(3, "mean before")
    intro = (
        f"CPU: {got['cpu']}; seeds {args.seeds}; QAT: {qat.epochs} epochs, lr {qat.lr}, the "
        "one training loop; accuracy on the 1000 test samples."
    )
    if before is not None:
        intro += f" Before: the earlier version, same seeds, CPU: {before['cpu']}."
    text = (
        "# QAT vs PTQ on MNIST-1D\n\n"
        + intro
        + "\n\n## MNIST-1D CNN (no BatchNorm)\n\n"
        + table(header, rows(got["cnn"], before and before["cnn"]))
        + "\n\n## resnet1d 16/32/32, one block per stage (BatchNorm, residual adds)\n\n"
        + table(header, rows(got["resnet1d"], before and before["resnet1d"]))
        + "\n\nReproduce: `make bench-quantize` (or `.venv/bin/python benchmarks/quantize_qat.py`).\n"
    )
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(got, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
