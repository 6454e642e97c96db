"""The SN72 ``ImageSynapse`` wire format, as a bittensor 9.12 / 10.x Dendrite and Axon speak it.

Server side: ``parse_headers`` (headers -> ``ImageSynapse``), ``check_request`` (signature and nonce
rules of the bittensor axon, with a pluggable nonce store), ``success_response`` / ``error_response``
(body and headers that a real Dendrite turns into ``prediction`` and ``dendrite.status_code`` /
``status_message``).

Client side: ``build_request`` produces the URL, headers and JSON body a 9.12 Dendrite sends;
``parse_response`` reads an answer the way the Dendrite does.

The signed message is ``f"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"``. ImageSynapse has
no ``required_hash_fields``, so ``body_hash`` is sha3-256 of the empty string and the signature does not
cover the image: that is the reference protocol, kept for compatibility.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
import uuid as uuid_mod
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from roadminer.protocol.keys import HotkeySigner, verify_signature

SYNAPSE_NAME = "ImageSynapse"
ROUTE = f"/{SYNAPSE_NAME}"
DEFAULT_TIMEOUT_S = 9.0
EMPTY_BODY_HASH = hashlib.sha3_256(b"").hexdigest()
ALLOWED_DELTA_S = 4.0
# The ``timeout`` header widens a first-seen endpoint's nonce window (``4 s + timeout``) but is not signed:
# whoever replays a captured request may set it. It counts at most MAX_TIMEOUT_S in the window.
# Validators ask with 9 s (SN72) to 12 s (the bittensor Dendrite default), so 12 s loses no honest caller.
MAX_TIMEOUT_S = 12.0
# bittensor encodes versions as major*1e6 + minor*1e3 + patch; a client built here claims 9.12.2.
REFERENCE_VERSION = "9.12.2"

AXON_PREFIX = "bt_header_axon_"
DENDRITE_PREFIX = "bt_header_dendrite_"
INPUT_OBJ_PREFIX = "bt_header_input_obj_"
HEADER_NAME = "name"
HEADER_TIMEOUT = "timeout"
HEADER_SIZE = "header_size"
HEADER_TOTAL_SIZE = "total_size"
HEADER_BODY_HASH = "computed_body_hash"
HEADER_AXON_STATUS_CODE = AXON_PREFIX + "status_code"
HEADER_AXON_STATUS_MESSAGE = AXON_PREFIX + "status_message"


def version_as_int(version: str) -> int:
    parts = [int(p) for p in version.split(".")[:3]]
    while len(parts) < 3:
        parts.append(0)
    return sum(e * (1000**i) for i, e in enumerate(reversed(parts)))


def _opt_int(v: Any) -> Any:
    return int(v) if isinstance(v, str) else v


def _opt_float(v: Any) -> Any:
    return float(v) if isinstance(v, str) else v


class TerminalInfo(BaseModel):
    """One end of a request (``dendrite`` = caller, ``axon`` = server), as bittensor 9.12 defines it."""

    model_config = ConfigDict(validate_assignment=True)

    status_code: int | None = None
    status_message: str | None = None
    process_time: float | None = None
    ip: str | None = None
    port: int | None = None
    version: int | None = None
    nonce: int | None = None
    uuid: str | None = None
    hotkey: str | None = None
    signature: str | None = None

    _c_status = field_validator("status_code", "port", "version", "nonce", mode="before")(_opt_int)
    _c_time = field_validator("process_time", mode="before")(_opt_float)


class ImageSynapse(BaseModel):
    """The NATIX ``ImageSynapse``: bittensor bookkeeping fields plus ``testnet_label``, ``image``,
    ``prediction``. Field names and defaults match the reference so the JSON round-trips."""

    model_config = ConfigDict(validate_assignment=True)

    name: str | None = SYNAPSE_NAME
    timeout: float | None = 12.0
    total_size: int | None = 0
    header_size: int | None = 0
    dendrite: TerminalInfo | None = Field(default_factory=TerminalInfo)
    axon: TerminalInfo | None = Field(default_factory=TerminalInfo)
    computed_body_hash: str | None = ""
    testnet_label: int = -1
    image: str = ""
    prediction: float = -1.0

    _c_int = field_validator("total_size", "header_size", mode="before")(_opt_int)
    _c_float = field_validator("timeout", mode="before")(_opt_float)

    @property
    def body_hash(self) -> str:
        return EMPTY_BODY_HASH

    def to_headers(self) -> dict[str, str]:
        """Headers in bittensor's ``Synapse.to_headers`` layout (values are strings, None skipped)."""
        headers: dict[str, str] = {HEADER_NAME: str(self.name), HEADER_TIMEOUT: str(self.timeout)}
        if self.axon:
            headers.update(
                {AXON_PREFIX + k: str(v) for k, v in self.axon.model_dump().items() if v is not None}
            )
        if self.dendrite:
            headers.update(
                {DENDRITE_PREFIX + k: str(v) for k, v in self.dendrite.model_dump().items() if v is not None}
            )
        headers[HEADER_SIZE] = str(sys.getsizeof(headers))
        headers[HEADER_TOTAL_SIZE] = str(self.total_size or 0)
        headers[HEADER_BODY_HASH] = self.body_hash
        return headers


