"""The labelling page in a real headless Chromium over a real Redis: keys pressed and buttons clicked
land as human labels with provenance; and who may reach the page (loopback, token, proxies, origin)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from roadminer.core.config import Settings, StateConfig
from roadminer.dashboard.app import build_dashboard_app
from roadminer.imaging.decode import encode_jpeg
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.labels import LabelStore
from roadminer.state.layer import StateLayer
from testkit.cdp import HeadlessChromium, chromium_exe
from testkit.data import SHARED_DATA


def candidate_images(n: int) -> list[tuple[bytes, int]]:
    """Validator-style 224x224 JPEGs (level-3 augmentation) with their true labels: real photos from the
    shared data when present (read in place), else drawn scenes."""
    from roadminer.imaging.views import validator_view

    rng = np.random.default_rng(0)
    if (SHARED_DATA / "manifest.csv").is_file():
        from roadminer.training.data import load_dataset

        samples = load_dataset(SHARED_DATA)
        pick = [samples[i] for i in rng.choice(len(samples), n, replace=False)]
        return [(encode_jpeg(validator_view(s.read_pil(), 3, rng)), s.label) for s in pick]
    from roadminer.imaging.scenes import draw_scene

    return [(encode_jpeg(validator_view(draw_scene(rng, bool(i % 2), 320), 3, rng)), i % 2) for i in range(n)]


async def fill_queue(state: StateLayer, want: int, pool: int = 48) -> tuple[list[str], dict[str, int]]:
    """Queue what the miner would queue: the shipped cascade answers (every tier run) and the state
    layer's policy decides; the first ``want`` hard examples of the pool are queued."""
    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.imaging.decode import ImagePolicy, decode_rgb
    from roadminer.models.base import ImageBatch

    images = candidate_images(pool)
    router = EarlyExitRouter.from_config(Settings().cascade)
    payloads = [b for b, _ in images]
    keys = [hashlib.sha256(b).hexdigest() for b in payloads]
    res = router.predict(ImageBatch([decode_rgb(b, ImagePolicy()) for b in payloads], payloads, keys),
                         early_exit=False)
    router.close()
    queued: list[str] = []
    truth: dict[str, int] = {}
    for i, (b, label) in enumerate(images):
        tp = {k: float(v[i]) for k, v in res.tier_probs.items()}
        p = float(res.prob[i])
        reasons = state.policy.reasons(p, res.exit_tier[i], tp)
        if reasons and len(queued) < want:
            assert await state.queue.enqueue(b, reasons, p, res.exit_tier[i], tp, validator=f"5Val{i % 3}idatorHotkey")
            queued.append(keys[i])
            truth[keys[i]] = label
    assert len(queued) == want, f"only {len(queued)} hard examples in a pool of {pool}"
    return queued, truth


