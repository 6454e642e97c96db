"""The SHA-256 of every model file the project ships in ``assets/models``, pinned in code.

Loaders read a shipped file through :func:`read_verified`, which hashes the very bytes they then parse and
refuses a file whose digest differs from this table, or a file in that folder the table does not name. A
card or manifest beside the file is never trusted for this: whoever can swap a weight file can swap its card
too. A retrained or refitted model therefore needs a deliberate edit here (``tests`` compare every shipped
file with the table). Files outside ``assets/models`` (an operator's own model, a registry version) are read
as they are; their formats (safetensors, JSON) carry no code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "assets" / "models"

# file name in assets/models -> sha256 hex. Update together with the file (and its card).
SHA256: dict[str, str] = {
    "roadwork_classifier.safetensors": "da9d651345ef46cb027b2dd99bc128fffbf8dbf6c9fd29706b99a0b922952539",
    "roadwork_classifier_lite2.safetensors": "9be49a8c61fb3b45903d00d14fc86b26a183ec9078eff1015017f67da6774e39",
    "roadwork_yolo.safetensors": "87d2d5bbe95143b0c31dc65d895afb402ac78d3318d87dfe066be85c6828ed69",
    "colour_cue.json": "e10c04971cd6fc2a6988e751eb89d4e34cce7079244e599067b07c3125496ee3",
    "cascade_consensus.json": "15b313f0f1eb0e916189d4db3169ba19fbecf546c0058851a625cf0547a7ca16",
}

# Suffixes of files in assets/models that some loader reads; documentation (.md, .card.json) is not loaded.
LOADED_SUFFIXES = (".safetensors", ".json", ".onnx", ".pt", ".pth", ".bin")


class ShippedFileError(ValueError):
    """A file in ``assets/models`` whose bytes are not the ones pinned here (or that is not pinned at all)."""


def is_shipped(path: str | Path, shipped_dir: Path | None = None) -> bool:
    """True when ``path`` lives directly in the shipped models folder."""
    try:
        return Path(path).resolve().parent == (shipped_dir or SHIPPED_DIR).resolve()
    except OSError:
        return False


def is_loadable(name: str) -> bool:
    return name.endswith(LOADED_SUFFIXES) and not name.endswith(".card.json")


def verify_bytes(name: str, data: bytes, table: dict[str, str] | None = None) -> str:
    """The sha256 of ``data`` when it is the pinned content of shipped file ``name``; else ShippedFileError."""
    table = SHA256 if table is None else table
    expected = table.get(name)
    if not expected:
        raise ShippedFileError(
            f"refusing to load assets/models/{name}: it is not pinned in roadminer.models.shipped.SHA256 "
            "(a shipped model file needs its sha256 recorded there)"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected.lower():
        raise ShippedFileError(
            f"refusing to load assets/models/{name}: its sha256 is {actual}, the pinned one is {expected} "
            "(the file was modified or replaced; reinstall roadminer, or update the pin for a deliberate retrain)"
        )
    return actual


def read_verified(path: str | Path, shipped_dir: Path | None = None, table: dict[str, str] | None = None) -> bytes:
    """The bytes of ``path``, checked against the pin when it is a shipped file. Callers parse these bytes
    (not the file again), so the content checked is the content loaded."""
    p = Path(path)
    data = p.read_bytes()
    if is_shipped(p, shipped_dir):
        verify_bytes(p.name, data, table)
    return data


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (header only; raises ValueError when malformed)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("not a safetensors file: header length out of range")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: header is not an object")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("safetensors metadata must map names to strings")
    return meta
