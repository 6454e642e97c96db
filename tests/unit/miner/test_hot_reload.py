"""Hot reload under load: a real miner on loopback keeps answering signed SN72 requests while the
registry promotes a new model and the watcher swaps it in; a broken promotion leaves the old model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from roadminer.lifecycle.registry import ModelRegistry, build_router
from roadminer.miner.reload import ModelWatcher
from testkit.miner import ALICE, jpeg_b64, run_miner, settings_for, sn72_call

WEAK = {"coef": [0.0, 0.0, 0.0, 0.15, 0.0], "intercept": -0.05, "version": "colour-weak"}
STRONG = {"coef": [1.2, 0.2, 0.8, 0.3, 0.8], "intercept": -2.5, "version": "colour-strong"}


async def test_hot_reload_under_load_without_errors(tmp_path: Path) -> None:
    for name, spec in (("weak", WEAK), ("strong", STRONG)):
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    (tmp_path / "broken.json").write_text("{not json")
    settings = settings_for(
        tmp_path,
        guards={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 100_000},
        cascade={"tiers": [{"name": "colour", "kind": "colour"}]},
        learning={"models_dir": str(tmp_path / "models")},
    )
    registry = ModelRegistry(settings.learning.models_dir)
    weak = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "weak.json"})
    strong = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "strong.json"})
    broken = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "broken.json"})
    registry.set_current(weak.version)

    miner = await run_miner(settings, predictor=build_router(settings, registry))
    batcher = miner.backend.batcher
    build = lambda: build_router(settings, registry)  # noqa: E731
    watcher = ModelWatcher(registry, batcher, build, poll_s=0.05, grace_s=0.2)
    watcher.start()
    image = jpeg_b64(3)  # an orange cone: the strong model says roadwork, the weak one hovers at 0.5
    results: list[tuple[int, float | None]] = []  # (status, prediction)
    stop = asyncio.Event()

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            pred, status, _ = await sn72_call(session, miner, ALICE, image)
            results.append((status, pred))

    try:
        async with aiohttp.ClientSession() as session:
            tasks = [asyncio.create_task(client(session)) for _ in range(8)]
            await asyncio.sleep(0.8)
            served_before = len(results)
            registry.set_current(strong.version)  # what `roadminer promote` does
            for _ in range(200):
                if watcher.swaps == 1:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.8)
            registry.set_current(broken.version)  # a promotion whose model cannot load
            for _ in range(200):
                if watcher.failures == 1:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        await watcher.stop()
        await miner.stop()

    print(f"\nhot reload under load: {len(results)} requests, 8 concurrent clients, {watcher.swaps} swap")
    assert watcher.swaps == 1 and watcher.failures == 1
    assert served_before > 10 and len(results) > served_before + 10
    bad = [r for r in results if r[0] != 200 or r[1] is None or not 0.0 <= r[1] <= 1.0]
    assert bad == [], f"{len(bad)} failed requests during hot reload: {bad[:5]}"
    before = {round(p, 4) for _, p in results[:served_before] if p is not None}
    after = {round(p, 4) for _, p in results[-20:] if p is not None}
    assert before and after and before.isdisjoint(after)
    assert all(p > 0.5 for p in after)  # the strong model, still serving after the broken promotion
    assert "colour-strong" in batcher.predictor.version


async def test_miner_starts_on_the_promoted_model(tmp_path: Path) -> None:
    (tmp_path / "strong.json").write_text(json.dumps(STRONG))
    settings = settings_for(
        tmp_path,
        cascade={"tiers": [{"name": "colour", "kind": "colour"}]},
        learning={"models_dir": str(tmp_path / "models"), "reload_poll_s": 0.05},
    )
    registry = ModelRegistry(settings.learning.models_dir)
    registry.set_current(
        registry.register("colour", "colour", {"colour_cue.json": tmp_path / "strong.json"}).version
    )
    miner = await run_miner(settings)
    try:
        assert "colour-strong" in miner.backend.batcher.predictor.version
        async with aiohttp.ClientSession() as session:
            pred, status, _ = await sn72_call(session, miner, ALICE, jpeg_b64(3))
        assert status == 200 and pred is not None and pred > 0.5
    finally:
        await miner.stop()
