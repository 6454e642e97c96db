"""Async miner client: the SN72 ``ImageSynapse`` protocol as a bittensor 9.12 Dendrite speaks it, and
``btauth/1``. One aiohttp session per client, reused across queries; never raises on a miner's fault
(every outcome is a ``QueryResult`` with an error kind)."""

from __future__ import annotations

import asyncio
import time
import uuid as uuid_mod
from dataclasses import asdict, dataclass
from typing import Any, Literal

import aiohttp

from roadminer.protocol import btauth, sn72
from roadminer.protocol.keys import HotkeySigner

Protocol = Literal["sn72", "btauth"]


@dataclass(frozen=True)
class MinerTarget:
    """Where and whom to ask: an axon (ip, port, hotkey) and its UID in the metagraph."""

    uid: int
    hotkey: str
    ip: str
    port: int
    protocol: Protocol = "sn72"


@dataclass
class QueryResult:
    uid: int
    hotkey: str
    prediction: float | None  # None for any failure
    status: int  # HTTP-like status (bittensor codes: 408 timeout, 503 unreachable, ...)
    message: str
    latency_s: float
    error: str | None = None  # None on success, else a short kind: timeout, connection, http_401, ...

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class MinerClient:
    """Queries miners on behalf of a validator hotkey."""

    def __init__(
        self,
        signer: HotkeySigner,
        *,
        timeout_s: float = sn72.DEFAULT_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 256,
        dendrite_ip: str = "127.0.0.1",
    ) -> None:
        self.signer = signer
        self.timeout_s = timeout_s
        self.dendrite_ip = dendrite_ip
        # One uuid per client, as one Dendrite instance: miners key nonces by hotkey:uuid.
        self.uuid = str(uuid_mod.uuid1())
        self._session = session
        self._own_session = session is None
        self._max_connections = max_connections
        self._last_nonce = 0

    @property
    def hotkey(self) -> str:
        return self.signer.ss58_address

    async def __aenter__(self) -> MinerClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ttl_dns_cache=300)
            )
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()

    def _next_nonce(self) -> int:
        # Strictly increasing per endpoint key, even for queries issued within one clock tick.
        n = max(time.time_ns(), self._last_nonce + 1)
        self._last_nonce = n
        return n

    async def query(self, target: MinerTarget, image_b64: str, timeout_s: float | None = None) -> QueryResult:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        session = self._ensure_session()
        t0 = time.perf_counter()
        try:
            if target.protocol == "btauth":
                url, headers, raw = btauth.build_request(
                    self.signer, target.hotkey, target.ip, target.port, image_b64, nonce_ns=self._next_nonce()
                )
                async with session.post(
                    url, data=raw, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    body = await resp.read()
                    pred, status, message = btauth.parse_response(resp.status, body)
            else:
                url, headers, payload = sn72.build_request(
                    self.signer,
                    target.hotkey,
                    target.ip,
                    target.port,
                    image_b64,
                    timeout=timeout,
                    uuid=self.uuid,
                    nonce=self._next_nonce(),
                    dendrite_ip=self.dendrite_ip,
                )
                async with session.post(
                    url, json=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
                ) as resp:
                    body = await resp.read()
                    pred, status, message = sn72.parse_response(resp.status, resp.headers, body)
        except TimeoutError:
            return self._fail(target, 408, f"timed out after {timeout:.1f}s", t0, "timeout")
        except aiohttp.ClientConnectorError as e:
            return self._fail(target, 503, f"cannot connect: {e.os_error or e}", t0, "connection")
        except aiohttp.ClientError as e:
            return self._fail(target, 503, f"{type(e).__name__}: {e}", t0, "client_error")
        latency = time.perf_counter() - t0
        if pred is None:
            kind = f"http_{status}" if status != 200 else "bad_response"
            return QueryResult(target.uid, target.hotkey, None, status, message, latency, kind)
        if not 0.0 <= pred <= 1.0:
            return QueryResult(
                target.uid,
                target.hotkey,
                None,
                status,
                f"prediction {pred} outside [0, 1]",
                latency,
                "out_of_range",
            )
        return QueryResult(target.uid, target.hotkey, float(pred), status, message or "Success", latency)

    @staticmethod
    def _fail(target: MinerTarget, status: int, message: str, t0: float, kind: str) -> QueryResult:
        return QueryResult(target.uid, target.hotkey, None, status, message, time.perf_counter() - t0, kind)

    async def query_many(
        self, targets: list[MinerTarget], image_b64: str, timeout_s: float | None = None
    ) -> list[QueryResult]:
        """Ask every target the same challenge concurrently (results in target order)."""
        return list(await asyncio.gather(*(self.query(t, image_b64, timeout_s) for t in targets)))

    async def fetch_health(self, base_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """``GET /health`` of a roadminer miner (its hotkey, version, tiers)."""
        session = self._ensure_session()
        async with session.get(
            base_url.rstrip("/") + "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            resp.raise_for_status()
            data = await resp.json()
            if not isinstance(data, dict):
                raise ValueError("health answer is not a JSON object")
            return data
