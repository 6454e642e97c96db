"""The miner over real HTTP on loopback: answers, guards (403/429/413/503/401), bad input, deadline
fallback, health/metrics and several hotkeys sharing one backend."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from roadminer.protocol import sn72
from testkit.miner import (
    ALICE,
    BOB,
    CHARLIE,
    DAVE,
    FERDIE,
    MINER,
    MINER2,
    SlowPredictor,
    btauth_call,
    jpeg_b64,
    png_b64,
    run_miner,
    settings_for,
    sn72_call,
)


async def test_answers_and_blacklist(tmp_path) -> None:
    miner = await run_miner(settings_for(tmp_path))
    try:
        async with aiohttp.ClientSession() as s:
            p, code, msg = await sn72_call(s, miner, ALICE)
            assert code == 200 and msg == "Success" and 0.0 < p < 1.0 and p != 0.5
            for signer, needle in (
                (FERDIE, "Unrecognized hotkey"),
                (DAVE, "no validator permit"),
                (CHARLIE, None),
            ):
                p, code, msg = await sn72_call(s, miner, signer)
                if needle is None:  # Charlie's 1500 passes the 1000 minimum
                    assert code == 200
                    continue
                assert (
                    (p, code) == (None, 403)
                    and msg.startswith("Forbidden. Key is blacklisted")
                    and needle in msg
                )
            status, body, _ = await btauth_call(s, miner, ALICE, request_id="r-1")
            assert status == 200 and 0.0 < body["prediction"] < 1.0 and body["request_id"] == "r-1"
            status, body, _ = await btauth_call(s, miner, FERDIE)
            assert status == 403 and "Unrecognized" in body["message"]
            async with s.get(miner.url + "/health") as r:
                health = await r.json()
            assert health["hotkey"] == MINER.ss58_address and health["registered"] and health["uid"] == 4
            assert health["tiers"] and health["model_version"] and health["version"]
            async with s.get(miner.url + "/metrics") as r:
                text = await r.text()
            assert 'roadminer_requests_total{caller="validator",route="/ImageSynapse",status="200"}' in text
            async with s.post(miner.url + "/OtherSynapse", json={}) as r:
                assert r.status == 404 and "not found" in (await r.json())["message"]
    finally:
        await miner.stop()


async def test_min_stake_and_allow_unregistered(tmp_path) -> None:
    miner = await run_miner(settings_for(tmp_path, guards={"min_stake": 2000.0, "allow_unregistered": False}))
    try:
        async with aiohttp.ClientSession() as s:
            _, code, msg = await sn72_call(s, miner, CHARLIE)
            assert code == 403 and "below the minimum 2000.0" in msg
    finally:
        await miner.stop()
    miner = await run_miner(settings_for(tmp_path, guards={"allow_unregistered": True}))
    try:
        async with aiohttp.ClientSession() as s:
            p, code, _ = await sn72_call(s, miner, FERDIE)
            assert code == 200 and p is not None
            # still authenticated: a signature from another key is refused
            url, headers, body = sn72.build_request(
                FERDIE, MINER.ss58_address, "127.0.0.1", miner.ports[0], "eA=="
            )
            headers["bt_header_dendrite_signature"] = BOB.sign_hex("x")
            async with s.post(url, headers=headers, json=body) as r:
                assert r.status == 401
    finally:
        await miner.stop()


async def test_rate_limit_size_limits_and_bad_images(tmp_path) -> None:
    settings = settings_for(
        tmp_path,
        guards={"rate_limit_per_minute": 6, "rate_limit_burst": 8},
        server={"max_body_bytes": 60_000},
        images={"max_pixels": 300 * 300},
    )
    miner = await run_miner(settings)
    try:
        async with aiohttp.ClientSession() as s:
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64=png_b64(200, 200))  # ~160 kB body
            assert code == 413 and "exceeds" in msg
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64=png_b64(400, 400, noise=False))
            assert code == 413 and "400x400" in msg  # small file, too many pixels
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64="%%%not base64%%%")
            assert code == 400 and "base64" in msg
            _, code, msg = await sn72_call(s, miner, ALICE, image_b64="aGVsbG8gd29ybGQ=")
            assert code == 400 and "cannot be decoded" in msg
            url, headers, _ = sn72.build_request(ALICE, MINER.ss58_address, "127.0.0.1", miner.ports[0], "")
            async with s.post(url, headers=headers, data=b"{not json") as r:
                assert r.status == 400 and "message" in json.loads(await r.read())
            p, code, _ = await sn72_call(s, miner, ALICE)  # still serving
            assert code == 200 and p is not None
            # every authenticated request takes a token (burst 8, 6 so far): the 9th is rate limited
            codes = [(await sn72_call(s, miner, ALICE))[1] for _ in range(3)]
            assert codes == [200, 200, 429]
            _, code, msg = await sn72_call(s, miner, BOB)  # other callers keep their own bucket
            assert code == 200
    finally:
        await miner.stop()


async def test_deadline_answers_from_the_colour_fallback(tmp_path) -> None:
    slow = SlowPredictor(delay_s=2.5)
    miner = await run_miner(settings_for(tmp_path, server={"request_deadline_s": 1.0}), predictor=slow)
    try:
        async with aiohttp.ClientSession() as s:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            p, code, _ = await sn72_call(s, miner, ALICE, timeout=9.0)
            elapsed = loop.time() - t0
            assert code == 200 and p is not None and 0.0 < p < 1.0 and p != 0.9  # not the late model's answer
            assert elapsed < 2.5  # answered before the stalled model
            status, body, _ = await btauth_call(s, miner, ALICE)
            assert status == 200 and body["tier"].startswith("fallback")
    finally:
        await miner.stop()


async def test_priority_by_stake_when_saturated(tmp_path) -> None:
    slow = SlowPredictor(delay_s=1.5)
    settings = settings_for(
        tmp_path, guards={"max_inflight": 10, "priority_threshold": 0.1}, batcher={"max_batch": 1}
    )
    miner = await run_miner(settings, predictor=slow)
    try:
        async with aiohttp.ClientSession() as s:
            busy = [asyncio.create_task(sn72_call(s, miner, ALICE)) for _ in range(6)]
            while miner.backend.guards.shedder.inflight < 6:
                await asyncio.sleep(0.02)
            # load 6/10 over a 0.1 threshold: only the top of the stake ranking is served
            _, code, msg = await sn72_call(s, miner, CHARLIE)
            assert code == 503 and "higher-stake" in msg
            p, code, _ = await sn72_call(s, miner, ALICE)
            assert code == 200 and p is not None
            results = await asyncio.gather(*busy)
            assert all(r[1] == 200 for r in results)
    finally:
        await miner.stop()


async def test_several_hotkeys_share_one_backend(tmp_path) -> None:
    slow = SlowPredictor(delay_s=0.01, prob=0.8)
    miner = await run_miner(settings_for(tmp_path), signers=[(0, MINER), (0, MINER2)], predictor=slow)
    try:
        assert len(miner.urls) == 2 and miner.ports[0] != miner.ports[1]
        async with aiohttp.ClientSession() as s:
            # distinct images: the same one twice would be answered by the result cache
            r0 = await sn72_call(s, miner, ALICE, jpeg_b64(1), idx=0)
            r1 = await sn72_call(s, miner, ALICE, jpeg_b64(2), idx=1)
            assert r0[:2] == r1[:2] == (0.8, 200)
            # a request addressed to one hotkey is refused by the other
            url, headers, body = sn72.build_request(
                ALICE, miner.hotkeys[0], "127.0.0.1", miner.ports[1], jpeg_b64()
            )
            async with s.post(url, headers=headers, json=body) as r:
                assert r.status == 401
            healths = []
            for url in miner.urls:
                async with s.get(url + "/health") as r:
                    healths.append(await r.json())
        assert {h["hotkey"] for h in healths} == set(miner.hotkeys)
        assert slow.calls == 2 and miner.backend.batcher.items == 2  # one model, one batcher
    finally:
        await miner.stop()
