"""What a search found, written down: the choice rule (:func:`choose`), the Pareto front and
its table, the chosen model's files and recipe, and its test figures (:func:`finish`)."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimfuse.autocompress.config import CompressConfig

log = logging.getLogger("slimfuse.compress")
TOL = 1e-9  # a drop of exactly max_drop (0.99 - 0.98 in floats) is within the budget
ENGINE_NAMES = {"onnxruntime": "ONNX Runtime", "executorch": "ExecuTorch (XNNPACK)"}


def metric_name(task: str) -> str:
    """What the budget is kept on: ``accuracy``, or an encoder's ``cosine`` to the reference."""
    return "cosine" if task == "embedding" else "accuracy"


def drop_unit(task: str) -> str:
    """The unit a drop is told in: points of accuracy, or cosine."""
    return "cosine" if task == "embedding" else "points"


def drop_number(drop: float, task: str) -> str:
    """A drop as a number in :func:`drop_unit`."""
    return f"{drop:.4f}" if task == "embedding" else f"{drop * 100:.2f}"


def drop_text(drop: float, task: str) -> str:
    """A drop with its unit: ``0.50 points``, ``0.0069 cosine``."""
    return f"{drop_number(drop, task)} {drop_unit(task)}"


@dataclass
class CompressResult:
    """What the search found; ``chosen`` is ``None`` when no trial kept within the budget."""

    out: Path
    reference: dict[str, Any]
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    test: dict[str, Any] = field(default_factory=dict)


OBJECTIVE_KEYS = {"latency": "latency_ms", "size": "file_bytes", "download": "packed_bytes"}


def objective_key(cfg: CompressConfig) -> str:
    return OBJECTIVE_KEYS[cfg.objective]


def file_kind(cfg: CompressConfig) -> str:
    return "PTE" if cfg.engine == "executorch" else "ONNX"


def describe(chain: Sequence[dict[str, Any]]) -> str:
    parts = []
    for e in chain:
        if e["stage"] == "distill" and "student_from_teacher" in e:
            depth = e["student_from_teacher"]["depth"]
            parts.append(f"distill {depth} blocks {e['epochs']}ep {e['loss']}")
        elif e["stage"] == "distill":
            kw = ",".join(f"{k}={v}" for k, v in e.get("student_kwargs", {}).items())
            parts.append(f"distill {e['student']}({kw}) {e['epochs']}ep T={e['temperature']:g}")
        elif e["stage"] == "prune" and "channels" in e:
            parts.append(f"prune channels {e['channels']:g}")
        elif e["stage"] == "prune" and "sparsity" in e:
            parts.append(f"sparsity {e['sparsity']:g}")
        elif e["stage"] == "prune":
            shares = [f"{k} {e[k]:g}" for k in ("ffn", "heads") if e.get(k)]
            parts.append(f"prune {', '.join(shares)} {e['epochs']}ep")
        elif e["stage"] == "export":
            parts.append(f"{e.get('format', 'onnx')} {'int8' if e.get('int8') else 'fp32'}")
        elif e["stage"] == "factorize":
            parts.append(f"low rank {e['budget']:g} FLOPs {e['epochs']}ep")
        elif e["stage"] == "quantize":
            how = e.get("calibration") or ("mixed" if "max_drop" in e else "")
            smooth = "smoothed" if e.get("smoothquant") is not None else ""
            parts.append(" ".join(w for w in ("int8", e["mode"], how, smooth) if w))
    return " -> ".join(parts) or "reference"


def choose(rows: Sequence[dict[str, Any]], cfg: CompressConfig) -> dict[str, Any] | None:
    """The trial with the lowest objective among those whose validation accuracy dropped by
    at most ``max_drop`` (ties: the more accurate, then the smaller); ``None`` if none did."""
    key = objective_key(cfg)
    feasible = [r for r in rows if r["drop"] <= cfg.max_drop + TOL]
    return min(feasible, key=lambda r: (r[key], -r["val_metric"], r["file_bytes"]), default=None)


