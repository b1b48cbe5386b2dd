"""slimfuse compress on all-MiniLM-L6-v2 vs ONNX Runtime's own int8, on held-out Python docs text.

Reference: all-MiniLM-L6-v2 (the zoo's ``minilm``), exported to ONNX by slimfuse (fp32). Text:
``pydocs`` (paragraphs of the Python documentation shipped with the interpreter; train 1,797 /
validation 200 / test 426 paragraphs, the test paragraphs from held-out topics), 128 tokens.
The budget is the mean cosine between a model's embeddings and the reference's, kept on the
validation split: drops of 0.005 / 0.01 / 0.02 / 0.03 (0.03: cosine >= 0.97).

- slimfuse: one ``slimfuse.compress`` search at the widest budget (objective: ONNX Runtime
  latency at batch 1, one thread); the pick per budget is compress's own rule
  (:func:`slimfuse.autocompress.results.choose`) on that search's trials.
- Peer: ONNX Runtime's ``quantize_dynamic`` (int8 weights, per channel, MatMul layers: the
  exported graph's standard ``Attention`` nodes are left fp32, as its ``QAttention`` rewrite
  fails on them) on the same fp32 file.
- Peer: Olive's quantization search (``benchmarks/compress_minilm_olive.py``, run by the peers'
  Python ``.peers/bin/python``, see ``compress_cnn.py``) on the same fp32 file: ONNX Runtime
  dynamic and static quantization settings, every candidate evaluated by Olive (mean cosine to
  the fp32 embeddings on the validation paragraphs with a ``max-degradation`` goal, file size,
  latency at batch 1 on one thread), calibrated on 64 training paragraphs. Its sampler walks
  every point whatever the goal, so it runs once at the widest budget; the pick per budget is
  Olive's ranking (latency, size, cosine) of the candidates within that budget.
- Peer: NNCF's ``quantize_with_accuracy_control`` (ONNX backend; ``compress_minilm_nncf.py``, the
  peers' Python) on the same fp32 file, once per budget: int8 calibrated on the same 64 training
  paragraphs, quantizers reverted to fp32 while the validation drop (the same mean cosine) is
  above the budget.

Every ONNX file is measured the same way afterwards: mean cosine to the fp32 file's embeddings on
the 426 test paragraphs (ONNX Runtime), file bytes, latency at batch 1 and 32 (128 tokens, one
thread; the files timed in turn, median of 5 rounds). "x best peer" is the best peer's latency
over the row's, the peers at a budget being ORT ``quantize_dynamic`` and NNCF's file (each when
its validation drop, measured here, is within the budget) and Olive's pick at that budget.

Run: ``python benchmarks/compress_minilm.py [--trials 8 --epochs 2]`` (the search, Olive's and
NNCF's runs are kept in ``runs/compress_minilm``: ``--reuse`` takes finished ones from there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import slimfuse
from peers_common import NNCF_ORT_DISABLED, PEERS, olive_chain, run_peer
from prune_common import cpu_line, interleaved, write
from quantize_common import ort_session, table
from slimfuse.autocompress.config import CompressConfig
from slimfuse.autocompress.results import choose, describe

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.005, 0.01, 0.02, 0.03)
BATCHES = (1, 32)
CALIBRATION = 64  # training paragraphs Olive's static candidates calibrate on
OLIVE_NOTE = (
    "Olive: `benchmarks/compress_minilm_olive.py` (its docstring has the details). Search space: "
    "`OnnxDynamicQuantization`'s own (int8 or uint8 weights, per-channel, reduce-range, "
    "pre-processing: 16 points) and `OnnxStaticQuantization` with MinMax or Percentile "
    "calibration on 64 training paragraphs (QDQ int8, QDQ uint8 or QOperator uint8, per-channel "
    "or not; reduce-range off, pre-processing on: 6 points each; Entropy calibration and the "
    "other static switches left out to keep the search near 5 minutes on 2 cores), walked "
    "exhaustively (`sequential` sampler), once at the widest budget. Every candidate is "
    "evaluated by Olive: a custom metric (mean cosine to the fp32 embeddings on the 200 "
    "validation paragraphs) with a `max-degradation` goal, file size, latency at batch 1 on one "
    "thread; the pick per budget is Olive's ranking (latency, size, cosine) of the candidates "
    "within it (at the widest budget: the first of Olive's own Pareto front). Settings fixed "
    "off Olive's defaults: `op_types_to_exclude: [Attention]` (ONNX Runtime's quantizer turns "
    "the exported standard `Attention` nodes into `QAttention` nodes that ONNX Runtime will not "
    'load: "Unrecognized attribute: is_causal"; with the defaults every candidate fails). '
    "Olive 0.13 with pydantic 2.14 needs two fixes in the peer script to run a custom metric "
    "at all: its config serializer fails on the custom metric's backend (None), and it "
    "serializes every metric's `user_config` / `metric_config` as the empty base class (the "
    "metric function, the one-thread session options and the latency repeat counts come back "
    "empty)."
)
NNCF_NOTE = (
    "NNCF: `benchmarks/compress_minilm_nncf.py` (its docstring has the details). "
    "`nncf.quantize_with_accuracy_control` (ONNX backend) once per budget: `max_drop` = the "
    "budget, `drop_type=ABSOLUTE`, `model_type=TRANSFORMER` (NNCF's setting for transformers: "
    "SmoothQuant, the mixed preset, its transformer ignored patterns), calibrated on the 64 "
    "training paragraphs Olive's static candidates use; its validation function is Olive's "
    "metric (mean cosine to the fp32 embeddings on the 200 validation paragraphs, with each "
    "paragraph's cosine for NNCF's ranking). NNCF leaves the standard `Attention` nodes fp32 "
    "(no ignored scope needed) and quantizes the 36 MatMuls (QDQ). ONNX Runtime will not load "
    "its file at the default optimization level (its `QDQPropagationTransformer` and "
    "`QDQS8ToU8Transformer` together produce a QuantizeLinear whose `output_dtype` is int8 "
    'and zero point uint8: "output_dtype INT8 does not match y_zero_point type UINT8"), so '
    "every session on NNCF's files (NNCF's validation and the measurements here) disables "
    "`QDQPropagationTransformer` (disabling the s8-to-u8 pass instead halves the speed)."
)


def search(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / "search"
    info = out / "bench.json"
    if args.reuse and info.is_file() and (out / "compress.json").is_file():
        return json.loads(info.read_text())
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = slimfuse.compress(
        "minilm",
        "pydocs",
        out=out,
        max_drop=max(BUDGETS),
        objective="latency",
        batch=1,
        trials=args.trials,
        epochs=args.epochs,
        budget_minutes=args.minutes,
        seed=0,
    )
    got = {
        "out": str(out),
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "chains": sum(1 for r in result.trials if "base" not in r),
        "records": len(result.trials),
        "reference_val": result.reference["val_metric"],
        "rows": result.trials,
    }
    info.write_text(json.dumps(got, indent=2, default=str) + "\n")
    return got


def trial_lines(out: Path) -> list[str]:
    """Every chain the search ran, with its outcome (the best form's val cosine, or why it
    was stopped early)."""
    lines = []
    for folder in sorted((out / "trials").iterdir()):
        record = json.loads((folder / "trial.json").read_text())
        what = describe(record["chain"])
        if record.get("state") == "complete":
            got = ", ".join(
                f"{v['ending']}: val cosine {v['val_metric']:.4f}" for v in record["variants"]
            )
        else:
            got = f"{record.get('state')}: {record.get('why')}"
        lines.append(
            f"- trial {record['number']}, {what} ({record.get('seconds', 0):.0f} s): {got}"
        )
    return lines


def test_tokens(split: str = "test", limit: int = 0) -> dict[str, np.ndarray]:
    """A split's paragraphs as the search's data has them: 128 tokens, padded to that width."""
    from slimfuse.data import load_data
    from slimfuse.models.hf import tokenize

    texts = list(getattr(load_data("pydocs"), split))[: limit or None]
    enc = tokenize(texts, max_length=128)
    width = enc["input_ids"].shape[1]
    return {
        k: np.pad(v.numpy(), ((0, 0), (0, 128 - width))).astype(np.int64) for k, v in enc.items()
    }


def embeddings(
    path: Path, tokens: dict[str, np.ndarray], disabled: Sequence[str] = ()
) -> np.ndarray:
    session = ort_session(path, 1, disabled)
    names = [i.name for i in session.get_inputs()]
    out = []
    for i in range(0, len(tokens["input_ids"]), 32):
        out.append(session.run(None, {n: tokens[n][i : i + 32] for n in names})[0])
    return np.concatenate(out)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(-1)
    return float((num / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).mean())


def ort_dynamic(src: Path, dst: Path) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    return time.perf_counter() - t0


def olive(src: Path, arrays: Path, work: Path, reuse: bool) -> dict[str, Any]:
    """Olive's search (the peers' Python), run once at the widest budget, picks per budget."""
    out = work / "olive"
    info = out / "result.json"
    if reuse and info.is_file():
        got = json.loads(info.read_text())
        if all(Path(p["path"]).is_file() for p in got["picks"].values() if p):
            return got
    shutil.rmtree(out, ignore_errors=True)
    got = run_peer(
        "compress_minilm_olive.py", src, arrays, ",".join(f"{b:g}" for b in BUDGETS), out
    )
    if "error" in got:
        return {**got, "picks": {}}
    info.write_text(json.dumps(got, indent=2) + "\n")
    return got


def nncf(src: Path, arrays: Path, work: Path, reuse: bool) -> dict[str, Any]:
    """NNCF's accuracy-aware int8 (the peers' Python), one run per budget."""
    out = work / "nncf"
    info = out / "result.json"
    if reuse and info.is_file():
        got = json.loads(info.read_text())
        if all(Path(r["path"]).is_file() for r in got["runs"].values()):
            return got
    shutil.rmtree(out, ignore_errors=True)
    got = run_peer("compress_minilm_nncf.py", src, arrays, ",".join(f"{b:g}" for b in BUDGETS), out)
    if "error" in got:
        return {**got, "runs": {}}
    info.write_text(json.dumps(got, indent=2) + "\n")
    return got


def olive_lines(found: dict[str, Any]) -> list[str]:
    """Olive's candidates, best validation cosine first (duplicates of one setting: the
    pre-processing switch changes no weight)."""
    lines = []
    for c in sorted(found.get("candidates", []), key=lambda c: -c["metrics"]["cosine-mean"]):
        m = c["metrics"]
        pre = "pre-processed" if c["settings"].get("quant_preprocess") else "as exported"
        lines.append(
            f"- {olive_chain(c['settings'])}, {pre}: val cosine {m['cosine-mean']:.4f}, "
            f"{m['size-bytes'] / 2**20:.1f} MB, {m['latency-avg']:.1f} ms at batch 1 (Olive's)"
        )
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=8, help="chains in the search (default 8)")
    p.add_argument("--epochs", type=int, default=2, help="distillation epochs (default 2)")
    p.add_argument("--minutes", type=float, default=60, help="search time budget (default 60)")
    p.add_argument("--work", default=str(ROOT / "runs" / "compress_minilm"))
    p.add_argument("--reuse", action="store_true", help="reuse a finished search in --work")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load = [round(x, 1) for x in os.getloadavg()]
    t_all = time.perf_counter()
    found = search(work, args)
    out = Path(found["out"])
    fp32 = out / "reference" / "model.onnx"
    if not fp32.is_file():  # the reference bundle keeps no ONNX file: export it once
        from slimfuse.exporting import export_onnx
        from slimfuse.models.bundle import load as load_bundle

        ref = load_bundle(out / "reference")
        example = {k: torch.from_numpy(v[:1]) for k, v in test_tokens().items()}
        export_onnx(ref, example, fp32)
    peer = work / "ort-dynamic.onnx"
    peer_s = ort_dynamic(fp32, peer)
    val_tokens = test_tokens("val")
    val_ref = embeddings(fp32, val_tokens)
    olive_found: dict[str, Any] = {}
    nncf_found: dict[str, Any] = {}
    if PEERS.is_file():
        arrays = work / "olive-tokens.npz"
        calib = test_tokens("train", CALIBRATION)
        np.savez(
            arrays,
            **{f"calib_{k}": v for k, v in calib.items()},
            **{f"val_{k}": v for k, v in val_tokens.items()},
            val_target=val_ref,
        )
        olive_found = olive(fp32, arrays, work, args.reuse)
        nncf_found = nncf(fp32, arrays, work, args.reuse)

    disabled: dict[str, list[str]] = {}  # graph optimizers a file's sessions leave out
    nncf_keys: dict[float, str] = {}  # one key per distinct NNCF file
    digests: dict[str, str] = {}
    for budget in BUDGETS:
        run = nncf_found.get("runs", {}).get(f"{budget:g}")
        if run:
            digest = hashlib.sha256(Path(run["path"]).read_bytes()).hexdigest()
            nncf_keys[budget] = digests.setdefault(digest, f"nncf {budget:g}")
            disabled[nncf_keys[budget]] = NNCF_ORT_DISABLED

    files: dict[str, Path] = {"fp32": fp32, "ort": peer}
    picks: dict[float, dict[str, Any] | None] = {}
    for budget in BUDGETS:
        cfg = CompressConfig(max_drop=budget, objective="latency", batch=1)
        pick = choose(found["rows"], cfg)
        picks[budget] = pick
        if pick is not None:
            files[f"trial {pick['number']}"] = out / pick["folder"] / "bundle" / "model.onnx"
        olive_pick = olive_found.get("picks", {}).get(f"{budget:g}")
        if olive_pick:
            files[f"olive {olive_pick['id']}"] = Path(olive_pick["path"])
        if budget in nncf_keys:
            files[nncf_keys[budget]] = Path(nncf_found["runs"][f"{budget:g}"]["path"])
    ort_val_drop = 1 - cosine(embeddings(peer, val_tokens), val_ref)
    nncf_val_drop = {
        k: 1 - cosine(embeddings(files[k], val_tokens, disabled[k]), val_ref)
        for k in set(nncf_keys.values())
    }

    tokens = test_tokens()
    ref_emb = embeddings(fp32, tokens)
    cos = {
        k: cosine(embeddings(path, tokens, disabled.get(k, [])), ref_emb)
        for k, path in files.items()
    }
    timing = {}
    for b in BATCHES:
        feeds = {k: v[:b] for k, v in tokens.items()}
        fns = {}
        for k, path in files.items():
            s = ort_session(path, 1, disabled.get(k, []))
            names = [i.name for i in s.get_inputs()]
            fns[k] = lambda s=s, f={n: feeds[n] for n in names}: s.run(None, f)
        timing[b] = interleaved(fns, rounds=5)

    def peer_keys(budget: float) -> list[str]:
        keys = ["ort"] if ort_val_drop <= budget else []
        olive_pick = olive_found.get("picks", {}).get(f"{budget:g}")
        keys += [f"olive {olive_pick['id']}"] if olive_pick else []
        within = budget in nncf_keys and nncf_val_drop[nncf_keys[budget]] <= budget
        return keys + ([nncf_keys[budget]] if within else [])

    def row(
        method: str, budget: str, key: str, chain: str, val_drop: str, peers: list[str]
    ) -> list[Any]:
        size = files[key].stat().st_size
        best = {b: min((timing[b][k] for k in peers), default=None) for b in BATCHES}
        return [
            budget,
            method,
            chain,
            val_drop,
            f"{cos[key]:.4f}",
            f"{size / 2**20:.1f}",
            f"{size / files['fp32'].stat().st_size:.3f}",
            *(f"{timing[b][key]:.1f}" for b in BATCHES),
            *(f"{timing[b]['fp32'] / timing[b][key]:.2f}x" for b in BATCHES),
            *(f"{timing[b]['ort'] / timing[b][key]:.2f}x" for b in BATCHES),
            *(f"{best[b] / timing[b][key]:.2f}x" if best[b] else "-" for b in BATCHES),
        ]

    rows = [
        row("ORT fp32 (slimfuse export)", "-", "fp32", "-", "0", []),
        row(
            "ORT quantize_dynamic (per channel, MatMul)",
            "-",
            "ort",
            "int8",
            f"{ort_val_drop:.4f}",
            [],
        ),
    ]
    for budget, pick in picks.items():
        peers = peer_keys(budget)
        olive_pick = olive_found.get("picks", {}).get(f"{budget:g}")
        if olive_found and not olive_pick:
            why = "failed" if "error" in olive_found else "none within the goal"
            rows.append([f"{budget:g}", "Olive quantization search", why, *["-"] * 12])
        elif olive_pick:
            rows.append(
                row(
                    "Olive quantization search",
                    f"{budget:g}",
                    f"olive {olive_pick['id']}",
                    olive_chain(olive_pick["settings"]),
                    f"{olive_found['baseline'] - olive_pick['metrics']['cosine-mean']:.4f}",
                    peers,
                )
            )
        if budget in nncf_keys:
            key = nncf_keys[budget]
            run = nncf_found["runs"][f"{budget:g}"]
            rows.append(
                row(
                    "NNCF accuracy-aware int8",
                    f"{budget:g}",
                    key,
                    f"int8 QDQ + SmoothQuant ({run['quantize_nodes']} activation quantizers)"
                    + ("" if nncf_val_drop[key] <= budget else ", over the budget"),
                    f"{nncf_val_drop[key]:.4f}",
                    peers,
                )
            )
        elif nncf_found:
            rows.append([f"{budget:g}", "NNCF accuracy-aware int8", "failed", *["-"] * 12])
        if pick is None:
            rows.append([f"{budget:g}", "slimfuse compress", "none within the budget", *["-"] * 12])
            continue
        rows.append(
            row(
                "slimfuse compress",
                f"{budget:g}",
                f"trial {pick['number']}",
                describe(pick["chain"]),
                f"{pick['drop']:.4f}",
                peers,
            )
        )
    header = [
        "budget (cosine drop, val)",
        "method",
        "chain",
        "val drop",
        "test cosine",
        "ONNX MB",
        "x fp32 size",
        *(f"ms, batch {b}" for b in BATCHES),
        *(f"x fp32, b{b}" for b in BATCHES),
        *(f"x ORT int8, b{b}" for b in BATCHES),
        *(f"x best peer, b{b}" for b in BATCHES),
    ]
    best = max(
        (
            r
            for r in rows[2:]
            if r[1] == "slimfuse compress" and r[4] != "-" and float(r[4]) >= 0.97
        ),
        key=lambda r: float(r[9][:-1]),
        default=None,
    )
    goal = f"{best[9]} / {best[10]} at test cosine {best[4]} (batch 1 / 32)" if best else "no pick"
    if olive_found.get("error"):
        olive_line = f"Olive failed: {olive_found['error']}"
    elif olive_found:
        olive_line = (
            f"Olive {olive_found['olive']}: {olive_found['evaluated']} candidates evaluated "
            f"in {olive_found['seconds'] / 60:.1f} min (baseline val cosine "
            f"{olive_found['baseline']:.4f}, Olive's own evaluation of the fp32 file; its "
            f"front at the widest budget: {olive_found['olive_front']} models, the pick "
            f"{'is' if olive_found['olive_pick_agrees'] else 'is not'} its first)."
        )
    else:
        olive_line = "Olive not run: no `.peers/bin/python` (see `compress_cnn.py`)."
    if nncf_found.get("error"):
        nncf_line = f"NNCF failed: {nncf_found['error']}"
    elif nncf_found:
        runs = "; ".join(
            f"{b}: {r['seconds']:.0f} s, {r['validations']} validations (mean cosine "
            f"{', '.join(f'{c:.4f}' for c in r['cosines_seen'])})"
            for b, r in nncf_found["runs"].items()
        )
        nncf_line = (
            f"NNCF {nncf_found['nncf']}: one run per budget, {nncf_found['wall']:.0f} s wall in "
            "all; per budget (NNCF's time, its validation calls on more than one paragraph, "
            f"the fp32 file first): {runs}. {len(nncf_keys)} files, "
            f"{len(set(nncf_keys.values()))} distinct (identical files are measured once)."
        )
    else:
        nncf_line = "NNCF not run: no `.peers/bin/python` (see `compress_cnn.py`)."
    end_load = [round(x, 1) for x in os.getloadavg()]
    counts = json.loads((out / "compress.json").read_text())["counts"]
    md = "\n".join(
        [
            "# slimfuse compress on all-MiniLM-L6-v2 (held-out Python docs text)",
            "",
            f"CPU: {cpu_line(1)}. Load average (1/5/15 min) {'/'.join(map(str, load))} at the "
            f"start, {'/'.join(map(str, end_load))} at the end (2 cores, shared). Total "
            f"{(time.perf_counter() - t_all) / 60:.1f} min.",
            "",
            f"Search: {counts['complete']} complete and {counts['stopped']} stopped trials "
            "(a chain drawn again counts once), distillation "
            f"{args.epochs} epoch(s) (recoveries {max(1, args.epochs // 2)}), "
            f"{found['seconds'] / 60:.1f} min wall, {found['cpu_seconds'] / 60:.1f} min CPU; the "
            f"peer's quantization {peer_s:.0f} s. Cosine: to the fp32 file's embeddings on 426 "
            "test paragraphs; latency: 128 tokens, one thread, median of 5 interleaved rounds.",
            "",
            OLIVE_NOTE,
            "",
            NNCF_NOTE,
            "",
            table(header, rows),
            "",
            f"Goal >= 4x over ORT fp32 at cosine >= 0.97: best pick {goal}.",
            "",
            olive_line,
            "",
            nncf_line,
            "",
            *olive_lines(olive_found),
            "",
            "The chains the search ran (validation cosine to the fp32 model; a trained chain "
            "is stopped when it falls far below the floor):",
            "",
            *trial_lines(out),
            "",
            "Reproduce: `python benchmarks/compress_minilm.py` (add `--reuse` to re-measure a "
            "finished search).",
            "",
        ]
    )
    write(
        "compress_minilm",
        md,
        {
            "search": {k: v for k, v in found.items() if k != "rows"},
            "trials": found["rows"],
            "cosine": cos,
            "latency_ms": timing,
            "bytes": {k: p.stat().st_size for k, p in files.items()},
            "ort_val_drop": ort_val_drop,
            "olive": olive_found,
            "nncf": {**nncf_found, "val_drop": nncf_val_drop},
            "load": [load, end_load],
        },
    )


if __name__ == "__main__":
    main()
