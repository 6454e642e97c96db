"""Server-rendered SVG charts: no JavaScript, no CDN, testable by parsing the markup.

Every data point is an element carrying its values (``<circle class="pt" data-series data-t data-v>``),
so a browser test can check that a chart holds exactly the points it was given. Series longer than
``MAX_POINTS`` are reduced to bucket means (marked ``data-bucket="1"``) to keep pages light.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from html import escape

PALETTE = (
    "#2563eb",
    "#ea580c",
    "#16a34a",
    "#9333ea",
    "#dc2626",
    "#0891b2",
    "#ca8a04",
    "#db2777",
    "#4b5563",
    "#65a30d",
)
MAX_POINTS = 400

W, H = 560, 230
ML, MR, MT, MB = 52, 14, 14, 42  # margins: left (y labels), right, top, bottom (x labels + legend)

PointList = Sequence[Sequence[float]]  # [[t, v], ...]


def _nice_step(span: float, target: int) -> float:
    if span <= 0:
        return 1.0
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v / 1000:.3g}k"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _time_ticks(t0: float, t1: float) -> list[float]:
    span = max(t1 - t0, 1.0)
    steps = [60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400]
    step = next((s for s in steps if span / s <= 6), steps[-1])
    first = math.ceil(t0 / step) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def _time_label(t: float, span: float) -> str:
    fmt = "%H:%M" if span <= 2 * 86400 else "%m-%d"
    return time.strftime(fmt, time.gmtime(t))


def downsample(points: PointList, max_points: int = MAX_POINTS) -> tuple[list[tuple[float, float]], bool]:
    """Points unchanged when few enough, else means of equal-count buckets (and True)."""
    pts = [(float(t), float(v)) for t, v in points]
    if len(pts) <= max_points:
        return pts, False
    size = math.ceil(len(pts) / max_points)
    out = []
    for i in range(0, len(pts), size):
        chunk = pts[i : i + size]
        out.append((sum(p[0] for p in chunk) / len(chunk), sum(p[1] for p in chunk) / len(chunk)))
    return out, True


def line_chart(
    chart_id: str,
    title: str,
    series: Mapping[str, PointList],
    *,
    labels: Mapping[str, str] | None = None,
    y_min: float | None = None,
    y_max: float | None = None,
    unit: str = "",
    t_range: tuple[float, float] | None = None,
    events: Sequence[Mapping[str, object]] = (),
) -> str:
    """An SVG line chart of ``series`` (name -> [[t, v], ...]); ``events`` ({t, label}) are drawn as
    vertical markers (model promotions)."""
    labels = labels or {}
    data = {name: downsample(pts) for name, pts in series.items()}
    all_pts = [p for pts, _ in data.values() for p in pts]
    if t_range is not None:
        t0, t1 = t_range
    elif all_pts:
        t0, t1 = min(p[0] for p in all_pts), max(p[0] for p in all_pts)
    else:
        t1 = time.time()
        t0 = t1 - 3600
    if t1 <= t0:
        t0, t1 = t0 - 60, t1 + 60
    vals = [p[1] for p in all_pts]
    lo = y_min if y_min is not None else (min(vals) if vals else 0.0)
    hi = y_max if y_max is not None else (max(vals) if vals else 1.0)
    if vals:
        lo, hi = min(lo, min(vals)), max(hi, max(vals))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = W - ML - MR, H - MT - MB

    def x(t: float) -> float:
        return ML + (t - t0) / (t1 - t0) * pw

    def y(v: float) -> float:
        return MT + (1 - (v - lo) / (hi - lo)) * ph

    out = [
        f'<svg class="chart" id="chart-{escape(chart_id)}" data-chart="{escape(chart_id)}" '
        f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" class="plot"/>',
    ]
    step = _nice_step(hi - lo, 4)
    v = math.ceil(lo / step) * step
    while v <= hi + 1e-12:
        yy = y(v)
        out.append(f'<line class="grid" x1="{ML}" x2="{ML + pw}" y1="{yy:.1f}" y2="{yy:.1f}"/>')
        out.append(
            f'<text class="ylab" x="{ML - 6}" y="{yy + 4:.1f}" text-anchor="end">{_fmt(v)}{unit}</text>'
        )
        v += step
    span = t1 - t0
    for t in _time_ticks(t0, t1):
        xx = x(t)
        out.append(f'<line class="grid" x1="{xx:.1f}" x2="{xx:.1f}" y1="{MT}" y2="{MT + ph}"/>')
        out.append(
            f'<text class="xlab" x="{xx:.1f}" y="{MT + ph + 14}" text-anchor="middle">'
            f"{_time_label(t, span)}</text>"
        )
    for ev in events:
        et = float(ev["t"])  # type: ignore[arg-type]
        if t0 <= et <= t1:
            xx = x(et)
            lab = escape(str(ev.get("label", "")))
            out.append(
                f'<g class="event" data-t="{et:.3f}" data-label="{lab}">'
                f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{MT}" y2="{MT + ph}"/>'
                f'<text x="{xx + 3:.1f}" y="{MT + 10}">{lab}</text></g>'
            )
    if not all_pts:
        out.append(
            f'<text class="empty" x="{ML + pw / 2}" y="{MT + ph / 2}" text-anchor="middle">no data yet</text>'
        )
    legend_x = ML
    for i, (name, (pts, bucketed)) in enumerate(data.items()):
        colour = PALETTE[i % len(PALETTE)]
        sname = escape(name)
        out.append(
            f'<g class="series" data-series="{sname}" data-n="{len(pts)}" '
            f'data-bucket="{int(bucketed)}" style="--c:{colour}">'
        )
        if len(pts) > 1:
            path = " ".join(f"{x(t):.1f},{y(val):.1f}" for t, val in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}"/>')
        for t, val in pts:
            out.append(
                f'<circle class="pt" cx="{x(t):.1f}" cy="{y(val):.1f}" r="2.2" fill="{colour}" '
                f'data-series="{sname}" data-t="{t:.3f}" data-v="{val:.6g}">'
                f"<title>{sname} {val:.4g}{unit} @ {time.strftime('%H:%M:%S', time.gmtime(t))}</title>"
                "</circle>"
            )
        out.append("</g>")
        label = escape(labels.get(name, name))
        ly = H - 8
        out.append(
            f'<g class="legend"><rect x="{legend_x}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{ly + 1}">{label}</text></g>'
        )
        legend_x += 24 + 7 * len(labels.get(name, name))
    out.append("</svg>")
    return "".join(out)


def timeline_chart(
    chart_id: str, title: str, events: Sequence[Mapping[str, object]], t_range: tuple[float, float]
) -> str:
    """Model versions over time: one band per version from when it was loaded or promoted until the
    next; promotions marked with a diamond."""
    t0, t1 = t_range
    if t1 <= t0:
        t1 = t0 + 60
    h = 110
    pw = W - ML - MR

    def x(t: float) -> float:
        return ML + (min(max(t, t0), t1) - t0) / (t1 - t0) * pw

    out = [
        f'<svg class="chart timeline" id="chart-{escape(chart_id)}" data-chart="{escape(chart_id)}" '
        f'viewBox="0 0 {W} {h}" width="{W}" height="{h}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<rect x="{ML}" y="14" width="{pw}" height="50" class="plot"/>',
    ]
    active: list[Mapping[str, object]] = []
    for e in sorted(events, key=lambda e: float(e["t"])):  # type: ignore[arg-type]
        if str(e.get("event")) not in ("loaded", "promoted"):
            continue
        # A restart that loads the version already served continues its band (its marker stays).
        if active and str(active[-1].get("version")) == str(e.get("version")):
            continue
        active.append(e)
    for i, ev in enumerate(active):
        start = float(ev["t"])  # type: ignore[arg-type]
        end = float(active[i + 1]["t"]) if i + 1 < len(active) else t1  # type: ignore[arg-type]
        if end < t0:
            continue
        colour = PALETTE[i % len(PALETTE)]
        full = str(ev.get("version", "?"))
        ver = escape(full)
        width = max(x(end) - x(start), 1)
        out.append(
            f'<rect class="band" x="{x(start):.1f}" y="20" width="{width:.1f}" '
            f'height="38" fill="{colour}" data-version="{ver}" data-t="{start:.3f}"><title>{ver}</title></rect>'
        )
        fits = int((width - 8) / 6.2)  # label characters that fit the band (11 px font)
        if fits >= 4:
            label = full if len(full) <= fits else full[: fits - 1] + "…"
            out.append(f'<text class="bandlab" x="{x(start) + 4:.1f}" y="43">{escape(label)}</text>')
    for ev in events:
        et = float(ev["t"])  # type: ignore[arg-type]
        if not t0 <= et <= t1:
            continue
        kind = escape(str(ev.get("event", "")))
        ver = escape(str(ev.get("version", "?")))
        xx = x(et)
        out.append(
            f'<path class="mark {kind}" d="M{xx:.1f},62 l5,7 l-5,7 l-5,-7 z" data-event="{kind}" '
            f'data-version="{ver}" data-t="{et:.3f}"><title>{kind} {ver}</title></path>'
        )
    span = t1 - t0
    for t in _time_ticks(t0, t1):
        out.append(
            f'<text class="xlab" x="{x(t):.1f}" y="{h - 12}" text-anchor="middle">'
            f"{_time_label(t, span)}</text>"
        )
    if not events:
        out.append(
            f'<text class="empty" x="{ML + pw / 2}" y="44" text-anchor="middle">no model events yet</text>'
        )
    out.append("</svg>")
    return "".join(out)
