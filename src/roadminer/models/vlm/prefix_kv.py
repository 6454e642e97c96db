"""Prefix KV cache for the VLM few-shot prompt: computed once, shared through Redis, copied per use.

The few-shot prefix (instructions + K exemplar images with their answers) is the same for every request,
so its attention keys/values are computed once. They are stored as safetensors (never pickle) under a key
that changes whenever anything that shapes them changes: model id, revision, dtype, the prefix token ids
and the exemplar image hashes. A second process (another miner replica, a restart) warm-starts from Redis
instead of recomputing; an in-process LRU sits in front of Redis. A forward pass appends to the cache
it is given, so every request gets its own copy (``PrefixKV.as_cache``).

The byte store is a tiny sync interface (the model runs on a worker thread): ``RedisBytes`` talks to
Redis directly, ``StateStoreBytes`` drives the project's async ``StateStore`` on its event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from loguru import logger

FORMAT_VERSION = "1"
KEY_NAMESPACE = "vlm-prefix-kv"


class BytesBackend(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None: ...


class RedisBytes:
    """Sync redis-py client (called from the model's worker thread)."""

    def __init__(self, url: str, key_prefix: str = "roadminer:", socket_timeout: float = 5.0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=socket_timeout,
                                           socket_connect_timeout=socket_timeout)
        self.key_prefix = key_prefix

    def get(self, key: str) -> bytes | None:
        return self.client.get(self.key_prefix + key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.client.set(self.key_prefix + key, value, ex=int(ttl) if ttl else None)

    def close(self) -> None:
        self.client.close()


class StateStoreBytes:
    """Adapter for the async ``roadminer.state.store.StateStore`` living on ``loop`` (the miner's loop)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop, timeout: float = 10.0) -> None:
        self.store, self.loop, self.timeout = store, loop, timeout

    def get(self, key: str) -> bytes | None:
        return asyncio.run_coroutine_threadsafe(self.store.get_bytes(key), self.loop).result(self.timeout)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.store.set_bytes(key, value, ttl), self.loop)
        fut.result(self.timeout)


def prefix_key(model_id: str, revision: str | None, dtype: str, token_ids: Sequence[int],
               exemplar_hashes: Sequence[str], extra: dict[str, Any] | None = None) -> str:
    """Content address of a prefix KV: any change of model, weights, dtype, prompt or exemplars
    gives a new key (an old entry is never reused by mistake)."""
    h = hashlib.sha256()
    head = {"v": FORMAT_VERSION, "model": model_id, "revision": revision or "", "dtype": dtype,
            "exemplars": list(exemplar_hashes), "extra": extra or {}}
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(b"\0")
    h.update(",".join(str(int(t)) for t in token_ids).encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)[-48:]
    return f"{KEY_NAMESPACE}:{slug}:{h.hexdigest()[:40]}"


@dataclass
class PrefixKV:
    """Per-layer (key, value) tensors [1, kv_heads, prefix_len, head_dim] of one prefix."""

    layers: list[tuple[Any, Any]]
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.layers[0][0].shape[-2]) if self.layers else 0

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def to(self, device: Any) -> PrefixKV:
        return PrefixKV([(k.to(device), v.to(device)) for k, v in self.layers], dict(self.meta))

    def as_cache(self, batch: int = 1, config: Any = None) -> Any:
        """A fresh ``DynamicCache`` holding a copy of the prefix for ``batch`` rows; the stored tensors
        are never touched by the forward pass that extends it."""
        from transformers import DynamicCache

        data = [(k.expand(batch, -1, -1, -1).clone(), v.expand(batch, -1, -1, -1).clone())
                for k, v in self.layers]
        return DynamicCache(ddp_cache_data=data, config=config)

    @classmethod
    def from_cache(cls, cache: Any, meta: dict[str, str] | None = None) -> PrefixKV:
        layers = []
        for item in cache:  # DynamicCache iterates (keys, values[, sliding_window])
            k, v = item[0], item[1]
            layers.append((k[:1].detach().clone(), v[:1].detach().clone()))
        return cls(layers, dict(meta or {}))


def dumps_kv(kv: PrefixKV) -> bytes:
    from safetensors.torch import save

    tensors = {}
    for i, (k, v) in enumerate(kv.layers):
        tensors[f"k.{i}"] = k.detach().to("cpu").contiguous()
        tensors[f"v.{i}"] = v.detach().to("cpu").contiguous()
    meta = {str(a): str(b) for a, b in kv.meta.items()}
    meta.update({"format": FORMAT_VERSION, "layers": str(len(kv.layers))})
    return save(tensors, metadata=meta)


def loads_kv(data: bytes) -> PrefixKV:
    """Parse safetensors bytes (no code execution, unlike pickle); raises ValueError when malformed."""
    from safetensors.torch import load

    try:
        tensors = load(data)
        meta = _metadata(data)
    except Exception as e:
        raise ValueError(f"stored prefix KV is not valid safetensors: {e}") from e
    n = int(meta.get("layers", -1))
    if meta.get("format") != FORMAT_VERSION or n < 0:
        raise ValueError(f"stored prefix KV has format {meta.get('format')!r}, want {FORMAT_VERSION}")
    try:
        layers = [(tensors[f"k.{i}"], tensors[f"v.{i}"]) for i in range(n)]
    except KeyError as e:
        raise ValueError(f"stored prefix KV misses tensor {e}") from e
    return PrefixKV(layers, meta)


def _metadata(data: bytes) -> dict[str, str]:
    # The header is an 8-byte little-endian length followed by JSON; read it without touching tensors.
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return dict(header.get("__metadata__") or {})


@dataclass
class CacheStats:
    lru_hits: int = 0
    store_hits: int = 0
    computed: int = 0
    store_errors: int = 0
    last_source: str = ""
    last_seconds: float = 0.0


class PrefixKVCache:
    """LRU (on the model's device) -> byte store (Redis) -> compute, and write-back on compute."""

    def __init__(self, backend: BytesBackend | None = None, lru_size: int = 4,
                 ttl_s: float | None = None) -> None:
        self.backend = backend
        self.lru_size = max(1, lru_size)
        self.ttl_s = ttl_s
        self._lru: OrderedDict[str, PrefixKV] = OrderedDict()
        self.stats = CacheStats()

    def clear_local(self) -> None:
        self._lru.clear()

    def _remember(self, key: str, kv: PrefixKV) -> None:
        self._lru[key] = kv
        self._lru.move_to_end(key)
        while len(self._lru) > self.lru_size:
            self._lru.popitem(last=False)

    def load(self, key: str, device: Any = "cpu") -> PrefixKV | None:
        """From the LRU or the store, without computing."""
        if key in self._lru:
            self._lru.move_to_end(key)
            self.stats.lru_hits += 1
            self.stats.last_source = "lru"
            return self._lru[key]
        if self.backend is None:
            return None
        try:
            raw = self.backend.get(key)
        except Exception as e:  # Redis down: compute locally instead
            self.stats.store_errors += 1
            logger.warning("prefix KV store read failed ({}); computing locally", e)
            return None
        if raw is None:
            return None
        try:
            kv = loads_kv(raw).to(device)
        except ValueError as e:
            self.stats.store_errors += 1
            logger.warning("ignoring stored prefix KV {}: {}", key, e)
            return None
        self.stats.store_hits += 1
        self.stats.last_source = "store"
        self._remember(key, kv)
        return kv

    def store(self, key: str, kv: PrefixKV) -> None:
        self._remember(key, kv)
        if self.backend is None:
            return
        try:
            self.backend.set(key, dumps_kv(kv), self.ttl_s)
        except Exception as e:
            self.stats.store_errors += 1
            logger.warning("prefix KV store write failed: {}", e)

    def get_or_compute(self, key: str, compute: Callable[[], PrefixKV], device: Any = "cpu") -> PrefixKV:
        t0 = time.perf_counter()
        kv = self.load(key, device)
        if kv is None:
            kv = compute()
            self.stats.computed += 1
            self.stats.last_source = "computed"
            self.store(key, kv)
        self.stats.last_seconds = time.perf_counter() - t0
        return kv
