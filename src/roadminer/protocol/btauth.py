"""``btauth/1`` route of the miner: ``POST /v1/roadwork`` with JSON bodies, authenticated by
``bittensor.http_auth`` (hotkey-signed headers over the sha256 of the raw body, 10 s freshness).

Replay protection goes through roadminer's async ``NonceStore`` (Redis when configured, shared by
workers): ``verify_request`` lets ``http_auth.verify`` check shape, receiver, freshness and signature,
captures the accepted ``(hotkey, nonce)`` and only then consults the store, so the event loop never
blocks on the store and forged traffic never writes to it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, Field

from roadminer.protocol.keys import HotkeySigner

ROUTE = "/v1/roadwork"
HEADER_HOTKEY = "X-Bittensor-Hotkey"
HEADER_RECEIVER = "X-Bittensor-Receiver"
DEFAULT_MAX_AGE_S = 10.0
DEFAULT_SKEW_S = 2.0


class RoadworkRequest(BaseModel):
    image: str = Field(description="base64 of an encoded image (JPEG 224x224 from validators)")
    request_id: str | None = Field(default=None, max_length=128)


class RoadworkResponse(BaseModel):
    prediction: float = Field(ge=0.0, le=1.0, description="P(roadwork); never exactly 0.5")
    tier: str = ""
    model_version: str = ""
    latency_ms: float = 0.0
    request_id: str | None = None


class ErrorBody(BaseModel):
    error: str
    message: str


def error_body(error: str, message: str) -> bytes:
    """The JSON error body; text the caller sent that is not UTF-8 (surrogate escapes from the
    headers, echoed in refusal messages) is backslash-escaped instead of failing the encoding."""

    def safe(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")

    return ErrorBody(error=safe(error), message=safe(message)).model_dump_json().encode()


class BtAuthError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


class AsyncNonceStore(Protocol):
    async def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool: ...


class _CaptureStore:
    """Passed to ``http_auth.verify``: records the pair it would accept; the async store decides.
    Carries that store's ``retention`` so ``http_auth`` still refuses one that forgets nonces before
    the freshness window ends."""

    def __init__(self, retention: float | None = None) -> None:
        self.seen: tuple[str, int] | None = None
        self.retention = retention

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        self.seen = (hotkey_ss58, nonce_ns)
        return True


_http_auth: Any = None


async def load_http_auth() -> Any:
    """``bittensor.http_auth``, imported on the first btauth/1 request, in a thread: importing it loads the
    whole bittensor SDK (about 0.8 s), which an SN72-only miner never needs and the event loop must not
    wait for."""
    global _http_auth
    if _http_auth is None:
        _http_auth = await asyncio.to_thread(importlib.import_module, "bittensor.http_auth")
    return _http_auth


def claimed_hotkey(headers: Mapping[str, str]) -> str | None:
    """The sender hotkey the headers claim (unauthenticated; for blacklisting before the body)."""
    for k, v in headers.items():
        if k.lower() == HEADER_HOTKEY.lower():
            return v
    return None


async def verify_request(
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    path: str,
    self_hotkey: str,
    nonce_store: AsyncNonceStore,
    max_age: float = DEFAULT_MAX_AGE_S,
    allowed_skew: float = DEFAULT_SKEW_S,
    now_ns: int | None = None,
) -> str:
    """Returns the authenticated caller hotkey or raises ``BtAuthError(401, ...)``."""
    http_auth = await load_http_auth()

    capture = _CaptureStore(getattr(nonce_store, "retention", None))
    try:
        caller = http_auth.verify(
            dict(headers),
            body,
            method=method,
            path=path,
            self_hotkey_ss58=self_hotkey,
            max_age=max_age,
            allowed_skew=allowed_skew,
            nonce_store=capture,
            now_ns=now_ns,
        )
    except http_auth.AuthError as e:
        raise BtAuthError(401, type(e).__name__, str(e)) from None
    except UnicodeError:  # header bytes that are not UTF-8 cannot be part of a signed payload
        raise BtAuthError(401, "MalformedAuth", "auth headers or path are not valid UTF-8") from None
    if not await nonce_store.check_and_store(caller.hotkey_ss58, caller.nonce_ns):
        raise BtAuthError(401, "ReplayedRequest", "this nonce was already accepted from this hotkey")
    return str(caller.hotkey_ss58)


def sign_headers(
    signer: HotkeySigner,
    receiver_ss58: str,
    body: bytes,
    path: str = ROUTE,
    method: str = "POST",
    nonce_ns: int | None = None,
) -> dict[str, str]:
    from bittensor import http_auth

    return http_auth.sign(
        signer, method=method, path=path, body=body, receiver_ss58=receiver_ss58, nonce_ns=nonce_ns
    )


def build_request(
    signer: HotkeySigner,
    axon_hotkey: str,
    ip: str,
    port: int,
    image_b64: str,
    request_id: str | None = None,
    nonce_ns: int | None = None,
    path: str = ROUTE,
) -> tuple[str, dict[str, str], bytes]:
    """``(url, headers, raw_body)``; send the body bytes as-is (the signature covers their sha256)."""
    body = RoadworkRequest(image=image_b64, request_id=request_id).model_dump_json(exclude_none=True).encode()
    headers = sign_headers(signer, axon_hotkey, body, path=path, nonce_ns=nonce_ns)
    headers["Content-Type"] = "application/json"
    return f"http://{ip}:{port}{path}", headers, body


def parse_response(status: int, body: bytes | str | dict[str, Any] | None) -> tuple[float | None, int, str]:
    """``(prediction | None, status, message)``."""
    data: Any = body
    if isinstance(body, (bytes, str)):
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            data = None
    if not isinstance(data, dict):
        return None, status, "unparseable response body"
    if status != 200:
        return None, status, str(data.get("message") or data.get("error") or "")
    try:
        p = float(data["prediction"])
    except (KeyError, TypeError, ValueError):
        return None, status, "response has no prediction"
    return (p if 0.0 <= p <= 1.0 else None), status, "Success"
