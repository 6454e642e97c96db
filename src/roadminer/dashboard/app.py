"""The reward/MCC dashboard: one HTML page of server-rendered SVG charts plus a JSON API.

Standalone (``roadminer dashboard``) it is its own aiohttp app at ``/``; on the miner it is mounted as a
sub-application at ``/dashboard/`` with :func:`mount_dashboard`, sharing the miner's state layer.

Routes (relative to the mount point): ``/`` page, ``/api/snapshot?window=6h`` everything as JSON,
``/api/series?name=reward&validator=HOTKEY&window=24h`` one series, ``/api/queue`` queue statistics,
``/api/health``, ``/static/...``, the labelling page ``/label/`` and its API (``roadminer.dashboard.labelling``);
standalone also ``/metrics`` (Prometheus).
"""

from __future__ import annotations

import json
import re
import time
from html import escape
from pathlib import Path
from typing import Any

from aiohttp import web
from loguru import logger

from roadminer.core.cli_args import parse_duration
from roadminer.dashboard.charts import line_chart, timeline_chart
from roadminer.dashboard.data import DashboardData, QueueSampler
from roadminer.state.layer import StateLayer

STATIC_DIR = Path(__file__).resolve().parent / "static"
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400}
MAX_WINDOW_S = 90 * 86400.0

STATE_KEY: web.AppKey[StateLayer] = web.AppKey("dashboard_state", StateLayer)
DATA_KEY: web.AppKey[DashboardData] = web.AppKey("dashboard_data", DashboardData)
CFG_KEY: web.AppKey[dict[str, Any]] = web.AppKey("dashboard_cfg", dict)


class BadRequest(ValueError):
    pass


def parse_window(value: str | None, default: float) -> float:
    """``"6h"``, ``"30m"``, ``"7d"``, ``"3600"`` -> seconds (bounded)."""
    if value is None or value == "":
        return default
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise BadRequest(f"window must look like 30m, 6h, 7d or seconds, got {value[:40]!r}") from None
    if not 60 <= seconds <= MAX_WINDOW_S:
        raise BadRequest(f"window must be between 1 minute and {MAX_WINDOW_S / 86400:g} days")
    return seconds


def short_hotkey(hk: str) -> str:
    return hk if len(hk) <= 12 else f"{hk[:5]}…{hk[-4:]}"


def _fmt(v: float | None, digits: int = 3, unit: str = "") -> str:
    return "–" if v is None else f"{v:.{digits}f}{unit}"


