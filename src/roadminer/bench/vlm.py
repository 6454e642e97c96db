"""Benchmark of the VLM prefix KV cache: per-request prefill with vs without the cached few-shot prefix,
and warm start of the prefix from the byte store (Redis, or in-memory bytes) vs recomputing it.

``bench_prefix_cache()`` returns a JSON-able dict; ``roadminer bench`` can include it, and
``python -m roadminer.bench.vlm --size 2b --device cuda`` runs it alone. Weights are random
(Qwen2-VL-2B shapes for ``2b``): timings depend on shapes, not on weight values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from roadminer.models.vlm.prefix_kv import PrefixKVCache, RedisBytes, dumps_kv


class MemoryBytes:
    """In-process byte store with the Redis interface (serialisation cost included, network not)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.data[key] = value


def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _time(fn: Any, device: Any, repeats: int) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "n": len(samples)}


def bench_prefix_cache(size: str = "tiny", device: str = "cpu", dtype: str = "auto", exemplars: int = 4,
                       image_size: int = 224, batch_sizes: tuple[int, ...] = (1, 8), repeats: int = 5,
                       redis_url: str | None = None, seed: int = 0) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor

    from roadminer.models.vlm.hf import HFVLMTier
    from roadminer.models.vlm.random_qwen import build_local_processor, random_qwen2vl

    with tempfile.TemporaryDirectory() as tmp:
        proc_dir = build_local_processor(tmp, min_pixels=image_size * image_size,
                                         max_pixels=image_size * image_size)
        processor = AutoProcessor.from_pretrained(proc_dir)
    t0 = time.perf_counter()
    model = random_qwen2vl(processor, size, seed=seed, device=device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    ex = [{"image": rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
           "answer": "Yes" if i % 2 == 0 else "No"} for i in range(exemplars)]
    backend: Any = RedisBytes(redis_url) if redis_url else MemoryBytes()
    tier = HFVLMTier(name="vlm", model=f"random-qwen2-vl-{size}", model_obj=model, processor_obj=processor,
                     device=device, dtype=dtype, exemplars=ex, image_size=image_size, kv_backend=backend)
    n_params = sum(p.numel() for p in tier.model.parameters())
    images = [rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
              for _ in range(max(batch_sizes))]

    # Prefix: recompute vs warm start from the byte store vs in-process LRU.
    tier.next_token_logits(images[:1], use_prefix_cache=False)  # warm kernels / allocator
    recompute = _time(tier.compute_prefix_kv, device, repeats)
    kv = tier.prefix_kv()
    blob = dumps_kv(kv)

    def warm_start() -> None:
        fresh = PrefixKVCache(backend)
        fresh.load(tier.kv_key, tier.device)

    store = _time(warm_start, device, repeats)
    lru = _time(tier.prefix_kv, device, repeats)

    per_request: dict[str, Any] = {}
    for b in batch_sizes:
        imgs = images[:b]
        tier.next_token_logits(imgs, use_prefix_cache=True)
        tier.next_token_logits(imgs, use_prefix_cache=False)
        cached = _time(lambda imgs=imgs: tier.next_token_logits(imgs, use_prefix_cache=True), device, repeats)
        full = _time(lambda imgs=imgs: tier.next_token_logits(imgs, use_prefix_cache=False), device, repeats)
        diff = float((tier.next_token_logits(imgs, True) - tier.next_token_logits(imgs, False)).abs().max())
        per_request[str(b)] = {"cached_prefix": cached, "full_prefill": full,
                               "speedup": full["median_ms"] / max(cached["median_ms"], 1e-9),
                               "max_logit_diff": diff}
    q = tier.processor(text=[tier.query_text], images=images[:1], return_tensors="pt")
    gpu = torch.cuda.get_device_name() if tier.device.type == "cuda" else None
    return {
        "size": size, "device": str(tier.device), "gpu": gpu, "dtype": tier.dtype_name,
        "params": int(n_params), "build_s": build_s,
        "exemplars": exemplars, "image_size": image_size, "prefix_tokens": tier.prefix_len,
        "query_tokens": int(q["input_ids"].shape[1]), "kv_bytes": kv.nbytes(), "blob_bytes": len(blob),
        "store": "redis" if redis_url else "memory-bytes",
        "prefix_recompute": recompute, "prefix_warm_start_from_store": store, "prefix_lru_hit": lru,
        "warm_start_speedup": recompute["median_ms"] / max(store["median_ms"], 1e-9),
        "per_request": per_request, "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", default="tiny", choices=["tiny", "2b"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--exemplars", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    res = bench_prefix_cache(a.size, a.device, a.dtype, a.exemplars, a.image_size,
                             tuple(int(x) for x in a.batch.split(",")), a.repeats, a.redis_url)
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
