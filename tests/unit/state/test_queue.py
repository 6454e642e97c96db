"""Hard-example queue and the miner's observe hook, on the memory store and on Redis."""

from __future__ import annotations

import asyncio
import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from roadminer.imaging.decode import encode_jpeg
from roadminer.miner.batcher import Answer
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.layer import RequestInfo, StateLayer
from roadminer.state.queue import HardExamplePolicy, HardExampleQueue, Reason
from roadminer.state.store import StateStore


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8))


def test_policy_reasons() -> None:
    pol = HardExamplePolicy(low_margin=0.1, disagreement=0.4, low_reward=0.3, low_reward_margin=0.3)
    assert pol.reasons(0.95, "clf") == []
    assert pol.reasons(0.55, "clf") == [Reason.LOW_MARGIN]
    assert Reason.TIER_DISAGREEMENT in pol.reasons(0.8, "clf", {"colour": 0.2, "clf": 0.9})
    assert Reason.TIER_DISAGREEMENT not in pol.reasons(0.8, "clf", {"colour": 0.45, "clf": 0.55})
    assert Reason.VLM_ESCALATION in pol.reasons(0.9, "vlm_hf")
    assert pol.reasons(0.9, "clf", label=0) == [Reason.KNOWN_ERROR]
    assert pol.reasons(0.5, "clf", label=1) == [Reason.LOW_MARGIN, Reason.KNOWN_ERROR]  # 0.5 is "no"
    assert pol.reasons(0.75, "clf", recent_reward=0.1) == [Reason.LOW_REWARD_TREND]
    assert pol.reasons(0.75, "clf", recent_reward=0.8) == []


async def test_enqueue_dedup_caps_and_labels(store: StateStore) -> None:
    q = HardExampleQueue(store, max_entries=100, max_image_bytes=4000)
    img = _jpeg(1)
    h = hashlib.sha256(img).hexdigest()
    assert await q.enqueue(img, [], 0.9, "clf") is None  # no reason, nothing queued
    first = await q.enqueue(img, ["low_margin"], 0.55, "clf", {"clf": 0.55}, validator="v")
    assert first
    assert await q.enqueue(img, ["low_margin"], 0.55, "clf") is None  # same image hash
    assert await q.enqueue(b"\xff\xd8\xff" + b"0" * 5000, ["low_margin"], 0.5, "clf") is None  # over the cap
    assert await q.image(h) == img
    (ex,) = await q.entries()
    assert ex.image_hash == h and ex.tier_probs == {"clf": 0.55} and ex.label is None
    assert await q.label_of(ex) is None
    await q.set_label(h, 1)  # a label learnt later (published validator results)
    assert await q.label_of(ex) == 1
    with pytest.raises(ValueError):
        await q.set_label(h, 3)
    stats = await q.stats()
    assert stats["entries"] == 1 and stats["by_reason"] == {"low_margin": 1}
    assert stats["by_label"] == {"roadwork": 1}


