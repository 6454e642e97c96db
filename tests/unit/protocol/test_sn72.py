"""SN72 wire protocol: signatures, nonce rules, header round trip, client request/response parsing."""

from __future__ import annotations

import json
import time

import pytest

from roadminer.protocol import sn72
from roadminer.protocol.keys import HotkeySigner, is_valid_ss58, load_signer, verify_signature
from roadminer.state.nonce import NonceStore

VALIDATOR = HotkeySigner.from_uri("//Alice")
MINER = HotkeySigner.from_uri("//Eve")
S = 1_000_000_000


def test_empty_body_hash_matches_reference() -> None:
    assert sn72.EMPTY_BODY_HASH == "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    assert sn72.ImageSynapse().body_hash == sn72.EMPTY_BODY_HASH


def test_sign_and_verify() -> None:
    msg = sn72.signature_message(1, VALIDATOR.ss58_address, MINER.ss58_address, "u", sn72.EMPTY_BODY_HASH)
    assert msg == f"1.{VALIDATOR.ss58_address}.{MINER.ss58_address}.u.{sn72.EMPTY_BODY_HASH}"
    sig = VALIDATOR.sign_hex(msg)
    assert sig.startswith("0x") and len(sig) == 2 + 128
    assert verify_signature(msg, sig, VALIDATOR.ss58_address)
    assert not verify_signature(msg + "x", sig, VALIDATOR.ss58_address)
    assert not verify_signature(msg, sig, MINER.ss58_address)
    assert not verify_signature(msg, "0xzz", VALIDATOR.ss58_address)  # malformed: False, no exception
    assert not verify_signature(msg, sig, "not-an-address")
    assert is_valid_ss58(VALIDATOR.ss58_address) and not is_valid_ss58("5abc")


def test_wallet_created_on_first_run(tmp_path) -> None:
    a = load_signer(str(tmp_path), "w", "hk", create_if_missing=True)
    b = load_signer(str(tmp_path), "w", "hk", create_if_missing=False)
    assert a.ss58_address == b.ss58_address and is_valid_ss58(a.ss58_address)
    with pytest.raises(FileNotFoundError):
        load_signer(str(tmp_path), "w", "other", create_if_missing=False)
    assert load_signer(str(tmp_path), "w", "//Alice").ss58_address == VALIDATOR.ss58_address


def test_headers_round_trip() -> None:
    url, headers, body = sn72.build_request(
        VALIDATOR, MINER.ss58_address, "10.0.0.2", 8091, "aGk=", timeout=9.0
    )
    assert url == "http://10.0.0.2:8091/ImageSynapse"
    assert headers["name"] == "ImageSynapse" and headers["timeout"] == "9.0"
    assert headers["computed_body_hash"] == sn72.EMPTY_BODY_HASH
    assert headers["bt_header_dendrite_version"] == str(sn72.version_as_int("9.12.2")) == "9012002"
    assert body["image"] == "aGk=" and body["prediction"] == -1.0 and body["testnet_label"] == -1
    assert body["computed_body_hash"] == "" and body["dendrite"]["hotkey"] == VALIDATOR.ss58_address
    # header names are case-insensitive on the wire
    syn = sn72.parse_headers({k.upper(): v for k, v in headers.items()})
    assert syn.dendrite.hotkey == VALIDATOR.ss58_address
    assert syn.dendrite.nonce == int(headers["bt_header_dendrite_nonce"])
    assert syn.axon.hotkey == MINER.ss58_address and syn.axon.port == 8091 and syn.timeout == 9.0
    again = syn.to_headers()
    for key in (
        "bt_header_dendrite_signature",
        "bt_header_dendrite_uuid",
        "bt_header_axon_hotkey",
        "timeout",
    ):
        assert again[key] == headers[key]


def test_bad_headers_are_400() -> None:
    _, headers, _ = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x")
    headers["bt_header_dendrite_nonce"] = "not-a-number"
    with pytest.raises(sn72.SynapseError) as e:
        sn72.parse_headers(headers)
    assert e.value.status == 400 and "dendrite.nonce" in e.value.message


