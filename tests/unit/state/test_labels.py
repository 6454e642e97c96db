"""Labels with provenance: the rules (override, idempotence, undo, skip), durability across a Redis
restart with AOF, and the ``roadminer queue list|label|undo|export --labelled`` contract."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from roadminer.imaging.decode import encode_jpeg
from roadminer.state.backends.redis_store import RedisStore
from roadminer.state.labels import LabelError, LabelStore, Provenance, resolve
from roadminer.state.queue import HardExampleQueue
from roadminer.state.store import StateStore


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8))


def _h(seed: int) -> str:
    return hashlib.sha256(_jpeg(seed)).hexdigest()


async def test_rules_override_idempotence_undo_skip(store: StateStore) -> None:
    labels = LabelStore(store)
    h = _h(1)
    assert await labels.get(h) is None
    ch = await labels.set(h, 1, Provenance.TEACHER, "cascade[v1]", prob=0.93)
    assert ch.changed and ch.label is not None and (ch.label.value, ch.label.provenance) == ("roadwork", "teacher")
    assert ch.label.prob == pytest.approx(0.93) and ch.label.target == 1
    # The same teacher label again: one label, nothing appended.
    assert not (await labels.set(h, "roadwork", "teacher", "cascade[v2]", prob=0.95)).changed
    assert len(await labels.events(h)) == 1
    # A human says otherwise: the human wins, the teacher's later run cannot take it back.
    ch = await labels.set(h, "no_roadwork", "human", "ana")
    assert ch.changed and ch.label is not None and (ch.label.value, ch.label.who) == ("no_roadwork", "ana")
    assert not (await labels.set(h, "no_roadwork", "human", "bo")).changed  # same value, still one label
    ch = await labels.set(h, 0, "teacher", "cascade[v3]", prob=0.1)  # teacher changes its mind: appended...
    assert ch.changed and ch.label is not None and ch.label.provenance == "human"  # ...but the human counts
    # Human changes the label, then undoes: back to the previous human label, then to the teacher's.
    await labels.set(h, "roadwork", "human", "ana")
    assert (await labels.get(h)).value == "roadwork"  # type: ignore[union-attr]
    ch = await labels.undo(h, "ana")
    assert ch.changed and ch.label is not None and (ch.label.value, ch.label.provenance) == ("no_roadwork", "human")
    ch = await labels.undo(h, "ana")
    assert ch.label is not None and (ch.label.value, ch.label.provenance, ch.label.who) == (
        "no_roadwork",
        "teacher",
        "cascade[v3]",
    )
    assert not (await labels.undo(h)).changed  # no human label left to undo
    # Skip is a human decision not to train on the image: it hides the teacher label.
    ch = await labels.set(h, "skip", "human", "ana")
    assert ch.label is not None and ch.label.value == "skip" and ch.label.target is None
    # Simulator outranks the teacher, not a human.
    h2 = _h(2)
    await labels.set(h2, 1, "teacher", "t")
    assert (await labels.set(h2, 0, "simulator", "5Sim")).label.provenance == "simulator"  # type: ignore[union-attr]
    assert (await labels.set(h2, 1, "human", "ana")).label.value == "roadwork"  # type: ignore[union-attr]
    assert await labels.labelled_ids() == {h, h2}
    assert (await labels.counts())["human"] == {"skip": 1, "roadwork": 1}


async def test_bad_input_is_refused_clearly(store: StateStore) -> None:
    labels = LabelStore(store)
    h = _h(3)
    for bad_id in ("", "xyz", "0" * 63, "g" * 64, "../../etc/passwd"):
        with pytest.raises(LabelError, match="sha256"):
            await labels.set(bad_id, 1)
    with pytest.raises(LabelError, match="one of roadwork"):
        await labels.set(h, "maybe")
    with pytest.raises(LabelError, match="0 or 1"):
        await labels.set(h, 7)
    with pytest.raises(LabelError, match="provenance"):
        await labels.set(h, 1, "oracle")
    with pytest.raises(LabelError, match="only a human"):
        await labels.set(h, "skip", "teacher")
    # Foreign bytes in a log (another tool, a corrupted write) are ignored, never unpickled or fatal.
    await store.list_push(f"labels:log:{h}", b"\x80\x04\x95not json")
    await store.list_push(f"labels:log:{h}", b'{"value": "roadwork", "provenance": "god"}')
    assert await labels.get(h) is None
    await labels.set(h, "n", "human", "ana")
    assert (await labels.get(h)).value == "no_roadwork"  # type: ignore[union-attr]


def test_resolve_is_a_pure_replay() -> None:
    from roadminer.state.labels import LabelEvent

    h = "a" * 64
    ev = [
        LabelEvent("roadwork", "human", "a", 1.0),
        LabelEvent("undo", "human", "a", 2.0),
        LabelEvent("no_roadwork", "teacher", "t", 3.0, 0.1),
    ]
    lab = resolve(h, ev)
    assert lab is not None and (lab.value, lab.provenance, lab.events) == ("no_roadwork", "teacher", 3)
    assert resolve(h, ev[:2]) is None


async def test_labels_survive_a_redis_restart_with_aof(make_redis) -> None:  # type: ignore[no-untyped-def]
    server = make_redis(appendonly=True)
    store = RedisStore(server.url)
    q = HardExampleQueue(store)
    imgs = [_jpeg(10 + i) for i in range(6)]
    for img in imgs:
        await q.enqueue(img, ["low_margin"], 0.5, "classifier", validator="5Val")
    hs = [hashlib.sha256(b).hexdigest() for b in imgs]
    await q.labels.set(hs[0], "roadwork", "human", "ana")
    await q.labels.set(hs[1], "no_roadwork", "teacher", "cascade[x]", prob=0.04)
    await q.labels.set(hs[1], "roadwork", "human", "ana")
    await q.labels.set(hs[2], "skip", "human", "bo")
    await q.set_label(hs[3], 0, who="5Sim")  # the simulator's known label
    await q.labels.set(hs[4], "roadwork", "human", "ana")
    await q.labels.undo(hs[4], "ana")
    before = {h: await q.labels.get(h) for h in hs}
    await store.close()

    server.kill()  # SIGKILL: only the append-only file remains
    server.start()
    store = RedisStore(server.url)
    q = HardExampleQueue(store)
    after = {h: await q.labels.get(h) for h in hs}
    assert after == before
    assert after[hs[1]].provenance == "human" and after[hs[1]].value == "roadwork"  # type: ignore[union-attr]
    assert after[hs[2]].value == "skip" and after[hs[3]].provenance == "simulator"  # type: ignore[union-attr]
    assert after[hs[4]] is None and after[hs[5]] is None
    assert len(await q.labels.events(hs[1])) == 2  # the audit trail came back too
    await store.close()

    server.stop()  # and a clean shutdown/start
    server.start()
    store = RedisStore(server.url)
    assert {h: await LabelStore(store).get(h) for h in hs} == before
    await store.close()


async def _fill(redis_url: str, n: int) -> list[str]:
    store = RedisStore(redis_url)  # the CLI's default key prefix
    q = HardExampleQueue(store)
    out = []
    for i in range(n):
        img = _jpeg(100 + i)
        await q.enqueue(img, ["low_margin", "tier_disagreement"][: 1 + i % 2], 0.4 + 0.02 * i, "classifier",
                        {"classifier": 0.4 + 0.02 * i, "classifier2": 0.7}, validator=f"5Val{i % 2}")
        out.append(hashlib.sha256(img).hexdigest())
    await q.set_label(out[3], 1, who="5Sim")  # one with a simulator label
    await q.labels.set(out[4], "no_roadwork", "teacher", "cascade[t]", prob=0.08)  # one teacher label
    await store.close()
    return out


def test_cli_contract_list_label_export(redis_url: str, tmp_path: Path) -> None:
    from roadminer.cli import app

    ids = asyncio.run(_fill(redis_url, 6))
    runner = CliRunner()
    res = runner.invoke(app, ["queue", "list", "--json", "--redis-url", redis_url])
    assert res.exit_code == 0, res.output
    items = json.loads(res.stdout)
    assert isinstance(items, list) and len(items) == 6
    for it in items:
        assert {"id", "reason", "probability", "labelled"} <= set(it)
    by_id = {it["id"]: it for it in items}
    assert set(by_id) == set(ids)
    assert by_id[ids[1]]["reason"] == "low_margin;tier_disagreement" and by_id[ids[0]]["reason"] == "low_margin"
    assert by_id[ids[2]]["probability"] == pytest.approx(0.44) and by_id[ids[0]]["labelled"] is False
    assert by_id[ids[3]]["labelled"] and by_id[ids[3]]["provenance"] == "simulator"
    assert by_id[ids[4]]["provenance"] == "teacher" and by_id[ids[4]]["teacher_probability"] == pytest.approx(0.08)
    assert by_id[ids[0]]["validator"] == "5Val0" and by_id[ids[1]]["tier_probs"]["classifier2"] == 0.7

    def label(item: str, value: str, *extra: str) -> tuple[int, dict]:
        r = runner.invoke(app, ["queue", "label", item, value, "--redis-url", redis_url, *extra])
        return r.exit_code, (json.loads(r.stdout) if r.exit_code == 0 else {"output": r.output})

    code, out = label(ids[0], "roadwork", "--who", "ana")
    assert code == 0 and out["changed"] and out["label"] == "roadwork" and out["labelled_by"] == "ana"
    code, out = label(ids[0], "roadwork", "--who", "ana")  # idempotent
    assert code == 0 and not out["changed"]
    code, out = label(ids[4][:12], "roadwork")  # a unique prefix; the human overrides the teacher
    assert code == 0 and out["provenance"] == "human" and out["label"] == "roadwork"
    code, out = label(ids[1], "no_roadwork")
    assert code == 0
    code, out = label(ids[2], "skip")
    assert code == 0 and out["label"] == "skip" and out["labelled"]
    code, out = label(ids[5], "maybe")
    assert code == 2 and "roadwork, no_roadwork, skip" in out["output"]
    code, out = label("f" * 64, "roadwork")
    assert code == 2 and "no queued item" in out["output"]
    code, out = label("abc", "roadwork")
    assert code == 2 and "at least 8 hex" in out["output"]
    res = runner.invoke(app, ["queue", "label", ids[0], "roadwork", "--redis-url", "redis://127.0.0.1:1/0"])
    assert res.exit_code == 2 and "does not answer" in res.output

    res = runner.invoke(app, ["queue", "list", "--json", "--status", "unlabelled", "--redis-url", redis_url])
    assert [it["id"] for it in json.loads(res.stdout)] == [ids[5]]

    out_dir = tmp_path / "export"
    res = runner.invoke(app, ["queue", "export", "--labelled", "--out", str(out_dir), "--redis-url", redis_url])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["written"] == {"roadwork": 3, "no_roadwork": 1} and rep["skipped_by_human"] == 1
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.csv", "no_roadwork", "roadwork"]
    with (out_dir / "manifest.csv").open() as f:
        rows = {r["image_hash"]: r for r in csv.DictReader(f)}
    assert set(rows) == {ids[0], ids[1], ids[3], ids[4]}  # not the skipped, not the unlabelled one
    assert {r["provenance"] for r in rows.values()} == {"human", "simulator"}
    assert rows[ids[0]]["file"].startswith("roadwork/") and rows[ids[1]]["file"].startswith("no_roadwork/")
    assert rows[ids[0]]["labelled_by"] == "ana" and rows[ids[3]]["weight"] == "1.0"
    assert (out_dir / rows[ids[0]]["file"]).read_bytes() == _jpeg(100)

    # Relabel one, undo another, label the teacher one back: a second export re-syncs the folder.
    assert label(ids[1], "roadwork")[0] == 0
    res = runner.invoke(app, ["queue", "undo", ids[4], "--redis-url", redis_url])
    assert res.exit_code == 0 and json.loads(res.stdout)["provenance"] == "teacher"
    res = runner.invoke(app, ["queue", "undo", ids[5], "--redis-url", redis_url])
    assert res.exit_code == 1  # nothing to undo
    res = runner.invoke(app, ["queue", "export", "--labelled", "--out", str(out_dir), "--redis-url", redis_url])
    assert res.exit_code == 0, res.output
    with (out_dir / "manifest.csv").open() as f:
        rows = {r["image_hash"]: r for r in csv.DictReader(f)}
    assert rows[ids[1]]["file"].startswith("roadwork/")
    assert not list((out_dir / "no_roadwork").glob(f"{ids[1]}.*"))  # moved, not copied
    assert rows[ids[4]]["provenance"] == "teacher" and rows[ids[4]]["weight"] == "0.5"
    assert rows[ids[4]]["file"].startswith("no_roadwork/")
    assert sorted(r["provenance"] for r in rows.values()) == ["human", "human", "simulator", "teacher"]
