"""Trade-off plots as inline SVG: metric against a cost (latency, bytes) on a log axis, one
point per stage and engine, the Pareto front drawn as a staircase, labels placed so that none
overlaps another label, a marker or the frame (greedy search over rings of positions around each
point, a leader line when a label sits away from its point).

Labels use a monospace font, so their width is known here without a browser: ``0.6 em`` per
character (every common monospace font), plus a margin.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from typing import Any

# colour and marker per engine, in the order the engines first appear
PALETTE = ("#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2")
MARKERS = ("circle", "square", "triangle", "diamond", "circle", "square")
FRONT = "#dc2626"
CHAR_EM = 0.6  # a monospace glyph's advance
LABEL_MAX = 22  # characters shown in the plot; the full name is in the tooltip


@dataclass
class Point:
    label: str
    engine: str
    x: float
    y: float
    tip: str = ""


@dataclass
class Size:
    width: int
    height: int
    font: int
    left: int
    bottom: int
    top: int = 14
    right: int = 16


WIDE = Size(560, 360, 12, 62, 46)
NARROW = Size(360, 330, 11, 54, 44)


def pareto(points: list[Point], higher_is_better: bool) -> list[Point]:
    """Points no other point beats on both cost (lower) and metric; sorted by cost."""
    sign = 1.0 if higher_is_better else -1.0
    front = [
        p
        for p in points
        if not any(
            q is not p
            and q.x <= p.x
            and sign * q.y >= sign * p.y
            and (q.x < p.x or sign * q.y > sign * p.y)
            for q in points
        )
    ]
    return sorted(front, key=lambda p: (p.x, -sign * p.y))


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo <= v <= hi:
                ticks.append(v)
    if len(ticks) > 7:
        ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")] or ticks
    return ticks


def _lin_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = hi - lo
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


class _Boxes:
    """Occupied rectangles (x0, y0, x1, y1) in SVG pixels."""

    def __init__(self, frame: tuple[float, float, float, float]) -> None:
        self.frame = frame
        self.boxes: list[tuple[float, float, float, float]] = []

    def free(self, b: tuple[float, float, float, float]) -> bool:
        fx0, fy0, fx1, fy1 = self.frame
        if b[0] < fx0 or b[1] < fy0 or b[2] > fx1 or b[3] > fy1:
            return False
        return not any(
            b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in self.boxes
        )

    def overlap(self, b: tuple[float, float, float, float]) -> float:
        fx0, fy0, fx1, fy1 = self.frame
        out = sum(
            max(0.0, min(b[2], o[2]) - max(b[0], o[0]))
            * max(0.0, min(b[3], o[3]) - max(b[1], o[1]))
            for o in self.boxes
        )
        outside = max(0, fx0 - b[0]) + max(0, b[2] - fx1) + max(0, fy0 - b[1]) + max(0, b[3] - fy1)
        return out + 1000 * outside


def _marker(shape: str, x: float, y: float, r: float, attrs: str) -> str:
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" {attrs}/>'
    if shape == "triangle":
        pts = f"{x:.1f},{y - r * 1.2:.1f} {x - r * 1.1:.1f},{y + r * 0.8:.1f} {x + r * 1.1:.1f},{y + r * 0.8:.1f}"
        return f'<polygon points="{pts}" {attrs}/>'
    if shape == "diamond":
        pts = f"{x:.1f},{y - r * 1.3:.1f} {x + r * 1.3:.1f},{y:.1f} {x:.1f},{y + r * 1.3:.1f} {x - r * 1.3:.1f},{y:.1f}"
        return f'<polygon points="{pts}" {attrs}/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" {attrs}/>'


def svg_plot(
    points: list[Point],
    engines: list[str],
    *,
    x_label: str,
    y_label: str,
    higher_is_better: bool,
    y_fmt: Callable[[float], str] = fmt_num,
    y_log: bool = False,
    size: Size = WIDE,
    title: str = "",
) -> str:
    """One self-contained ``<svg>``: log x, linear (or log) y, points, front, labels, legend."""
    pts = [p for p in points if p.x > 0 and math.isfinite(p.x) and math.isfinite(p.y)]
    if y_log:
        pts = [p for p in pts if p.y > 0]
    if not pts:
        return ""
    s = size
    x0, x1 = s.left, s.width - s.right
    legend_h = s.font + 10
    y0, y1 = s.top + legend_h, s.height - s.bottom
    lx = [math.log10(p.x) for p in pts]
    span = max(max(lx) - min(lx), 0.3)
    mid = (max(lx) + min(lx)) / 2
    xlo, xhi = mid - span / 2 - 0.12 * span, mid + span / 2 + 0.12 * span
    ys = [math.log10(p.y) if y_log else p.y for p in pts]
    yspan = max(ys) - min(ys)
    ypad = 0.18 * yspan if yspan > 0 else max(abs(ys[0]) * 0.02, 1e-3)
    ylo, yhi = min(ys) - ypad, max(ys) + ypad

    def sx(v: float) -> float:
        return x0 + (math.log10(v) - xlo) / (xhi - xlo) * (x1 - x0)

    def sy(v: float) -> float:
        t = math.log10(v) if y_log else v
        return y1 - (t - ylo) / (yhi - ylo) * (y1 - y0)

    fs = s.font
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {s.width} {s.height}" '
        f'width="{s.width}" height="{s.height}" role="img" aria-label="{escape(title or y_label)}" '
        f'font-size="{fs}">'
    ]
    if title:
        out.append(f"<title>{escape(title)}</title>")
    out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" class="frame"/>')
    for t in _log_ticks(10**xlo, 10**xhi):
        x = sx(t)
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" class="grid"/>')
        out.append(
            f'<text x="{x:.1f}" y="{y1 + fs + 4}" text-anchor="middle" class="tick">{fmt_num(t)}</text>'
        )
    yt = _log_ticks(10**ylo, 10**yhi) if y_log else _lin_ticks(ylo, yhi)
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" class="grid"/>')
        out.append(
            f'<text x="{x0 - 5}" y="{y + fs * 0.35:.1f}" text-anchor="end" class="tick">{escape(y_fmt(t))}</text>'
        )
    out.append(
        f'<text x="{(x0 + x1) / 2:.1f}" y="{s.height - 8}" text-anchor="middle" class="axis">{escape(x_label)}</text>'
    )
    out.append(
        f'<text transform="translate({fs + 2},{(y0 + y1) / 2:.1f}) rotate(-90)" text-anchor="middle" class="axis">{escape(y_label)}</text>'
    )
    front = pareto(pts, higher_is_better)
    if len(front) > 1:
        d = f"M{sx(front[0].x):.1f},{sy(front[0].y):.1f}"
        for a, b in itertools.pairwise(front):
            d += f" H{sx(b.x):.1f} V{sy(b.y):.1f}" if a.y != b.y else f" H{sx(b.x):.1f}"
        out.append(f'<path d="{d}" class="front" stroke="{FRONT}"/>')
    # legend: one entry per engine, then the front
    lxp = x0
    ly = s.top + fs / 2 + 2
    items = [
        (e, PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, e in enumerate(engines)
    ]
    for name, color, shape in items:
        out.append(_marker(shape, lxp + 5, ly, 4.5, f'fill="{color}"'))
        out.append(
            f'<text x="{lxp + 13}" y="{ly + fs * 0.35:.1f}" class="legend">{escape(name)}</text>'
        )
        lxp += 22 + CHAR_EM * fs * len(name)
    if len(front) > 0:
        out.append(
            f'<line x1="{lxp}" y1="{ly}" x2="{lxp + 14}" y2="{ly}" stroke="{FRONT}" class="front"/>'
        )
        out.append(
            f'<text x="{lxp + 18}" y="{ly + fs * 0.35:.1f}" class="legend">Pareto front</text>'
        )
    # markers first (their boxes block labels), then labels, front points first
    boxes = _Boxes((x0 + 1, y0 + 1, x1 - 1, y1 - 1))
    r = 4.5
    on_front = {id(p) for p in front}
    for p in pts:
        i = engines.index(p.engine) if p.engine in engines else 0
        x, y = sx(p.x), sy(p.y)
        attrs = f'fill="{PALETTE[i % len(PALETTE)]}" class="point"'
        if id(p) in on_front:
            out.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + 3.5:.1f}" class="ring" stroke="{FRONT}"/>'
            )
        tip = f"<title>{escape(p.tip or p.label)}</title>"
        out.append(
            _marker(MARKERS[i % len(MARKERS)], x, y, r, attrs)[:-2]
            + f">{tip}</{_tag(MARKERS[i % len(MARKERS)])}>"
        )
        boxes.boxes.append((x - r - 2, y - r - 2, x + r + 2, y + r + 2))
    order = sorted(pts, key=lambda p: (id(p) not in on_front, p.x))
    labels = []
    for p in order:
        text = p.label if len(p.label) <= LABEL_MAX else p.label[: LABEL_MAX - 1] + "…"
        w = CHAR_EM * fs * len(text) + 4
        h = fs * 1.3
        box, anchor = _place(boxes, sx(p.x), sy(p.y), w, h)
        boxes.boxes.append(box)
        labels.append((p, text, box, anchor))
    for p, text, box, (ax, ay) in labels:
        bx = min(max(ax, box[0]), box[2])
        by = min(max(ay, box[1]), box[3])
        if math.hypot(bx - ax, by - ay) > r + 8:
            out.append(
                f'<line x1="{ax:.1f}" y1="{ay:.1f}" x2="{bx:.1f}" y2="{by:.1f}" class="leader"/>'
            )
        out.append(
            f'<text x="{box[0] + 2:.1f}" y="{box[3] - fs * 0.3:.1f}" class="label">{escape(text)}'
            f"<title>{escape(p.tip or p.label)}</title></text>"
        )
    out.append("</svg>")
    return "".join(out)


def _tag(shape: str) -> str:
    return {"square": "rect", "triangle": "polygon", "diamond": "polygon"}.get(shape, "circle")


def _place(
    boxes: _Boxes, px: float, py: float, w: float, h: float
) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """The first free box for a ``w`` x ``h`` label on rings around (px, py), nearest first;
    where none is free, the one that overlaps least."""
    best: tuple[float, tuple[float, float, float, float]] | None = None
    for radius in (7, 12, 18, 26, 36, 48, 62, 80, 100, 125, 155, 190):
        steps = 8 if radius < 20 else 16
        for k in range(steps):
            a = 2 * math.pi * k / steps
            c, sn = math.cos(a), math.sin(a)
            ax = px + radius * c
            ay = py + radius * sn
            x = ax if c > 0.35 else ax - w if c < -0.35 else ax - w / 2
            y = ay if sn > 0.35 else ay - h if sn < -0.35 else ay - h / 2
            b = (x, y, x + w, y + h)
            if boxes.free(b):
                return b, (px, py)
            cost = boxes.overlap(b) + radius
            if best is None or cost < best[0]:
                best = (cost, b)
    assert best is not None
    return best[1], (px, py)


def points_from(
    rows: list[dict[str, Any]], x_key: Callable[[dict[str, Any]], float | None]
) -> list[Point]:
    """One point per row with a metric and a positive cost."""
    out = []
    for r in rows:
        x = x_key(r)
        y = r.get("metric_value")
        if x is None or not isinstance(y, (int, float)) or isinstance(y, bool):
            continue
        out.append(
            Point(label=str(r["stage"]), engine=str(r.get("engine", "")), x=float(x), y=float(y))
        )
    return out