async def _check(headers: dict[str, str], store: NonceStore, now_ns: int | None = None) -> None:
    await sn72.check_request(sn72.parse_headers(headers), MINER.ss58_address, store, now_ns=now_ns)


async def test_nonce_rules() -> None:
    store = NonceStore.memory()
    now = time.time_ns()
    uuid = "11111111-2222"
    def h(nonce):
        return sn72.build_request(
            VALIDATOR,
            MINER.ss58_address,
            "127.0.0.1",
            1,
            "x",
            timeout=9.0,
            uuid=uuid,
            nonce=nonce,
        )[1]
    # first-seen endpoint: nonce must be newer than now - (4 s + timeout)
    with pytest.raises(sn72.SynapseError, match=r"too old: acceptable delta is 13\.00"):
        await _check(h(now - 14 * S), store, now_ns=now)
    await _check(h(now - 12 * S), store, now_ns=now)
    # then strictly increasing per endpoint, even if older than the window
    with pytest.raises(sn72.SynapseError, match="newer one was last processed") as e:
        await _check(h(now - 12 * S), store, now_ns=now)
    assert e.value.status == 401
    await _check(h(now - 11 * S), store, now_ns=now)
    with pytest.raises(sn72.SynapseError, match="newer one"):
        await _check(h(now - 11 * S - 1), store, now_ns=now)
    # another endpoint (uuid) of the same hotkey has its own sequence
    other = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid="other", nonce=now)[1]
    await _check(other, store, now_ns=now)


async def test_no_claimed_version_skips_the_window() -> None:
    """The version header is not signed, so a pre-7.2 claim must not switch the freshness rule off."""
    store = NonceStore.memory()
    now = time.time_ns()
    for version in (7_001_000, 0, 1):
        _, h, _ = sn72.build_request(
            VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid=f"v{version}", nonce=now - 3600 * S,
            version=version,
        )
        with pytest.raises(sn72.SynapseError, match="too old: acceptable delta") as e:
            await _check(h, store, now_ns=now)
        assert e.value.status == 401
    _, h, _ = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", nonce=now, version=7_001_000)
    await _check(h, store, now_ns=now)  # a fresh nonce is served whatever version is claimed
    with pytest.raises(sn72.SynapseError, match="newer one"):
        await _check(h, store, now_ns=now)


async def test_timeout_header_widens_the_window_only_up_to_the_cap() -> None:
    store = NonceStore.memory()
    now = time.time_ns()

    def h(age_s: float, timeout: str, uuid: str) -> dict[str, str]:
        headers = sn72.build_request(
            VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid=uuid, nonce=now - int(age_s * S)
        )[1]
        headers[sn72.HEADER_TIMEOUT] = timeout  # unsigned: anyone replaying the request may set it
        return headers

    assert sn72.nonce_window_s(1e9) == sn72.ALLOWED_DELTA_S + sn72.MAX_TIMEOUT_S == 16.0
    assert sn72.nonce_window_s(-50.0) == sn72.ALLOWED_DELTA_S - sn72.MAX_TIMEOUT_S  # negative: narrower, finite
    await _check(h(15.0, "12.0", "a"), store, now_ns=now)  # the Dendrite default 12 s still fits
    await _check(h(15.0, "1e9", "b"), store, now_ns=now)  # a huge timeout is not a narrower window
    for age, timeout in ((17.0, "1e9"), (17.0, "12.0"), (14.0, "9.0"), (5.0, "-100")):
        with pytest.raises(sn72.SynapseError, match="too old") as e:
            await _check(h(age, timeout, f"c{age}{timeout}"), store, now_ns=now)
        assert e.value.status == 401, (age, timeout)
    # a wider cap, configured on purpose, is honoured
    wide = h(17.0, "20", "d")
    await sn72.check_request(sn72.parse_headers(wide), MINER.ss58_address, store, now_ns=now, max_timeout_s=20.0)


