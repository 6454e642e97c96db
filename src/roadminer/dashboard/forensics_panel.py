"""Dashboard panels for reward forensics (``roadminer.chain.forensics``): who rates us low, per-epoch
incentive/trust/emission, each validator's weight on us, and the alerts. Server-rendered SVG like the rest
of the dashboard; every bar carries its numbers as ``data-*`` attributes."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from roadminer.chain.forensics import ForensicsLog, who_rates_us_low
from roadminer.dashboard.charts import line_chart
from roadminer.state.store import StateStore

BAR_W, BAR_H, LABEL_W = 560, 22, 190


def _short(hk: str) -> str:
    return hk if len(hk) <= 12 else f"{hk[:5]}…{hk[-4:]}"


async def forensics_data(store: StateStore, since: float, now: float | None = None) -> dict[str, Any]:
    """Epoch records in the window (and the latest one before it), their series, the latest ranking and
    the alerts, as JSON."""
    now = time.time() if now is None else now
    log = ForensicsLog(store)
    records = await log.records()
    shown = [r for r in records if since <= r.t <= now] or records[-1:]
    latest = records[-1] if records else None
    series: dict[str, list[list[float]]] = {k: [] for k in ("incentive", "trust", "consensus", "emission")}
    weights: dict[str, list[list[float]]] = {}
    for r in shown:
        for k in series:
            series[k].append([r.t, float(getattr(r, k))])
        for v in r.validators:
            if v.weight is not None:
                weights.setdefault(v.hotkey, []).append([r.t, v.weight])
    return {
        "epochs": len(records),
        "latest": None if latest is None else latest.to_json(),
        "ranking": [] if latest is None else [vars(x) for x in who_rates_us_low(latest)],
        "consensus_weight": None if latest is None else latest.consensus_weight(),
        "series": series,
        "weights": weights,
        "alerts": await log.alerts(since),
    }


def rating_chart(ranking: list[dict[str, Any]], epoch: int | None) -> str:
    """Horizontal bars: each validator's weight on us relative to the stake-weighted consensus (1 = the
    consensus line), lowest first."""
    if not ranking:
        return '<svg class="chart rating" viewBox="0 0 560 60"><text class="empty" x="12" y="34">' \
               "no epoch recorded yet (the miner records one per chain sync)</text></svg>"
    top = max([1.5] + [r["relative"] for r in ranking if r["relative"] is not None])
    height = 24 + BAR_H * len(ranking)
    span = BAR_W - LABEL_W - 60
    x1 = LABEL_W + span / top  # where relative = 1 lands
    rows = []
    for i, r in enumerate(ranking):
        y = 18 + i * BAR_H
        rel = r["relative"]
        if rel is None:
            cls, width, text = "none", 0.0, "no weights set"
        else:
            cls = "low" if rel < 0.5 else ("mid" if rel < 0.9 else "ok")
            width, text = span * rel / top, f"{rel:.2f}× (w {r['weight']:.4f})"
        rows.append(
            f'<g class="bar {cls}" data-hotkey="{escape(r["hotkey"])}" data-uid="{r["uid"]}" '
            f'data-stake="{r["stake"]:.3f}" data-weight="{"" if r["weight"] is None else r["weight"]}" '
            f'data-relative="{"" if rel is None else round(rel, 6)}">'
            f'<text class="ylab" x="4" y="{y + 14}">{escape(_short(r["hotkey"]))} · {r["stake"]:,.0f}</text>'
            f'<rect x="{LABEL_W}" y="{y + 3}" width="{width:.1f}" height="{BAR_H - 8}"></rect>'
            f'<text class="val" x="{LABEL_W + width + 4:.1f}" y="{y + 14}">{escape(text)}</text></g>'
        )
    return (
        f'<svg class="chart rating" viewBox="0 0 {BAR_W} {height}" role="img" '
        f'aria-label="who rates us low, epoch {epoch}">'
        f'<text class="xlab" x="{LABEL_W}" y="12">weight on us ÷ stake-weighted consensus (epoch {epoch})</text>'
        f'<line class="one" x1="{x1:.1f}" x2="{x1:.1f}" y1="14" y2="{height}"></line>'
        + "".join(rows)
        + "</svg>"
    )


def alerts_table(alerts: list[dict[str, Any]]) -> str:
    if not alerts:
        return '<p class="small" id="forensics-alerts">no alerts in this window</p>'
    rows = "".join(
        f'<tr class="alert {escape(str(a.get("kind")))}"><td>'
        f'{time.strftime("%m-%d %H:%M", time.gmtime(float(a["t"])))}</td><td>{escape(str(a.get("kind")))}</td>'
        f"<td>{escape(str(a.get('message', '')))}</td></tr>"
        for a in alerts[:20]
    )
    return f'<table class="small" id="forensics-alerts"><tr><th>when</th><th>kind</th><th>what</th></tr>{rows}</table>'


def forensics_panels(data: dict[str, Any], t_range: tuple[float, float]) -> list[tuple[str, str, bool]]:
    """(title, markup, wide) panels for the dashboard page."""
    latest = data.get("latest") or {}
    panels = [
        ("Who rates us low (weight on our UID per validator)",
         rating_chart(data.get("ranking", []), latest.get("epoch")) + alerts_table(data.get("alerts", [])), False),
        ("Per epoch: our incentive, trust, consensus",
         line_chart("epoch-scores", "Per epoch",
                    {k: data["series"][k] for k in ("incentive", "trust", "consensus")}, y_min=0, t_range=t_range),
         False),
        ("Per epoch: emission", line_chart("epoch-emission", "Emission", {"emission": data["series"]["emission"]},
                                           y_min=0, t_range=t_range), False),
        ("Per epoch: each validator's weight on us",
         line_chart("epoch-weights", "Weight on us", data.get("weights", {}),
                    labels={hk: _short(hk) for hk in data.get("weights", {})}, y_min=0, t_range=t_range), False),
    ]
    return panels
