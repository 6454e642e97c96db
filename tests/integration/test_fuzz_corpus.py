"""The regression corpus of nasty inputs (tests/fuzz_corpus) replayed over real HTTP against a miner on
loopback, on both routes: every case gets its expected status (a clear 4xx or an answer), never a 500 or
a dropped connection; the miner keeps serving and its memory stays bounded."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from roadminer.protocol import btauth, sn72
from testkit.hardening import (
    FUZZ_COUNTS,
    ThreadedMiner,
    apply_header_edits,
    corpus_b64,
    corpus_body,
    corpus_image,
    internal_errors,
    load_corpus,
    raw_post,
    rss_mb,
    signed_btauth,
    signed_sn72,
    signed_sn72_body,
)
from testkit.miner import settings_for

CORPUS = load_corpus()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedMiner]:
    settings = settings_for(
        tmp_path_factory.mktemp("corpus"),
        guards={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000},
    )
    start = FUZZ_COUNTS.copy()
    m = ThreadedMiner(settings)
    m.errors_before = internal_errors()  # type: ignore[attr-defined]
    yield m
    m.stop()
    print(f"\n[fuzz corpus] requests: {dict(FUZZ_COUNTS - start)}")


def _check_answer(status: int, data: Any, expect: list[int], name: str) -> None:
    assert status in expect, f"{name}: got {status} ({data}), expected one of {expect}"
    if status == 200:
        p = float(data["prediction"])
        assert 0.0 < p < 1.0 and p != 0.5, name


def _sn72(live: ThreadedMiner, image_b64: str) -> tuple[int, Any]:
    hdrs, body = signed_sn72(live.port, live.hotkey, image_b64)
    r = raw_post(live.port, sn72.ROUTE, hdrs, body)
    return r.status, r.json()


def _btauth(live: ThreadedMiner, body: bytes) -> tuple[int, Any]:
    hdrs, body = signed_btauth(live.port, live.hotkey, body)
    r = raw_post(live.port, btauth.ROUTE, hdrs, body)
    return r.status, r.json()


def _btauth_image(live: ThreadedMiner, image_b64: str) -> tuple[int, Any]:
    import json

    return _btauth(live, json.dumps({"image": image_b64}).encode())


def _assert_still_serving(live: ThreadedMiner) -> None:
    status, data = _sn72(live, base64.b64encode(corpus_image(CORPUS["image"]["jpeg_scene"])).decode())
    _check_answer(status, data, [200], "control request")
    assert live.miner.backend.guards.shedder.inflight == 0


@pytest.mark.parametrize("name", sorted(CORPUS["image"]))
def test_image_cases(live: ThreadedMiner, name: str) -> None:
    case = CORPUS["image"][name]
    b64 = base64.b64encode(corpus_image(case)).decode()
    for call in (_sn72, _btauth_image):
        status, data = call(live, b64)
        _check_answer(status, data, case["expect"], f"{call.__name__}:{name}")
        assert status != 200 or data is not None
    FUZZ_COUNTS["image"] += 2


@pytest.mark.parametrize("name", sorted(CORPUS["b64"]))
def test_base64_cases(live: ThreadedMiner, name: str) -> None:
    case = CORPUS["b64"][name]
    for call in (_sn72, _btauth_image):
        status, data = call(live, corpus_b64(case))
        _check_answer(status, data, case["expect"], f"{call.__name__}:{name}")
        assert data and (data.get("message") or data.get("prediction") is not None)
    FUZZ_COUNTS["b64"] += 2


@pytest.mark.parametrize("name", sorted(CORPUS["body"]))
def test_body_cases(live: ThreadedMiner, name: str) -> None:
    case = CORPUS["body"][name]
    body = corpus_body(case)
    r = signed_sn72_body(live.port, live.hotkey, body)
    _check_answer(r.status, r.json(), case["expect"], f"sn72:{name}")
    if r.status != 200:  # bittensor's error shape: the status in the axon headers and {"message"}
        assert r.headers.get(sn72.HEADER_AXON_STATUS_CODE) == str(r.status)
        assert r.json()["message"]
    status, data = _btauth(live, body)
    _check_answer(status, data, case["expect"], f"btauth:{name}")
    if status != 200:
        assert data["error"] and data["message"]
    FUZZ_COUNTS["body"] += 2


@pytest.mark.parametrize("name", sorted(CORPUS["headers"]))
def test_header_cases(live: ThreadedMiner, name: str) -> None:
    case = CORPUS["headers"][name]
    hdrs, body = signed_sn72(live.port, live.hotkey)
    if "body" in case:
        body = base64.b64decode(case["body"])
    r = raw_post(live.port, sn72.ROUTE, apply_header_edits(hdrs, case), body, chunked=bool(case.get("chunked")))
    assert r.status in case["expect"], f"{name}: got {r.status} {r.body[:200]!r}"
    FUZZ_COUNTS["headers"] += 1


def test_zz_still_serving_with_bounded_memory(live: ThreadedMiner) -> None:
    """Runs after the cases above (module order): replay the whole corpus again and compare memory."""
    _assert_still_serving(live)
    before = rss_mb()
    for name, case in CORPUS["image"].items():
        status, data = _sn72(live, base64.b64encode(corpus_image(case)).decode())
        _check_answer(status, data, case["expect"], name)
    for name, case in CORPUS["body"].items():
        r = signed_sn72_body(live.port, live.hotkey, corpus_body(case))
        _check_answer(r.status, r.json(), case["expect"], name)
    FUZZ_COUNTS["replay"] += len(CORPUS["image"]) + len(CORPUS["body"])
    after = rss_mb()
    # a second pass allocates nothing that stays: generous bound for allocator noise
    assert after - before < 150, f"RSS grew from {before:.0f} MB to {after:.0f} MB"
    _assert_still_serving(live)
    assert internal_errors() == live.errors_before  # no request of this module ended in a 500