async def test_nonce_beyond_the_store_retention_in_the_future_is_refused() -> None:
    """A nonce ahead of the clock by more than the endpoint TTL (minus the window) would still look fresh
    after its endpoint entry expired, so it could be replayed then: refused up front."""
    store = NonceStore.memory(endpoint_ttl_s=120.0)
    now = time.time_ns()
    ok = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid="f1", nonce=now + 60 * S)
    await _check(ok[1], store, now_ns=now)
    far = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid="f2", nonce=now + 110 * S)
    with pytest.raises(sn72.SynapseError, match="in the future") as e:
        await _check(far[1], store, now_ns=now)
    assert e.value.status == 401


async def test_nonce_retention_must_cover_the_window() -> None:
    from roadminer.state.nonce import RetentionError

    NonceStore.memory(endpoint_ttl_s=16.0, btauth_ttl_s=12.0).check_retention(16.0, 12.0)
    with pytest.raises(RetentionError, match=r"SN72 endpoint nonces are kept 10 s .* window is 16 s"):
        NonceStore.memory(endpoint_ttl_s=10.0).check_retention(16.0, 12.0)
    with pytest.raises(RetentionError, match=r"btauth/1 nonces are kept 5 s"):
        NonceStore.memory(btauth_ttl_s=5.0).check_retention(16.0, 12.0)


async def test_forged_or_misaddressed_requests_are_401_and_do_not_advance_nonces() -> None:
    store = NonceStore.memory()
    now = time.time_ns()
    _, h, _ = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x", uuid="u", nonce=now)
    forged = dict(h, bt_header_dendrite_signature=HotkeySigner.from_uri("//Bob").sign_hex("whatever"))
    with pytest.raises(sn72.SynapseError, match="Signature mismatch") as e:
        await _check(forged, store)
    assert e.value.status == 401
    await _check(h, store)  # the forged copy did not consume the nonce
    _, to_other, _ = sn72.build_request(VALIDATOR, VALIDATOR.ss58_address, "127.0.0.1", 1, "x")
    with pytest.raises(sn72.SynapseError, match="addressed to hotkey"):
        await _check(to_other, store)
    for missing in ("bt_header_dendrite_nonce", "bt_header_dendrite_signature", "bt_header_dendrite_hotkey"):
        hh = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x")[1]
        del hh[missing]
        with pytest.raises(sn72.SynapseError) as e:
            await _check(hh, store)
        assert e.value.status == 401
    bad_hash = dict(
        sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x")[1], computed_body_hash="00"
    )
    with pytest.raises(sn72.SynapseError) as e:
        await _check(bad_hash, store)
    assert e.value.status == 400


def test_responses_parse_like_a_dendrite() -> None:
    _, h, _ = sn72.build_request(VALIDATOR, MINER.ss58_address, "127.0.0.1", 1, "x")
    syn = sn72.parse_headers(h)
    sn72.fill_axon(
        syn, hotkey=MINER.ss58_address, uuid="a", version=1000, status_code=200, status_message="Success"
    )
    status, headers, body = sn72.success_response(syn, 0.73)
    data = json.loads(body)
    assert status == 200 and data["prediction"] == 0.73 and data["image"] == ""
    assert data["axon"]["status_code"] == 200 and headers["bt_header_axon_status_code"] == "200"
    assert sn72.parse_response(status, headers, body) == (0.73, 200, "Success")
    status, headers, body = sn72.error_response(syn, 403, "Forbidden. Key is blacklisted: x.")
    assert json.loads(body) == {"message": "Forbidden. Key is blacklisted: x."}
    assert sn72.parse_response(status, headers, body) == (None, 403, "Forbidden. Key is blacklisted: x.")
    assert sn72.parse_response(500, {}, b"<html>") == (None, 500, "")
    assert sn72.parse_response(200, {}, b'{"prediction": "nan"}')[0] is None
