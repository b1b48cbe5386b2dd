"""Write a run's report: ``report.md`` (a table) and ``report.html`` (the page people read).

:func:`write_report` is what every command calls with a run folder: it reads ``metrics.json``
there unless given the rows, and each stage's bundle beside it for the details.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = [
    ("stage", "stage"),
    ("engine", "engine"),
    ("metric_value", "{metric}"),
    ("params", "params"),
    ("nonzero_params", "non-zero"),
    ("size_bytes", "weights (KiB)"),
    ("onnx_bytes", "ONNX (KiB)"),
    ("macs", "MACs"),
    ("latency_ms_b1", "latency b1 (ms)"),
    ("latency_ms_b64", "latency b64 (ms)"),
]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key in ("size_bytes", "onnx_bytes") and isinstance(value, (int, float)):
        return f"{value / 1024:,.1f}"
    if key == "metric_value" and isinstance(value, (int, float)):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = [label.format(metric=result.get("metric", "metric")) for _, label in COLUMNS]
    body = [[_fmt(k, row.get(k)) for k, _ in COLUMNS] for row in result["stages"]]
    return head, body


def render_markdown(result: dict[str, Any]) -> str:
    head, body = _table(result)
    lines = [
        f"# slimfuse report ({result.get('task', '')})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
        *("| " + " | ".join(r) + " |" for r in body),
        "",
        "Latency: median of repeated calls after warm-up, fixed threads; weights = bundle safetensors.",
        "",
    ]
    return "\n".join(lines)


def render_html(result: dict[str, Any], folder: str | Path | None = None) -> str:
    """The page for ``result`` (``metrics.json``'s content); ``folder``: the run folder whose
    stage bundles give what each stage did and the per-layer views."""
    from slimfuse.report.gather import gather
    from slimfuse.report.html import render

    return render(gather(result, folder))


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """``<folder>/metrics.json`` (rows under ``stages``)."""
    path = Path(folder) / "metrics.json"
    result = json.loads(path.read_text())
    if not isinstance(result, dict) or not isinstance(result.get("stages"), list):
        raise ValueError(f"{path}: expected an object with a 'stages' list")
    return result


def write_report(
    folder: str | Path,
    result: dict[str, Any] | None = None,
    *,
    bundles: str | Path | None = None,
) -> Path:
    """Write ``report.md`` and ``report.html`` into ``folder``; returns the HTML's path.

    ``result``: the rows (default: ``folder``'s ``metrics.json``); ``bundles``: the folder
    holding one bundle per stage (default: ``folder``).
    """
    folder = Path(folder)
    result = result if result is not None else read_metrics(folder)
    (folder / "report.md").write_text(render_markdown(result))
    path = folder / "report.html"
    path.write_text(render_html(result, bundles if bundles is not None else folder))
    return path
