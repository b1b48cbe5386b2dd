"""Weight-only int4 / int8 in ONNX Runtime: ``MatMulNBits`` against fp32 and the float decoding.

all-MiniLM-L6-v2 (its 36 encoder Linear layers weight-only, group size 32; embeddings and
attention stay as they are), held-out paragraphs of Python's documentation
(``slimfuse.data.text_corpus()["test"]``, a seeded sample of ``--texts``, at most 128 tokens).
Each variant is one ONNX file from ``slimfuse.export`` (opset 23):

- ``ONNX Runtime fp32``: the float model;
- ``float decoding``: the export before ``MatMulNBits`` (the packed weights decoded by float ops
  on constants, which ONNX Runtime folds into fp32 weights at load: fp32 compute);
- ``MatMulNBits``: ONNX Runtime's n-bit GEMM on the packed weights, with fp32 input
  (``accuracy_level`` unset or 1: PyTorch's numbers, parity <= 1e-4; int4's default) or int8
  input (4: quantized per block, integer dot products; parity not checked at 1e-4, fidelity
  measured instead). int8's default keeps the float decoding;
- for reference, slimfuse's dynamic int8 (int8 weights *and* activations; the fast path).

Speed: one text (batch 1) and 32 texts (batch 32), one thread, interleaved rounds (one call of
each variant per round, in turn); speed-up over ONNX Runtime fp32 = ratio of the medians, and
beside it the interquartile range of the per-round ratios. Memory: what a fresh process's
resident set grows by when it loads the file and runs it once. Fidelity: cosine of each variant's
embeddings to fp32's over the held-out texts, and the largest difference to the quantized
PyTorch model (what the export's parity check measures). Also the MLP on ``digits`` (the
docs/quantization.md's weight-only example): file sizes and speed at batch 1 and 64. Writes
``benchmarks/results/quantize_weight_only.md``.

    .venv/bin/python benchmarks/quantize_weight_only.py     # about 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from quantize_common import RESULTS, cpu_flags, interleaved_samples, ort_session, ratio_iqr, table


def _export(model, example, path: Path, *, decode: bool = False, level: int = 0) -> Path:
    import slimfuse
    from slimfuse.quantization import nbits

    nbits.set_accuracy_level(model, level)
    if decode:
        with nbits.float_decoding():
            return slimfuse.export(model, example, path)
    return slimfuse.export(model, example, path, parity=level == 0)


def _variants(model, example, tmp: Path, with_dynamic: bool, calib=None) -> dict[str, Path]:
    import slimfuse
    from slimfuse.quantization import QuantConfig, quantize

    paths = {"ONNX Runtime fp32": slimfuse.export(model, example, tmp / "fp32.onnx")}
    for bits in (4, 8):
        q = quantize(model, QuantConfig(mode="weight-only", bits=bits))
        default = "MatMulNBits, fp32 input" if bits == 4 else "float decoding"
        for label, kw in [
            (f"int{bits} weight-only, float decoding (before)", {"decode": True}),
            (f"int{bits} weight-only, default now ({default})", {}),
            (f"int{bits} MatMulNBits, accuracy_level 1 (fp32 input)", {"level": 1}),
            (f"int{bits} MatMulNBits, accuracy_level 4 (int8 input)", {"level": 4}),
        ]:
            if bits == 8 and kw == {}:
                continue  # the same graph as the float decoding
            if bits == 4 and kw.get("level") == 1:
                continue  # the same graph as the default
            t0 = time.time()
            paths[label] = _export(q, example, tmp / f"{len(paths)}.onnx", **kw)
            print(f"  {label}: {time.time() - t0:.0f}s", flush=True)
        paths[f"_model{bits}"] = q  # the PyTorch model, for parity
    if with_dynamic:
        q = quantize(model, QuantConfig(mode="dynamic"), calibration=calib, example_inputs=example)
        path = tmp / "dynamic.onnx"
        path.write_bytes(q.graph_bytes())
        paths["reference: slimfuse dynamic int8 (int8 weights and activations)"] = path
    return paths


RSS_CODE = """
import sys, numpy as np, onnxruntime as ort
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
feeds = dict(np.load(sys.argv[2]))
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.log_severity_level = 3
before = rss()
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
s.run(None, feeds)
print(rss() - before)
"""


def resident_mb(path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Resident memory a fresh process gains by loading ``path`` and running it once, MB."""
    npz = path.with_suffix(".feeds.npz")
    np.savez(npz, **feeds)
    out = subprocess.run(
        [sys.executable, "-c", RSS_CODE, str(path), str(npz)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def _speed(sessions, feeds, rounds: int) -> tuple[dict[str, float], dict[str, str]]:
    samples = interleaved_samples(
        {k: (lambda s=s: s.run(None, feeds)) for k, s in sessions.items()}, rounds
    )
    base = samples["ONNX Runtime fp32"]
    med = {k: statistics.median(v) for k, v in samples.items()}
    iqr = {}
    for k, v in samples.items():
        lo, hi = ratio_iqr(base, v)
        iqr[k] = f"{lo:.2f}-{hi:.2f}"
    return med, iqr


def minilm_rows(args) -> tuple[list[list], str]:
    from slimfuse.data import text_corpus
    from slimfuse.models.hf import minilm, tokenize, tokenizer

    corpus = text_corpus()
    rng = np.random.default_rng(0)
    test = [corpus["test"][i] for i in rng.permutation(len(corpus["test"]))[: args.texts]]
    tok = tokenizer()
    batches = [tokenize(test[i : i + 32], tok) for i in range(0, len(test), 32)]
    calib = [tokenize(corpus["train"][i : i + 32], tok) for i in (0, 32)]
    b32 = {k: v.numpy() for k, v in batches[0].items()}
    n1 = int(batches[0]["attention_mask"][0].sum())
    b1 = {k: v[:1, :n1].numpy() for k, v in batches[0].items()}
    model = minilm()
    example = {k: v[:1] for k, v in batches[0].items()}
    tmp = Path(tempfile.mkdtemp(prefix="qbench-wo-"))
    t0 = time.time()
    paths = _variants(model, example, tmp, args.dynamic, calib)
    print(f"MiniLM graphs in {time.time() - t0:.0f}s", flush=True)
    torch_models = {4: paths.pop("_model4"), 8: paths.pop("_model8")}
    sessions = {k: ort_session(p, args.threads) for k, p in paths.items()}

    def embed(sess) -> torch.Tensor:
        return torch.cat(
            [
                torch.from_numpy(sess.run(None, {k: v.numpy() for k, v in b.items()})[0])
                for b in batches
            ]
        )

    emb = {k: embed(s) for k, s in sessions.items()}
    ref = emb["ONNX Runtime fp32"]
    with torch.inference_mode():
        torch_emb = {bits: torch.cat([m(**b) for b in batches]) for bits, m in torch_models.items()}
    load0 = os.getloadavg()[0]
    med1, iqr1 = _speed(sessions, b1, args.rounds1)
    med32, iqr32 = _speed(sessions, b32, args.rounds32)
    load1 = os.getloadavg()[0]
    fp32_bytes = paths["ONNX Runtime fp32"].stat().st_size
    rss = {k: resident_mb(p, b1) for k, p in paths.items()}
    rows = []
    for k in sessions:
        cos = torch.nn.functional.cosine_similarity(emb[k], ref, dim=-1)
        bits = 4 if k.startswith("int4") else 8 if k.startswith("int8") else None
        diff = f"{float((emb[k] - torch_emb[bits]).abs().max()):.1e}" if bits else ""
        size = paths[k].stat().st_size
        rows.append(
            [
                k,
                f"{med1[k]:.1f}",
                f"{med1['ONNX Runtime fp32'] / med1[k]:.2f}x",
                iqr1[k],
                f"{med32[k]:.0f}",
                f"{med32['ONNX Runtime fp32'] / med32[k]:.2f}x",
                iqr32[k],
                f"{float(cos.mean()):.4f}",
                f"{float(cos.min()):.4f}",
                diff,
                f"{size / 1e6:.1f}",
                f"{size / fp32_bytes:.3f}",
                f"{rss[k]:.0f}",
            ]
        )
    header = [
        "variant",
        f"b1 ms ({n1} tokens)",
        "b1 speed-up",
        "b1 per-round IQR",
        f"b32 ms ({b32['input_ids'].shape[1]} tokens)",
        "b32 speed-up",
        "b32 per-round IQR",
        "mean cos vs fp32",
        "min cos",
        "max diff vs PyTorch",
        "MB",
        "size vs fp32",
        "RAM after load, MB",
    ]
    note = (
        f"{len(test)} held-out paragraphs; batch 1: {args.rounds1} rounds, batch 32: "
        f"{args.rounds32} rounds; load average (1 min) {load0:.1f} before and {load1:.1f} after "
        "the timing (2 cores: above about 1, other work shared the CPU). RAM after load: the "
        "resident memory a fresh process gains by creating the session and running batch 1 "
        "once."
    )
    return [header, *rows], note


def mlp_rows(args) -> list[list]:
    import slimfuse

    data = slimfuse.load_data("digits")
    torch.manual_seed(0)
    model = slimfuse.build_model("mlp", data=data)
    slimfuse.train(model, data, config=slimfuse.TrainConfig(epochs=5, quiet=True))
    example = data.example_input(1)
    tmp = Path(tempfile.mkdtemp(prefix="qbench-wo-mlp-"))
    paths = _variants(model, example, tmp, False)
    paths.pop("_model4"), paths.pop("_model8")
    sessions = {k: ort_session(p, args.threads) for k, p in paths.items()}
    x, _ = data.arrays("test")
    x = x.astype(np.float32)
    name = sessions["ONNX Runtime fp32"].get_inputs()[0].name
    fp32_bytes = paths["ONNX Runtime fp32"].stat().st_size
    speeds = {}
    for batch in (1, 64):
        feeds = {name: x[:batch]}
        samples = interleaved_samples(
            {
                k: (lambda s=s, f=feeds: [s.run(None, f) for _ in range(50)])
                for k, s in sessions.items()
            },
            args.rounds1,
        )
        med = {k: statistics.median(v) for k, v in samples.items()}
        speeds[batch] = {k: med["ONNX Runtime fp32"] / v for k, v in med.items()}
    header = ["variant", "KiB", "size vs fp32", "b1 speed-up", "b64 speed-up"]
    rows = [
        [
            k,
            f"{p.stat().st_size / 1024:.1f}",
            f"{p.stat().st_size / fp32_bytes:.3f}",
            f"{speeds[1][k]:.2f}x",
            f"{speeds[64][k]:.2f}x",
        ]
        for k, p in paths.items()
    ]
    return [header, *rows]


def main() -> None:
    import onnxruntime

    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds1", type=int, default=60)
    ap.add_argument("--rounds32", type=int, default=12)
    ap.add_argument("--no-dynamic", dest="dynamic", action="store_false")
    ap.add_argument("--skip-mlp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    mini, note = minilm_rows(args)
    text = (
        "# Weight-only int4 / int8 in ONNX Runtime: MatMulNBits\n\n"
        f"CPU: {cpu_flags()}; ONNX Runtime {onnxruntime.__version__}; threads {args.threads}; "
        "one run, every variant timed interleaved. Group size 32 (the default).\n\n"
        f"## all-MiniLM-L6-v2\n\n{note}\n\n" + table(mini[0], mini[1:]) + "\n"
    )
    if not args.skip_mlp:
        mlp = mlp_rows(args)
        text += (
            "\n## MLP on digits (17,610 parameters)\n\n"
            f"Speed: 50 calls per round, {args.rounds1} rounds, interleaved.\n\n"
            + table(mlp[0], mlp[1:])
            + "\n"
        )
    text += (
        "\nReproduce: `.venv/bin/python benchmarks/quantize_weight_only.py` (`make bench-quantize`"
        " runs the int8 benchmarks).\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantize_weight_only.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
