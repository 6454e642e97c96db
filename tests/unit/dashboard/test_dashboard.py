"""Dashboard: seeded history -> JSON API and SVG charts over real HTTP on loopback, opened in headless
Chromium; mounting on a host app; bad input answered with clear errors."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from roadminer.core.config import Settings, StateConfig
from roadminer.dashboard.app import build_dashboard_app, mount_dashboard, parse_window, render_page
from roadminer.dashboard.data import DashboardData, QueueSampler
from roadminer.state.history import ChainSnapshot
from roadminer.state.layer import StateLayer
from roadminer.state.model_events import record_model_event
from roadminer.state.sessions import RequestRecord
from testkit.cdp import BROWSER_FLAGS, chromium_exe

NOW = time.time()
VALIDATORS = (
    "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY",
    "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty",
)
# Seeded points: (minutes ago, value) per validator and metric.
SEED = {
    VALIDATORS[0]: {
        "reward": [(300, 0.2), (200, 0.45), (100, 0.61), (10, 0.72)],
        "mcc": [(300, 0.5), (200, 0.7), (100, 0.8), (10, 0.85)],
    },
    VALIDATORS[1]: {
        "reward": [(250, 0.3), (150, 0.35), (50, 0.52)],
        "mcc": [(250, 0.6), (150, 0.66), (50, 0.74)],
    },
}
CHAIN = [(240, 0.010, 0.80), (120, 0.014, 0.85), (30, 0.019, 0.90)]  # (minutes ago, incentive, trust)


async def seed(state: StateLayer) -> None:
    for hk, series in SEED.items():
        for name, pts in series.items():
            for m, v in pts:
                await state.history.add(name, v, NOW - 60 * m, validator=hk)
    for m, inc, trust in CHAIN:
        await state.rewards.record_chain(
            ChainSnapshot(incentive=inc, trust=trust, emission=inc * 40, t=NOW - 60 * m)
        )
    for i in range(40):
        tier = "fast" if i % 4 else "vlm"
        rec = RequestRecord(f"{i:064x}", 0.9, tier, 5.0 + i, ts=NOW - 60 * (200 - 5 * i))
        await state.sessions.record(VALIDATORS[i % 2], rec)
    for m, depth in [(180, 3), (90, 7), (20, 12)]:
        await state.history.add("queue.depth", depth, NOW - 60 * m)
    await record_model_event(state.store, "fast-v1", "loaded", t=NOW - 60 * 320)
    await record_model_event(state.store, "fast-v2", "promoted", t=NOW - 60 * 120, mcc=0.81)
    await record_model_event(state.store, "fast-v3", "rejected", t=NOW - 60 * 60)


def _state(backend: str, redis_url: str | None) -> StateLayer:
    cfg = StateConfig(backend=backend, redis_url=redis_url or "redis://127.0.0.1:1/0")  # type: ignore[arg-type]
    return StateLayer.from_config(cfg)


@pytest.fixture(params=["memory", "redis"])
async def seeded_state(request: pytest.FixtureRequest) -> AsyncIterator[StateLayer]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    state = _state(request.param, url)
    await seed(state)
    yield state
    await state.close()


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


class ChartPoints(HTMLParser):
    """Collects chart points (<circle class="pt">), event markers and timeline marks by chart."""

    def __init__(self) -> None:
        super().__init__()
        self.chart: str | None = None
        self.points: dict[str, list[tuple[str, float, float]]] = {}
        self.marks: dict[str, list[dict[str, str]]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and "data-chart" in a:
            self.chart = a["data-chart"]
            self.points.setdefault(self.chart, [])
            self.marks.setdefault(self.chart, [])
        elif tag == "circle" and "pt" in a.get("class", "").split() and self.chart:
            self.points[self.chart].append((a["data-series"], float(a["data-t"]), float(a["data-v"])))
        elif self.chart and ("data-event" in a or a.get("class") == "event"):
            self.marks[self.chart].append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.chart = None


def parse(html: str) -> ChartPoints:
    p = ChartPoints()
    p.feed(html)
    return p


def assert_seeded_points(html: str) -> None:
    charts = parse(html)
    for metric in ("reward", "mcc"):
        pts = charts.points[metric]
        for hk, series in SEED.items():
            got = sorted((round(t), round(v, 6)) for s, t, v in pts if s == hk)
            want = sorted((round(NOW - 60 * m), v) for m, v in series[metric])
            assert got == want, (metric, hk)
        assert any(s == "overall" for s, _, _ in pts)
        # The promotion shows as a marker on the reward charts.
        assert [m["data-label"] for m in charts.marks[metric]] == ["fast-v2"]
    chain = charts.points["chain"]
    assert sorted(round(v, 6) for s, _, v in chain if s == "incentive") == [c[1] for c in CHAIN]
    assert sorted(round(v, 6) for s, _, v in chain if s == "trust") == [c[2] for c in CHAIN]
    assert sorted(v for _, _, v in charts.points["queue"]) == [3, 7, 12]
    tiers = {s for s, _, _ in charts.points["tiers"]}
    assert tiers == {"fast", "vlm"}
    assert {s for s, _, _ in charts.points["latency"]} == {"p50", "p90", "p99"}
    marks = {(m["data-event"], m["data-version"]) for m in charts.marks["models"]}
    assert marks == {("loaded", "fast-v1"), ("promoted", "fast-v2"), ("rejected", "fast-v3")}


async def test_snapshot_shape_and_values(seeded_state: StateLayer) -> None:
    snap = await DashboardData(seeded_state).snapshot(86400, now=NOW + 1)
    rw = snap["reward"]
    assert set(rw["validators"]) == set(VALIDATORS)
    got = [v for _, v in rw["validators"][VALIDATORS[0]]["reward"]]
    assert got == [v for _, v in SEED[VALIDATORS[0]]["reward"]]
    assert rw["latest"]["reward"] == pytest.approx((0.72 + 0.52) / 2)
    assert snap["chain"]["latest"]["incentive"] == pytest.approx(0.019)
    req = snap["requests"]
    assert req["n"] == 40 and req["tier_totals"] == {"fast": 30, "vlm": 10}
    assert req["latency_summary_ms"]["p50"] == pytest.approx(24.5)
    assert snap["models"]["current"]["version"] == "fast-v2"
    assert [e["event"] for e in snap["models"]["events"]] == ["loaded", "promoted", "rejected"]
    # A short window keeps the version current at its start.
    short = await DashboardData(seeded_state).snapshot(5400, now=NOW + 1)
    assert [e["version"] for e in short["models"]["events"]] == ["fast-v2", "fast-v3"]
    assert_seeded_points(render_page(snap, "24h", 0))


async def test_http_api_and_page(seeded_state: StateLayer) -> None:
    settings = Settings()
    app = build_dashboard_app(seeded_state, settings, standalone=True, sample_queue_s=None)
    runner, base = await serve(app)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/") as r:
                assert r.status == 200 and r.content_type == "text/html"
                assert_seeded_points(await r.text())
            async with s.get(f"{base}/api/snapshot?window=24h") as r:
                snap = await r.json()
                assert set(snap["reward"]["validators"]) == set(VALIDATORS)
            async with s.get(f"{base}/api/series", params={"name": "mcc", "validator": VALIDATORS[1]}) as r:
                pts = (await r.json())["points"]
                assert [v for _, v in pts] == [0.6, 0.66, 0.74]
            for bad in (
                "/api/snapshot?window=forever",
                "/api/snapshot?window=5s",
                "/api/series?name=a%20b",
                "/api/series?name=mcc&validator=x;y",
            ):
                async with s.get(base + bad) as r:
                    assert r.status == 400, bad
                    assert "error" in await r.json()
            async with s.get(f"{base}/api/health") as r:
                assert (await r.json())["ok"] is True
            async with s.get(f"{base}/api/queue") as r:
                assert "entries" in await r.json()
            async with s.get(f"{base}/static/style.css") as r:
                assert r.status == 200 and "svg.chart" in await r.text()
            async with s.get(f"{base}/metrics") as r:
                assert "roadminer_requests_total" in await r.text()
    finally:
        await runner.cleanup()


async def test_mount_on_host_app_and_queue_sampler() -> None:
    state = _state("memory", None)
    await seed(state)
    host = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    host.router.add_get("/health", health)
    mount_dashboard(host, state, sample_queue_s=None)
    runner, base = await serve(host)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/dashboard", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/dashboard/"
            async with s.get(f"{base}/dashboard/") as r:
                html = await r.text()
                assert 'href="static/style.css"' in html
                assert_seeded_points(html)
            async with s.get(f"{base}/dashboard/static/style.css") as r:
                assert r.status == 200
            async with s.get(f"{base}/health") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
    await state.queue.enqueue(b"\xff\xd8jpeg", ["low_margin"], 0.5, "fast", {}, None, VALIDATORS[0], None)
    depth = await QueueSampler(state, 60).sample_once()
    assert depth == 1
    assert (await state.history.series("queue.depth"))[-1].value == 1.0
    await state.close()


def test_parse_window() -> None:
    assert parse_window("6h", 1) == 6 * 3600
    assert parse_window("90m", 1) == 5400
    assert parse_window(None, 42) == 42
    for bad in ("1y", "-3h", "10", "1000d"):
        with pytest.raises(ValueError):
            parse_window(bad, 1)


async def test_chromium_renders_seeded_charts(tmp_path: Path, redis_url: str) -> None:
    exe = chromium_exe()
    if exe is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    state = _state("redis", redis_url)
    await seed(state)
    app = build_dashboard_app(state, Settings(), standalone=True, sample_queue_s=None)
    runner, base = await serve(app)
    try:
        import asyncio

        def browse(*args: str) -> subprocess.CompletedProcess[str]:
            profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
            return subprocess.run(
                [exe, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
                capture_output=True,
                text=True,
                timeout=90,
            )

        dom = await asyncio.to_thread(browse, "--dump-dom", f"{base}/?window=24h")
        assert dom.returncode == 0, dom.stderr[-2000:]
        # What Chromium built from the page: the SVG charts hold the seeded points.
        assert "<svg" in dom.stdout
        assert_seeded_points(dom.stdout)
        shot = tmp_path / "dashboard.png"
        res = await asyncio.to_thread(browse, "--window-size=1280,1800", f"--screenshot={shot}", f"{base}/")
        assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await runner.cleanup()
        await state.close()


def test_docs_screenshot_is_present() -> None:
    png = Path(__file__).resolve().parents[3] / "docs" / "dashboard.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    with Image.open(png) as img:  # a full-page capture, not a placeholder
        assert img.size[0] >= 800 and img.size[1] >= 600


async def test_replay_fills_history_from_drawn_scenes() -> None:
    from roadminer.dashboard.replay import replay_history

    state = _state("memory", None)
    report = await replay_history(state, Settings(), None, n=12, validators=2, span_s=3600, progress=False)
    assert report.challenges == 12 and report.validators == 2
    snap = await DashboardData(state).snapshot(7200)
    assert snap["requests"]["n"] == 12
    assert sum(len(m["reward"]) for m in snap["reward"]["validators"].values()) == 12
    assert snap["models"]["current"]["event"] == "loaded"
    assert snap["chain"]["latest"]["incentive"] is not None
    await state.close()
