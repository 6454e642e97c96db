"""Fuzzing the running miner over real HTTP on loopback (hypothesis drives a miner in a background
thread): random and mutated images in signed requests, random header bytes (non-UTF-8, duplicates,
missing), random bodies, on both routes. Every request gets a clear answer (200 with a probability, or
a 4xx with a message), never a 500 or a dropped connection; afterwards the miner still serves and its
memory has not grown beyond a generous bound."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadminer.protocol import btauth, sn72
from testkit.hardening import (
    FUZZ_COUNTS,
    ThreadedMiner,
    fuzz_settings,
    internal_errors,
    raw_post,
    rss_mb,
    signed_btauth,
    signed_sn72,
    signed_sn72_body,
)
from testkit.miner import jpeg_b64, settings_for
from testkit.strategies import BTAUTH_NAMES, SN72_NAMES, json_values, mutated

REFUSALS = {400, 401, 403, 404, 405, 411, 413, 415, 422, 429, 431}
header_bytes = st.binary(max_size=120).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").lstrip())
header_names = st.one_of(
    st.sampled_from(SN72_NAMES + BTAUTH_NAMES + ["Content-Type", "Content-Encoding", "Transfer-Encoding"]),
    st.text("abcdefghijklmnopqrstuvwxyz-_", min_size=1, max_size=20),
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedMiner]:
    settings = settings_for(
        tmp_path_factory.mktemp("fuzzhttp"),
        guards={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
        server={"max_body_bytes": 512 * 1024},
        images={"max_encoded_bytes": 256 * 1024},
    )
    start = FUZZ_COUNTS.copy()
    m = ThreadedMiner(settings)
    m.errors_before = internal_errors()  # type: ignore[attr-defined]
    m.rss_before = rss_mb()  # type: ignore[attr-defined]
    yield m
    m.stop()
    print(f"\n[fuzz http] requests: {dict(FUZZ_COUNTS - start)}")


def _answer_ok(status: int, data: object, where: str) -> None:
    assert status == 200 or status in REFUSALS, f"{where}: status {status} {data!r:.300}"
    if status == 200:
        assert isinstance(data, dict)
        p = float(data["prediction"])
        assert 0.0 < p < 1.0 and p != 0.5


@fuzz_settings(120)
@given(mutated())
def test_mutated_images_both_routes(live: ThreadedMiner, raw: bytes) -> None:
    b64 = base64.b64encode(raw).decode()
    hdrs, body = signed_sn72(live.port, live.hotkey, b64)
    r = raw_post(live.port, sn72.ROUTE, hdrs, body)
    _answer_ok(r.status, r.json(), "sn72")
    hdrs, body = signed_btauth(live.port, live.hotkey, json.dumps({"image": b64}).encode())
    r = raw_post(live.port, btauth.ROUTE, hdrs, body)
    _answer_ok(r.status, r.json(), "btauth")
    FUZZ_COUNTS["mutated image"] += 2


@fuzz_settings(150)
@given(
    st.sampled_from([sn72.ROUTE, btauth.ROUTE]),
    st.lists(st.tuples(header_names, header_bytes), max_size=10),
    st.booleans(),
    st.binary(max_size=300),
)
def test_random_header_bytes(
    live: ThreadedMiner, route: str, extra: list[tuple[str, bytes]], keep_signed: bool, body: bytes
) -> None:
    """Random (also duplicate and non-UTF-8) headers, on top of a signed request or alone."""
    if keep_signed:
        hdrs, good = signed_sn72(live.port, live.hotkey) if route == sn72.ROUTE else signed_btauth(
            live.port, live.hotkey, json.dumps({"image": jpeg_b64()}).encode()
        )
        body = good if len(extra) % 2 else body
    else:
        hdrs = []
    hdrs = hdrs + [(k, v) for k, v in extra if k.lower() not in ("content-length", "transfer-encoding")]
    r = raw_post(live.port, route, hdrs, body)
    _answer_ok(r.status, r.json(), f"{route} {extra!r:.200}")
    FUZZ_COUNTS["random headers"] += 1


@fuzz_settings(120)
@given(
    st.one_of(
        json_values.map(lambda v: json.dumps(v).encode()),
        st.fixed_dictionaries(
            {"image": st.one_of(json_values, st.text(max_size=40))},
            optional={"testnet_label": json_values, "request_id": json_values, "prediction": json_values},
        ).map(lambda d: json.dumps(d).encode()),
        st.binary(max_size=300),
    )
)
def test_random_bodies_of_signed_requests(live: ThreadedMiner, body: bytes) -> None:
    r = signed_sn72_body(live.port, live.hotkey, body)
    _answer_ok(r.status, r.json(), "sn72")
    assert r.status == 200 or r.json()["message"]
    hdrs, body = signed_btauth(live.port, live.hotkey, body)
    r = raw_post(live.port, btauth.ROUTE, hdrs, body)
    _answer_ok(r.status, r.json(), "btauth")
    assert r.status == 200 or r.json()["error"]
    FUZZ_COUNTS["random body"] += 2


def test_zz_still_serving_with_bounded_memory(live: ThreadedMiner) -> None:
    hdrs, body = signed_sn72(live.port, live.hotkey)
    r = raw_post(live.port, sn72.ROUTE, hdrs, body)
    _answer_ok(r.status, r.json(), "control")
    assert r.status == 200
    assert live.miner.backend.guards.shedder.inflight == 0
    assert internal_errors() == live.errors_before  # type: ignore[attr-defined]
    grown = rss_mb() - live.rss_before  # type: ignore[attr-defined]
    assert grown < 400, f"RSS grew by {grown:.0f} MB over the fuzz run"
    print(f"\n[fuzz http] RSS growth over the run: {grown:.0f} MB")
