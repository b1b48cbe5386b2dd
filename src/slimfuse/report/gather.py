"""What a report shows, gathered from a run folder: ``metrics.json`` rows, each stage's bundle
(``<folder>/<stage>/slimfuse.json``: lineage and edits), the machine and the date.

Everything read is checked for its type before use and anything unexpected is left out: a file
says what it says, a report never fails on it. Only bundles inside the run folder are read (a
stage's name must be a plain folder name; the ``bundle`` path a row carries is not followed).

The result is plain data (:class:`Report`) that :mod:`slimfuse.report.html` and
:mod:`slimfuse.report.plot` render; engines are whatever the rows name, so a new engine's rows
show up in every view without a change here.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from slimfuse import hardware

log = logging.getLogger("slimfuse.report")

# the deployable file each engine runs; other engines fall back to the stored weights
SIZE_KEY = {"torch": "size_bytes", "onnxruntime": "onnx_bytes", "executorch": "pte_bytes"}
LIBRARIES = ("slimfuse", "torch", "onnxruntime", "onnx", "numpy", "torch-pruning")
LOWER_IS_BETTER = {"mse", "mae", "loss"}
MAX_LAYER_ROWS = 400  # a report stays readable; the full lists stay in the bundles


@dataclass
class Layers:
    """One per-layer view: a title, a note, the column names and rows of cells.

    A cell is a string, or a dict: ``{"bar": fraction, "text": str}`` (a bar of that length),
    ``{"badge": str}`` (a short tag such as int8 / fp32)."""

    title: str
    head: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Stage:
    name: str
    kind: str
    summary: str
    rows: list[dict[str, Any]]
    seconds: float | None = None
    members: list[dict[str, Any]] = field(default_factory=list)
    layers: list[Layers] = field(default_factory=list)


@dataclass
class Report:
    task: str
    metric: str
    higher_is_better: bool
    stages: list[Stage]
    engines: list[str]
    machine: dict[str, str]
    data: str = ""
    title: str = "slimfuse report"


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def _str(value: Any, limit: int = 200) -> str:
    return value[:limit] if isinstance(value, str) else ""


def size_of(row: dict[str, Any]) -> float | None:
    """The bytes of what ``row``'s engine runs (ONNX file, weights), else the stored weights."""
    key = SIZE_KEY.get(row.get("engine", ""), "size_bytes")
    return _num(row.get(key)) or _num(row.get("size_bytes"))


def _read_json(path: Path, limit: int = 64 << 20) -> dict[str, Any] | None:
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("report: %s not read (%s)", path, exc)
        return None
    return value if isinstance(value, dict) else None


def _bundle(folder: Path | None, name: str) -> dict[str, Any] | None:
    """``<folder>/<name>/slimfuse.json`` when ``name`` is a plain folder name inside ``folder``."""
    if folder is None or not name or name in (".", "..") or "/" in name or "\\" in name:
        return None
    meta = _read_json(folder / name / "slimfuse.json")
    return meta if meta is not None and isinstance(meta.get("model"), dict) else None


