"""Replay and forgery over real HTTP, on both protocols: every attack is refused with the right status, no
refusal writes state an honest validator depends on (nonces, rate-limit tokens), concurrent replays to
two workers sharing Redis are accepted exactly once, and nothing ends in a 500.

(Unit-level nonce rules and the single replay across two workers are in test_protocol_*.py and
integration/test_btauth_redis.py.)"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from roadminer.miner.run import RunningMiner
from roadminer.protocol import btauth, sn72
from roadminer.protocol.keys import HotkeySigner
from testkit.hardening import internal_errors
from testkit.miner import (
    ALICE,
    BOB,
    CHARLIE,
    DAVE,
    FERDIE,
    MINER,
    btauth_call,
    jpeg_b64,
    run_miner,
    send_raw,
    settings_for,
    sn72_call,
)

MALLORY = HotkeySigner.from_uri("//Mallory")  # not on the chain; tries to pass as others


async def _post_sn72(
    s: aiohttp.ClientSession, url: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[int, str]:
    async with s.post(url, headers=headers, data=json.dumps(body)) as r:
        raw = await r.read()
        _, code, msg = sn72.parse_response(r.status, r.headers, raw)
        return code, msg


def _sn72_req(miner: RunningMiner, signer: HotkeySigner, **kw: Any) -> tuple[str, dict[str, str], dict[str, Any]]:
    return sn72.build_request(signer, miner.hotkeys[0], "127.0.0.1", miner.ports[0], jpeg_b64(), **kw)


async def test_sn72_replay_stale_and_forgery_over_http(tmp_path) -> None:
    miner = await run_miner(settings_for(tmp_path, guards={"blacklist_hotkeys": [BOB.ss58_address]}))
    errors = internal_errors()
    try:
        async with aiohttp.ClientSession() as s:
            url, headers, body = _sn72_req(miner, ALICE, uuid="alice-1")
            assert (await _post_sn72(s, url, headers, body))[0] == 200
            code, msg = await _post_sn72(s, url, headers, body)  # the same request again
            assert code == 401 and "newer one" in msg
            # an older nonce of the same endpoint, correctly signed
            url, headers, body = _sn72_req(miner, ALICE, uuid="alice-1", nonce=time.time_ns() - 10**9)
            assert (await _post_sn72(s, url, headers, body))[0] == 401
            # a first-seen endpoint with a nonce older than delta + timeout
            old = time.time_ns() - 60 * 10**9
            url, headers, body = _sn72_req(miner, ALICE, uuid="alice-2", nonce=old, timeout=12.0)
            code, msg = await _post_sn72(s, url, headers, body)
            assert code == 401 and "too old" in msg

            # forgery: Mallory claims Alice's hotkey with a far-future nonce on Alice's endpoint
            future = time.time_ns() + 3600 * 10**9
            url, headers, body = _sn72_req(miner, MALLORY, uuid="alice-1", nonce=future)
            headers[sn72.DENDRITE_PREFIX + "hotkey"] = ALICE.ss58_address
            code, msg = await _post_sn72(s, url, headers, body)
            assert code == 401 and "Signature mismatch" in msg
            # ...and did not advance Alice's nonce: her next genuine request is served
            url, headers, body = _sn72_req(miner, ALICE, uuid="alice-1")
            assert (await _post_sn72(s, url, headers, body))[0] == 200

            # a genuine request re-addressed to another miner hotkey (signature covers the receiver)
            url, headers, body = _sn72_req(miner, ALICE, uuid="alice-3")
            headers[sn72.AXON_PREFIX + "hotkey"] = BOB.ss58_address
            assert (await _post_sn72(s, url, headers, body))[0] == 401

            # callers refused before any signature work: unregistered, no permit, deny list
            for signer, needle in ((MALLORY, "Unrecognized"), (DAVE, "no validator permit"), (BOB, "deny list")):
                _, code, msg = await sn72_call(s, miner, signer)
                assert code == 403 and needle in msg, (signer.ss58_address, msg)
    finally:
        await miner.stop()
    assert internal_errors() == errors


async def test_btauth_attacks_over_http(tmp_path) -> None:
    miner = await run_miner(settings_for(tmp_path, guards={"min_stake": 2000.0}))
    errors = internal_errors()
    port, me = miner.ports[0], miner.hotkeys[0]
    try:
        async with aiohttp.ClientSession() as s:
            status, _, req = await btauth_call(s, miner, ALICE)
            assert status == 200
            status, body, _ = await send_raw(s, req)  # replay
            assert (status, body["error"]) == (401, "ReplayedRequest")

            cases: dict[str, tuple[str, dict[str, str], bytes]] = {}
            cases["stale"] = btauth.build_request(
                ALICE, me, "127.0.0.1", port, jpeg_b64(), nonce_ns=time.time_ns() - 30 * 10**9
            )
            cases["future"] = btauth.build_request(
                ALICE, me, "127.0.0.1", port, jpeg_b64(), nonce_ns=time.time_ns() + 30 * 10**9
            )
            cases["wrong_receiver"] = btauth.build_request(ALICE, BOB.ss58_address, "127.0.0.1", port, jpeg_b64())
            url, headers, raw = btauth.build_request(MALLORY, me, "127.0.0.1", port, jpeg_b64())
            cases["forged_as_alice"] = (url, {**headers, btauth.HEADER_HOTKEY: ALICE.ss58_address}, raw)
            url, headers, raw = btauth.build_request(ALICE, me, "127.0.0.1", port, jpeg_b64())
            cases["body_swapped"] = (url, headers, json.dumps({"image": jpeg_b64(5)}).encode())
            cases["path_changed"] = (url + "?x=1", headers, raw)
            want = {
                "stale": "StaleRequest",
                "future": "StaleRequest",
                "wrong_receiver": "WrongReceiver",
                "forged_as_alice": "BadSignature",
                "body_swapped": "BadSignature",
                "path_changed": "BadSignature",
            }
            for name, req in cases.items():
                status, body, _ = await send_raw(s, req)
                assert (status, body["error"]) == (401, want[name]), (name, body)

            for signer, needle in ((FERDIE, "Unrecognized"), (DAVE, "no validator permit"), (CHARLIE, "below")):
                status, body, _ = await btauth_call(s, miner, signer)
                assert status == 403 and needle in body["message"], body
            status, _, _ = await btauth_call(s, miner, ALICE)  # still serving the honest caller
            assert status == 200
    finally:
        await miner.stop()
    assert internal_errors() == errors


async def test_forged_requests_cannot_drain_a_validators_rate_limit(tmp_path) -> None:
    miner = await run_miner(settings_for(tmp_path, guards={"rate_limit_per_minute": 6, "rate_limit_burst": 3}))
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(10):  # Mallory floods with Alice's hotkey and bad signatures
                url, headers, body = _sn72_req(miner, MALLORY, uuid=f"m{i}")
                headers[sn72.DENDRITE_PREFIX + "hotkey"] = ALICE.ss58_address
                assert (await _post_sn72(s, url, headers, body))[0] == 401
                url, headers, raw = btauth.build_request(MALLORY, miner.hotkeys[0], "127.0.0.1", miner.ports[0], "")
                headers[btauth.HEADER_HOTKEY] = ALICE.ss58_address
                assert (await send_raw(s, (url, headers, raw)))[0] == 401
            codes = [(await sn72_call(s, miner, ALICE))[1] for _ in range(4)]
            assert codes == [200, 200, 200, 429]  # Alice's own burst of 3 is intact
    finally:
        await miner.stop()


async def test_concurrent_replays_to_two_workers_are_accepted_once(tmp_path, redis_url: str) -> None:
    settings = settings_for(
        tmp_path,
        state={"backend": "redis", "redis_url": redis_url, "key_prefix": "rmauth:"},
        guards={"rate_limit_per_minute": 100_000, "rate_limit_burst": 100_000},
    )
    a = await run_miner(settings, signers=[(0, MINER)])
    b = await run_miner(settings, signers=[(0, MINER)])
    errors = internal_errors()
    try:
        async with aiohttp.ClientSession() as s:
            for round_ in range(3):
                # one captured SN72 request, fired 8 times at each worker at once
                url_a, headers, body = sn72.build_request(
                    ALICE, MINER.ss58_address, "127.0.0.1", a.ports[0], jpeg_b64(round_), uuid=f"race-{round_}"
                )
                url_b = url_a.replace(f":{a.ports[0]}/", f":{b.ports[0]}/")
                codes = await asyncio.gather(
                    *(_post_sn72(s, u, headers, body) for u in [url_a, url_b] * 8)
                )
                assert sorted(c for c, _ in codes) == [200] + [401] * 15, codes
                # the same for btauth/1
                req = btauth.build_request(ALICE, MINER.ss58_address, "127.0.0.1", a.ports[0], jpeg_b64(round_))
                req_b = (req[0].replace(f":{a.ports[0]}/", f":{b.ports[0]}/"), req[1], req[2])
                results = await asyncio.gather(*(send_raw(s, r) for r in [req, req_b] * 8))
                statuses = sorted(r[0] for r in results)
                assert statuses == [200] + [401] * 15, statuses
                assert {r[1]["error"] for r in results if r[0] == 401} == {"ReplayedRequest"}
    finally:
        await a.stop()
        await b.stop()
    assert internal_errors() == errors
