"""Helpers of the hardening tests (fuzz, load, faults, auth): a miner running on loopback in a background
thread (so hypothesis and plain sockets can drive it synchronously), a raw HTTP client that can send any
header bytes, duplicates and broken bodies, and bookkeeping of how many fuzz cases ran."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import os
import threading
from collections import Counter
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from roadminer.miner.run import RunningMiner
from roadminer.protocol import btauth, sn72
from roadminer.protocol.keys import HotkeySigner
from testkit.miner import ALICE, jpeg_b64, run_miner

CORPUS = Path(__file__).resolve().parents[1] / "fuzz_corpus"
# Fuzz cases run per kind, printed at the end of each fuzz module (``pytest -s``).
FUZZ_COUNTS: Counter[str] = Counter()


def fuzz_settings(examples: int) -> settings:
    """Bounded hypothesis runs (``ROADMINER_FUZZ_SCALE`` multiplies the example counts)."""
    scale = float(os.environ.get("ROADMINER_FUZZ_SCALE", "1"))
    return settings(
        max_examples=max(1, int(examples * scale)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


def internal_errors() -> float:
    """Requests answered with a 5xx other than 503 (load shedding) so far, all routes and callers."""
    from roadminer.core.metrics import REQUESTS

    total = 0.0
    for metric in REQUESTS.collect():
        for sample in metric.samples:
            code = sample.labels.get("status", "")
            if sample.name.endswith("_total") and code.startswith("5") and code != "503":
                total += sample.value
    return total


def rss_mb() -> float:
    """Resident memory of this process now (Linux /proc; peak RSS elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ThreadedMiner:
    """A real miner (aiohttp on 127.0.0.1) whose event loop runs in a daemon thread."""

    def __init__(self, settings_obj: Any, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="miner-loop", daemon=True)
        self.thread.start()
        self.miner: RunningMiner = self.call(run_miner(settings_obj, **kw), timeout=120)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @property
    def port(self) -> int:
        return self.miner.ports[0]

    @property
    def hotkey(self) -> str:
        return self.miner.hotkeys[0]

    def stop(self) -> None:
        try:
            self.call(self.miner.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def raw_post(
    port: int,
    path: str,
    headers: list[tuple[str, bytes | str]],
    body: bytes,
    *,
    chunked: bool = False,
    content_length: bool = True,
    timeout: float = 30.0,
) -> RawResponse:
    """POST with exactly these headers (bytes values pass through unencoded; duplicates allowed).

    A server that answers before reading the whole body (413) may reset the connection while the body
    is still being sent; the answer is then read anyway. Status 0 means no answer at all.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        names = {k.lower() for k, _ in headers}
        for k, v in headers:
            conn.putheader(k, v)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
        elif content_length and "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        try:
            if chunked:
                for i in range(0, len(body), 4096):
                    part = body[i : i + 4096]
                    conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                conn.send(b"0\r\n\r\n")
            else:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = conn.getresponse()
            return RawResponse(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        except (TimeoutError, ConnectionResetError, http.client.RemoteDisconnected):
            return RawResponse(0, {}, b"")
    finally:
        conn.close()


def signed_sn72(
    port: int,
    axon_hotkey: str,
    image_b64: str | None = None,
    signer: HotkeySigner = ALICE,
    **kw: Any,
) -> tuple[list[tuple[str, bytes | str]], bytes]:
    """Headers and body of a freshly signed SN72 request (as a 9.12 Dendrite sends it)."""
    _, headers, body = sn72.build_request(
        signer, axon_hotkey, "127.0.0.1", port, jpeg_b64() if image_b64 is None else image_b64, **kw
    )
    hdrs: list[tuple[str, bytes | str]] = [(k, v) for k, v in headers.items()]
    hdrs.append(("Content-Type", "application/json"))
    return hdrs, json.dumps(body).encode()


def signed_sn72_body(port: int, axon_hotkey: str, body: bytes, signer: HotkeySigner = ALICE) -> RawResponse:
    """A correctly signed SN72 request carrying an arbitrary body (the signature does not cover it)."""
    hdrs, _ = signed_sn72(port, axon_hotkey, "", signer)
    return raw_post(port, sn72.ROUTE, hdrs, body)


def signed_btauth(
    port: int, axon_hotkey: str, body: bytes, signer: HotkeySigner = ALICE
) -> tuple[list[tuple[str, bytes | str]], bytes]:
    headers = btauth.sign_headers(signer, axon_hotkey, body)
    headers["Content-Type"] = "application/json"
    return list(headers.items()), body


def load_corpus() -> dict[str, Any]:
    return json.loads((CORPUS / "cases.json").read_text())


def corpus_image(case: dict[str, Any]) -> bytes:
    return (CORPUS / case["file"]).read_bytes()


def corpus_b64(case: dict[str, Any]) -> str:
    if "repeat" in case:
        ch, n = case["repeat"]
        return str(ch) * int(n)
    return str(case["value"])


def corpus_body(case: dict[str, Any]) -> bytes:
    if "gz_file" in case:
        return gzip.decompress((CORPUS / case["gz_file"]).read_bytes())
    return base64.b64decode(case["b64"])


def apply_header_edits(
    headers: list[tuple[str, bytes | str]], case: dict[str, Any]
) -> list[tuple[str, bytes | str]]:
    if case.get("clear"):
        return []
    out = list(headers)
    for name in case.get("delete", []):
        out = [(k, v) for k, v in out if k.lower() != name.lower()]
    for name, value in case.get("set", {}).items():
        out = [(k, v) for k, v in out if k.lower() != name.lower()]
        out.append((name, base64.b64decode(value)))
    for name, value in case.get("dup", {}).items():
        out.append((name, base64.b64decode(value)))
    return out