async def test_claim_ack_and_export(store: StateStore, tmp_path: Path) -> None:
    q = HardExampleQueue(store)
    imgs = [_jpeg(i) for i in range(6)]
    for i, img in enumerate(imgs):
        label = None if i >= 4 else i % 2
        reasons = ["known_error"] if label is not None else ["low_margin"]
        await q.enqueue(img, reasons, 0.45 + 0.02 * i, "colour", label=label, validator="v")
    # a read-only export leaves the queue as it was
    rep = await q.export(tmp_path / "peek")
    assert rep.written == {"roadwork": 2, "no_roadwork": 2, "unlabeled": 2} and rep.acked == 0
    assert (await q.stats())["undelivered"] == 6

    # a consumer that crashes before acknowledging: its entries come back
    got = await q.claim("trainer-1", count=3)
    assert len(got) == 3
    again = await q.claim("trainer-1", count=3)
    assert [e.entry_id for e in again] == [e.entry_id for e in got]
    assert await q.ack(got[0].entry_id) == 1

    # teacher pseudo-labels: confident for one unlabelled image, unsure for the other
    def teacher(payloads: list[bytes]) -> list[float]:
        return [0.95 if p == imgs[4] else 0.55 for p in payloads]

    out = tmp_path / "export"
    rep = await q.export(out, consume=True, consumer="trainer-1", teacher=teacher, pseudo_margin=0.3)
    assert rep.acked == 5 and rep.pseudo_labelled == 1
    assert rep.written == {"roadwork": 3, "no_roadwork": 1, "unlabeled": 1}  # entry 0 was acked
    stats = await q.stats()
    assert stats["pending"] == 0 and stats["undelivered"] == 0
    with (out / "manifest.csv").open() as f:
        rows = {r["image_hash"]: r for r in csv.DictReader(f)}
    h4 = hashlib.sha256(imgs[4]).hexdigest()
    assert rows[h4]["label_origin"] == "teacher" and rows[h4]["file"].startswith("roadwork/")
    assert all((out / r["file"]).is_file() for r in rows.values())

    from roadminer.training.data import load_image_folder

    samples = load_image_folder(out)
    assert len(samples) == 4 and {s.source for s in samples} == {"hard_examples"}


async def test_observe_hook_records_and_queues(store: StateStore) -> None:
    from roadminer.core.config import StateConfig

    layer = StateLayer.from_config(StateConfig(), store=store)
    img = _jpeg(7)
    key = hashlib.sha256(img).hexdigest()
    confident = Answer(prob=0.97, tier="clf", batch_size=1, queue_ms=0.1, model_ms=1.0)
    info = RequestInfo(validator="v1", image_hash=key, payload=img, latency_ms=3.0)
    assert await layer.observe(info, confident, {"colour": 0.9, "clf": 0.97}) == []
    # the same image answered wrongly for a labelled (simulator) challenge
    labelled = RequestInfo(validator="v1", image_hash=key, payload=img, latency_ms=3.0, label=0)
    reasons = await layer.observe(labelled, confident, {"colour": 0.9, "clf": 0.97})
    assert reasons == ["known_error"]
    assert layer.queued == 1
    assert [r.label for r in await layer.sessions.recent("v1")] == [0, None]
    assert len(await layer.history.series("reward", validator="v1")) == 1
    (ex,) = await layer.queue.entries()
    assert ex.label == 0 and ex.reasons == ["known_error"]
    # a broken answer object never raises out of the hook
    assert await layer.observe(info, object(), None) == []  # type: ignore[arg-type]
    assert layer.errors == 1
    # the fire-and-forget form used on the request path
    assert layer.observe_soon(RequestInfo(validator="v2", image_hash=key, payload=img), confident, None)
    await asyncio.gather(*list(layer._pending))
    assert len(await layer.sessions.recent("v2")) == 1


def test_queue_cli_stats_and_export(redis_url: str, tmp_path: Path) -> None:
    import asyncio
    import json

    from typer.testing import CliRunner

    from roadminer.cli import app

    async def fill() -> None:
        store = RedisStore(redis_url)  # the default key prefix, as the CLI uses
        q = HardExampleQueue(store)
        await q.enqueue(_jpeg(1), ["known_error"], 0.8, "colour", label=0)
        await q.enqueue(_jpeg(2), ["low_margin"], 0.52, "colour")
        await store.close()

    asyncio.run(fill())
    runner = CliRunner()
    res = runner.invoke(app, ["queue", "stats", "--redis-url", redis_url])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["entries"] == 2
    res = runner.invoke(
        app, ["queue", "export", "--redis-url", redis_url, "--out", str(tmp_path / "x"), "--consume"]
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["written"] == {"roadwork": 0, "no_roadwork": 1, "unlabeled": 1} and rep["acked"] == 2
    assert (tmp_path / "x" / "manifest.csv").is_file()
    res = runner.invoke(app, ["queue", "stats", "--redis-url", "redis://127.0.0.1:1/0"])
    assert res.exit_code == 2 and "does not answer" in res.output
