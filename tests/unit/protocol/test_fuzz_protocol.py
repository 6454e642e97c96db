"""Property-based fuzzing of the wire codecs (hypothesis): SN72 header parsing and request checks, the
btauth/1 verifier and the request bodies. Every input ends in the protocol's own error (with an HTTP
status and a message) or in a valid request; no other exception escapes, and nothing unsigned passes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadminer.protocol import btauth, sn72
from roadminer.state.nonce import NonceStore
from testkit.hardening import FUZZ_COUNTS, fuzz_settings
from testkit.miner import ALICE, BOB, MINER
from testkit.strategies import BTAUTH_NAMES, SN72_NAMES, json_values

D, A = sn72.DENDRITE_PREFIX, sn72.AXON_PREFIX

# What aiohttp hands over for header bytes that are not UTF-8 (surrogate escapes), plus any text.
surrogates = st.text(st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF), min_size=1, max_size=8)
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "9" * 4400, "0x10", "1_000", "١٢٣", " 5 ", ""]),
)
values = st.one_of(
    st.text(max_size=80), numbers, surrogates, st.builds(lambda a, b: a + b, st.text(max_size=8), surrogates)
)


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    start = FUZZ_COUNTS.copy()
    yield
    print(f"\n[fuzz protocol] examples: {dict(FUZZ_COUNTS - start)}")


def _run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def _valid_sn72_headers() -> dict[str, str]:
    _, headers, _ = sn72.build_request(ALICE, MINER.ss58_address, "127.0.0.1", 8091, "")
    return headers


@fuzz_settings(400)
@given(st.dictionaries(st.one_of(st.sampled_from(SN72_NAMES), st.text(max_size=20)), values, max_size=12))
def test_sn72_parse_headers_random(headers: dict[str, str]) -> None:
    FUZZ_COUNTS["sn72 random headers"] += 1
    try:
        syn = sn72.parse_headers(headers)
    except sn72.SynapseError as e:
        assert e.status == 400 and e.message.startswith("Improperly formatted request")
        return
    assert syn.name == sn72.SYNAPSE_NAME
    # a parsed but unsigned request is refused by the checks, with a 4xx
    with pytest.raises(sn72.SynapseError) as e:
        _run(sn72.check_request(syn, MINER.ss58_address, NonceStore.memory()))
    assert e.value.status in (400, 401)


@fuzz_settings(300)
@given(st.dictionaries(st.sampled_from(SN72_NAMES), values, min_size=1, max_size=4), st.booleans())
def test_sn72_edited_signed_headers(edits: dict[str, str], upper: bool) -> None:
    """A genuine signed request with some headers overwritten: refused unless the edits left every
    signed field as it was."""
    FUZZ_COUNTS["sn72 edited headers"] += 1
    headers = _valid_sn72_headers()
    original = dict(headers)
    headers.update(edits)
    if upper:
        headers = {k.upper(): v for k, v in headers.items()}
    signed = [D + "hotkey", D + "nonce", D + "uuid", D + "signature", A + "hotkey"]
    try:
        syn = sn72.parse_headers(headers)
        _run(sn72.check_request(syn, MINER.ss58_address, NonceStore.memory()))
    except sn72.SynapseError as e:
        assert e.status in (400, 401) and e.message
        return
    for name in signed:  # accepted: then no signed field really changed (or the axon hotkey was dropped)
        if name in edits and name != A + "hotkey":
            assert str(edits[name]).strip() == original[name] or name == D + "nonce"
    assert syn.dendrite is not None and syn.dendrite.hotkey == ALICE.ss58_address


@fuzz_settings(300)
@given(
    st.dictionaries(st.sampled_from(BTAUTH_NAMES), values, min_size=1, max_size=3),
    st.lists(st.sampled_from(BTAUTH_NAMES), max_size=2),
    st.binary(max_size=64),
)
def test_btauth_edited_headers_and_body(edits: dict[str, str], drop: list[str], extra: bytes) -> None:
    FUZZ_COUNTS["btauth edited request"] += 1
    _, headers, body = btauth.build_request(ALICE, MINER.ss58_address, "127.0.0.1", 8091, "aGk=")
    original = dict(headers)
    headers.update(edits)
    for name in drop:
        headers.pop(name, None)
    body = body + extra
    try:
        caller = _run(
            btauth.verify_request(
                headers,
                body,
                method="POST",
                path=btauth.ROUTE,
                self_hotkey=MINER.ss58_address,
                nonce_store=NonceStore.memory(),
            )
        )
    except btauth.BtAuthError as e:
        assert e.status == 401 and e.error and e.message
        return
    assert caller == ALICE.ss58_address and not extra  # the signature covers the body
    for name in BTAUTH_NAMES:
        if name in drop and name != "X-Bittensor-Crypto":
            raise AssertionError(f"accepted without {name}")
        if name in edits and name not in ("X-Bittensor-Crypto", "X-Bittensor-Signature"):
            assert edits[name] == original.get(name), name


def test_btauth_non_utf8_sender_is_a_401() -> None:
    """Header bytes that are not UTF-8 reach the verifier as surrogate escapes: refused, not a 500."""
    _, headers, body = btauth.build_request(ALICE, MINER.ss58_address, "127.0.0.1", 8091, "aGk=")
    for name in ("X-Bittensor-Hotkey", "X-Bittensor-Receiver"):
        bad = dict(headers)
        bad[name] = MINER.ss58_address[:10] + "\udcff\udcfe"
        with pytest.raises(btauth.BtAuthError) as e:
            _run(
                btauth.verify_request(
                    bad, body, method="POST", path=btauth.ROUTE + "?\udcff",
                    self_hotkey=MINER.ss58_address, nonce_store=NonceStore.memory(),
                )
            )  # fmt: skip
        assert e.value.status == 401


def test_sn72_unsigned_timeout_cannot_reopen_an_old_nonce() -> None:
    """The timeout header is not signed: a captured request replayed hours later with a huge timeout
    (after its endpoint entry expired) stays stale, because the window is capped."""
    _, headers, _ = sn72.build_request(ALICE, MINER.ss58_address, "127.0.0.1", 8091, "")
    headers[sn72.HEADER_TIMEOUT] = "1e12"
    syn = sn72.parse_headers(headers)
    later = time.time_ns() + 2 * 3600 * 10**9  # the endpoint entry (1 h TTL) is gone by then
    with pytest.raises(sn72.SynapseError, match="too old") as e:
        _run(sn72.check_request(syn, MINER.ss58_address, NonceStore.memory(), now_ns=later))
    assert e.value.status == 401
    for bad in ("nan", "inf", "-inf", "1e400"):
        headers[sn72.HEADER_TIMEOUT] = bad
        with pytest.raises(sn72.SynapseError) as e:
            sn72.parse_headers(headers)
        assert e.value.status == 400


@fuzz_settings(400)
@given(
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(
            st.sampled_from(["image", "testnet_label", "prediction", "timeout", "dendrite", "axon", "request_id"]),
            json_values,
        ).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=200),
    )
)
def test_request_bodies_validate_or_refuse(body: bytes) -> None:
    """The body models either validate (and then ``image`` is a string) or raise ``ValueError``, which the
    routes turn into a 400."""
    FUZZ_COUNTS["request body"] += 1
    for model in (sn72.ImageSynapse, btauth.RoadworkRequest):
        try:
            req = model.model_validate_json(body)
        except ValueError:
            continue
        assert isinstance(req.image, str)


def test_bob_cannot_claim_alice() -> None:
    """A request signed by one validator but claiming another's hotkey is refused (401)."""
    _, headers, _ = sn72.build_request(BOB, MINER.ss58_address, "127.0.0.1", 8091, "")
    headers[D + "hotkey"] = ALICE.ss58_address
    with pytest.raises(sn72.SynapseError) as e:
        _run(sn72.check_request(sn72.parse_headers(headers), MINER.ss58_address, NonceStore.memory()))
    assert e.value.status == 401 and "Signature mismatch" in e.value.message