class SynapseError(Exception):
    """A request refused with an HTTP status; ``message`` is safe to send to the caller."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _header_items(headers: Mapping[str, str]) -> list[tuple[str, str]]:
    return [(str(k).lower(), str(v)) for k, v in headers.items()]


def parse_headers(headers: Mapping[str, str]) -> ImageSynapse:
    """Build the request synapse from HTTP headers (as bittensor's ``Synapse.from_headers``).

    Raises ``SynapseError(400)`` on malformed values; never any other exception.
    """
    axon: dict[str, str] = {}
    dendrite: dict[str, str] = {}
    top: dict[str, str] = {}
    top_names = (HEADER_NAME, HEADER_TIMEOUT, HEADER_SIZE, HEADER_TOTAL_SIZE, HEADER_BODY_HASH)
    for key, value in _header_items(headers):
        if key.startswith((AXON_PREFIX, DENDRITE_PREFIX)) or key in top_names:
            try:
                value.encode("utf-8")  # non-UTF-8 bytes arrive as surrogate escapes; they are echoed back
            except UnicodeEncodeError:
                raise SynapseError(
                    400,
                    "Improperly formatted request: header "
                    f"{key.encode('utf-8', 'backslashreplace').decode()} is not valid UTF-8",
                ) from None
        if key.startswith(AXON_PREFIX):
            axon[key[len(AXON_PREFIX) :]] = value
        elif key.startswith(DENDRITE_PREFIX):
            dendrite[key[len(DENDRITE_PREFIX) :]] = value
        elif key in top_names:
            top[key] = value
    known = set(TerminalInfo.model_fields)
    parts: dict[str, TerminalInfo] = {}
    for label, raw in (("axon", axon), ("dendrite", dendrite)):
        try:
            parts[label] = TerminalInfo(**{k: v for k, v in raw.items() if k in known})
        except ValidationError as e:
            raise SynapseError(
                400, f"Improperly formatted request: bad header values ({_locs(e, label)})"
            ) from None
    try:
        synapse = ImageSynapse(
            name=SYNAPSE_NAME,
            timeout=top.get(HEADER_TIMEOUT, DEFAULT_TIMEOUT_S),
            header_size=top.get(HEADER_SIZE, 0),
            total_size=top.get(HEADER_TOTAL_SIZE, 0),
            computed_body_hash=top.get(HEADER_BODY_HASH, ""),
            axon=parts["axon"],
            dendrite=parts["dendrite"],
        )
    except (ValidationError, ValueError) as e:
        where = _locs(e, "") if isinstance(e, ValidationError) else str(e)
        raise SynapseError(400, f"Improperly formatted request: bad header values ({where})") from None
    if synapse.timeout is not None and not math.isfinite(synapse.timeout):
        raise SynapseError(400, "Improperly formatted request: bad header values (timeout)")
    return synapse


def _locs(e: ValidationError, prefix: str) -> str:
    return ", ".join(
        ".".join([prefix, *map(str, err["loc"])] if prefix else map(str, err["loc"])) for err in e.errors()
    )


def signature_message(
    nonce: int, dendrite_hotkey: str, axon_hotkey: str, uuid: str, body_hash: str = EMPTY_BODY_HASH
) -> str:
    return f"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"


class NonceVerdict:
    OK = "ok"
    STALE = "stale"  # first-seen endpoint with a nonce outside the freshness window
    REPLAY = "replay"  # not greater than the last accepted nonce of this endpoint


class EndpointNonceStore(Protocol):
    """Per-endpoint (``hotkey:uuid``) last-nonce store; ``advance`` checks and records atomically.
    ``endpoint_ttl_s``: how long an endpoint's last nonce is kept after it was written."""

    endpoint_ttl_s: float

    async def advance(self, endpoint_key: str, nonce_ns: int, first_min_ns: int | None) -> str: ...


def effective_timeout(timeout_s: float | None, max_timeout_s: float = MAX_TIMEOUT_S) -> float:
    """The caller's (unsigned) timeout as the nonce window uses it: at most ``max_timeout_s``. A negative one
    narrows the window as in bittensor (it can only refuse more); it is bounded below so the arithmetic stays
    finite."""
    t = timeout_s if timeout_s is not None and math.isfinite(timeout_s) else 0.0
    return min(max(t, -max_timeout_s), max_timeout_s)


def nonce_window_s(
    timeout_s: float | None, allowed_delta_s: float = ALLOWED_DELTA_S, max_timeout_s: float = MAX_TIMEOUT_S
) -> float:
    """How old a first-seen endpoint's nonce may be: ``allowed_delta_s + timeout`` (timeout clamped)."""
    return allowed_delta_s + effective_timeout(timeout_s, max_timeout_s)


def nonce_window_floor(
    now_ns: int,
    timeout_s: float | None,
    allowed_delta_s: float = ALLOWED_DELTA_S,
    max_timeout_s: float = MAX_TIMEOUT_S,
) -> int:
    """Nonces of a first-seen endpoint must be strictly greater than this (bittensor's rule)."""
    return int(now_ns - nonce_window_s(timeout_s, allowed_delta_s, max_timeout_s) * 1e9)


async def check_request(
    synapse: ImageSynapse,
    axon_hotkey: str,
    nonce_store: EndpointNonceStore,
    *,
    now_ns: int | None = None,
    allowed_delta_s: float = ALLOWED_DELTA_S,
    max_timeout_s: float = MAX_TIMEOUT_S,
) -> None:
    """Signature and nonce checks of a bittensor axon. Raises ``SynapseError(401, ...)`` on failure.

    Order: shape, receiver, signature, then the nonce store (written only for valid signatures, so
    forged traffic cannot advance a validator's nonce).

    Only what the signature covers may decide how strict the nonce rules are. bittensor's axon skips the
    freshness window when the ``bt_header_dendrite_version`` header says < 7.2.0; that header is not
    signed, so a captured request replayed with ``7.1.0`` would pass once its endpoint entry expired. Here
    every request gets the window (``now - (allowed_delta_s + timeout)``, the timeout clamped to
    ``max_timeout_s``) and strict increase per endpoint, whatever version it claims. A nonce further in
    the future than the store keeps endpoints (minus the window) is refused too: its entry would expire
    while the nonce still looked fresh, and the request could be replayed then.
    """
    d = synapse.dendrite
    if d is None or not d.hotkey:
        raise SynapseError(401, "Not Verified with error: missing dendrite hotkey")
    if d.nonce is None:
        raise SynapseError(401, "Not Verified with error: Missing Nonce")
    if not d.signature:
        raise SynapseError(401, "Not Verified with error: missing signature")
    if d.uuid is None:
        raise SynapseError(401, "Not Verified with error: missing uuid")
    claimed_axon = synapse.axon.hotkey if synapse.axon else None
    if claimed_axon and claimed_axon != axon_hotkey:
        raise SynapseError(
            401,
            f"Not Verified with error: request is addressed to hotkey {claimed_axon}, "
            f"this axon is {axon_hotkey}",
        )
    if synapse.computed_body_hash and synapse.computed_body_hash != EMPTY_BODY_HASH:
        raise SynapseError(400, "Hash mismatch between header body hash and parsed body hash")
    message = signature_message(d.nonce, d.hotkey, axon_hotkey, d.uuid, EMPTY_BODY_HASH)
    if not verify_signature(message, d.signature, d.hotkey):
        raise SynapseError(401, "Not Verified with error: Signature mismatch")
    now = time.time_ns() if now_ns is None else now_ns
    window = nonce_window_s(synapse.timeout, allowed_delta_s, max_timeout_s)
    ahead_s = (int(d.nonce) - now) / 1e9
    max_ahead_s = nonce_store.endpoint_ttl_s - window
    if ahead_s > max_ahead_s:
        raise SynapseError(
            401,
            f"Not Verified with error: Nonce is {ahead_s:.2f} seconds in the future "
            f"(at most {max_ahead_s:.2f} accepted)",
        )
    floor = nonce_window_floor(now, synapse.timeout, allowed_delta_s, max_timeout_s)
    verdict = await nonce_store.advance(f"{d.hotkey}:{d.uuid}", int(d.nonce), floor)
    if verdict == NonceVerdict.STALE:
        age = (now - int(d.nonce)) / 1e9
        raise SynapseError(
            401,
            f"Not Verified with error: Nonce is too old: acceptable delta is {window:.2f} "
            f"seconds but request was {age:.2f} seconds old",
        )
    if verdict == NonceVerdict.REPLAY:
        raise SynapseError(401, "Not Verified with error: Nonce is too old, a newer one was last processed")


def fill_axon(
    synapse: ImageSynapse,
    *,
    hotkey: str,
    uuid: str,
    version: int,
    status_code: int,
    status_message: str,
    process_time: float | None = None,
    ip: str | None = None,
    port: int | None = None,
) -> None:
    axon = synapse.axon or TerminalInfo()
    axon.hotkey = hotkey
    axon.uuid = uuid
    axon.version = version
    axon.nonce = time.time_ns()
    axon.status_code = status_code
    axon.status_message = status_message
    if process_time is not None:
        axon.process_time = process_time
    if ip is not None:
        axon.ip = ip
    if port is not None:
        axon.port = port
    synapse.axon = axon


def success_response(synapse: ImageSynapse, prediction: float) -> tuple[int, dict[str, str], bytes]:
    """HTTP 200 with the synapse JSON (``image`` blanked) and bittensor's response headers.

    ``synapse.axon`` must already carry status 200 (see ``fill_axon``).
    """
    out = synapse.model_copy(deep=True)
    out.image = ""
    out.prediction = float(prediction)
    body = out.model_dump_json().encode()
    headers = out.to_headers()
    headers["Content-Type"] = "application/json"
    return 200, headers, body


def error_response(
    synapse: ImageSynapse | None, status: int, message: str
) -> tuple[int, dict[str, str], bytes]:
    """``{"message": ...}`` with the synapse headers, as bittensor's axon answers errors."""
    syn = synapse.model_copy(deep=True) if synapse is not None else ImageSynapse()
    if syn.axon is None:
        syn.axon = TerminalInfo()
    syn.axon.status_code = status
    syn.axon.status_message = message
    syn.image = ""
    headers = syn.to_headers()
    headers["Content-Type"] = "application/json"
    return status, headers, json.dumps({"message": message}).encode()


# --------------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------------


def _approx_total_size(body: dict[str, Any]) -> int:
    # bittensor reports a recursive sys.getsizeof; servers only log it, so an estimate is enough.
    return sys.getsizeof(json.dumps(body))


def build_request(
    signer: HotkeySigner,
    axon_hotkey: str,
    ip: str,
    port: int,
    image_b64: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    uuid: str | None = None,
    nonce: int | None = None,
    *,
    dendrite_ip: str = "127.0.0.1",
    version: int | None = None,
    testnet_label: int = -1,
) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``(url, headers, json_body)`` exactly as a bittensor 9.12 Dendrite sends one ImageSynapse.

    Reuse one ``uuid`` per client (as a Dendrite instance does) so the axon's nonce rule applies to a
    stable endpoint key; nonces must then strictly increase.
    """
    syn = ImageSynapse(image=image_b64, timeout=float(timeout), testnet_label=testnet_label)
    syn.dendrite = TerminalInfo(
        ip=dendrite_ip,
        version=version if version is not None else version_as_int(REFERENCE_VERSION),
        nonce=time.time_ns() if nonce is None else int(nonce),
        uuid=uuid or str(uuid_mod.uuid1()),
        hotkey=signer.ss58_address,
    )
    syn.axon = TerminalInfo(ip=ip, port=int(port), hotkey=axon_hotkey)
    msg = signature_message(
        syn.dendrite.nonce,
        signer.ss58_address,
        axon_hotkey,
        syn.dendrite.uuid,  # type: ignore[arg-type]
        syn.body_hash,
    )
    syn.dendrite.signature = signer.sign_hex(msg)
    body = syn.model_dump()
    syn.total_size = _approx_total_size(body)
    headers = syn.to_headers()
    body = syn.model_dump()
    url = f"http://{ip}:{port}{ROUTE}"
    return url, headers, body


def parse_response(
    status: int, headers: Mapping[str, str], body: bytes | str | dict[str, Any] | None
) -> tuple[float | None, int, str]:
    """``(prediction | None, status_code, message)`` the way a 9.12 Dendrite fills its synapse.

    The status code and message come from the ``bt_header_axon_status_*`` headers when present (the
    Dendrite merges them over the body), else from the body, else from the HTTP status. ``prediction``
    is None unless the answer is a 200 holding a finite number.
    """
    lowered = {k.lower(): v for k, v in _header_items(headers)}
    data: dict[str, Any] = {}
    if isinstance(body, dict):
        data = body
    elif body:
        try:
            parsed = json.loads(body)
            data = parsed if isinstance(parsed, dict) else {}
        except (ValueError, UnicodeDecodeError):
            data = {}
    code: int = status
    message = ""
    if status == 200:
        axon = data.get("axon") if isinstance(data.get("axon"), dict) else {}
        code = _safe_int(axon.get("status_code"), status)
        message = str(axon.get("status_message") or "")
    else:
        message = str(data.get("message") or "")
    code = _safe_int(lowered.get(HEADER_AXON_STATUS_CODE), code)
    message = lowered.get(HEADER_AXON_STATUS_MESSAGE, message) or message
    prediction: float | None = None
    if status == 200 and code == 200:
        try:
            p = float(data.get("prediction"))  # type: ignore[arg-type]
            prediction = p if p == p and abs(p) != float("inf") else None
        except (TypeError, ValueError):
            prediction = None
    return prediction, code, message


def _safe_int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default
