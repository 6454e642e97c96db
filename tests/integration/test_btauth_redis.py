"""Two miner instances sharing a Redis nonce store: a request accepted by one is a replay for the other
(btauth/1 and SN72)."""

from __future__ import annotations

import aiohttp

from roadminer.protocol import sn72
from testkit.miner import ALICE, MINER, btauth_call, jpeg_b64, run_miner, send_raw, settings_for


async def test_replay_across_workers_is_refused(tmp_path, redis_url: str) -> None:
    settings = settings_for(
        tmp_path, state={"backend": "redis", "redis_url": redis_url, "key_prefix": "rmtest:"}
    )
    a = await run_miner(settings, signers=[(0, MINER)])
    b = await run_miner(settings, signers=[(0, MINER)])
    try:
        assert a.backend.nonces.describe().get("backend") == "redis"
        async with aiohttp.ClientSession() as s:
            status, body, req = await btauth_call(s, a, ALICE)
            assert status == 200 and 0.0 < body["prediction"] < 1.0
            url_b = req[0].replace(f":{a.ports[0]}/", f":{b.ports[0]}/")
            status, body, _ = await send_raw(s, (url_b, req[1], req[2]))
            assert status == 401 and body["error"] == "ReplayedRequest"
            status, _, _ = await btauth_call(s, b, ALICE)  # a fresh request to b is fine
            assert status == 200

            url, headers, payload = sn72.build_request(
                ALICE, MINER.ss58_address, "127.0.0.1", a.ports[0], jpeg_b64()
            )
            async with s.post(url, headers=headers, json=payload) as r:
                assert r.status == 200
            async with s.post(
                url.replace(str(a.ports[0]), str(b.ports[0])), headers=headers, json=payload
            ) as r:
                assert r.status == 401
                assert "newer one" in (await r.json())["message"]
    finally:
        await a.stop()
        await b.stop()