def _own_lineage(spec: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The lineage entries the stage ``name`` added: after the previous stage's closing entry
    (the one a recipe writes, with ``name`` and ``seconds``) up to its own."""
    lineage = [e for e in spec.get("lineage", []) if isinstance(e, dict)]
    end = next((i for i in range(len(lineage) - 1, -1, -1) if lineage[i].get("name") == name), -1)
    if end < 0:
        return lineage[-1:]
    start = end
    while start > 0 and "seconds" not in lineage[start - 1]:
        start -= 1
    return lineage[start : end + 1]


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.4g}%"


def summary(kind: str, entries: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """One line: what the stage did, from its lineage entries (the last is the recipe's)."""
    own = entries[-1] if entries else {}
    cfg = own.get("config") if isinstance(own.get("config"), dict) else {}
    by_stage = {_str(e.get("stage")): e for e in entries[:-1]}
    epochs = _num(cfg.get("epochs"))
    ep = f", {int(epochs)} epoch{'s' if epochs != 1 else ''}" if epochs else ""
    source = _str(spec.get("source"))
    if kind == "train":
        return f"{_str(cfg.get('model')) or source} trained on the labels{ep}"
    if kind == "train-members":
        n = _num(cfg.get("kfold")) or _num(cfg.get("n")) or 0
        how = "fold members" if cfg.get("kfold") else "members (seeds)"
        return f"{int(n)} {_str(cfg.get('model')) or 'model'} {how}{ep} each; their mean ensemble"
    if kind == "fuse":
        fuse = by_stage.get("fuse", {})
        members = fuse.get("members") if isinstance(fuse.get("members"), list) else []
        return f"{_str(cfg.get('method')) or 'mean'} fusion of {len(members) or 'the'} members"
    if kind == "merge":
        return f"{_str(cfg.get('method')) or 'uniform'} weight merge of the members"
    if kind == "mutual":
        return (
            f"{_num(cfg.get('n')) and int(cfg['n'])} peers trained together (mutual learning){ep}"
        )
    if kind == "distill":
        teachers = cfg.get("teachers")
        t = ", ".join(str(x) for x in teachers) if isinstance(teachers, list) else "the teacher"
        loss = _str(cfg.get("loss")) or "kd"
        temp = _num(cfg.get("temperature"))
        student = _str(cfg.get("student")) or source
        return f"{student} distilled from {t} ({loss}{f', T = {temp:g}' if temp else ''}{ep})"
    if kind == "prune":
        method = _str(cfg.get("method"))
        rec = f", recovery: {_str(cfg.get('recovery')) or 'finetune'}{ep}" if epochs else ""
        if method == "channels" or cfg.get("channels") is not None:
            imp = _str(cfg.get("importance"))
            return f"{_pct(_num(cfg.get('channels')))} of the channels removed{f' ({imp})' if imp else ''}{rec}"
        if method == "transformer":
            return f"transformer pruning (ffn {cfg.get('ffn')}, heads {cfg.get('heads')}){rec}"
        un = by_stage.get("prune_unstructured", {})
        got = _num(un.get("sparsity"))
        if method == "threshold":
            return f"weights with |w| <= {cfg.get('threshold')} zeroed ({_pct(got)} zeros){rec}"
        scope = "global" if cfg.get("global_pruning", True) else "per layer"
        return f"{_pct(got or _num(cfg.get('sparsity')))} of the weights zeroed (magnitude, {scope}){rec}"
    if kind == "quantize":  # the mode that ran (auto: as resolved for the model)
        mode = _str(by_stage.get("quantize", {}).get("mode")) or _str(cfg.get("mode")) or "int8"
        if mode == "weight-only":
            return f"weight-only int{cfg.get('bits', 8)} (group {cfg.get('group_size')})"
        if mode == "shared":
            return f"weight sharing, {cfg.get('bits')}-bit codebooks"
        precision = _precision_counts(spec)
        what = {"static": "static int8 (QDQ)", "dynamic": "dynamic int8", "qat": "int8 QAT"}
        return f"{what.get(mode, mode)} for ONNX Runtime{precision}"
    if kind in ("factorize", "lowrank"):
        method = _str(cfg.get("method"))
        amount = next(
            (cfg[k] for k in ("budget", "energy", "ratio") if cfg.get(k) is not None), None
        )
        how = f"{method} {amount}" if method and amount is not None else method or "low rank"
        return f"low-rank factorization ({how}){ep}"
    if kind == "eval":
        return "measured as it is"
    keys = ", ".join(
        f"{k} {v}" for k, v in list(cfg.items())[:4] if isinstance(v, (int, float, str))
    )
    return f"{kind}{': ' + keys if keys else ''}"


def _edits(spec: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    edits = spec.get("edits") if isinstance(spec.get("edits"), list) else []
    return [e for e in edits if isinstance(e, dict) and e.get("kind") == kind]


def _precision_counts(spec: dict[str, Any]) -> str:
    rows = _quant_layers(spec)
    if not rows:
        return ""
    n8 = sum(1 for r in rows if r.get("precision") == "int8")
    return f": {n8} of {len(rows)} weighted layers int8"


def _quant_layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    for edit in reversed(_edits(spec, "quantized_graph")):
        info = edit.get("info") if isinstance(edit.get("info"), dict) else {}
        layers = info.get("layers")
        if isinstance(layers, list):
            return [r for r in layers if isinstance(r, dict)]
    return []


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header (8-byte length, then JSON), without the data."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= 16 << 20:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(header, dict):
        return {}
    return {
        k: v["shape"]
        for k, v in header.items()
        if isinstance(v, dict) and isinstance(v.get("shape"), list)
    }


def layer_views(
    kind: str, spec: dict[str, Any], entries: list[dict[str, Any]], before: Path | None
) -> list[Layers]:
    """Per-layer tables where the bundle records them, on the stage of the ``kind`` that made
    them: zeros and kept channels (prune), precision and why, sensitivity, bits, codebook sizes
    (quantize), ranks (factorize)."""
    views: list[Layers] = []
    if kind == "prune":
        views += _pruned_views(spec, before)
    elif kind == "quantize":
        views += _quantized_views(spec, entries)
    elif kind in ("factorize", "lowrank"):
        for edit in _edits(spec, "lowrank")[-1:]:
            modules = edit.get("modules")
            if isinstance(modules, dict):
                rows = [
                    [m, _str(v.get("type")), str(v.get("rank"))]
                    for m, v in modules.items()
                    if isinstance(v, dict)
                ]
                views.append(
                    Layers("Low-rank factorization: ranks", ["layer", "type", "rank"], rows)
                )
    for v in views:
        if len(v.rows) > MAX_LAYER_ROWS:
            v.note = (v.note + "; " if v.note else "") + f"first {MAX_LAYER_ROWS} of {len(v.rows)}"
            v.rows = v.rows[:MAX_LAYER_ROWS]
    return views


def _pruned_views(spec: dict[str, Any], before: Path | None) -> list[Layers]:
    views: list[Layers] = []
    for edit in _edits(spec, "sparse")[-1:]:
        zeros, numel = edit.get("zeros"), edit.get("numel")
        if isinstance(zeros, dict) and isinstance(numel, dict):
            rows = []
            for key, z in zeros.items():
                n = _num(numel.get(key))
                if n and _num(z) is not None:
                    frac = float(z) / n
                    rows.append([key, {"bar": frac, "text": f"{100 * frac:.1f}%"}, f"{int(n):,}"])
            if rows:
                views.append(
                    Layers(
                        "Sparsity per layer (zeros kept by every later stage)",
                        ["tensor", "zeros", "weights"],
                        rows,
                    )
                )
    resized = [e for e in _edits(spec, "resize") if isinstance(e.get("modules"), dict)]
    if resized:
        old = _safetensors_shapes(before) if before is not None else {}
        rows = []
        for module, info in resized[-1]["modules"].items():
            shapes = info.get("shapes") if isinstance(info, dict) else None
            if not isinstance(shapes, dict) or not isinstance(shapes.get("weight"), list):
                continue
            new = shapes["weight"]
            was = old.get(f"{module}.weight")
            dims = " × ".join(str(d) for d in new)
            if isinstance(was, list) and len(was) == len(new):
                kept = 1.0
                for a, b in zip(new, was, strict=True):
                    kept *= a / b if b else 1.0
                rows.append(
                    [
                        module,
                        " × ".join(str(d) for d in was),
                        dims,
                        {"bar": kept, "text": f"{100 * kept:.0f}%"},
                    ]
                )
            else:
                rows.append([module, "", dims, ""])
        if rows:
            views.append(
                Layers(
                    "Structured pruning: weight shapes", ["layer", "before", "after", "kept"], rows
                )
            )
    return views


def _quantized_views(spec: dict[str, Any], entries: list[dict[str, Any]]) -> list[Layers]:
    views: list[Layers] = []
    quant = _quant_layers(spec)
    if quant:
        rows = [
            [
                _str(r.get("layer")),
                _str(r.get("type")),
                {"badge": _str(r.get("precision"))},
                _str(r.get("reason"), 300),
            ]
            for r in quant
        ]
        views.append(Layers("Precision per layer", ["layer", "type", "precision", "why"], rows))
        for edit in reversed(_edits(spec, "quantized_graph")):
            mixed = (
                (edit.get("info") or {}).get("mixed_precision")
                if isinstance(edit.get("info"), dict)
                else None
            )
            if not isinstance(mixed, dict):
                continue
            sens = [r for r in mixed.get("sensitivity", []) if isinstance(r, dict)]
            top = max((_num(r.get("drop")) or 0.0 for r in sens), default=0.0) or 1.0
            rows = [
                [
                    _str(r.get("layer")),
                    {
                        "bar": max(0.0, (_num(r.get("drop")) or 0.0) / top),
                        "text": f"{_num(r.get('drop')) or 0.0:.4f}",
                    },
                    f"{_num(r.get('sqnr_db')) or 0.0:.1f}",
                ]
                for r in sens
            ]
            note = (
                f"budget {mixed.get('max_drop')}; "
                f"{'met' if mixed.get('met') else 'not met'} after "
                f"{len(mixed.get('steps', [])) if isinstance(mixed.get('steps'), list) else '?'} step(s)"
            )
            if rows:
                views.append(
                    Layers(
                        "Sensitivity (each layer quantized alone)",
                        ["layer", "metric drop", "output SQNR (dB)"],
                        rows,
                        note,
                    )
                )
            break
    for edit in _edits(spec, "weight_only")[-1:]:
        layers = edit.get("layers")
        if isinstance(layers, dict):
            bits = edit.get("bits")
            rows = [
                [
                    m,
                    _str(v.get("kind")),
                    " × ".join(str(d) for d in v.get("shape", []) if isinstance(d, int)),
                    f"int{bits}",
                ]
                for m, v in layers.items()
                if isinstance(v, dict)
            ]
            views.append(Layers("Weight-only layers", ["layer", "kind", "shape", "bits"], rows))
    for e in entries:
        if (
            e.get("stage") == "quantize"
            and e.get("mode") == "shared"
            and isinstance(e.get("values"), dict)
        ):
            rows = [[m, str(v)] for m, v in e["values"].items()]
            views.append(
                Layers("Weight sharing: distinct values per layer", ["layer", "values"], rows)
            )
    return views


def members_of(spec: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An ensemble's members: name, own test metric (measured by the recipe), validation
    metric and fusion weight where recorded."""
    kwargs = spec.get("kwargs") if isinstance(spec.get("kwargs"), dict) else {}
    listed = kwargs.get("members") if spec.get("source") == "fused" else None
    measured: dict[str, Any] = {}
    for r in rows:
        if isinstance(r.get("members"), dict):
            measured = r["members"]
            break
    if not isinstance(listed, list) and not measured:
        return []
    weights = kwargs.get("weights") if isinstance(kwargs.get("weights"), list) else []
    out = []
    names = (
        [m.get("name") for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []
    )
    names = [n for n in names if isinstance(n, str)] or [n for n in measured if isinstance(n, str)]
    for i, name in enumerate(names):
        member = next(
            (m for m in listed or [] if isinstance(m, dict) and m.get("name") == name), {}
        )
        mspec = member.get("spec") if isinstance(member.get("spec"), dict) else {}
        val = None
        for e in reversed(
            mspec.get("lineage", []) if isinstance(mspec.get("lineage"), list) else []
        ):
            if isinstance(e, dict) and _num(e.get("best_val")) is not None:
                val = _num(e.get("best_val"))
                break
        out.append(
            {
                "name": name,
                "source": _str(mspec.get("source")),
                "metric": _num(measured.get(name)),
                "val": val,
                "weight": _num(weights[i]) if i < len(weights) else None,
            }
        )
    return out


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine(rows: list[dict[str, Any]], versions: dict[str, Any] | None = None) -> dict[str, str]:
    """The CPU, its int8-relevant flags, threads, library versions and the date."""
    flags = hardware.cpu_flags()
    shown = [f for f in hardware.SHOWN_FLAGS if f in flags]
    threads = sorted({str(int(t)) for r in rows if (t := _num(r.get("threads"))) is not None})
    libs = {n: v for n in LIBRARIES if (v := _version(n))}
    for k, v in (versions or {}).items():
        if isinstance(k, str) and isinstance(v, str):
            libs.setdefault(k, v)
    return {
        "CPU": f"{hardware.cpu_name()} ({platform.machine()}), {os.cpu_count()} logical cores",
        "flags": ", ".join(shown) or "none of " + ", ".join(hardware.SHOWN_FLAGS),
        "measured with threads": ", ".join(threads) or "–",
        "libraries": ", ".join(f"{k} {v}" for k, v in libs.items()),
        "Python": f"{platform.python_version()} on {platform.system()} {platform.release()}",
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _task_direction(task: str, metric: str) -> bool:
    try:
        from slimfuse.tasks import get_task

        return get_task(task).higher_is_better
    except Exception:
        return metric not in LOWER_IS_BETTER


def gather(result: dict[str, Any], folder: str | Path | None = None) -> Report:
    """A :class:`Report` from ``metrics.json``'s content and, where given, the run folder."""
    folder = Path(folder) if folder is not None else None
    rows = [
        r
        for r in result.get("stages", [])
        if isinstance(r, dict) and isinstance(r.get("stage"), str)
    ]
    names: list[str] = []
    for r in rows:
        if r["stage"] not in names:
            names.append(r["stage"])
    engines: list[str] = []
    for r in rows:
        e = r.get("engine")
        if isinstance(e, str) and e not in engines:
            engines.append(e)
    stages: list[Stage] = []
    versions: dict[str, Any] | None = None
    data = ""
    previous: str | None = None
    for name in names:
        stage_rows = [r for r in rows if r["stage"] == name]
        meta = _bundle(folder, name)
        spec = meta["model"] if meta else {}
        if meta and isinstance(meta.get("versions"), dict):
            versions = meta["versions"]
        split = spec.get("split") if isinstance(spec.get("split"), dict) else {}
        data = _str(split.get("data")) or data
        entries = _own_lineage(spec, name) if spec else []
        kind = _str(entries[-1].get("stage")) if entries else ""
        cfg = (
            entries[-1].get("config")
            if entries and isinstance(entries[-1].get("config"), dict)
            else {}
        )
        source = cfg.get("model") if kind in ("prune", "quantize") else None
        before_name = source if isinstance(source, str) else previous
        before = None
        if folder is not None and before_name and _bundle(folder, before_name) is not None:
            before = folder / before_name / "model.safetensors"
        stages.append(
            Stage(
                name=name,
                kind=kind,
                summary=summary(kind, entries, spec) if entries else "",
                rows=stage_rows,
                seconds=_num(stage_rows[0].get("seconds")),
                members=members_of(spec, stage_rows),
                layers=layer_views(kind, spec, entries, before) if spec else [],
            )
        )
        previous = name
    task = _str(result.get("task")) or "classification"
    metric = _str(result.get("metric")) or "metric"
    return Report(
        task=task,
        metric=metric,
        higher_is_better=_task_direction(task, metric),
        stages=stages,
        engines=engines,
        machine=machine(rows, versions),
        data=data,
    )
