"""The miner with its state layer, over real HTTP on loopback: sessions and the hard-example queue fill
after each answer, the result cache answers repeats (per model version), tier probabilities reach the
queue, the dashboard is served at /dashboard/, chain metrics land in history and the gauges, model events
reach the timeline (start, hot reload, promotion), and an over-committed GPU stops `roadminer miner`."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import yaml
from typer.testing import CliRunner

from roadminer.cascade.router import CascadeResult
from roadminer.chain.local import LocalChainView
from roadminer.miner.run import RunningMiner
from roadminer.models.base import ImageBatch
from roadminer.state.queue import Reason
from testkit.miner import (
    ALICE,
    BOB,
    btauth_call,
    jpeg_b64,
    run_miner,
    settings_for,
    sn72_call,
)


class TwoTierPredictor:
    """A cascade whose tiers disagree: "fast" says roadwork, "judge" says not; "late" never runs (NaN);
    "broken" fails on every batch."""

    def __init__(self, version: str = "two-tier-1", prob: float = 0.3) -> None:
        self.version = version
        self.prob = prob
        self.calls = 0

    def predict(self, batch: ImageBatch) -> CascadeResult:
        self.calls += 1
        n = len(batch)
        return CascadeResult(
            prob=np.full(n, self.prob),
            exit_tier=["judge"] * n,
            tier_probs={"fast": np.full(n, 0.85), "judge": np.full(n, 0.1), "late": np.full(n, np.nan)},
            errors=["broken: RuntimeError"],
        )

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": "fast"}, {"name": "judge"}]


def chain_with_miner_metrics(path: Path) -> Path:
    return LocalChainView.write(
        path,
        [
            {"uid": 0, "uri": "//Alice", "stake": 30000.0, "validator_permit": True},
            {"uid": 1, "uri": "//Bob", "stake": 5000.0, "validator_permit": True},
            {
                "uid": 4,
                "uri": "//Eve",
                "incentive": 0.25,
                "trust": 0.5,
                "consensus": 0.375,
                "emission": 1.5,
            },
        ],
        weights={0: {4: 0.75}, 1: {4: 0.5}},
    )


async def settle(miner: RunningMiner) -> None:
    """Wait for the state writes scheduled after the replies."""
    assert miner.state is not None
    for _ in range(100):
        pending = list(miner.state._pending) + list(miner.backend._background)
        if not pending:
            return
        await asyncio.gather(*pending, return_exceptions=True)


def metric(text: str, name: str, **labels: str) -> float | None:
    lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{lab}}}" if lab else "")) + r" ([0-9.eE+-]+)"
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


async def test_state_cache_tier_probs_dashboard_and_chain_metrics(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path,
        chain={"local_config": str(chain_with_miner_metrics(tmp_path / "chain-m.yaml"))},
    )
    model = TwoTierPredictor()
    miner = await run_miner(settings, predictor=model)
    state = miner.state
    assert state is not None and miner.backend.nonces.store is state.store  # one store for both
    img1, img2 = jpeg_b64(11), jpeg_b64(12)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(miner.url + "/metrics") as r:
                before = await r.text()
            p1, code, _ = await sn72_call(s, miner, ALICE, img1)
            assert code == 200 and abs(p1 - 0.3) < 1e-6
            status, body, _ = await btauth_call(s, miner, BOB, img2)
            assert status == 200 and body["tier"] == "judge"
            assert model.calls == 2
            # the same image again: answered from the result cache, the model is not called
            p1b, code, _ = await sn72_call(s, miner, ALICE, img1)
            status, body, _ = await btauth_call(s, miner, BOB, img1)
            assert code == 200 and p1b == p1 and status == 200 and body["prediction"] == p1
            assert body["tier"] == "judge" and model.calls == 2
            # a new model version never serves the old model's cached answers
            model2 = TwoTierPredictor("two-tier-2", prob=0.8)
            miner.backend.batcher.swap_predictor(model2)
            p, code, _ = await sn72_call(s, miner, ALICE, img1)
            assert code == 200 and abs(p - 0.8) < 1e-6 and model2.calls == 1
            await settle(miner)

            # sessions, per validator and protocol
            alice = await state.sessions.recent(ALICE.ss58_address)
            bob = await state.sessions.recent(BOB.ss58_address)
            assert len(alice) == 3 and len(bob) == 2
            assert {r.protocol for r in alice} == {"sn72"} and {r.protocol for r in bob} == {"btauth"}
            assert all(r.latency_ms > 0 and len(r.image_hash) == 64 for r in alice + bob)
            # the hard-example queue got the tier disagreement, with the tiers that ran only
            entries = await state.queue.entries()
            fresh = [e for e in entries if e.tier_probs]
            assert fresh and all(Reason.TIER_DISAGREEMENT in e.reasons for e in fresh)
            assert all(set(e.tier_probs) == {"fast", "judge"} for e in fresh)
            assert state.errors == 0

            async with s.get(miner.url + "/metrics") as r:
                text = await r.text()
            for name, labels, at_least in (
                ("roadminer_result_cache_total", {"result": "hit"}, 2),
                ("roadminer_result_cache_total", {"result": "miss"}, 3),
                ("roadminer_tier_exits_total", {"tier": "cache"}, 2),
                ("roadminer_tier_exits_total", {"tier": "judge"}, 3),
                ("roadminer_tier_errors_total", {"tier": "broken"}, 3),
            ):
                got = (metric(text, name, **labels) or 0) - (metric(before, name, **labels) or 0)
                assert got >= at_least, (name, labels, got)

            # chain metrics: history and gauges (recorded at start, then every chain.metrics_interval_s)
            for _ in range(100):
                if miner.chain_metrics and miner.chain_metrics.recorded:
                    break
                await asyncio.sleep(0.02)
            inc = await state.history.latest("chain.incentive")
            assert inc is not None and inc.value == 0.25
            weights = await state.history.series_by_validator("chain.weight", 0)
            assert {v: pts[-1].value for v, pts in weights.items()} == {
                ALICE.ss58_address: 0.75,
                BOB.ss58_address: 0.5,
            }
            assert metric(text, "roadminer_chain_incentive") == 0.25
            assert metric(text, "roadminer_chain_emission") == 1.5

            # the dashboard, on the miner's port, over the same state
            async with s.get(miner.url + "/dashboard", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/dashboard/"
            async with s.get(miner.url + "/dashboard/") as r:
                assert r.status == 200 and "<svg" in await r.text()
            async with s.get(miner.url + "/dashboard/api/snapshot?window=1h") as r:
                snap = await r.json()
            assert snap["requests"]["n"] == 5
            assert snap["requests"]["tier_totals"] == {"judge": 5}
            assert snap["chain"]["latest"]["incentive"] == 0.25
            assert [(e["version"], e["event"]) for e in snap["models"]["events"]] == [("two-tier-1", "loaded")]
            async with s.get(miner.url + "/health") as r:
                health = await r.json()
            assert health["state"]["observed"] == 5 and health["state"]["result_cache"] is True
    finally:
        await miner.stop()


async def test_dashboard_and_cache_can_be_turned_off(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, dashboard={"on_miner": False}, state={"result_cache_ttl_s": 0}, chain={"metrics_interval_s": 0}
    )
    model = TwoTierPredictor()
    miner = await run_miner(settings, predictor=model)
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(2):
                _, code, _ = await sn72_call(s, miner, ALICE, jpeg_b64(5))
                assert code == 200
            assert model.calls == 2  # no cache: the model answers each time
            async with s.get(miner.url + "/dashboard/") as r:
                assert r.status == 404
        await settle(miner)
        assert len(await miner.state.sessions.recent(ALICE.ss58_address)) == 2  # state still recorded
        assert miner.chain_metrics is not None and miner.chain_metrics.recorded == 0
    finally:
        await miner.stop()


WEAK = {"coef": [0.0, 0.0, 0.0, 0.15, 0.0], "intercept": -0.05, "version": "colour-weak"}
STRONG = {"coef": [1.2, 0.2, 0.8, 0.3, 0.8], "intercept": -2.5, "version": "colour-strong"}


async def test_model_timeline_over_redis(tmp_path: Path, redis_url: str) -> None:
    """Start and hot reload events from the miner, a promotion from another process's code path, all on
    the dashboard's timeline; nonces, sessions and cache share the Redis store."""
    from roadminer.lifecycle.promote import note_model_event
    from roadminer.lifecycle.registry import ModelRegistry

    for name, spec in (("weak", WEAK), ("strong", STRONG)):
        (tmp_path / f"{name}.json").write_text(json.dumps(spec))
    settings = settings_for(
        tmp_path,
        cascade={"tiers": [{"name": "colour", "kind": "colour"}]},
        learning={"models_dir": str(tmp_path / "models"), "reload_poll_s": 3600},
        state={"backend": "redis", "redis_url": redis_url, "key_prefix": "rmint:"},
    )
    registry = ModelRegistry(settings.learning.models_dir)
    weak = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "weak.json"})
    strong = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "strong.json"})
    registry.set_current(weak.version)
    miner = await run_miner(settings)  # builds the cascade from the registry (plan check, hot reload)
    try:
        assert miner.watcher is not None and miner.watcher.swaps == 1
        assert miner.backend.nonces.describe().get("backend") == "redis"
        async with aiohttp.ClientSession() as s:
            p_weak, code, _ = await sn72_call(s, miner, ALICE, jpeg_b64(3))
            assert code == 200
            registry.set_current(strong.version)  # what `roadminer promote` does
            assert await miner.watcher.check()
            p_strong, code, _ = await sn72_call(s, miner, ALICE, jpeg_b64(3))
            assert code == 200 and p_strong != p_weak  # the cache is per model version
            # the promotion gate's event, written from sync code as `roadminer promote` does
            assert note_model_event(settings, strong.version, "promoted", tier="colour", mcc=0.9)
            async with s.get(miner.url + "/dashboard/api/snapshot?window=1h") as r:
                snap = await r.json()
        events = [(e["event"], e.get("source")) for e in snap["models"]["events"]]
        assert events == [("loaded", "hot-reload"), ("loaded", "hot-reload"), ("promoted", None)]
        assert snap["models"]["current"]["event"] == "promoted"
        await settle(miner)
        assert len(await miner.state.sessions.recent(ALICE.ss58_address)) == 2
    finally:
        await miner.stop()
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in client.keys("rmint:*")}
    client.close()
    assert any(k.startswith("rmint:nonce:sn72:") for k in keys)
    assert any(k.startswith("rmint:session:") for k in keys)
    assert any(k.startswith("rmint:cache:") for k in keys)


