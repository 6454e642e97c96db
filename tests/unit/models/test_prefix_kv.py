"""Prefix KV in Redis: safetensors round trip, a second process warm-starts from it, bad bytes are
ignored (recomputed), the key changes with anything that shapes the prefix."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import redis

from testkit.net import free_port

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from roadminer.models.vlm.prefix_kv import (  # noqa: E402
    PrefixKV,
    PrefixKVCache,
    RedisBytes,
    StateStoreBytes,
    dumps_kv,
    loads_kv,
    prefix_key,
)


def _kv(seed: int = 0, layers: int = 3, dtype=torch.float32) -> PrefixKV:
    g = torch.Generator().manual_seed(seed)
    def t() -> torch.Tensor:
        return torch.randn(1, 2, 5, 4, generator=g).to(dtype)

    return PrefixKV([(t(), t()) for _ in range(layers)], {"model": "m"})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_safetensors_round_trip(dtype) -> None:
    kv = _kv(dtype=dtype)
    back = loads_kv(dumps_kv(kv))
    assert back.meta["model"] == "m" and back.seq_len == 5
    for (k0, v0), (k1, v1) in zip(kv.layers, back.layers, strict=True):
        assert k1.dtype == dtype and torch.equal(k0, k1) and torch.equal(v0, v1)


def test_malformed_bytes_are_rejected_not_executed() -> None:
    import pickle

    for raw in (b"", b"garbage", pickle.dumps({"k.0": 1}), dumps_kv(_kv())[:-7]):
        with pytest.raises(ValueError):
            loads_kv(raw)


def test_as_cache_copies_and_expands() -> None:
    kv = _kv()
    cache = kv.as_cache(batch=3)
    k, _v, *_ = next(iter(cache))
    assert k.shape == (3, 2, 5, 4)
    k.add_(1.0)
    assert not torch.equal(k[0:1], kv.layers[0][0])


def test_key_depends_on_everything_that_shapes_the_prefix() -> None:
    base = dict(model_id="Qwen/Qwen2-VL-2B-Instruct", revision="abc", dtype="bfloat16", token_ids=[1, 2, 3],
                exemplar_hashes=["h1", "h2"])
    k0 = prefix_key(**base)
    assert k0 == prefix_key(**base) and k0.startswith("vlm-prefix-kv:")
    for change in (dict(model_id="other"), dict(revision="def"), dict(dtype="float16"),
                   dict(token_ids=[1, 2, 4]), dict(exemplar_hashes=["h2", "h1"])):
        assert prefix_key(**{**base, **change}) != k0, change


def test_redis_lru_and_store_hits(redis_url: str) -> None:
    cache = PrefixKVCache(RedisBytes(redis_url), lru_size=1)
    calls = []

    def compute() -> PrefixKV:
        calls.append(1)
        return _kv()

    cache.get_or_compute("a", compute)
    cache.get_or_compute("a", compute)
    assert cache.stats.computed == 1 and cache.stats.lru_hits == 1
    cache.clear_local()
    kv = cache.get_or_compute("a", compute)
    assert cache.stats.store_hits == 1 and len(calls) == 1 and kv.seq_len == 5
    raw = redis.Redis.from_url(redis_url).get("roadminer:a")
    assert raw is not None and raw[8:9] == b"{"  # safetensors header, not a pickle


def test_corrupt_entry_and_redis_outage_fall_back_to_compute(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).set("roadminer:bad", b"\x80\x04not safetensors")
    cache = PrefixKVCache(RedisBytes(redis_url))
    kv = cache.get_or_compute("bad", _kv)
    assert kv.seq_len == 5 and cache.stats.computed == 1 and cache.stats.store_errors == 1
    assert loads_kv(redis.Redis.from_url(redis_url).get("roadminer:bad")).seq_len == 5  # overwritten
    dead = PrefixKVCache(RedisBytes(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5))
    assert dead.get_or_compute("x", _kv).seq_len == 5 and dead.stats.store_errors == 2


def test_state_store_adapter_drives_the_async_store(redis_url: str) -> None:
    from roadminer.state.backends.redis_store import RedisStore

    loop = asyncio.new_event_loop()
    import threading

    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        store = RedisStore(redis_url, prefix="rm:")
        cache = PrefixKVCache(StateStoreBytes(store, loop))
        cache.get_or_compute("k", _kv)
        cache.clear_local()
        assert cache.get_or_compute("k", lambda: pytest.fail("should come from the store")).seq_len == 5
        asyncio.run_coroutine_threadsafe(store.close(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


CHILD = textwrap.dedent("""
    import json, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import numpy as np, torch
    from transformers import AutoProcessor
    from roadminer.models.vlm.hf import HFVLMTier
    from roadminer.models.vlm.random_qwen import random_qwen2vl
    proc_dir, redis_url = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(proc_dir)
    model = random_qwen2vl(processor, "tiny", seed=0)
    ex = [{"image": np.full((56, 56, 3), 30 * i, np.uint8), "answer": a} for i, a in enumerate(["Yes", "No"])]
    tier = HFVLMTier(model="tiny-qwen2-vl", model_obj=model, processor_obj=processor, exemplars=ex,
                     image_size=56, redis_url=redis_url)
    img = [np.random.default_rng(5).integers(0, 256, (56, 56, 3), dtype=np.uint8)]
    cached = tier.next_token_logits(img, use_prefix_cache=True)
    full = tier.next_token_logits(img, use_prefix_cache=False)
    s = tier.kv_cache.stats
    print(json.dumps({"key": tier.kv_key, "computed": s.computed, "store_hits": s.store_hits,
                      "max_diff": float((cached - full).abs().max()), "logits": cached[0, :8].tolist()}))
""")


def _child(script: Path, proc_dir: Path, redis_url: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, str(script), str(proc_dir), redis_url], capture_output=True,
                         text=True, timeout=180, env=env, cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_warm_starts_from_redis(tmp_path: Path, redis_url: str) -> None:
    from roadminer.models.vlm.random_qwen import build_local_processor

    proc_dir = build_local_processor(tmp_path / "proc", max_pixels=56 * 56)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    first = _child(script, proc_dir, redis_url)
    assert first["computed"] == 1 and first["store_hits"] == 0
    assert redis.Redis.from_url(redis_url).exists("roadminer:" + first["key"])
    second = _child(script, proc_dir, redis_url)
    assert second["key"] == first["key"]
    assert second["computed"] == 0 and second["store_hits"] == 1, "warm start from Redis"
    assert second["max_diff"] < 2e-4, "restored prefix gives the logits of a full prefill"
    np.testing.assert_allclose(second["logits"], first["logits"], atol=1e-5)
