"""Render ``metrics.json`` rows as a markdown table and a self-contained HTML page with a plot."""

from __future__ import annotations

import base64
import html
import io
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
    if key in ("size_bytes", "onnx_bytes"):
        return f"{value / 1024:,.1f}"
    if key == "metric_value":
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


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


def _plot(result: dict[str, Any]) -> str | None:
    rows = [r for r in result["stages"] if r.get("latency_ms_b64") is not None]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "latency_ms_b64", "latency at batch 64 (ms)"),
        (axes[1], "onnx_bytes", "ONNX size (KiB)"),
    ):
        for engine, marker in (("torch", "o"), ("onnxruntime", "s")):
            pts = [r for r in rows if r["engine"] == engine and r.get(key) is not None]
            xs = [r[key] / (1024 if key == "onnx_bytes" else 1) for r in pts]
            ys = [r["metric_value"] for r in pts]
            ax.scatter(xs, ys, marker=marker, label=engine)
            for x, y, r in zip(xs, ys, pts, strict=True):
                ax.annotate(
                    r["stage"], (x, y), fontsize=8, xytext=(3, 3), textcoords="offset points"
                )
        ax.set_xlabel(label)
        ax.set_ylabel(result.get("metric", "metric"))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(result: dict[str, Any]) -> str:
    head, body = _table(result)
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body
    )
    img = _plot(result)
    plot = f'<img alt="trade-off" src="data:image/png;base64,{img}">' if img else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>slimfuse report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}
th{{background:#f3f3f3}}</style></head>
<body><h1>slimfuse report <small>({html.escape(str(result.get("task", "")))})</small></h1>
<table><thead><tr>{th}</tr></thead><tbody>
{trs}
</tbody></table>
<p>Latency: median of repeated calls after warm-up, fixed threads. Weights: bundle safetensors size.</p>
{plot}
</body></html>
"""


def write_report(folder: str | Path, result: dict[str, Any]) -> Path:
    folder = Path(folder)
    (folder / "report.md").write_text(render_markdown(result))
    path = folder / "report.html"
    path.write_text(render_html(result))
    return path