async def serve(app: web.Application, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


async def test_keyboard_and_clicks_label_in_chromium(redis_url: str, tmp_path: Path) -> None:
    exe = chromium_exe()
    if exe is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    # A miner configured to queue generously (answers within 0.35 of 0.5), as a new node would.
    state = StateLayer.from_config(StateConfig(backend="redis", redis_url=redis_url, queue_low_margin=0.35))
    ids, truth = await fill_queue(state, 8)
    newest = list(reversed(ids))  # the page shows the newest first
    key = {1: "r", 0: "n"}
    value = {1: "roadwork", 0: "no_roadwork"}
    wrong = 1 - truth[newest[4]]  # the teacher got this one wrong
    await state.queue.labels.set(newest[4], wrong, "teacher", "cascade[shipped]", prob=0.9 if wrong else 0.1)
    runner, base = await serve(build_dashboard_app(state, Settings(), sample_queue_s=None))
    check = LabelStore(RedisStore(redis_url))  # what lands in Redis, read over a separate connection

    async def label_of(h: str) -> tuple[str, str, str] | None:
        lab = await check.get(h)
        return None if lab is None else (lab.value, lab.provenance, lab.who)

    async def settled(n: int) -> None:
        await browser.wait_for(f"window.__labelling.actions >= {n} && !window.__labelling.error")

    try:
        async with HeadlessChromium(exe, tmp_path) as browser:
            await browser.navigate(f"{base}/label/")
            await browser.wait_for("window.__labelling && window.__labelling.ready")
            assert await browser.evaluate("document.querySelectorAll('.item').length") == 8
            shown = await browser.evaluate("[...document.querySelectorAll('.item')].map(e => e.dataset.id)")
            assert shown == newest
            await browser.wait_for("[...document.images].every(i => i.complete && i.naturalWidth === 224)")
            await browser.evaluate("document.getElementById('who').value = 'ana'")

            for i in range(2):  # label by the true class; focus moves on by itself
                await browser.press(key[truth[newest[i]]])
                await settled(i + 1)
                assert await label_of(newest[i]) == (value[truth[newest[i]]], "human", "ana")
            await browser.press("s")
            await settled(3)
            assert await label_of(newest[2]) == ("skip", "human", "ana")
            await browser.press("u")  # undo the skip: unlabelled again, focus back on it
            await settled(4)
            assert await label_of(newest[2]) is None
            assert await browser.evaluate("window.__labelling.focus") == 2
            await browser.press(key[truth[newest[2]]])
            await settled(5)
            await browser.press("ArrowRight")  # past image 3, to the teacher-labelled one
            assert await browser.evaluate("document.querySelector('.item.focus').dataset.provenance") == "teacher"
            assert await label_of(newest[4]) == (value[wrong], "teacher", "cascade[shipped]")
            await browser.press(key[truth[newest[4]]])  # the human overrides the teacher
            await settled(6)
            assert await label_of(newest[4]) == (value[truth[newest[4]]], "human", "ana")
            button = 1 if truth[newest[6]] else 2  # the card's "R roadwork" / "N no roadwork" button
            await browser.click(f".item[data-id='{newest[6]}'] .btns button:nth-child({button})")
            await settled(7)
            assert await label_of(newest[6]) == (value[truth[newest[6]]], "human", "ana")
            sel = f".item[data-id='{newest[6]}'] .badge"
            badge = await browser.evaluate(f"document.querySelector({json.dumps(sel)}).textContent")
            assert badge == value[truth[newest[6]]].replace("_", " ") + " · human"
            assert await browser.evaluate("window.__labelling.focus") == 7  # moved on after the click
            await browser.press("ArrowLeft")
            await browser.press(key[truth[newest[6]]])  # the same label again: still one label
            await settled(8)
            assert (await browser.evaluate("document.getElementById('status').textContent")).startswith("already")
            counts = await browser.evaluate("document.getElementById('counts').textContent")
            assert counts.startswith("3 need a human · 5 labelled · 8 queued"), counts  # kept up to date
            await browser.evaluate("window.scrollTo(0, 0)")
            png = await browser.screenshot()
            # A reload reads back what is stored.
            await browser.navigate(f"{base}/label/")
            await browser.wait_for("window.__labelling && window.__labelling.ready")
            counts = await browser.evaluate("document.getElementById('counts').textContent")
            assert counts.startswith("3 need a human · 5 labelled · 8 queued"), counts
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
        (tmp_path / "labelling.png").write_bytes(png)
        if os.environ.get("ROADMINER_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "labelling.png", Path(os.environ["ROADMINER_SCREENSHOT_DIR"]) / "labelling.png")
        assert len(await check.events(newest[6])) == 1
        assert [await label_of(newest[i]) for i in (3, 5, 7)] == [None, None, None]
    finally:
        await check.store.close()
        await runner.cleanup()
        await state.close()


def _lan_address() -> str | None:
    """A non-loopback address of this machine (to be a client that is not loopback), if any."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent for UDP connect
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") or addr == "0.0.0.0" else addr


async def test_access_rules(redis_url: str) -> None:
    state = StateLayer.from_config(StateConfig(backend="redis", redis_url=redis_url))
    from roadminer.imaging.scenes import draw_scene

    img = encode_jpeg(np.asarray(draw_scene(np.random.default_rng(1), True, 224)))
    await state.queue.enqueue(img, ["low_margin"], 0.5, "classifier", {"classifier": 0.5})
    h = hashlib.sha256(img).hexdigest()
    body = {"id": h, "label": "roadwork", "who": "ana"}
    try:
        # Loopback without a token: served; through a proxy: refused; bad requests: clear 400s.
        runner, base = await serve(build_dashboard_app(state, Settings(), sample_queue_s=None))
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/label/") as r:
                    assert r.status == 200 and "labelling.js" in await r.text()
                async with s.get(f"{base}/api/label/image/{h}") as r:
                    assert r.status == 200 and r.content_type == "image/jpeg" and await r.read() == img
                async with s.get(f"{base}/api/label/items", headers={"X-Forwarded-For": "203.0.113.9"}) as r:
                    assert r.status == 403 and "proxy" in (await r.json())["error"]
                async with s.post(f"{base}/api/label", data="id=x&label=roadwork",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                    assert r.status == 400 and "JSON" in (await r.json())["error"]
                async with s.post(f"{base}/api/label", json=body, headers={"Origin": "http://evil.example"}) as r:
                    assert r.status == 400 and "cross-origin" in (await r.json())["error"]
                async with s.post(f"{base}/api/label", json={**body, "label": "maybe"}) as r:
                    assert r.status == 400 and "roadwork, no_roadwork, skip" in (await r.json())["error"]
                async with s.post(f"{base}/api/label", json={**body, "id": "0" * 64}) as r:
                    assert r.status == 400 and "no queued item" in (await r.json())["error"]
                async with s.post(f"{base}/api/label", json=[1, 2]) as r:
                    assert r.status == 400
                async with s.get(f"{base}/api/label/image/..%2f..%2fetc") as r:
                    assert r.status in (400, 404)
                async with s.get(f"{base}/api/label/items?status=bogus") as r:
                    assert r.status == 400
                async with s.post(f"{base}/api/label", json=body, headers={"Origin": base}) as r:
                    assert r.status == 200 and (await r.json())["item"]["provenance"] == "human"
                async with s.post(f"{base}/api/label/undo", json={"id": h}) as r:
                    assert r.status == 200 and (await r.json())["changed"] and not (await r.json())["item"]["labelled"]
        finally:
            await runner.cleanup()

        # With a token: nothing without it, loopback included; ?token= sets a cookie.
        settings = Settings(dashboard={"label_token": "s3cret-token"})
        runner, base = await serve(build_dashboard_app(state, settings, sample_queue_s=None))
        try:
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:  # IP hosts too
                for path in ("/label/", "/api/label/items", f"/api/label/image/{h}"):
                    async with s.get(base + path) as r:
                        assert r.status == 401, path
                async with s.post(f"{base}/api/label", json=body) as r:
                    assert r.status == 401
                async with s.get(f"{base}/api/label/items", headers={"X-Roadminer-Token": "wrong"}) as r:
                    assert r.status == 401
                async with s.get(f"{base}/api/label/items", headers={"X-Roadminer-Token": "s3cret-token"}) as r:
                    assert r.status == 200 and len((await r.json())["items"]) == 1
                async with s.get(f"{base}/label/?token=s3cret-token", allow_redirects=False) as r:
                    assert r.status == 302 and r.headers["Location"].endswith("/label/")
                    assert "HttpOnly" in r.headers["Set-Cookie"] and "SameSite=Strict" in r.headers["Set-Cookie"]
                async with s.get(f"{base}/label/") as r:  # the cookie now
                    assert r.status == 200
                async with s.post(f"{base}/api/label", json=body) as r:
                    assert r.status == 200
        finally:
            await runner.cleanup()

        # A client that is not loopback, no token: refused.
        lan = _lan_address()
        if lan is not None:
            runner, base = await serve(build_dashboard_app(state, Settings(), sample_queue_s=None), host=lan)
            try:
                async with aiohttp.ClientSession() as s, s.get(f"{base}/api/label/items") as r:
                    assert r.status == 403 and "loopback" in (await r.json())["error"]
                async with aiohttp.ClientSession() as s, s.get(f"{base}/api/snapshot") as r:
                    assert r.status == 200  # the read-only dashboard itself is unchanged
            finally:
                await runner.cleanup()
    finally:
        await state.close()
    await asyncio.sleep(0)
