"""btauth/1 helpers: sign with roadminer's signer, verify with bittensor.http_auth + async nonce store."""

from __future__ import annotations

import json
import time

import pytest

from roadminer.protocol import btauth
from roadminer.protocol.keys import HotkeySigner
from roadminer.state.nonce import NonceStore

VALIDATOR = HotkeySigner.from_uri("//Alice")
MINER = HotkeySigner.from_uri("//Eve")


async def _verify(headers: dict[str, str], body: bytes, store: NonceStore, **kw) -> str:
    return await btauth.verify_request(
        headers,
        body,
        method="POST",
        path=btauth.ROUTE,
        self_hotkey=MINER.ss58_address,
        nonce_store=store,
        **kw,
    )


async def test_round_trip_and_replay() -> None:
    store = NonceStore.memory()
    url, headers, body = btauth.build_request(
        VALIDATOR, MINER.ss58_address, "127.0.0.1", 9, "aGk=", request_id="r1"
    )
    assert url == "http://127.0.0.1:9/v1/roadwork" and json.loads(body) == {
        "image": "aGk=",
        "request_id": "r1",
    }
    assert await _verify(headers, body, store) == VALIDATOR.ss58_address
    with pytest.raises(btauth.BtAuthError, match="already accepted") as e:
        await _verify(headers, body, store)
    assert e.value.status == 401


@pytest.mark.parametrize("case", ["tampered_body", "wrong_receiver", "stale", "forged", "missing"])
async def test_refusals(case: str) -> None:
    store = NonceStore.memory()
    nonce = time.time_ns() - (30 * 10**9 if case == "stale" else 0)
    receiver = VALIDATOR.ss58_address if case == "wrong_receiver" else MINER.ss58_address
    _, headers, body = btauth.build_request(VALIDATOR, receiver, "127.0.0.1", 9, "aGk=", nonce_ns=nonce)
    if case == "tampered_body":
        body = body.replace(b"aGk=", b"aGl=")
    if case == "forged":
        headers["X-Bittensor-Signature"] = "0x" + HotkeySigner.from_uri("//Bob").sign(b"x").hex()
    if case == "missing":
        del headers["X-Bittensor-Nonce"]
    with pytest.raises(btauth.BtAuthError) as e:
        await _verify(headers, body, store)
    assert e.value.status == 401
    # a refused request never writes the store: the genuine one still passes (when fresh and addressed to us)
    if case in ("tampered_body", "forged"):
        _, headers2, body2 = btauth.build_request(
            VALIDATOR, MINER.ss58_address, "127.0.0.1", 9, "aGk=", nonce_ns=int(headers["X-Bittensor-Nonce"])
        )
        assert await _verify(headers2, body2, store) == VALIDATOR.ss58_address


def test_parse_response() -> None:
    assert btauth.parse_response(200, b'{"prediction": 0.2}') == (0.2, 200, "Success")
    assert btauth.parse_response(401, b'{"error": "BadSignature", "message": "no"}') == (None, 401, "no")
    assert btauth.parse_response(200, b'{"prediction": 1.5}')[0] is None
    assert btauth.parse_response(502, b"oops")[0] is None


def test_error_body_escapes_non_utf8_caller_text() -> None:
    # A hotkey header that is not UTF-8 reaches refusal messages as surrogate escapes.
    out = json.loads(btauth.error_body("blacklist", "Unrecognized hotkey \udc80."))
    assert out == {"error": "blacklist", "message": "Unrecognized hotkey \\udc80."}


async def test_store_retention_shorter_than_the_window_is_refused() -> None:
    store = NonceStore.memory(btauth_ttl_s=5.0)  # forgets before the 10 s + 2 s window ends
    _, headers, body = btauth.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 9, "aGk=")
    with pytest.raises(ValueError, match="retains entries"):
        await _verify(headers, body, store)