def pareto(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows no other row beats on validation accuracy, latency, file bytes and deflated
    bytes together."""
    lower = ("latency_ms", "file_bytes", "packed_bytes")

    def beats(a: dict[str, Any], b: dict[str, Any]) -> bool:
        ge = a["val_metric"] >= b["val_metric"] and all(a[k] <= b[k] for k in lower)
        gt = a["val_metric"] > b["val_metric"] or any(a[k] < b[k] for k in lower)
        return ge and gt

    front = [r for r in rows if not any(beats(o, r) for o in rows if o is not r)]
    return sorted(front, key=lambda r: (-r["val_metric"], r["file_bytes"]))


def table(
    reference: dict[str, Any], rows: list[dict[str, Any]], chosen: int | None, cfg: CompressConfig
) -> str:
    ref_bytes = reference["file_bytes"]
    task = reference.get("task", "classification")
    metric, unit = metric_name(task), drop_unit(task)
    lines = [
        f"Pareto front (validation split; {ENGINE_NAMES[cfg.engine]}, {cfg.threads} thread(s), "
        "latency at "
        f"batch {cfg.batch}); budget: drop <= {drop_text(cfg.max_drop, task)}, objective: "
        f"{cfg.objective}",
        "",
        f"| trial | chain | val {metric} | drop ({unit}) | {file_kind(cfg)} KiB | "
        "x reference size | deflated KiB | "
        f"ms, batch {cfg.batch} | params | within budget |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| reference | {' + '.join(reference.get('sources', [])) or 'reference'} | "
        f"{reference['val_metric']:.4f} | 0 | {ref_bytes / 1024:.1f} | 1 | "
        f"{reference['packed_bytes'] / 1024:.1f} | "
        f"{reference['latency_ms']:.3f} | {reference['params']:,} | yes |",
    ]
    for r in rows:
        mark = " **(chosen)**" if r["number"] == chosen else ""
        lines.append(
            f"| {r['number']}{mark} | {describe(r['chain'])} | {r['val_metric']:.4f} | "
            f"{drop_number(r['drop'], task)} | {r['file_bytes'] / 1024:.1f} | "
            f"{r['file_bytes'] / ref_bytes:.3f} | {r['packed_bytes'] / 1024:.1f} | "
            f"{r['latency_ms']:.3f} | {r['params']:,} | "
            f"{'yes' if r['drop'] <= cfg.max_drop + TOL else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def finish(
    study: Any,
    out: Path,
    cfg: CompressConfig,
    ref: dict[str, Any],
    data: Any,
    task: Any,
    recipe_of: Any,
    seconds: float,
) -> CompressResult:
    from optuna.trial import TrialState

    from slimfuse.autocompress.trial import recipe_text
    from slimfuse.measuring import measure, write_metrics
    from slimfuse.models.bundle import load, stored_bytes
    from slimfuse.report import write_report

    rows, counts = [], {"complete": 0, "stopped": 0, "failed": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
            if "twin" not in t.user_attrs:  # a chain drawn again shows once
                rows.append({**t.user_attrs, "number": t.number})
        elif t.state == TrialState.PRUNED:
            counts["stopped"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
    chosen = choose(rows, cfg)
    feasible = [r for r in rows if r["drop"] <= cfg.max_drop + TOL]
    front = pareto(rows)
    (out / "pareto.md").write_text(table(ref, front, chosen["number"] if chosen else None, cfg))
    result = CompressResult(out=out, reference=ref, trials=rows, front=front, chosen=chosen)
    log.info(
        "%d trials: %d complete, %d stopped early, %d failed, %d within the budget (%.0f s)",
        len(study.trials),
        counts["complete"],
        counts["stopped"],
        counts["failed"],
        len(feasible),
        seconds,
    )
    summary: dict[str, Any] = {
        "settings": cfg.to_dict(),
        "reference": ref,
        "counts": counts,
        "front": [r["number"] for r in front],
        "trials": rows,
        "chosen": chosen,
    }
    if chosen is None:
        log.warning(
            "no trial kept within %s of the reference's val %s",
            drop_text(cfg.max_drop, task.name),
            metric_name(task.name),
        )
        (out / "compress.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return result
    trial_dir = out / chosen.get("folder", f"trials/{chosen['number']:03d}")
    target = out / "chosen"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(trial_dir / "bundle", target)
    pte = cfg.engine == "executorch"
    shipped = out / ("model.pte" if pte else "model.onnx")
    shutil.copyfile(trial_dir / "model.pte" if pte else target / "model.onnx", shipped)
    # an ExecuTorch chain ends in its own export entry (fp32 or int8 .pte)
    recipe = recipe_of(chosen["chain"], export=not pte)
    header = (
        f"# The chain slimfuse compress chose (trial {chosen['number']}): "
        f"{describe(chosen['chain'])}\n"
        f"# val {metric_name(task.name)} {chosen['val_metric']:.4f} (reference "
        f"{ref['val_metric']:.4f}), "
        f"{chosen['file_bytes']:,} {file_kind(cfg)} bytes, {chosen['latency_ms']:.3f} ms at batch "
        f"{cfg.batch}. `slimfuse run` reproduces it from the reference bundle.\n"
    )
    (out / "recipe.yaml").write_text(recipe_text(recipe, header))
    # the test split, once, for the reference and the chosen model: reported, not chosen on
    stages = []
    for name in ("reference", "chosen"):
        model = load(out / name)
        rows_ = measure(
            model,
            data,
            task,
            stage=name,
            threads=cfg.threads,
            bundle=out / name,
            latency_batches=tuple(sorted({1, cfg.batch})),
            engines=("torch", cfg.engine),
            pte_path=shipped if pte and name == "chosen" else None,
        )
        for r in rows_:
            r["bundle"] = str(out / name)
            r["size_bytes"] = stored_bytes(out / name)
        stages += rows_
    write_metrics(out / "metrics.json", stages, task.name, task.metric)
    report = {"task": task.name, "metric": task.metric, "stages": stages}
    try:
        write_report(out, report)
    except Exception as exc:  # the table and metrics stand without the page
        log.warning("report not written: %s", exc)
    run = {r["stage"]: r for r in stages if r["engine"] == cfg.engine}
    result.test = {
        "engine": cfg.engine,
        "reference": run["reference"]["metric_value"],
        "chosen": run["chosen"]["metric_value"],
        "drop": run["reference"]["metric_value"] - run["chosen"]["metric_value"],
        "size_ratio": run["chosen"]["file_bytes"] / run["reference"]["file_bytes"],
        "metric": metric_name(task.name),
        "batch": cfg.batch,
        "latency_ratio": run["chosen"][f"latency_ms_b{cfg.batch}"]
        / run["reference"][f"latency_ms_b{cfg.batch}"],
    }
    summary["test"] = result.test
    (out / "compress.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    log.info(
        "chosen: trial %d (%s); test %s %.4f vs reference %.4f (drop %s), %s %.3fx the reference's",
        chosen["number"],
        describe(chosen["chain"]),
        metric_name(task.name),
        result.test["chosen"],
        result.test["reference"],
        drop_text(result.test["drop"], task.name),
        file_kind(cfg),
        result.test["size_ratio"],
    )
    if math.isnan(result.test["chosen"]):
        log.warning("the chosen model's test %s is not a number", metric_name(task.name))
    return result
