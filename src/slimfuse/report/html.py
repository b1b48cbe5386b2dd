"""The report as one self-contained HTML page: no script, no fetch (a Content-Security-Policy
that forbids both), inline CSS and SVG, every name from a file escaped.

Sections: the headline (the last stage against the first), one row per stage and engine with
what the stage did and its change against the first model, the trade-off plots, an ensemble's
members beside the fused model, per-layer views, the machine. Wide tables scroll inside their
box, and each plot has a phone-width variant, so the page never scrolls sideways.
"""

from __future__ import annotations

from html import escape
from typing import Any

from slimfuse.report.gather import Layers, Report, Stage, size_of
from slimfuse.report.plot import NARROW, WIDE, Point, points_from, svg_plot

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#d9dee4;--bg:#fff;--soft:#f4f6f8;--good:#047857;
--bad:#b91c1c;--accent:#2563eb}
@media (prefers-color-scheme:dark){:root{--fg:#e5e9ee;--muted:#9aa5b1;--line:#3a424c;--bg:#15191e;
--soft:#1f252c;--good:#34d399;--bad:#f87171;--accent:#60a5fa}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,sans-serif}
main{max-width:1120px;margin:0 auto;padding:20px 16px 48px}
h1{font-size:1.6rem;margin:0 0 2px}h2{font-size:1.2rem;margin:32px 0 8px;padding-bottom:4px;
border-bottom:1px solid var(--line)}h3{font-size:1rem;margin:18px 0 6px}
.sub,.note,figcaption{color:var(--muted);font-size:.9rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:16px 0}
.card{background:var(--soft);border-radius:8px;padding:10px 14px}
.card b{display:block;font-size:1.45rem;line-height:1.2}.card>span{color:var(--muted);font-size:.85rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%}
table{border-collapse:collapse;font-size:.88rem;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid var(--line);padding:4px 7px;text-align:right;vertical-align:top;
white-space:nowrap}
th{background:var(--soft);font-weight:600}
td.l,th.l{text-align:left}td.what{white-space:normal;min-width:170px;max-width:300px;text-align:left}
td.why{white-space:normal;min-width:200px;text-align:left}
tr.first td{border-top:2px solid var(--line)}
.good{color:var(--good)}.bad{color:var(--bad)}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:.8rem;background:var(--soft);
border:1px solid var(--line)}.badge.int8{background:#dbeafe;color:#1e3a8a;border-color:#93c5fd}
.badge.fp32{background:#fef3c7;color:#78350f;border-color:#fcd34d}
.bar{display:inline-block;width:90px;height:9px;background:var(--soft);border:1px solid var(--line);
border-radius:4px;margin-right:6px;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.plots{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;flex:1 1 440px;min-width:0;max-width:720px}
figure svg{width:100%;height:auto;display:block}
figure.narrow{display:none}
@media (max-width:600px){figure.wide{display:none}figure.narrow{display:block}
main{padding:14px 10px 40px}h1{font-size:1.35rem}}
svg .frame{fill:none;stroke:var(--line)}svg .grid{stroke:var(--line);stroke-width:.6}
svg text{fill:var(--fg)}svg .tick,svg .legend{fill:var(--muted)}
svg .label{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,monospace}
svg .front{fill:none;stroke-width:2;stroke-dasharray:5 3}svg .ring{fill:none;stroke-width:1.6}
svg .leader{stroke:var(--muted);stroke-width:.7}svg .point{stroke:var(--bg);stroke-width:1}
dl.machine{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;font-size:.9rem}
dl.machine dt{color:var(--muted)}dl.machine dd{margin:0;overflow-wrap:anywhere}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
"""


def e(value: Any) -> str:
    return escape(str(value), quote=True)


def fmt_metric(metric: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "–"
    if metric == "accuracy":
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def fmt_delta(metric: str, delta: float, higher_is_better: bool) -> str:
    """A signed change, coloured by whether it is better (points for accuracy)."""
    text = f"{100 * delta:+.1f} pt" if metric == "accuracy" else f"{delta:+.3g}"
    if metric == "accuracy" and abs(delta) < 0.0005:
        return f'<span title="{delta:+.4f}">±0.0 pt</span>'
    good = (delta > 0) == higher_is_better
    return f'<span class="{"good" if good else "bad"}">{e(text)}</span>'


def fmt_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    cls = "good" if ratio > 1.05 else "bad" if ratio < 0.95 else ""
    return f'<span class="{cls}">{ratio:.3g}×</span>' if cls else f"{ratio:.3g}×"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:,.1f} {unit}"
    return f"{int(n)} B"


def fmt_ms(v: Any) -> str:
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–"
    return f"{v:.3g}" if v < 100 else f"{v:,.0f}"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def baseline(report: Report, engine: str) -> dict[str, Any] | None:
    """The first stage's row for ``engine`` (else its first row): what every change is against."""
    if not report.stages:
        return None
    rows = report.stages[0].rows
    return next((r for r in rows if r.get("engine") == engine), rows[0] if rows else None)


def changes(report: Report, row: dict[str, Any]) -> dict[str, float | None]:
    """``smaller``, ``faster`` (batch 64 and 1) and ``delta`` against the first model."""
    base = baseline(report, str(row.get("engine")))
    out: dict[str, float | None] = {
        "smaller": None,
        "faster": None,
        "faster_b1": None,
        "delta": None,
    }
    if base is None:
        return out
    s0, s1 = size_of(base), size_of(row)
    out["smaller"] = s0 / s1 if s0 and s1 else None
    for key, name in (("latency_ms_b64", "faster"), ("latency_ms_b1", "faster_b1")):
        a, b = _num(base.get(key)), _num(row.get(key))
        out[name] = a / b if a and b else None
    a, b = _num(base.get("metric_value")), _num(row.get("metric_value"))
    out["delta"] = b - a if a is not None and b is not None else None
    return out


def _headline_row(stage: Stage) -> dict[str, Any] | None:
    """The row that deploys: an engine other than torch where there is one."""
    rows = stage.rows
    return next((r for r in rows if r.get("engine") != "torch"), rows[0] if rows else None)


def headline(report: Report) -> str:
    if len(report.stages) < 2:
        return ""
    last = report.stages[-1]
    row = _headline_row(last)
    if row is None:
        return ""
    c = changes(report, row)
    first = report.stages[0].name
    engine = row.get("engine", "")
    cards = [
        (fmt_metric(report.metric, row.get("metric_value")), f"{report.metric} of {last.name}"),
        (
            fmt_delta(report.metric, c["delta"], report.higher_is_better)
            if c["delta"] is not None
            else "–",
            f"{report.metric} against {first}",
        ),
        (fmt_ratio(c["smaller"]), f"smaller than {first} ({engine} file)"),
        (fmt_ratio(c["faster"]), f"faster than {first} at batch 64 ({engine})"),
    ]
    body = "".join(f'<div class="card"><b>{v}</b><span>{e(t)}</span></div>' for v, t in cards)
    return f'<section class="cards" aria-label="headline">{body}</section>'


def stages_table(report: Report) -> str:
    head = [
        ("stage", "l"),
        ("what it did", "l"),
        ("engine", "l"),
        (report.metric, ""),
        ("change", ""),
        ("size", ""),
        ("smaller", ""),
        ("ms, batch 1", ""),
        ("ms, batch 64", ""),
        ("faster (b64)", ""),
    ]
    th = "".join(f'<th class="{c}" scope="col">{e(h)}</th>' for h, c in head)
    body = []
    for i, st in enumerate(report.stages):
        n = len(st.rows)
        for j, row in enumerate(st.rows):
            c = changes(report, row)
            cells = []
            if j == 0:
                span = f' rowspan="{n}"' if n > 1 else ""
                took = f'<br><span class="note">{st.seconds:.1f} s</span>' if st.seconds else ""
                cells.append(f'<td class="l"{span}><b>{e(st.name)}</b>{took}</td>')
                cells.append(f'<td class="what"{span}>{e(st.summary or st.kind or "")}</td>')
            delta = (
                "first model"
                if i == 0
                else fmt_delta(report.metric, c["delta"], report.higher_is_better)
                if c["delta"] is not None
                else "–"
            )
            cells += [
                f'<td class="l">{e(row.get("engine", ""))}</td>',
                f"<td>{e(fmt_metric(report.metric, row.get('metric_value')))}</td>",
                f"<td>{delta}</td>",
                f"<td>{e(fmt_bytes(size_of(row)))}</td>",
                f"<td>{fmt_ratio(c['smaller']) if i else '1×'}</td>",
                f"<td>{e(fmt_ms(row.get('latency_ms_b1')))}</td>",
                f"<td>{e(fmt_ms(row.get('latency_ms_b64')))}</td>",
                f"<td>{fmt_ratio(c['faster']) if i else '1×'}</td>",
            ]
            cls = ' class="first"' if j == 0 and i else ""
            body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<div class="scroll"><table class="stages"><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        '<p class="note">Changes are against the first model on the same engine; size is the file '
        "that engine runs (ONNX for ONNX Runtime, the bundle's weights for PyTorch).</p>"
    )


DETAIL = [
    ("params", "params"),
    ("nonzero_params", "non-zero"),
    ("size_bytes", "weights"),
    ("onnx_bytes", "ONNX"),
    ("macs", "MACs"),
    ("latency_ms_b1", "b1 p50"),
    ("latency_ms_b1_p90", "b1 p90"),
    ("latency_ms_b64", "b64 p50"),
    ("latency_ms_b64_p90", "b64 p90"),
    ("threads", "threads"),
]


def all_rows(report: Report) -> str:
    th = '<th class="l">stage</th><th class="l">engine</th>' + "".join(
        f"<th>{e(label)}</th>" for _, label in DETAIL
    )
    body = []
    for st in report.stages:
        for r in st.rows:
            cells = [
                f'<td class="l">{e(st.name)}</td>',
                f'<td class="l">{e(r.get("engine", ""))}</td>',
            ]
            for key, _ in DETAIL:
                v = r.get(key)
                if key.endswith("bytes"):
                    text = fmt_bytes(_num(v))
                elif key.startswith("latency"):
                    text = fmt_ms(v)
                else:
                    text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "–"
                cells.append(f"<td>{e(text)}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        "<details><summary>Every measurement</summary>"
        f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody>'
        '</table></div><p class="note">Latency in ms: median (p50) and p90 of repeated calls '
        "after a warm-up, at a fixed thread count.</p></details>"
    )


def plots(report: Report) -> str:
    rows = [r for st in report.stages for r in st.rows]
    y_label = f"test {report.metric}"

    def y_fmt(v: float) -> str:
        return f"{100 * v:.3g}%" if report.metric == "accuracy" else f"{v:.3g}"

    figures = []
    for title, x_label, key in (
        (
            "metric against latency",
            "latency at batch 64 (ms, log scale)",
            lambda r: _num(r.get("latency_ms_b64")),
        ),
        (
            "metric against size",
            "size of the engine's file (KiB, log scale)",
            lambda r: (size_of(r) or 0) / 1024 or None,
        ),
    ):
        pts: list[Point] = points_from(rows, key)
        for p in pts:
            p.tip = (
                f"{p.label} ({p.engine}): {fmt_metric(report.metric, p.y)}, "
                f"{x_label.split(' (')[0]} {p.x:.4g}"
            )
        for size, cls in ((WIDE, "wide"), (NARROW, "narrow")):
            svg = svg_plot(
                pts,
                report.engines,
                x_label=x_label,
                y_label=y_label,
                higher_is_better=report.higher_is_better,
                y_fmt=y_fmt,
                y_log=report.metric == "mse",
                size=size,
                title=f"{report.metric} against {x_label.split(' (')[0]}",
            )
            if svg:
                figures.append(
                    f'<figure class="{cls}">{svg}<figcaption>{e(title)}: up and to the left is better; circled points are on the Pareto front.</figcaption></figure>'
                )
    if not figures:
        return ""
    return f'<h2>Trade-off</h2><div class="plots">{"".join(figures)}</div>'


def ensembles(report: Report) -> str:
    parts = []
    for st in report.stages:
        if not st.members:
            continue
        fused = _headline_row(st)
        scored = [m["metric"] for m in st.members if m["metric"] is not None]
        rows = []
        for m in st.members:
            rows.append(
                f'<tr><td class="l">{e(m["name"])}</td><td class="l">{e(m["source"])}</td>'
                f"<td>{e(fmt_metric(report.metric, m['metric']))}</td>"
                f"<td>{e(fmt_metric(report.metric, m['val']))}</td>"
                f"<td>{'–' if m['weight'] is None else format(m['weight'], '.3f')}</td></tr>"
            )
        fused_value = fused.get("metric_value") if fused else None
        rows.append(
            f'<tr class="first"><td class="l"><b>{e(st.name)}</b> (fused)</td><td class="l"></td>'
            f"<td><b>{e(fmt_metric(report.metric, fused_value))}</b></td><td>–</td><td>–</td></tr>"
        )
        note = ""
        if scored and isinstance(fused_value, (int, float)):
            best = max(scored) if report.higher_is_better else min(scored)
            mean = sum(scored) / len(scored)
            note = (
                f'<p class="note">Fused against the best member: '
                f"{fmt_delta(report.metric, fused_value - best, report.higher_is_better)}; "
                f"against the members' mean: {fmt_delta(report.metric, fused_value - mean, report.higher_is_better)}.</p>"
            )
        parts.append(
            f"<h3>{e(st.name)}: {e(st.summary)}</h3>"
            '<div class="scroll"><table><thead><tr><th class="l">member</th><th class="l">model</th>'
            f"<th>test {e(report.metric)}</th><th>validation</th><th>weight</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
        )
    return f"<h2>Ensembles: each member and the fused model</h2>{''.join(parts)}" if parts else ""


def _cell(c: Any) -> str:
    if isinstance(c, dict) and "bar" in c:
        frac = max(0.0, min(1.0, float(c["bar"])))
        return f'<td class="l"><span class="bar"><i style="width:{100 * frac:.1f}%"></i></span>{e(c.get("text", ""))}</td>'
    if isinstance(c, dict) and "badge" in c:
        tag = str(c["badge"])
        cls = tag if tag in ("int8", "fp32") else ""
        return f'<td class="l"><span class="badge {cls}">{e(tag)}</span></td>'
    text = str(c)
    return f'<td class="{"why" if len(text) > 40 else "l"}">{e(text)}</td>'


def layer_table(view: Layers) -> str:
    th = "".join(f'<th class="l">{e(h)}</th>' for h in view.head)
    body = "".join(f"<tr>{''.join(_cell(c) for c in row)}</tr>" for row in view.rows)
    note = f'<p class="note">{e(view.note)}</p>' if view.note else ""
    return (
        f"<h3>{e(view.title)}</h3>"
        f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>{note}'
    )


def layers(report: Report) -> str:
    parts = []
    for st in report.stages:
        if st.layers:
            inner = "".join(layer_table(v) for v in st.layers)
            parts.append(f"<details open><summary>{e(st.name)}</summary>{inner}</details>")
    return f"<h2>Per layer</h2>{''.join(parts)}" if parts else ""


def machine(report: Report) -> str:
    items = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in report.machine.items())
    return f'<h2>Machine</h2><dl class="machine">{items}</dl>'


def render(report: Report) -> str:
    """The whole page."""
    sub = " · ".join(x for x in (report.data, report.task, report.machine.get("date", "")) if x)
    body = "".join(
        [
            f'<header><h1>{e(report.title)}</h1><p class="sub">{e(sub)}</p></header>',
            headline(report),
            "<h2>Stages</h2>",
            stages_table(report) if report.stages else '<p class="note">No stage was measured.</p>',
            all_rows(report) if report.stages else "",
            plots(report),
            ensembles(report),
            layers(report),
            machine(report),
        ]
    )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(report.title)}</title><style>{CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )
