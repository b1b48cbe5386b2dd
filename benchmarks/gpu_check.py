"""The device checks a CPU cannot make: run on a machine with a CUDA GPU (about 5 minutes).

1. ``--device cuda``: the MNIST-1D CNN trains in fp32, bf16 and fp16 (GradScaler); test accuracy
   and wall time against the CPU; the model comes back on the CPU in float32.
2. A checkpoint written on CUDA resumes on the CPU (CPU tensors, ``map_location``).
3. Distillation (a residual-CNN teacher into the MNIST-1D CNN, KD with the teacher cache on the
   GPU) and pruning recovery (50% of the channels, fine-tuned): CPU vs CUDA wall time and
   accuracy.
4. ``train_members(jobs=2)`` on CUDA (one GPU per member, or both on one) against ``jobs=1``.

Writes ``benchmarks/results/gpu_check.md`` (+ ``.json``); exits 1 if a check fails.

    .venv/bin/python benchmarks/gpu_check.py [--epochs 20]
    .venv/bin/python benchmarks/gpu_check.py --device cpu --epochs 1   # dry run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import slimfuse
from quantize_common import RESULTS, cpu_flags, table
from slimfuse.config import TrainConfig
from slimfuse.fusion.members import train_members
from slimfuse.tasks import evaluate
from slimfuse.training import train


def _acc(model, data) -> float:
    return evaluate(model, data.loader("test", batch_size=256))


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    args = ap.parse_args()
    dev = args.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 1
    data = slimfuse.load_data("mnist1d")
    gpu = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"none ({dev} dry run)"
    rows, failures, out = [], [], {"gpu": gpu, "cpu": cpu_flags(), "torch": torch.__version__}

    def cnn(device: str, precision: str = "fp32", epochs: int = args.epochs, **kw):
        torch.manual_seed(0)
        model = slimfuse.build_model("mnist1d_cnn", data=data)
        cfg = TrainConfig(epochs=epochs, quiet=True, device=device, precision=precision, **kw)
        return model, cfg

    # 1. training on each precision
    runs = [("cpu", "fp32"), (dev, "fp32"), (dev, "bf16")] + (
        [(dev, "fp16")] if dev != "cpu" else []
    )
    for device, precision in runs:
        model, cfg = cnn(device, precision)
        _, seconds = _timed(lambda m=model, c=cfg: train(m, data, config=c))
        p = next(model.parameters())
        if p.device.type != "cpu" or p.dtype != torch.float32:
            failures.append(f"train {device} {precision}: model on {p.device} in {p.dtype}")
        rows.append(
            [f"train cnn {device} {precision}", f"{seconds:.1f}", f"{_acc(model, data):.4f}"]
        )

    # 2. a CUDA checkpoint resumes on the CPU
    with tempfile.TemporaryDirectory() as tmp:
        model, cfg = cnn(dev, epochs=2)
        train(model, data, config=cfg, checkpoint_dir=tmp)
        state = torch.load(Path(tmp) / "checkpoint.pt", map_location="cpu", weights_only=True)
        on_gpu = [k for k, v in state["model"].items() if v.device.type != "cpu"]
        if on_gpu:
            failures.append(f"checkpoint holds CUDA tensors: {on_gpu[:3]}")
        again, _ = cnn("cpu", epochs=3)
        train(again, data, config=TrainConfig(epochs=3, quiet=True, device="cpu"),
              checkpoint_dir=tmp, resume=True)  # fmt: skip
        rows.append(["CUDA checkpoint resumed on the CPU", "", f"{_acc(again, data):.4f}"])

    # 3. distillation and pruning recovery, CPU vs CUDA
    torch.manual_seed(1)
    teacher = slimfuse.build_model("resnet1d", data=data)
    train(teacher, data, config=TrainConfig(epochs=args.epochs, quiet=True, device=dev))
    for device in ("cpu", dev):
        tc = TrainConfig(epochs=args.epochs, quiet=True, device=device, lr=1e-2)
        torch.manual_seed(0)
        student = slimfuse.build_model("mnist1d_cnn", data=data)
        got, seconds = _timed(
            lambda s=student, t=tc: slimfuse.distill(s, teacher, {"loss": "kd"}, data, train=t)
        )
        rows.append(
            [f"distill resnet1d -> cnn, {device}", f"{seconds:.1f}", f"{_acc(got, data):.4f}"]
        )
        pruned, seconds = _timed(
            lambda t=tc: slimfuse.prune(
                teacher, {"channels": 0.5}, data, train=t.replace(epochs=max(1, args.epochs // 2))
            )
        )
        rows.append([f"prune 50% channels + recovery, {device}", f"{seconds:.1f}",
                     f"{_acc(pruned, data):.4f}"])  # fmt: skip

    # 4. members on GPUs in parallel processes
    cfg = TrainConfig(epochs=3, quiet=True, device=dev)
    seq, s_seq = _timed(lambda: train_members("mnist1d_cnn", data, n=2, config=cfg))
    par, s_par = _timed(lambda: train_members("mnist1d_cnn", data, n=2, config=cfg, jobs=2))
    same = all(
        torch.equal(a.state_dict()[k], b.state_dict()[k])
        for (_, a), (_, b) in zip(seq.pairs, par.pairs, strict=True)
        for k in a.state_dict()
    )
    rows.append([f"2 members {dev}, jobs=1", f"{s_seq:.1f}", ""])
    rows.append([f"2 members {dev}, jobs=2 (same weights: {same})", f"{s_par:.1f}", ""])

    out.update(rows=rows, failures=failures)
    md = [
        "# Device check (CUDA)",
        "",
        f"GPU: {gpu}, {torch.cuda.device_count()} CUDA device(s); CPU: {cpu_flags()}; torch "
        f"{torch.__version__}. MNIST-1D, {args.epochs} epochs unless said.",
        "",
        table(["run", "wall s", "test acc"], rows),
        "",
        "Failures: " + ("; ".join(failures) if failures else "none"),
    ]
    if dev != "cpu":  # a dry run writes no results
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gpu_check.md").write_text("\n".join(md) + "\n")
        (RESULTS / "gpu_check.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(md))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
