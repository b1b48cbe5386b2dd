"""Quantization-aware training recovers what post-training quantization loses.

The MNIST-1D CNN (trained 40 epochs, 3 seeds) quantized to int4 weight-only (group size 32,
round-to-nearest) loses accuracy; QAT (fake-quant int4 weights with a straight-through
estimator, 10 epochs at lr 3e-3 through ``slimfuse.train``, optionally with the fp32 model as
distillation teacher) is compared on the same model. The int8 static pair (PTQ vs QAT with
learned activation ranges, deployed as an ONNX Runtime QDQ graph) is reported too. Test
accuracy on 1000 samples; recovered = (QAT - PTQ) / (fp32 - PTQ). Writes
``benchmarks/results/quantize_qat.md``.

    .venv/bin/python benchmarks/quantize_qat.py      # about 3 min on 2 busy cores
"""

from __future__ import annotations

import argparse
import statistics

import torch

from quantize_common import RESULTS, cpu_flags, table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    torch.set_num_threads(1)

    import slimfuse
    from slimfuse.quantization import QuantConfig
    from slimfuse.training import TrainConfig

    data = slimfuse.load_data("mnist1d")
    test = data.loader("test", batch_size=500)
    calib = data.loader("train", batch_size=64, shuffle=True, seed=0)
    qat = TrainConfig(epochs=10, lr=3e-3, quiet=True)  # QAT's training (the one loop)
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
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in acc.items()), flush=True)
    mean = {k: statistics.mean(v) for k, v in acc.items()}
    rows = []
    for k, v in acc.items():
        loss = 100 * (mean["fp32"] - mean[k])
        recovered = ""
        if "QAT" in k:
            ptq = next(p for p in variants if "PTQ" in p and p.split()[0] == k.split()[0])
            lost = mean["fp32"] - mean[ptq]
            recovered = f"{(mean[k] - mean[ptq]) / lost:.0%}" if lost > 0 else "n/a"
        rows.append(
            [k, " / ".join(f"{a:.3f}" for a in v), f"{mean[k]:.4f}", f"{loss:+.2f}", recovered]
        )
    header = ["variant", "test acc per seed", "mean", "loss vs fp32 (points)", "PTQ loss recovered"]
    text = (
        "# QAT vs PTQ on the MNIST-1D CNN\n\n"
        f"CPU: {cpu_flags()}; seeds {args.seeds}; QAT: {qat.epochs} epochs, lr "
        f"{qat.lr}, the one training loop; accuracy on the 1000 test samples.\n\n"
        + table(header, rows)
        + "\n\nReproduce: `make bench-quantize` (or `.venv/bin/python benchmarks/quantize_qat.py`).\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_qat.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
