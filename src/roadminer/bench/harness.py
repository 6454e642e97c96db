"""Benchmark harness, one run on one device:

* the fast tier alone (EfficientNet-Lite0 on the device's engines: fast GPU engine, or torch / ONNX /
  ONNX int8 on a CPU), pipelined (the host work of the next batch overlaps the device work of this one);
* the shipped default cascade (Lite0, early exit, Lite2, fitted consensus) as the miner builds it for the
  device (``EarlyExitRouter.from_settings``), once per classifier engine: fast and torch on CUDA, ONNX
  Runtime and torch on a CPU; batch throughput and latency, the share of images that leave after the
  first tier, and how far the engines' answers are apart;
* the real miner (``start_miner``, shipped cascade, ``server.workers`` processes when asked) over
  loopback HTTP, signed SN72 requests from concurrent clients: req/s, p50/p99, errors. When it cannot
  start the bench fails with the reason;
* the reference miner's way (a ViT-B/16 transformers pipeline, one image at a time), for the ratio.

Inputs look like challenges: base64 of 224x224 RGB JPEGs at PIL quality 75: validator-parity
challenges (levels 0-3) from an image folder (``--images``), or drawn street scenes (half with work-zone
cues). From base64 strings to probabilities on the host, everything counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from loguru import logger

from roadminer.imaging.decode import to_b64
from roadminer.imaging.scenes import scene_jpegs

FULL_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
QUICK_SIZES_GPU = (1, 8, 64, 256)
QUICK_SIZES_CPU = (1, 8, 32)


@dataclass
class BenchConfig:
    device: str = "cpu"
    quick: bool = False
    batch_sizes: tuple[int, ...] | None = None
    seconds: float = 2.0  # per measured point (at least 3 batches)
    n_images: int = 256  # distinct challenge images, cycled
    baseline_images: int = 100
    http_requests: int = 400  # per concurrency level
    http_concurrency: tuple[int, ...] = (1, 64)
    cpu_variants: tuple[str, ...] = ("torch", "onnx", "onnx-int8")
    cascade_engines: tuple[str, ...] | None = None  # default: fast,torch on CUDA; onnx,torch on a CPU
    images: str | None = None  # DIR with roadwork/ + no_roadwork/: validator-parity challenges from it
    http_workers: int = 1  # server.workers of the measured miner (more than one needs redis_url)
    redis_url: str | None = None
    seed: int = 0
    skip: tuple[str, ...] = ()  # any of: fast, cascade, http, baseline, decode

    def resolved(self) -> BenchConfig:
        cfg = BenchConfig(**asdict(self))
        if cfg.batch_sizes is None:
            if cfg.quick:
                cfg.batch_sizes = QUICK_SIZES_GPU if cfg.device == "cuda" else QUICK_SIZES_CPU
            else:
                cfg.batch_sizes = FULL_SIZES if cfg.device == "cuda" else (1, 2, 4, 8, 16, 32, 64)
        if cfg.quick:
            cfg.seconds = min(cfg.seconds, 1.0)
            cfg.n_images = min(cfg.n_images, 64)
            cfg.baseline_images = min(cfg.baseline_images, 20 if cfg.device == "cuda" else 6)
            cfg.http_requests = min(cfg.http_requests, 128)
        elif cfg.device == "cpu":
            cfg.baseline_images = min(cfg.baseline_images, 24)
            cfg.http_requests = min(cfg.http_requests, 192)
        if cfg.cascade_engines is None:
            cfg.cascade_engines = ("fast", "torch") if cfg.device == "cuda" else ("onnx", "torch")
        return cfg


# ---------------------------------------------------------------------------------------------- inputs
def challenge_b64(n: int, seed: int = 0) -> list[str]:
    return [to_b64(r) for r in scene_jpegs(n, seed=seed)]


def challenge_jpegs(n: int, images: str | None = None, seed: int = 0) -> tuple[list[bytes], str]:
    """``n`` challenge JPEGs and where they came from: validator-parity challenges (label 50/50, level
    U{0..3}, JPEG q75 224x224) drawn from ``images`` (roadwork/ + no_roadwork/), else drawn scenes."""
    if not images:
        return scene_jpegs(n, seed=seed), "drawn street scenes (roadminer.imaging.scenes)"
    from roadminer.validator.challenges import FolderSource, make_challenge

    source = FolderSource(images)
    rng = np.random.default_rng(seed)
    return [make_challenge(source, rng).jpeg for _ in range(n)], f"validator-parity challenges from {images}"


def unique_variant(raw: bytes, tag: int | str) -> bytes:
    """The same JPEG with a comment segment holding ``tag``: identical pixels, a different payload hash,
    so that a result cache keyed by the payload cannot answer a benchmark request."""
    payload = f"roadminer-bench {tag}".encode()
    return raw[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + raw[2:]


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else float("nan")


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                           "cpu_count": os.cpu_count(), "cpu": _cpu_model()}
    import torch
    import torchvision

    env["torch"] = torch.__version__
    env["torchvision"] = torchvision.__version__
    env["torch_threads"] = torch.get_num_threads()
    if device == "cuda" and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    for mod in ("onnxruntime", "transformers", "aiohttp", "pybase64"):  # optional extras may be missing
        try:
            env[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            env[mod] = None
    return env


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


# ---------------------------------------------------------------------------------------- measurements
def measure_engine(engine: Any, b64: Sequence[str], batch_sizes: Sequence[int], seconds: float,
                   progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Pipelined throughput (base64 -> probabilities) and synchronous batch latency per batch size."""
    rows = []
    n_src = len(b64)
    for bs in batch_sizes:
        if bs > getattr(engine, "max_batch", bs):
            continue
        batches = [[b64[(k * bs + j) % n_src] for j in range(bs)] for k in range(max(1, n_src // bs) + 1)]
        engine.predict_b64(batches[0])  # this size's first call (graph, allocator) stays out of timing
        lat = []
        for k in range(min(20, max(3, int(40 / bs)))):
            t = time.perf_counter()
            engine.predict_b64(batches[k % len(batches)])
            lat.append(time.perf_counter() - t)
        images = 0
        t0 = time.perf_counter()
        for out in engine.stream_b64(_timed_batches(batches, seconds, t0)):
            images += len(out)
        dt = time.perf_counter() - t0
        row = {"batch": bs, "img_per_s": images / dt, "images": images, "seconds": dt,
               "batch_ms_p50": _pct(lat, 50) * 1000, "batch_ms_p99": _pct(lat, 99) * 1000}
        rows.append(row)
        if progress:
            progress(f"batch {bs}: {row['img_per_s']:.0f} img/s, {row['batch_ms_p50']:.2f} ms/batch")
    return rows


def _timed_batches(batches: Sequence[list[str]], seconds: float, t0: float) -> Iterator[list[str]]:
    k = 0
    while k < 3 or time.perf_counter() - t0 < seconds:
        yield batches[k % len(batches)]
        k += 1


def measure_decode(engine: Any, raws: Sequence[bytes], batch: int, seconds: float) -> dict[str, Any]:
    """Decode-only rate (bytes -> uint8 batch on the device) for each decoder split of a GPU engine."""
    import torch

    out: dict[str, Any] = {}
    saved = engine.decode_mode
    batches = [[raws[(k * batch + j) % len(raws)] for j in range(batch)] for k in range(4)]
    for mode in ("gpu", "cpu", "auto"):
        engine.decode_mode = mode
        stage = engine._stage[0]
        with torch.cuda.stream(engine.stream):
            engine._to_device(batches[0], stage)
            torch.cuda.synchronize()
            n = 0
            t0 = time.perf_counter()
            while n < 3 * batch or time.perf_counter() - t0 < seconds:
                engine._to_device(batches[(n // batch) % 4], stage)
                torch.cuda.current_stream().synchronize()
                n += batch
            out[mode] = n / (time.perf_counter() - t0)
    engine.decode_mode = saved
    # the model alone (graph replay of this bucket on device-resident input), for comparison
    x = torch.zeros((batch, engine.size, engine.size, 3), dtype=torch.uint8, device=engine.device)
    with torch.cuda.stream(engine.stream):
        engine._run_model(x)
        torch.cuda.synchronize()
        n = 0
        t0 = time.perf_counter()
        while n < 20 * batch or time.perf_counter() - t0 < seconds / 2:
            engine._run_model(x)
            n += batch
        torch.cuda.synchronize()
        out["model only"] = n / (time.perf_counter() - t0)
    return {"batch": batch, "img_per_s": out, "gpu_share_auto": round(engine.rates.gpu_share(), 3)}


def measure_baseline(device: str, b64: Sequence[str], n: int) -> dict[str, Any]:
    """The reference miner's way: base64 -> PIL -> transformers image-classification pipeline with a
    ViT-B/16 (random weights, built from config), one image at a time."""
    import base64
    import io

    import torch
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    torch.manual_seed(0)
    cfg = ViTConfig(num_labels=2, id2label={0: "None", 1: "Roadwork"}, label2id={"None": 0, "Roadwork": 1})
    model = ViTForImageClassification(cfg).eval()
    proc = ViTImageProcessor(size={"height": 224, "width": 224})
    pipe = pipeline("image-classification", model=model, image_processor=proc,
                    device=0 if device == "cuda" else -1)

    def one(s: str) -> float:
        img = Image.open(io.BytesIO(base64.b64decode(s)))
        res = pipe(img)
        return next((r["score"] for r in res if r["label"] == "Roadwork"), 0.0)

    for s in b64[:2]:
        one(s)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        one(b64[i % len(b64)])
        lat.append(time.perf_counter() - t)
    dt = time.perf_counter() - t0
    return {"model": "ViT-B/16 (random weights) via transformers pipeline('image-classification')",
            "device": device, "images": n, "img_per_s": n / dt, "ms_p50": _pct(lat, 50) * 1000,
            "ms_p99": _pct(lat, 99) * 1000}


# --------------------------------------------------------------------------------------------- loopback
class _ServerThread:
    """Runs an aiohttp miner in its own thread and event loop, so the client does not share its loop."""

    def __init__(self, start: Callable[[], Any]) -> None:
        self._start = start
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.info: dict[str, Any] = {}
        self._stop_cb: Callable[[], Any] | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="bench-miner", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.url, self.info, self._stop_cb = self.loop.run_until_complete(self._start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> _ServerThread:
        self.thread.start()
        self._ready.wait(300)
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop_cb is not None:
            fut = asyncio.run_coroutine_threadsafe(self._stop_cb(), self.loop)
            try:
                fut.result(30)
            except Exception as e:
                logger.warning("miner stop failed: {}", e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class BenchError(RuntimeError):
    """The bench could not measure what it was asked to (the reason is in the message)."""


def _real_miner(device: str, port: int, *, engine: str = "auto", tiers: list[dict[str, Any]] | None = None,
                workers: int = 1, redis_url: str | None = None) -> Callable[[], Any]:
    """Start the project's miner on loopback under a throwaway hotkey, as ``workers`` miner processes
    (``roadminer.miner.workers.WorkerPool``; one process when ``workers`` is 1, so that the load generator
    never shares an interpreter with the miner), with the shipped default cascade placed on ``device``
    (``tiers`` replaces it). More than one worker shares nonces through ``redis_url``."""

    async def start() -> tuple[str, dict[str, Any], Callable[[], Any]]:
        import shutil
        import tempfile

        import aiohttp

        from roadminer.core.config import load_settings
        from roadminer.miner.workers import WorkerPool

        if workers > 1 and not redis_url:
            raise BenchError("--http-workers > 1 needs --redis-url (the workers share nonces through Redis)")
        wallets = tempfile.mkdtemp(prefix="roadminer-bench-wallet-")  # a throwaway hotkey, removed on stop
        overrides: dict[str, Any] = {
            "server.host": "127.0.0.1", "server.port": port, "guards.allow_unregistered": True,
            "guards.require_validator_permit": False, "guards.min_stake": 0.0,
            "guards.rate_limit_per_minute": 10**9, "guards.rate_limit_burst": 10**9,
            "guards.max_inflight": 4096, "dashboard.on_miner": False,
            "state.backend": "redis" if workers > 1 else "memory", "device": device, "batcher.max_wait_ms": 0.5,
            "cascade.engine": engine, "server.workers": workers,
            "wallet.path": wallets, "wallet.name": "bench", "wallet.hotkey": "//RoadminerBench",  # dev URI: no SDK
        }
        if redis_url:
            overrides["state.redis_url"] = redis_url
        if tiers is not None:
            overrides["cascade.tiers"] = tiers
        try:
            pool = WorkerPool(load_settings(None, overrides), restart=False)
            await pool.start()
        except BaseException:
            shutil.rmtree(wallets, ignore_errors=True)
            raise
        url = f"http://127.0.0.1:{pool.ports[0]}"
        async with aiohttp.ClientSession() as session, session.get(url + "/health") as r:
            health = await r.json()

        async def stop() -> None:
            await pool.stop()
            shutil.rmtree(wallets, ignore_errors=True)

        info = {"server": f"roadminer miner, {workers} process(es) (start_miner via roadminer.miner.workers)",
                "signed": True, "axon_hotkey": pool.hotkeys[0], "workers": workers, "tiers": health["tiers"],
                "model_version": health["model_version"]}
        return url, info, stop

    return start


RequestBuilder = Callable[[str], tuple[str, dict, dict]]


def _signed_request_factory(url: str, axon_hotkey: str) -> Callable[[], RequestBuilder]:
    """Per concurrent client, a builder of SN72 requests signed by one throwaway validator hotkey."""
    import uuid as uuid_mod

    from roadminer.protocol import sn72
    from roadminer.protocol.keys import HotkeySigner

    signer = HotkeySigner.generate()
    host, port = url.rsplit("//", 1)[1].split(":")

    def client() -> RequestBuilder:
        # One dendrite uuid per concurrent client: nonces must increase per (hotkey, uuid) endpoint, and
        # one client sends its requests one after another, as a validator does.
        ident = str(uuid_mod.uuid4())

        def build(image_b64: str) -> tuple[str, dict, dict]:
            return sn72.build_request(signer, axon_hotkey, host, int(port), image_b64, uuid=ident)

        return build

    return client


async def _fallback_answers(session: Any, url: str | None) -> float | None:
    """Answers the miner gave from its colour fallback (model late or failing), from its /metrics."""
    if not url:
        return None
    try:
        async with session.get(url + "/metrics") as r:
            text = await r.text()
    except Exception:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith('roadminer_tier_exits_total{tier="fallback'):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _http_load(b64: Sequence[str], concurrency: int, n: int, clients: Callable[[], RequestBuilder],
                     offset: int = 0, metrics_url: str | None = None) -> dict[str, Any]:
    """``n`` signed requests from ``concurrency`` clients; request i sends ``b64[offset + i]``. Answers
    from the miner's fallback (deadline missed) are counted from its /metrics when ``metrics_url`` is
    given (one process)."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            nonlocal errors
            build = clients()
            for i in counter:
                target, headers, body = build(b64[(offset + i) % len(b64)])
                t = time.perf_counter()
                try:
                    async with session.post(target, json=body, headers=headers) as r:
                        data = await r.json(content_type=None)
                        ok = r.status == 200 and 0.0 <= float(data.get("prediction", -1)) <= 1.0
                except Exception:
                    ok = False
                lat.append(time.perf_counter() - t)
                errors += not ok

        # a few warm-up requests (connections, first batches)
        warm = [b64[(offset + n + i) % len(b64)] for i in range(min(8, n))]
        build = clients()
        for img in warm:
            target, headers, body = build(img)
            async with session.post(target, json=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise BenchError(f"the miner refused a signed warm-up request: HTTP {r.status}")
        before = await _fallback_answers(session, metrics_url)
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        dt = time.perf_counter() - t0
        after = await _fallback_answers(session, metrics_url)
    fallbacks = int(after - before) if before is not None and after is not None else None
    return {"concurrency": concurrency, "requests": n, "errors": errors, "fallback_answers": fallbacks,
            "req_per_s": n / dt, "ms_p50": _pct(lat, 50) * 1000, "ms_p99": _pct(lat, 99) * 1000,
            "ms_mean": float(np.mean(lat)) * 1000}


def measure_http(device: str, b64: Sequence[str], concurrency: Sequence[int], n: int, *, engine: str = "auto",
                 tiers: list[dict[str, Any]] | None = None, workers: int = 1,
                 redis_url: str | None = None) -> dict[str, Any]:
    """Signed SN72 requests over loopback HTTP to the real miner (shipped cascade unless ``tiers``), at each
    concurrency level. Raises ``BenchError`` with the reason when the miner cannot start (nothing else is
    measured instead)."""
    import base64

    port = _free_port()
    raws = [base64.b64decode(s) for s in b64]
    counts = [max(n, 4 * c) for c in concurrency]
    offsets = [sum(counts[:k]) + 8 * k for k in range(len(counts))]
    total = sum(counts) + 8 * len(counts)
    run = os.urandom(6).hex()  # a Redis result cache outlives a run: tags unique to this one
    b64 = [to_b64(unique_variant(raws[i % len(raws)], f"{run}-{i}")) for i in range(total)]  # no cache hits
    start = _real_miner(device, port, engine=engine, tiers=tiers, workers=workers, redis_url=redis_url)
    with contextlib.ExitStack() as stack:
        try:
            srv = stack.enter_context(_ServerThread(start))
        except BenchError:
            raise
        except Exception as e:
            raise BenchError(f"the miner could not start: {type(e).__name__}: {e}") from e
        result: dict[str, Any] = dict(srv.info)
        clients = _signed_request_factory(srv.url, srv.info["axon_hotkey"])
        metrics_url = srv.url if workers == 1 else None
        result["levels"] = [asyncio.run(_http_load(b64, c, k, clients, off, metrics_url))
                            for c, k, off in zip(concurrency, counts, offsets, strict=True)]
    return result


def measure_cascade(router: Any, b64: Sequence[str], batch_sizes: Sequence[int], seconds: float,
                    progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The cascade from base64 strings (decoded to bytes, pixels decoded by the tiers that need them), batch
    by batch: img/s, batch latency, and the share of images answered by the first tier alone."""
    import pybase64

    from roadminer.imaging.decode import ImagePolicy, decode_rgb
    from roadminer.models.base import ImageBatch

    policy = ImagePolicy()

    def decoder(raw: bytes) -> Any:
        return decode_rgb(raw, policy)

    def run(batch: list[str]) -> Any:
        raws = [pybase64.b64decode(s, validate=True) for s in batch]
        return router.predict(ImageBatch(None, raws, [""] * len(raws), decoder=decoder))

    rows = []
    n_src = len(b64)
    for bs in batch_sizes:
        batches = [[b64[(k * bs + j) % n_src] for j in range(bs)] for k in range(max(1, n_src // bs) + 1)]
        run(batches[0])  # this size's first call stays out of timing
        lat: list[float] = []
        images = first = 0
        t0 = time.perf_counter()
        k = 0
        while k < 3 or time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            res = run(batches[k % len(batches)])
            lat.append(time.perf_counter() - t)
            images += len(res.exit_index)
            first += int((res.exit_index == 0).sum())
            k += 1
        dt = time.perf_counter() - t0
        row = {"batch": bs, "img_per_s": images / dt, "images": images, "seconds": dt,
               "batch_ms_p50": _pct(lat, 50) * 1000, "batch_ms_p99": _pct(lat, 99) * 1000,
               "first_tier_exit_share": first / max(1, images)}
        rows.append(row)
        if progress:
            progress(f"batch {bs}: {row['img_per_s']:.0f} img/s, {row['batch_ms_p50']:.1f} ms/batch, "
                     f"{100 * row['first_tier_exit_share']:.0f}% leave after tier 0")
    return rows


def cascade_variants(cfg: BenchConfig, b64: Sequence[str], say: Callable[[str], None]) -> dict[str, Any]:
    """The shipped default cascade on each engine of ``cfg.cascade_engines``; answers compared to the first."""
    import pybase64

    from roadminer.cascade.router import EarlyExitRouter
    from roadminer.core.config import Settings
    from roadminer.imaging.decode import ImagePolicy, decode_rgb
    from roadminer.models.base import ImageBatch

    policy = ImagePolicy()
    probe = [pybase64.b64decode(s) for s in b64[:64]]
    out: dict[str, Any] = {}
    ref = None
    for engine in cfg.cascade_engines or ():
        say(f"shipped cascade [{engine}] on {cfg.device}")
        t = time.perf_counter()
        router = EarlyExitRouter.from_settings(Settings(device=cfg.device, cascade={"engine": engine}))
        router.warmup()
        build_s = time.perf_counter() - t
        try:
            rows = measure_cascade(router, b64, cfg.batch_sizes or (1,), cfg.seconds, say)
            full = router.predict(ImageBatch(None, probe, [""] * len(probe), decoder=lambda r: decode_rgb(r, policy)),
                                  early_exit=False)
            agree = None
            if ref is None:
                ref = full
            else:
                agree = {name: float(np.nanmax(np.abs(full.tier_probs[name] - ref.tier_probs[name])))
                         for name in full.tier_probs}
                agree["cascade"] = float(np.max(np.abs(full.prob - ref.prob)))
            out[engine] = {"tiers": router.describe(), "version": router.version, "build_s": build_s,
                           "rows": rows, "max_abs_diff_vs_first": agree}
        finally:
            router.close()
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -------------------------------------------------------------------------------------------- the run
@dataclass
class BenchResult:
    config: dict[str, Any]
    env: dict[str, Any]
    fast: dict[str, Any] = field(default_factory=dict)  # variant -> {"describe", "rows"}
    cascade: dict[str, Any] = field(default_factory=dict)  # engine -> {"tiers", "rows", "max_abs_diff_vs_first"}
    decode: dict[str, Any] | None = None
    http: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _build_engines(cfg: BenchConfig) -> dict[str, Any]:
    """Fast-path engines to measure on this device (name -> engine)."""
    import copy

    import torch

    from roadminer.models.engines.fast_gpu import FastImageEngine, resolve_backbone

    torch.manual_seed(cfg.seed)  # an untrained head of the default backbone is random: same for every engine
    base = resolve_backbone()

    def backbone() -> Any:
        return copy.deepcopy(base)

    engines: dict[str, Any] = {}
    max_b = max(cfg.batch_sizes or (64,))
    if cfg.device == "cuda":
        eng = FastImageEngine(backbone(), device="cuda", precision="fp16", max_batch=max(256, max_b))
        eng.warmup()
        engines["gpu-fp16-graph"] = eng
        return engines
    if "torch" in cfg.cpu_variants:
        engines["torch-cpu"] = FastImageEngine(backbone(), device="cpu", max_batch=max_b)
    from roadminer.models.engines.onnx_cpu import OnnxCpuEngine

    if "onnx" in cfg.cpu_variants:
        e = OnnxCpuEngine(backbone(), int8=False, max_batch=max_b)
        e.warmup()
        engines["onnx-fp32"] = e
    if "onnx-int8" in cfg.cpu_variants:
        e = OnnxCpuEngine(backbone(), int8=True, max_batch=max_b)
        e.warmup()
        engines["onnx-int8"] = e
    return engines


def run_bench(cfg: BenchConfig, say: Callable[[str], None] | None = None) -> BenchResult:
    cfg = cfg.resolved()
    say = say or (lambda m: logger.info(m))
    res = BenchResult(config=asdict(cfg), env=environment(cfg.device))
    say(f"making {cfg.n_images} challenge images (JPEG q75, 224x224)")
    raws, origin = challenge_jpegs(cfg.n_images, cfg.images, seed=cfg.seed)
    res.env["inputs"] = origin
    b64 = [to_b64(r) for r in raws]
    best_name, best_rate = None, 0.0
    engines: dict[str, Any] = {}
    if "fast" not in cfg.skip:
        engines = _build_engines(cfg)
        agree_ref = None
        for name, eng in engines.items():
            say(f"fast tier [{name}]")
            rows = measure_engine(eng, b64, cfg.batch_sizes or (1,), cfg.seconds, say)
            probs = eng.predict_b64(b64[:32])
            agree = None
            if agree_ref is None:
                agree_ref = probs
            else:
                agree = float(np.max(np.abs(probs - agree_ref)))
            res.fast[name] = {"describe": eng.describe(), "rows": rows, "max_abs_diff_vs_first": agree}
            top = max(rows, key=lambda r: r["img_per_s"]) if rows else None
            if top and top["img_per_s"] > best_rate:
                best_name, best_rate = name, top["img_per_s"]
        if cfg.device == "cuda" and "gpu-fp16-graph" in engines and max(cfg.batch_sizes or (1,)) >= 64:
            eng = engines["gpu-fp16-graph"]  # the same engine with its CPU decoders idle: what they add
            big = max(cfg.batch_sizes or (256,))
            say(f"fast tier [gpu-fp16-graph, nvjpeg decode only] batch {big}")
            eng.decode_mode = "gpu"
            rows = measure_engine(eng, b64, (big,), cfg.seconds, say)
            eng.decode_mode = "auto"
            res.fast["gpu-fp16-graph-nvjpeg-only"] = {"describe": {**eng.describe(), "decode": "gpu"},
                                                      "rows": rows, "max_abs_diff_vs_first": None}
        if cfg.device == "cuda" and "decode" not in cfg.skip and "gpu-fp16-graph" in engines:
            say("decode-only rates (batch 256)")
            big = min(256, max(cfg.batch_sizes or (256,)))
            res.decode = measure_decode(engines["gpu-fp16-graph"], raws, big, cfg.seconds)
    for eng in engines.values():
        eng.close()
    engines.clear()
    if "cascade" not in cfg.skip:
        res.cascade = cascade_variants(cfg, b64, say)
    if "http" not in cfg.skip:
        say(f"loopback HTTP through the miner (shipped cascade, {cfg.http_workers} worker(s))")
        res.http = measure_http(cfg.device, b64, cfg.http_concurrency, cfg.http_requests,
                                workers=cfg.http_workers, redis_url=cfg.redis_url)
        for lv in res.http["levels"]:
            say(f"concurrency {lv['concurrency']}: p50 {lv['ms_p50']:.2f} ms, p99 {lv['ms_p99']:.2f} ms, "
                f"{lv['req_per_s']:.0f} req/s, {lv['errors']} errors")
    if "baseline" not in cfg.skip:
        say(f"reference-style baseline ({cfg.baseline_images} images, one at a time)")
        res.baseline = measure_baseline(cfg.device, b64, cfg.baseline_images)
        say(f"baseline: {res.baseline['img_per_s']:.1f} img/s")
    summary: dict[str, Any] = {"device": cfg.device, "fast_best_variant": best_name,
                               "fast_best_img_per_s": best_rate}
    if res.baseline and best_rate:
        summary["baseline_img_per_s"] = res.baseline["img_per_s"]
        summary["speedup_vs_baseline"] = best_rate / res.baseline["img_per_s"]
    for engine, v in res.cascade.items():
        top = max(v["rows"], key=lambda r: r["img_per_s"]) if v["rows"] else None
        if top:
            summary[f"cascade_{engine}_best_img_per_s"] = top["img_per_s"]
    if res.http:
        for lv in res.http["levels"]:
            summary[f"http_c{lv['concurrency']}_req_per_s"] = lv["req_per_s"]
            summary[f"http_c{lv['concurrency']}_p50_ms"] = lv["ms_p50"]
            summary[f"http_c{lv['concurrency']}_p99_ms"] = lv["ms_p99"]
    summary["targets"] = _targets(cfg.device, summary)
    res.summary = summary
    return res


def _targets(device: str, s: dict[str, Any]) -> dict[str, Any]:
    t: dict[str, Any] = {}
    ratio = s.get("speedup_vs_baseline")
    if device == "cuda":
        t["fast >= 20000 img/s"] = s.get("fast_best_img_per_s", 0) >= 20000
        t["speedup >= 100x"] = None if ratio is None else ratio >= 100
        p50 = s.get("http_c1_p50_ms")
        t["loopback p50 <= 5 ms"] = None if p50 is None else p50 <= 5.0
    else:
        t["speedup >= 10x"] = None if ratio is None else ratio >= 10
    return t


def render(res: BenchResult) -> Any:
    """Rich renderables for the console."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    parts: list[Any] = []
    for name, v in res.fast.items():
        t = Table(title=escape(f"fast tier [{name}] base64 -> prob ({res.config['device']})"))
        for c in ("batch", "img/s", "batch p50 ms", "batch p99 ms"):
            t.add_column(c, justify="right")
        for r in v["rows"]:
            t.add_row(str(r["batch"]), f"{r['img_per_s']:,.0f}", f"{r['batch_ms_p50']:.2f}",
                      f"{r['batch_ms_p99']:.2f}")
        parts.append(t)
    for engine, v in res.cascade.items():
        t = Table(title=escape(f"shipped cascade [{engine}] base64 -> prob ({res.config['device']}; "
                               f"tiers: {', '.join(d.get('engine', d.get('kind', '?')) for d in v['tiers'])})"))
        for c in ("batch", "img/s", "batch p50 ms", "batch p99 ms", "tier-0 exits"):
            t.add_column(c, justify="right")
        for r in v["rows"]:
            t.add_row(str(r["batch"]), f"{r['img_per_s']:,.1f}", f"{r['batch_ms_p50']:.2f}",
                      f"{r['batch_ms_p99']:.2f}", f"{100 * r['first_tier_exit_share']:.0f}%")
        if v["max_abs_diff_vs_first"]:
            t.caption = "max |p - first engine's p|: " + ", ".join(
                f"{k} {d:.2g}" for k, d in v["max_abs_diff_vs_first"].items())
        parts.append(t)
    if res.decode:
        t = Table(title=f"decode only / model only, batch {res.decode['batch']} (img/s)")
        for k in res.decode["img_per_s"]:
            t.add_column(k, justify="right")
        t.add_row(*[f"{v:,.0f}" for v in res.decode["img_per_s"].values()])
        parts.append(t)
    if res.http:
        t = Table(title=escape(f"loopback HTTP: {res.http.get('server')} (signed: {res.http.get('signed')})"))
        for c in ("concurrency", "requests", "req/s", "p50 ms", "p99 ms", "errors", "fallback answers"):
            t.add_column(c, justify="right")
        for lv in res.http["levels"]:
            t.add_row(str(lv["concurrency"]), str(lv["requests"]), f"{lv['req_per_s']:,.1f}",
                      f"{lv['ms_p50']:.2f}", f"{lv['ms_p99']:.2f}", str(lv["errors"]),
                      "n/a" if lv.get("fallback_answers") is None else str(lv["fallback_answers"]))
        parts.append(t)
    t = Table(title="summary")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in res.summary.items():
        if k == "targets":
            for tk, tv in v.items():
                t.add_row(f"target: {tk}", {True: "met", False: "MISSED", None: "n/a"}[tv])
        elif isinstance(v, float):
            t.add_row(k, f"{v:,.2f}")
        else:
            t.add_row(k, str(v))
    if res.baseline:
        t.add_row("baseline p50 ms", f"{res.baseline['ms_p50']:.1f}")
    parts.append(t)
    return Group(*parts)


def markdown(res: dict[str, Any]) -> str:
    """The result JSON as Markdown tables (for docs/benchmarks.md)."""
    lines: list[str] = []
    for name, v in res.get("fast", {}).items():
        lines += [f"**fast tier `{name}`** (base64 → prob)", "", "| batch | img/s | batch p50 ms | batch p99 ms |",
                  "|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['img_per_s']:,.0f} | {r['batch_ms_p50']:.2f} | {r['batch_ms_p99']:.2f} |"
                  for r in v["rows"]]
        lines.append("")
    for engine, v in res.get("cascade", {}).items():
        lines += [f"**shipped cascade `{engine}`** (base64 → prob; tiers: "
                  f"{', '.join(str(d.get('engine', d.get('kind'))) for d in v['tiers'])})", "",
                  "| batch | img/s | batch p50 ms | batch p99 ms | tier-0 exits |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['img_per_s']:,.1f} | {r['batch_ms_p50']:.2f} | {r['batch_ms_p99']:.2f} | "
                  f"{100 * r['first_tier_exit_share']:.0f}% |" for r in v["rows"]]
        if v.get("max_abs_diff_vs_first"):
            lines += ["", "max \\|p − first engine's p\\|: " + ", ".join(
                f"{k} {d:.2g}" for k, d in v["max_abs_diff_vs_first"].items())]
        lines.append("")
    dec = res.get("decode")
    if dec:
        keys = list(dec["img_per_s"])
        lines += [f"**decode only / model only, batch {dec['batch']}** (img/s)", "",
                  "| " + " | ".join(keys) + " |", "|" + "---:|" * len(keys),
                  "| " + " | ".join(f"{dec['img_per_s'][k]:,.0f}" for k in keys) + " |", ""]
    http = res.get("http")
    if http:
        lines += [f"**loopback HTTP** ({http.get('server')}, signed: {http.get('signed')})", "",
                  "| concurrency | requests | req/s | p50 ms | p99 ms | errors | fallback answers |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {lv['concurrency']} | {lv['requests']} | {lv['req_per_s']:,.1f} | {lv['ms_p50']:.2f} | "
                  f"{lv['ms_p99']:.2f} | {lv['errors']} | "
                  f"{'n/a' if lv.get('fallback_answers') is None else lv['fallback_answers']} |"
                  for lv in http["levels"]]
        lines.append("")
    base = res.get("baseline")
    s = res.get("summary", {})
    if base:
        lines += [f"**baseline**: {base['model']} on {base['device']}: {base['img_per_s']:.1f} img/s "
                  f"(p50 {base['ms_p50']:.1f} ms per image, {base['images']} images)", ""]
    if "speedup_vs_baseline" in s:
        lines += [f"**ratio**: best fast tier `{s['fast_best_variant']}` {s['fast_best_img_per_s']:,.0f} img/s "
                  f"/ baseline {s['baseline_img_per_s']:.1f} img/s = **{s['speedup_vs_baseline']:.0f}×**", ""]
    return "\n".join(lines)