def test_miner_refuses_an_overcommitted_gpu(tmp_path: Path) -> None:
    from roadminer.cli import app

    cfg = tmp_path / "miner.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": "cuda",
                "plan": {"gpus": 1, "gpu_mem_gb": 80},
                "wallet": {"path": str(tmp_path / "wallets")},
                "cascade": {
                    "tiers": [
                        {"name": "colour", "kind": "colour"},
                        {
                            "name": "judge",
                            "kind": "vlm_vllm",
                            "options": {"weights_gb": 70.0, "kv_gb": 12.0, "activation_gb": 2.0},
                        },
                    ]
                },
            }
        )
    )
    res = CliRunner().invoke(app, ["miner", "--config", str(cfg), "--port", "0", "--host", "127.0.0.1"])
    assert res.exit_code == 2, res.output
    assert "GPU memory plan does not fit" in res.output and "roadminer plan" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "wallets").exists()


async def test_promotion_gate_notes_its_verdict_on_the_timeline(tmp_path: Path, redis_url: str) -> None:
    from roadminer.core.config import load_settings
    from roadminer.imaging.scenes import write_scene_folder
    from roadminer.lifecycle.promote import promote
    from roadminer.lifecycle.registry import ModelRegistry
    from roadminer.state.model_events import model_events
    from roadminer.state.store import build_store

    (tmp_path / "weak.json").write_text(json.dumps(WEAK))
    (tmp_path / "strong.json").write_text(json.dumps(STRONG))
    write_scene_folder(tmp_path / "held", 12, seed=7, size=224)
    settings = load_settings(
        None,
        {
            "cascade.tiers": [
                {"name": "colour", "kind": "colour", "options": {"coefs_path": str(tmp_path / "weak.json")}}
            ],
            "learning.models_dir": str(tmp_path / "models"),
            "learning.held_out": str(tmp_path / "held"),
            "learning.eval_levels": [0],
            "state.backend": "redis",
            "state.redis_url": redis_url,
            "state.key_prefix": "rmprom:",
        },
    )
    registry = ModelRegistry(settings.learning.models_dir)
    strong = registry.register("colour", "colour", {"colour_cue.json": tmp_path / "strong.json"})
    res = promote(settings, registry, strong.version)  # sync, inside a running loop (as in a notebook)
    store = build_store(settings.state)
    try:
        events = await model_events(store)
    finally:
        await store.close()
    assert [(e["version"], e["event"], e["tier"]) for e in events] == [
        (strong.version, "promoted" if res.promoted else "rejected", "colour")
    ]
    assert events[0]["reasons"] == res.reasons
