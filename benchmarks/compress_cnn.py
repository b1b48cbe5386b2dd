"""slimfuse compress vs NNCF and Olive accuracy-aware quantization on the demo's residual CNN ensemble.

Reference: five ``resnet1d`` (16/32/32, BatchNorm) members trained 20 epochs each on MNIST-1D,
weighted fusion (the demo recipe, ``src/slimfuse/recipes/demo.yaml``). Budgets: 0.5 / 1 / 2
points of validation accuracy; objectives: ONNX bytes (size) and ONNX Runtime latency at batch
64 on one thread.

- slimfuse: one ``slimfuse.compress`` search per objective at the widest budget (2 points:
  its early stops are the loosest, so its trials hold every tighter budget's candidates); the
  pick per budget is compress's own rule (:func:`slimfuse.autocompress.results.choose`: the lowest
  objective among the trials within that budget on validation) applied to the search's trials.
  A search run at a tighter budget would steer its sampler differently.
- NNCF (``nncf.quantize_with_accuracy_control``, ONNX backend) on the fused model's ONNX file,
  per budget (absolute drop on the same validation split), calibrated on the same 512 training
  samples slimfuse's static int8 reads (8 batches of 64); run as a subprocess with the peers'
  Python (``.peers``, see below), the arrays handed over as ``.npz``.
- Olive (``benchmarks/compress_cnn_olive.py``, the same Python) per budget: its search over ONNX
  Runtime quantization settings (``OnnxQuantization``'s own search space, every point), each
  candidate evaluated by Olive on the same validation split (accuracy with a ``max-degradation``
  goal of the budget), file size and batch-64 latency; calibrated on the same 512 samples
  (a local ``user_script`` dataset instead of the Hub set ``olive optimize`` names). Olive's
  pick from its Pareto front of candidates within the goal, size first for ``size``, latency
  first for ``latency``.

The peers live in their own environment, kept out of slimfuse's (``make bench-compress``
creates it)::

    python3 -m venv .peers && .peers/bin/pip install nncf==3.4.0 onnx==1.23.2 \
        onnxruntime==1.31.1 olive-ai==0.13.0 requests torch==2.13.0

(``torch`` pinned: it resolves to the CPU wheel, an unpinned one pulls CUDA packages; Olive
0.13 imports ``requests`` without declaring it).

Every ONNX file is measured the same way afterwards: test accuracy with ONNX Runtime, file
bytes, latency at batch 64 on one thread (the files timed in turn, median of 5 rounds).

Run: ``python benchmarks/compress_cnn.py [--trials 12 --epochs 30]`` (members and searches
are kept in ``runs/compress_cnn``: ``--reuse`` takes finished searches from there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import slimfuse
from peers_common import PEERS, olive_chain, run_peer
from prune_common import cpu_line, interleaved, write
from quantize_common import ort_session, table
from slimfuse.autocompress.config import CompressConfig
from slimfuse.autocompress.results import choose, describe

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = (0.005, 0.01, 0.02)
OBJECTIVES = ("size", "latency")
BATCH = 64
CALIBRATION = 512  # slimfuse's static int8: 8 batches of 64 training samples
OLIVE_NOTE = (
    "Olive: `olive optimize -m ensemble.onnx --precision int8 --device cpu` writes a workflow of "
    "`OnnxPeepholeOptimizer` then `OnnxStaticQuantization` calibrated on a Hub dataset "
    "(wikitext-2, not reachable here). Here its data come from the benchmark's arrays (a "
    "`user_script` dataset) and its search is on: `OnnxQuantization`'s own search space (dynamic "
    "or static; QOperator or QDQ; int8 or uint8; per-channel; reduce-range; pre-processing; "
    "MinMax, Entropy or Percentile calibration), every point (`sequential` sampler), each "
    "candidate evaluated by Olive on the validation split (accuracy with a `max-degradation` "
    "goal of the budget, file size, latency at batch 64 on one thread); its pick is the first "
    "of its Pareto front within the goal, size first for `size`, latency first for `latency`. "
    "Olive 0.13 on this model, as found: the peephole optimizer's output cannot be quantized "
    "(ONNX Runtime's quantizer stops in shape inference: \"Inferred shape and existing shape "
    'differ in dimension 0: (32) vs (10)"), so the workflow is the quantization pass alone; '
    "its quantization pre-processing fails (\"object of type 'NoneType' has no len()\"; Olive "
    "goes on with the model as it is), so the pre-processing switch changes nothing; a "
    "dynamic-mode point that repeats an earlier one (the static-only settings vary while "
    "ignored) fails on a cache reload (`FootprintNode` has no field `model_config`): those "
    "are duplicates, every distinct point is evaluated; its metric settings (the one-thread "
    "session, latency repeats) are written out empty with pydantic 2.14 unless its config "
    "serialization is patched (done in the peer script, `fix_olive_serialization`)."
)


def data_kwargs() -> dict[str, Any]:
    """The demo recipe's data settings (its validation fraction): the searches, NNCF and the
    measurements all read the splits the members were trained on."""
    from slimfuse.cli.demo import DEMO_RECIPE
    from slimfuse.pipeline.recipe import load_recipe

    return dict(load_recipe(DEMO_RECIPE)[0].data_kwargs)


def reference(work: Path) -> Path:
    """The fused ensemble's bundle (the demo recipe's members and fusion), trained once."""
    from slimfuse.cli.demo import DEMO_RECIPE
    from slimfuse.pipeline.run import run_recipe

    run = work / "run"
    if not (run / "ensemble" / "slimfuse.json").is_file():
        run_recipe(DEMO_RECIPE, run, quiet=True)
    return run / "ensemble"


def accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    session = ort_session(path, 1)
    name = session.get_inputs()[0].name
    right = 0
    for i in range(0, len(x), BATCH):
        right += int(
            (session.run(None, {name: x[i : i + BATCH]})[0].argmax(-1) == y[i : i + BATCH]).sum()
        )
    return right / len(y)


def search(ensemble: Path, objective: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"search-{objective}"
    info = out / "bench.json"
    if args.reuse and info.is_file() and (out / "compress.json").is_file():
        return json.loads(info.read_text())
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu = time.perf_counter(), time.process_time()
    result = slimfuse.compress(
        str(ensemble),
        "mnist1d",
        data_kwargs=data_kwargs(),
        out=out,
        max_drop=max(BUDGETS),
        objective=objective,
        trials=args.trials,
        epochs=args.epochs,
        budget_minutes=120,
        seed=0,
    )
    chains = sum(1 for r in result.trials if "base" not in r)
    got = {
        "out": str(out),
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "chains": chains,
        "records": len(result.trials),
        "reference_val": result.reference["val_metric"],
        "rows": result.trials,
    }
    info.write_text(json.dumps(got, indent=2, default=str) + "\n")
    return got


def nncf(onnx_path: Path, arrays: Path, budget: float, work: Path) -> dict[str, Any]:
    dst = work / f"nncf-{budget:g}.onnx"
    got = run_peer("compress_cnn_nncf.py", onnx_path, arrays, budget, dst)
    return {**got, "path": None if "error" in got else str(dst)}


def olive(onnx_path: Path, arrays: Path, budget: float, work: Path, reuse: bool) -> dict[str, Any]:
    out = work / f"olive-{budget:g}"
    info = out / "result.json"
    if reuse and info.is_file():
        return json.loads(info.read_text())
    shutil.rmtree(out, ignore_errors=True)
    got = run_peer("compress_cnn_olive.py", onnx_path, arrays, budget, out)
    if "error" in got:
        return {**got, "picks": {}}
    info.write_text(json.dumps(got, indent=2) + "\n")
    return got


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=12, help="chains per search (default 12)")
    p.add_argument("--epochs", type=int, default=30, help="longest distillation (default 30)")
    p.add_argument("--work", default=str(ROOT / "runs" / "compress_cnn"))
    p.add_argument("--reuse", action="store_true", help="reuse finished searches in --work")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()

    ensemble = reference(work)
    data = slimfuse.load_data("mnist1d", **data_kwargs())
    train_x, _ = data.arrays("train")
    val_x, val_y = data.arrays("val")
    test_x, test_y = data.arrays("test")
    arrays = work / "arrays.npz"
    np.savez(arrays, calib_x=train_x[:CALIBRATION], val_x=val_x, val_y=val_y)
    fp32 = work / "ensemble.onnx"
    slimfuse.export(slimfuse.load(ensemble), data.example_input(1), fp32)

    searches = {o: search(ensemble, o, work, args) for o in OBJECTIVES}
    peers: dict[float, dict[str, Any]] = {}
    olives: dict[float, dict[str, Any]] = {}
    if PEERS.is_file():
        peers = {b: nncf(fp32, arrays, b, work) for b in BUDGETS}
        olives = {b: olive(fp32, arrays, b, work, args.reuse) for b in BUDGETS}

    files: dict[str, Path] = {"ORT fp32 ensemble": fp32}
    entries: list[dict[str, Any]] = []
    for b in BUDGETS:
        peer = peers.get(b)
        if peer and peer.get("path"):
            files[f"nncf {b:g}"] = Path(peer["path"])
            entries.append(
                {
                    "budget": b,
                    "objective": "-",
                    "method": "NNCF accuracy-aware int8",
                    "key": f"nncf {b:g}",
                    "chain": "int8 (layers reverted to fp32 as needed)",
                    "cost": f"{peer['wall']:.0f} s",
                    "peer": True,
                }
            )
        found = olives.get(b, {})
        for o in OBJECTIVES:
            pick = found.get("picks", {}).get(o)
            if pick is None:
                if found:
                    entries.append(
                        {
                            "budget": b,
                            "objective": o,
                            "method": "Olive quantization search",
                            "key": None,
                            "chain": "none within the goal" if "error" not in found else "failed",
                        }
                    )
                continue
            key = f"olive {b:g} {o}"
            files[key] = Path(pick["path"])
            entries.append(
                {
                    "budget": b,
                    "objective": o,
                    "method": "Olive quantization search",
                    "key": key,
                    "chain": olive_chain(pick["passes"]),
                    "cost": f"{found['seconds'] / 60:.1f} min, {found['evaluated']} candidates "
                    f"({found['within_goal']} within the goal)",
                    "peer": True,
                }
            )
        for o in OBJECTIVES:
            s = searches[o]
            pick = choose(s["rows"], CompressConfig(max_drop=b, objective=o))
            if pick is None:
                entries.append(
                    {
                        "budget": b,
                        "objective": o,
                        "method": "slimfuse compress",
                        "key": None,
                        "chain": "none within the budget",
                    }
                )
                continue
            path = Path(s["out"]) / pick["folder"] / "bundle" / "model.onnx"
            key = f"{o} {pick['folder']}"
            files[key] = path
            entries.append(
                {
                    "budget": b,
                    "objective": o,
                    "method": "slimfuse compress",
                    "key": key,
                    "chain": describe(pick["chain"]),
                    "cost": f"{s['seconds'] / 60:.1f} min, {s['chains']} chains "
                    f"({s['records']} records)",
                }
            )

    x64 = test_x[:BATCH]
    fns = {}
    for k, path in files.items():
        sess = ort_session(path, 1)
        name = sess.get_inputs()[0].name
        fns[k] = lambda s=sess, n=name: s.run(None, {n: x64})
    latency = interleaved(fns, rounds=5, budget_s=0.3)
    test = {k: accuracy(path, test_x, test_y) for k, path in files.items()}
    val = {k: accuracy(path, val_x, val_y) for k, path in files.items()}
    size = {k: path.stat().st_size for k, path in files.items()}
    ref = "ORT fp32 ensemble"

    rows = [
        [
            "-",
            "-",
            "ORT fp32 (the fused ensemble)",
            "-",
            "0",
            f"{test[ref] * 100:.2f}",
            "0",
            f"{size[ref] / 1024:.1f}",
            "1",
            f"{latency[ref]:.3f}",
            "1",
            "-",
            "-",
            "-",
        ]
    ]
    for e in entries:
        if e["key"] is None:
            rows.append(
                [f"{e['budget'] * 100:g}", e["objective"], e["method"], e["chain"]] + ["-"] * 10
            )
            continue
        k = e["key"]
        rivals = [x["key"] for x in entries if x.get("peer") and x["budget"] == e["budget"]]
        rivals = [x for x in rivals if x is not None]
        best_size = min((size[x] for x in rivals), default=None)
        best_lat = min((latency[x] for x in rivals), default=None)
        vs_size = f"{size[k] / best_size:.3f}" if best_size else "-"
        vs_lat = f"{latency[k] / best_lat:.2f}" if best_lat else "-"
        e.update(val=val[k], test=test[k], onnx_bytes=size[k], latency_ms=latency[k])
        rows.append(
            [
                f"{e['budget'] * 100:g}",
                e["objective"],
                e["method"],
                e["chain"],
                f"{(val[ref] - val[k]) * 100:.2f}",
                f"{test[k] * 100:.2f}",
                f"{(test[ref] - test[k]) * 100:.2f}",
                f"{size[k] / 1024:.1f}",
                f"{size[k] / size[ref]:.3f}",
                f"{latency[k]:.3f}",
                f"{latency[k] / latency[ref]:.2f}",
                vs_size,
                vs_lat,
                e.get("cost", "-"),
            ]
        )
    load_after = os.getloadavg()
    total = time.perf_counter() - started
    header = [
        "budget (points, val)",
        "objective",
        "method",
        "chain",
        "val drop (points)",
        "test acc %",
        "test drop (points)",
        "ONNX KiB",
        "x fp32 size",
        "ms, batch 64",
        "x fp32 latency",
        "size vs best peer",
        "latency vs best peer",
        "cost",
    ]
    first_olive = next(iter(olives.values()), {})
    peer_note = (
        f"NNCF {next(iter(peers.values())).get('nncf', '?')} (ONNX backend) and Olive "
        f"{first_olive.get('olive', '?')} in `.peers`"
        if peers
        else "NNCF and Olive not run: no `.peers/bin/python`"
    )
    errors = {f"NNCF {b:g}": p["error"] for b, p in peers.items() if p.get("error")}
    errors.update({f"Olive {b:g}": p["error"] for b, p in olives.items() if p.get("error")})
    md = "\n".join(
        [
            "# slimfuse compress vs NNCF and Olive accuracy-aware quantization "
            "(MNIST-1D residual CNN ensemble)",
            "",
            f"CPU: {cpu_line(1)}. Load average (1/5/15 min) {load_before[0]:.1f}/{load_before[1]:.1f}/"
            f"{load_before[2]:.1f} at the start, {load_after[0]:.1f}/{load_after[1]:.1f}/"
            f"{load_after[2]:.1f} at the end (2 cores, shared). Total {total / 60:.1f} min.",
            "",
            "Reference: 5 resnet1d 16/32/32 members (20 epochs), weighted fusion (the demo recipe). "
            f"Budgets are kept on the validation split ({len(val_y):,} samples, the recipe's "
            "val_fraction 0.25); "
            "test (1,000 samples) is measured afterwards with ONNX Runtime, the same for every "
            f"file. {peer_note}.",
            "",
            OLIVE_NOTE,
            "",
            f"slimfuse: one search per objective at the 2-point budget, {args.trials} chains, "
            f"distillation up to {args.epochs} epochs, seed 0; the pick per budget is compress's "
            "own choice rule on that search's trials (a search at a tighter budget would steer "
            "differently). The cost column is the whole search's (shared by its three picks). "
            "Latency: batch 64, one thread, files timed in turn, median of 5 rounds.",
            "",
            table(header, rows),
            "",
            *([f"Peer errors: {errors}", ""] if errors else []),
        ]
    )
    payload = {
        "cpu": cpu_line(1),
        "load_before": load_before,
        "load_after": load_after,
        "seconds": total,
        "trials": args.trials,
        "epochs": args.epochs,
        "reference": {
            "val": val[ref],
            "test": test[ref],
            "onnx_bytes": size[ref],
            "latency_ms": latency[ref],
        },
        "entries": entries,
        "peers": {str(b): p for b, p in peers.items()},
        "olive": {str(b): p for b, p in olives.items()},
        "searches": {o: {k: v for k, v in s.items() if k != "rows"} for o, s in searches.items()},
    }
    write("compress_cnn", md, payload)


if __name__ == "__main__":
    sys.exit(main())