def render_page(snap: dict[str, Any], window_label: str, refresh_s: float) -> str:
    """The whole page from a snapshot (pure function: tested without a server)."""
    w = snap["window"]
    t_range = (w["since"], w["until"])
    events = snap["models"]["events"]
    markers = [{"t": e["t"], "label": e.get("version", "")} for e in events if e.get("event") == "promoted"]
    rw = snap["reward"]
    vals = rw["validators"]
    replayed = set(rw.get("replayed", []))
    mark = " (replayed)"

    def per_validator(metric: str) -> tuple[dict[str, Any], dict[str, str]]:
        series: dict[str, Any] = {"overall": rw["overall"][metric]}
        labels = {"overall": "all validators" + (mark if replayed else "")}
        for hk, m in vals.items():
            series[hk] = m.get(metric, [])
            labels[hk] = short_hotkey(hk) + (mark if hk in replayed else "")
        return series, labels

    charts: list[tuple[str, str, bool]] = []
    for metric, title in (
        ("reward", "Reward (0.5·MCC + 0.5·accuracy)³"),
        ("mcc", "MCC, last 100"),
        ("accuracy", "Accuracy, last 10"),
    ):
        s, labels = per_validator(metric)
        charts.append(
            (
                title,
                line_chart(
                    metric, title, s, labels=labels, y_min=0, y_max=1, t_range=t_range, events=markers
                ),
                False,
            )
        )
    ch = snap["chain"]["series"]
    chain_mark = mark if snap["chain"].get("replayed") else ""
    charts.append(
        (
            "On-chain incentive, trust, consensus" + chain_mark,
            line_chart(
                "chain",
                "On-chain",
                {k: ch[k] for k in ("incentive", "trust", "consensus")},
                y_min=0,
                t_range=t_range,
            ),
            False,
        )
    )
    charts.append(
        (
            "On-chain emission",
            line_chart("emission", "Emission", {"emission": ch["emission"]}, y_min=0, t_range=t_range),
            False,
        )
    )
    req = snap["requests"]
    charts.append(
        (
            "Tier exit rates",
            line_chart("tiers", "Tier exit share", req["tier_exit_share"], y_min=0, y_max=1, t_range=t_range),
            False,
        )
    )
    charts.append(
        (
            "Latency percentiles (ms)",
            line_chart("latency", "Latency", req["latency_ms"], y_min=0, unit="", t_range=t_range),
            False,
        )
    )
    charts.append(
        (
            "Hard-example queue depth" + (mark if snap["queue"].get("replayed") else ""),
            line_chart("queue", "Queue depth", {"depth": snap["queue"]["series"]}, y_min=0, t_range=t_range),
            False,
        )
    )
    charts.append(
        ("Model versions and promotions", timeline_chart("models", "Model versions", events, t_range), False)
    )
    if "forensics" in snap:
        from roadminer.dashboard.forensics_panel import forensics_panels

        charts += forensics_panels(snap["forensics"], t_range)

    latest = rw["latest"]
    cl = snap["chain"]["latest"]
    current = snap["models"]["current"]
    lat = req["latency_summary_ms"]
    cards = [
        ("reward", _fmt(latest["reward"])),
        ("MCC", _fmt(latest["mcc"])),
        ("accuracy", _fmt(latest["accuracy"])),
        ("incentive", _fmt(cl["incentive"], 4)),
        ("trust", _fmt(cl["trust"], 4)),
        ("emission", _fmt(cl["emission"], 4)),
        ("validators", str(len(vals))),
        ("requests", str(req["n"])),
        ("p99 latency", _fmt(lat.get("p99"), 1, " ms")),
        ("queue depth", "–" if snap["queue"]["depth"] is None else str(snap["queue"]["depth"])),
        ("model", escape(str(current.get("version"))) if current else "–"),
    ]
    miner = snap.get("miner")
    if miner is not None:
        cards.append(("miner", "up" if miner.get("up") else "down"))
    nav = " ".join(
        f'<a href="?window={k}" class="{"on" if k == window_label else ""}">{k}</a>' for k in WINDOWS
    )
    card_html = "".join(
        f'<div class="card{" text" if len(v) > 12 else ""}" data-card="{escape(k)}"><div class="k">{escape(k)}</div>'
        f'<div class="v">{v}</div></div>'
        for k, v in cards
    )
    panels = "".join(
        f'<section class="panel{" wide" if wide else ""}"><h2>{escape(title)}</h2>{svg}</section>'
        for title, svg, wide in charts
    )
    totals = req["tier_totals"]
    tier_rows = "".join(
        f"<tr><td>{escape(t)}</td><td>{n}</td><td>{n / max(req['n'], 1):.1%}</td></tr>"
        for t, n in sorted(totals.items())
    )
    prov = snap.get("provenance") or {}
    banner = ""
    if prov.get("replayed_in_window"):
        banner = (
            '<div class="banner replayed" data-replayed="1">Replayed data in this window: challenges answered '
            "by <code>roadminer dashboard --replay</code> at invented times, not validator traffic "
            f"({len(prov.get('replay_runs', []))} replay run(s) in this store; series marked “replayed”).</div>"
        )
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snap["generated_at"]))
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s > 0 else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>roadminer dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}
<link rel="stylesheet" href="static/style.css"></head>
<body><header><h1>roadminer</h1><nav>{nav}</nav>
<span class="meta">backend {escape(str(snap["backend"].get("backend")))} · {generated}</span></header>
<main>{banner}<div class="cards">{card_html}</div><div class="grid">{panels}
<section class="panel"><h2>Tier exits in window</h2><table class="small" id="tier-totals">
<tr><th>tier</th><th>answers</th><th>share</th></tr>{tier_rows}</table></section></div></main>
<footer><a href="label/">label the hard-example queue</a> ·
JSON: <a href="api/snapshot?window={window_label}">api/snapshot</a> ·
<a href="api/queue">api/queue</a></footer></body></html>"""


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadRequest as e:
        return _json_error(400, str(e))
    except web.HTTPException:
        raise
    except Exception as e:  # the dashboard never takes its host process down
        logger.opt(exception=e).warning("dashboard {} failed", request.path)
        return _json_error(500, f"{type(e).__name__}: dashboard could not read state")


def _window(request: web.Request) -> tuple[float, str]:
    cfg = request.app[CFG_KEY]
    raw = request.query.get("window")
    seconds = parse_window(raw, cfg["window_s"])
    label = (
        raw if raw in WINDOWS else next((k for k, v in WINDOWS.items() if v == seconds), f"{int(seconds)}s")
    )
    return seconds, label


async def _page(request: web.Request) -> web.Response:
    seconds, label = _window(request)
    snap = await request.app[DATA_KEY].snapshot(seconds)
    html = render_page(snap, label, request.app[CFG_KEY]["refresh_s"])
    return web.Response(text=html, content_type="text/html")


async def _snapshot(request: web.Request) -> web.Response:
    seconds, _ = _window(request)
    snap = await request.app[DATA_KEY].snapshot(seconds)
    return web.json_response(snap, dumps=lambda o: json.dumps(o, default=str))


async def _series(request: web.Request) -> web.Response:
    name = request.query.get("name", "")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
        raise BadRequest("name must be 1-64 characters of [A-Za-z0-9_.:-]")
    validator = request.query.get("validator") or None
    if validator is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", validator):
        raise BadRequest("validator must be a hotkey")
    seconds, _ = _window(request)
    now = time.time()
    pts = await request.app[STATE_KEY].history.series(name, now - seconds, now, validator=validator)
    return web.json_response({"name": name, "validator": validator, "points": [[p.t, p.value] for p in pts]})


async def _queue(request: web.Request) -> web.Response:
    return web.json_response(
        await request.app[STATE_KEY].queue.stats(), dumps=lambda o: json.dumps(o, default=str)
    )


async def _health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    ok = await state.store.ping()
    return web.json_response({"ok": bool(ok), "backend": state.store.describe()}, status=200 if ok else 503)


async def _metrics(_: web.Request) -> web.Response:
    from roadminer.core.metrics import render

    return web.Response(body=render(), content_type="text/plain", charset="utf-8")


def build_dashboard_app(
    state: StateLayer | None = None,
    settings: Any = None,
    *,
    own_state: bool | None = None,
    sample_queue_s: float | None = 60.0,
    standalone: bool = False,
) -> web.Application:
    """The dashboard as an aiohttp app. ``state`` is shared with the host (the miner); without it one
    is built from ``settings.state`` at start-up and closed at clean-up. ``sample_queue_s`` writes the
    queue depth into history (None: the host samples it)."""
    if state is None and settings is None:
        raise ValueError("build_dashboard_app needs a state layer or settings")
    dcfg = getattr(settings, "dashboard", None)
    app = web.Application(middlewares=[_errors])
    app[CFG_KEY] = {
        "window_s": float(getattr(dcfg, "window_s", 86400.0)),
        "refresh_s": float(getattr(dcfg, "refresh_s", 30.0)),
    }
    miner_url = getattr(dcfg, "miner_url", None) if standalone else None
    owns = state is None if own_state is None else own_state
    sampler: list[QueueSampler] = []

    async def on_startup(a: web.Application) -> None:
        st = state if state is not None else StateLayer.from_config(settings.state)
        a[STATE_KEY] = st
        a[DATA_KEY] = DashboardData(st, miner_url=miner_url)
        if sample_queue_s:
            s = QueueSampler(st, sample_queue_s)
            s.start()
            sampler.append(s)

    async def on_cleanup(a: web.Application) -> None:
        for s in sampler:
            await s.stop()
        if owns and STATE_KEY in a:
            await a[STATE_KEY].close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/", _page)
    app.router.add_get("/api/snapshot", _snapshot)
    app.router.add_get("/api/series", _series)
    app.router.add_get("/api/queue", _queue)
    app.router.add_get("/api/health", _health)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    from roadminer.dashboard.labelling import add_labelling

    add_labelling(app, settings)  # label/ and api/label/...: loopback only unless dashboard.label_token
    if standalone:
        app.router.add_get("/metrics", _metrics)
    return app


def mount_dashboard(
    app: web.Application,
    state: StateLayer | None = None,
    settings: Any = None,
    prefix: str = "/dashboard",
    sample_queue_s: float | None = 60.0,
) -> web.Application:
    """Add the dashboard to a host app (the miner) under ``prefix``; returns the sub-application.
    Call before the host app starts."""
    prefix = "/" + prefix.strip("/")
    sub = build_dashboard_app(state, settings, sample_queue_s=sample_queue_s)

    async def _to_slash(_: web.Request) -> web.Response:
        raise web.HTTPFound(prefix + "/")

    app.router.add_get(prefix, _to_slash)  # before the sub-app, which would claim the bare prefix
    app.add_subapp(prefix + "/", sub)
    return sub
