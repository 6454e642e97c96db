"""``roadminer dashboard --replay`` never passes for real history: it refuses a store that holds live history
unless forced, and everything it writes is marked as replayed, in the store and in the dashboard's JSON and
page. Against a real redis-server and the memory store."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from typer.testing import CliRunner

from roadminer.core.config import Settings, StateConfig
from roadminer.dashboard.app import render_page
from roadminer.dashboard.data import DashboardData
from roadminer.dashboard.provenance import REPLAY_RUNS_KEY, live_history, replay_runs
from roadminer.dashboard.replay import ReplayRefused, replay_history
from roadminer.state.history import LIVE, LIVE_MARKER_KEY, REPLAY
from roadminer.state.layer import RequestInfo, StateLayer
from roadminer.state.model_events import model_events

LIVE_VALIDATOR = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
N = 6


class _Answer:
    def __init__(self, prob: float, tier: str) -> None:
        self.prob = prob
        self.tier = tier


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[StateLayer]:
    if request.param == "redis":
        cfg = StateConfig(backend="redis", redis_url=request.getfixturevalue("redis_url"))
    else:
        cfg = StateConfig(backend="memory")
    layer = StateLayer.from_config(cfg)
    yield layer
    await layer.close()


async def _replay(state: StateLayer, **kw: object) -> None:
    await replay_history(state, Settings(), None, n=N, validators=2, span_s=3600, progress=False, **kw)  # type: ignore[arg-type]


async def _seed_live(state: StateLayer) -> None:
    """What a running miner writes: an answered, labelled request (session, outcome, reward history)."""
    await state.observe(
        RequestInfo(validator=LIVE_VALIDATOR, image_hash="ab" * 32, payload=b"", latency_ms=12.0, label=1),
        _Answer(0.93, "classifier"),
    )


async def test_replay_into_an_empty_store_marks_every_record(state: StateLayer) -> None:
    assert not (await live_history(state.store)).present
    await _replay(state)
    assert not (await live_history(state.store)).present  # replayed data is not live history

    runs = await replay_runs(state.store)
    assert len(runs) == 1 and runs[0]["n"] == N and runs[0]["images"] == "scenes" and not runs[0]["forced"]
    replay_validators = set(runs[0]["validators"])
    for name in await state.history.names():
        for v in await state.history.validators(name):
            pts = await state.history.series(name, validator=None if v == "_" else v)
            assert pts and {p.source for p in pts} == {REPLAY}, name
    for v in await state.sessions.validators():
        assert v in replay_validators
        assert {r.source for r in await state.sessions.recent(v)} == {REPLAY}
        rows = [json.loads(r) for r in await state.store.list_range(f"outcomes:{v}")]
        assert rows and all(row[2] == REPLAY for row in rows)
    entries = await state.queue.store.stream_range(state.queue.stream)
    assert all(json.loads(fields["json"])["source"] == REPLAY for _, fields in entries)
    assert [e["source"] for e in await model_events(state.store)] == [REPLAY]

    snap = await DashboardData(state).snapshot(7200)
    prov = snap["provenance"]
    assert prov["replayed_in_window"] and not prov["live_history"] and len(prov["replay_runs"]) == 1
    assert set(snap["reward"]["replayed"]) == replay_validators == set(snap["reward"]["validators"])
    assert snap["requests"]["replayed"] == snap["requests"]["n"] == N
    assert "incentive" in snap["chain"]["replayed"] and snap["queue"]["replayed"]
    html = render_page(snap, "2h", 0)
    assert 'data-replayed="1"' in html and html.count("(replayed)") >= 3

    await _replay(state)  # a store holding only replays takes another one
    assert len(await replay_runs(state.store)) == 2


async def test_replay_refuses_live_history_unless_forced(state: StateLayer) -> None:
    await _seed_live(state)
    live = await live_history(state.store)
    assert live.present and live.markers == {"history", "sessions"} and not live.legacy
    with pytest.raises(ReplayRefused, match=r"holds real history .*--force"):
        await _replay(state)
    assert await state.store.list_range(REPLAY_RUNS_KEY) == []  # nothing was written
    assert set(await state.sessions.validators()) == {LIVE_VALIDATOR}

    await _replay(state, force=True)
    assert (await replay_runs(state.store))[0]["forced"] is True
    live_pts = await state.history.series("reward", validator=LIVE_VALIDATOR)
    assert [p.source for p in live_pts] == [LIVE]
    assert {r.source for r in await state.sessions.recent(LIVE_VALIDATOR)} == {LIVE}
    snap = await DashboardData(state).snapshot(7200)
    assert LIVE_VALIDATOR in snap["reward"]["validators"] and LIVE_VALIDATOR not in snap["reward"]["replayed"]
    assert len(snap["reward"]["replayed"]) == 2 and snap["provenance"]["live_history"]
    assert snap["requests"]["replayed"] == N and snap["requests"]["n"] == N + 1
    html = render_page(snap, "2h", 0)
    short = f"{LIVE_VALIDATOR[:5]}…{LIVE_VALIDATOR[-4:]}"
    assert f">{short}</text>" in html and f"{short} (replayed)" not in html  # the live legend is unmarked
    assert html.count(" (replayed)</text>") >= 2 * 3  # both replay validators on the reward/MCC/accuracy charts


async def test_unmarked_history_from_before_the_marks_counts_as_live(state: StateLayer) -> None:
    """History written before provenance marks existed: plain points, no marker, no replay run."""
    t = time.time() - 600
    await state.store.zadd(f"hist:reward:{LIVE_VALIDATOR}", t, json.dumps([t, 0.4, "00ff00ff"]).encode())
    await state.store.sadd("hist:names", "reward")
    await state.store.sadd("hist:validators:reward", LIVE_VALIDATOR)
    live = await live_history(state.store)
    assert live.legacy and live.present and live.series == ["reward"]
    assert [p.source for p in await state.history.series("reward", validator=LIVE_VALIDATOR)] == [LIVE]
    with pytest.raises(ReplayRefused, match="unmarked history"):
        await _replay(state)
    await _replay(state, force=True)
    assert "legacy" in await state.store.smembers(LIVE_MARKER_KEY)
    with pytest.raises(ReplayRefused):  # still detected after the forced run added replay runs
        await _replay(state)


def test_dashboard_command_refuses_then_forces(redis_url: str) -> None:
    from roadminer.cli import app

    async def seed() -> None:
        layer = StateLayer.from_config(StateConfig(backend="redis", redis_url=redis_url))
        await _seed_live(layer)
        await layer.close()

    import asyncio

    asyncio.run(seed())
    args = ["dashboard", "--redis-url", redis_url, "--replay", "scenes", "--replay-n", "4", "--replay-only"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "refusing to replay into a store that holds real history" in res.output
    res = CliRunner().invoke(app, [*args, "--force"])
    assert res.exit_code == 0, res.output

    async def check() -> list[dict[str, object]]:
        layer = StateLayer.from_config(StateConfig(backend="redis", redis_url=redis_url))
        runs = await replay_runs(layer.store)
        await layer.close()
        return runs

    runs = asyncio.run(check())
    assert len(runs) == 1 and runs[0]["n"] == 4 and runs[0]["forced"] is True
