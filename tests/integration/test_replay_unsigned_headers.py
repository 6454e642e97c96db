"""Replays that lean on headers the SN72 signature does not cover, sent over loopback HTTP to the real miner.

The signature covers ``nonce.sender.receiver.uuid.body_hash`` only. ``bt_header_dendrite_version`` and
``timeout`` travel beside it, so whoever replays a captured request may rewrite them. Neither may relax the
nonce rules: a request whose nonce is two hours old is a 401 whatever version it claims, and a huge timeout
does not widen the window past ``guards.sn72_max_timeout_s``. A nonce store that forgets sooner than the
window is refused at start.
"""

from __future__ import annotations

import json
import time
import uuid as uuid_mod
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import ValidationError

from roadminer.core.config import Settings
from roadminer.miner.run import RunningMiner
from roadminer.protocol import sn72
from roadminer.state.nonce import NonceStore, RetentionError
from testkit.hardening import internal_errors
from testkit.miner import ALICE, MINER, SlowPredictor, jpeg_b64, run_miner, settings_for

S = 10**9
VERSION_HEADER = sn72.DENDRITE_PREFIX + "version"


def _captured(miner: RunningMiner, age_s: float, **kw: Any) -> tuple[str, dict[str, str], dict[str, Any]]:
    """A genuine, correctly signed request of Alice's, signed ``age_s`` seconds ago on a fresh uuid (a
    captured request whose endpoint entry has expired looks exactly like this to the miner)."""
    nonce = time.time_ns() - int(age_s * S)
    uuid = kw.pop("uuid", str(uuid_mod.uuid4()))
    return sn72.build_request(
        ALICE, miner.hotkeys[0], "127.0.0.1", miner.ports[0], jpeg_b64(), nonce=nonce, uuid=uuid, **kw
    )


async def _post(s: aiohttp.ClientSession, req: tuple[str, dict[str, str], dict[str, Any]]) -> tuple[int, str]:
    url, headers, body = req
    async with s.post(url, headers=headers, data=json.dumps(body)) as r:
        raw = await r.read()
        _, code, msg = sn72.parse_response(r.status, r.headers, raw)
        assert r.status == code  # the HTTP status agrees with bittensor's status header
        return code, msg


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "memory":
        return settings_for(tmp_path)
    redis_server = request.getfixturevalue("redis_server")
    state = {"backend": "redis", "redis_url": redis_server.url, "key_prefix": f"t{uuid_mod.uuid4().hex[:8]}:"}
    return settings_for(tmp_path, state=state)


async def test_old_nonce_with_a_pre_7_2_version_header_is_refused(settings: Settings) -> None:
    miner = await run_miner(settings)
    errors = internal_errors()
    try:
        async with aiohttp.ClientSession() as s:
            # signed as a 7.1.0 Dendrite would sign it: two hours old, new uuid
            code, msg = await _post(s, _captured(miner, 2 * 3600, version=sn72.version_as_int("7.1.0")))
            assert code == 401 and "Nonce is too old" in msg, msg
            # a captured 9.12 request with the unsigned version header rewritten to 7.1.0, 0 or 1
            for claimed in ("7001000", "0", "1"):
                url, headers, body = _captured(miner, 2 * 3600)
                headers[VERSION_HEADER] = claimed
                code, msg = await _post(s, (url, headers, body))
                assert code == 401 and "Nonce is too old" in msg, (claimed, msg)
            # without the version header at all
            url, headers, body = _captured(miner, 2 * 3600)
            del headers[VERSION_HEADER]
            assert (await _post(s, (url, headers, body)))[0] == 401
            # the same claimed version with a fresh nonce is served: only the nonce decides
            url, headers, body = _captured(miner, 0.0)
            headers[VERSION_HEADER] = "7001000"
            assert (await _post(s, (url, headers, body)))[0] == 200
            # ...and replaying that one is still a replay
            code, msg = await _post(s, (url, headers, body))
            assert code == 401 and "newer one" in msg
    finally:
        await miner.stop()
    assert internal_errors() == errors


async def test_huge_timeout_header_does_not_widen_the_window(settings: Settings) -> None:
    miner = await run_miner(settings)
    errors = internal_errors()
    cap = settings.guards.nonce_allowed_delta_s + settings.guards.sn72_max_timeout_s  # 16 s
    try:
        async with aiohttp.ClientSession() as s:
            for timeout in ("1e9", "86400", "1e300"):
                url, headers, body = _captured(miner, cap + 4.0)
                headers[sn72.HEADER_TIMEOUT] = timeout
                code, msg = await _post(s, (url, headers, body))
                assert code == 401 and f"acceptable delta is {cap:.2f}" in msg, (timeout, msg)
            # two hours old with an hour-long timeout claimed: still stale
            url, headers, body = _captured(miner, 2 * 3600, timeout=3600.0)
            assert (await _post(s, (url, headers, body)))[0] == 401
            # honest validators: 9 s (SN72) and 12 s (Dendrite default) timeouts, a few seconds of delay
            for timeout, age in ((9.0, 8.0), (12.0, 10.0)):
                assert (await _post(s, _captured(miner, age, timeout=timeout)))[0] == 200, (timeout, age)
            # a huge timeout does not make an honest, slightly delayed request fail either
            url, headers, body = _captured(miner, 10.0)
            headers[sn72.HEADER_TIMEOUT] = "1e9"
            assert (await _post(s, (url, headers, body)))[0] == 200
    finally:
        await miner.stop()
    assert internal_errors() == errors


async def test_far_future_nonce_is_refused_over_http(tmp_path: Path) -> None:
    """A nonce an hour ahead would outlive its endpoint entry (1 h) and be replayable afterwards."""
    miner = await run_miner(settings_for(tmp_path))
    try:
        async with aiohttp.ClientSession() as s:
            code, msg = await _post(s, _captured(miner, -3600.0))
            assert code == 401 and "in the future" in msg, msg
            assert (await _post(s, _captured(miner, -30.0)))[0] == 200  # clock skew of seconds is fine
    finally:
        await miner.stop()


def test_config_refuses_nonce_retention_shorter_than_the_window() -> None:
    with pytest.raises(ValidationError, match="nonce_endpoint_ttl_s"):
        Settings(guards={"nonce_endpoint_ttl_s": 10.0})
    with pytest.raises(ValidationError, match="nonce_endpoint_ttl_s"):
        Settings(guards={"sn72_max_timeout_s": 7200.0})  # the 1 h default no longer covers 4 s + 2 h
    Settings(guards={"sn72_max_timeout_s": 7200.0, "nonce_endpoint_ttl_s": 7300.0})
    with pytest.raises(ValidationError):
        Settings(guards={"sn72_max_timeout_s": -1.0})


async def test_miner_refuses_to_start_with_a_forgetful_nonce_store(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    for store, needle in (
        (NonceStore.memory(endpoint_ttl_s=5.0), "SN72 endpoint nonces are kept 5 s"),
        (NonceStore.memory(btauth_ttl_s=3.0), "btauth/1 nonces are kept 3 s"),
    ):
        with pytest.raises(RetentionError, match=needle):
            await run_miner(settings, predictor=SlowPredictor(0.0), nonces=store)
    miner = await run_miner(settings, predictor=SlowPredictor(0.0), nonces=NonceStore.memory())
    assert miner.backend.nonces.endpoint_ttl_s >= 16.0
    await miner.stop()
    assert MINER.ss58_address in miner.hotkeys
