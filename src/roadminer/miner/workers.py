"""``server.workers: N``: N miner processes serving the same port(s), the kernel spreading connections
between them (``SO_REUSEPORT``), every nonce shared through Redis.

Why processes on one port rather than N HTTP front ends feeding one inference process: each worker is the
whole, already-tested miner (``start_miner``) with its own event loop, batcher and model copy, so nothing
new sits on the request path: no inter-process queue, no second serialisation of images, no new protocol
to secure, and a worker that dies takes only its own connections with it (the supervisor starts a new
one). What workers must share is already shareable: the nonce store, result cache, sessions and the
hard-example queue live in the state layer, which is Redis when ``state.backend: redis`` (required for
more than one worker: with per-process memory a nonce accepted by one worker would be accepted again by
another). The price is one model copy per worker (the GPU planner books ``server.workers`` copies) and
smaller batches per process. On a 2-core machine the model dominates every request, so more workers
than cores only adds contention; the engines' thread pools are divided between workers
(``EarlyExitRouter.from_settings``).

The supervisor (``WorkerPool``) creates the hotkey files first (so workers never race to create them),
reserves free ports when the configuration says 0, starts the workers with the settings as JSON on
their stdin, waits until each reports ready, restarts a worker that exits (with backoff) and forwards
SIGTERM on stop. Worker 0 alone announces the axon and records chain metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from roadminer.core.config import Settings

READY = "ROADMINER-WORKER-READY "
FAILED = "ROADMINER-WORKER-FAILED "


class WorkersConfigError(ValueError):
    """``server.workers`` cannot run with this configuration; the message says what to change."""


def check_workers(settings: Settings) -> int:
    n = int(settings.server.workers)
    if n > 1 and settings.state.backend != "redis":
        raise WorkersConfigError(
            f"server.workers: {n} needs state.backend: redis: worker processes share nonces (replay "
            "protection), the result cache and the queue only through Redis"
        )
    if n > 1 and not hasattr(socket, "SO_REUSEPORT"):
        raise WorkersConfigError("server.workers > 1 needs SO_REUSEPORT (Linux, BSD, macOS)")
    return n


def _reserve_port(host: str) -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT, not listening: it keeps the port while the workers
    bind it too, and never receives a connection itself."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host or "0.0.0.0", 0))
    return s


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return int(self.proc.pid)


class WorkerPool:
    """Runs ``server.workers`` miner processes on the configured port(s) and keeps them running."""

    def __init__(self, settings: Settings, *, python: str = sys.executable, ready_timeout_s: float = 900.0,
                 restart: bool = True, env: dict[str, str] | None = None) -> None:
        self.count = check_workers(settings)
        self.settings = settings
        self.python = python
        self.ready_timeout_s = ready_timeout_s
        self.restart = restart
        self.env = env
        self.workers: dict[int, Worker] = {}
        self.restarts = 0
        self.ports: list[int] = []
        self.hotkeys: list[str] = []
        self._payload = b""
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def urls(self) -> list[str]:
        host = self.settings.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return [f"http://{shown}:{p}" for p in self.ports]

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values()]

    async def start(self) -> None:
        from roadminer.miner.run import load_signers

        signers = await asyncio.to_thread(load_signers, self.settings)  # creates missing hotkeys, once
        self.hotkeys = [s.ss58_address for _, s in signers]
        srv = self.settings.server
        reserved: list[socket.socket] = []
        try:
            ports = []
            for port in [srv.port, *(x.port for x in srv.extra_hotkeys)]:
                if port == 0:
                    sock = _reserve_port(srv.host)
                    reserved.append(sock)
                    port = int(sock.getsockname()[1])
                ports.append(port)
            self.ports = ports
            data = self.settings.model_dump(mode="json")
            data["server"]["port"] = ports[0]
            for extra, port in zip(data["server"]["extra_hotkeys"], ports[1:], strict=True):
                extra["port"] = port
            data["wallet"]["create_if_missing"] = False
            self._payload = json.dumps(data).encode()
            started = await asyncio.gather(*(self._spawn(i) for i in range(self.count)), return_exceptions=True)
            errors = [e for e in started if isinstance(e, BaseException)]
            if errors:
                await self.stop()
                raise errors[0]
        finally:
            for sock in reserved:
                sock.close()
        self._supervisor = asyncio.create_task(self._supervise(), name="miner-workers")
        logger.info("{} miner workers on port(s) {} (pids {})", self.count, self.ports, self.pids())

    async def _spawn(self, index: int) -> Worker:
        env = dict(os.environ if self.env is None else self.env)
        env["ROADMINER_WORKER_PARENT"] = str(os.getpid())  # a worker whose supervisor is gone stops
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "roadminer.miner.workers", str(index), str(self.count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._payload)
        await proc.stdin.drain()
        proc.stdin.close()
        worker = Worker(index, proc)
        self.workers[index] = worker
        try:
            worker.info = await asyncio.wait_for(self._await_ready(proc), self.ready_timeout_s)
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            self.workers.pop(index, None)
            if isinstance(e, TimeoutError):
                raise RuntimeError(f"miner worker {index} was not ready within {self.ready_timeout_s:.0f}s") from None
            raise
        worker._drain = asyncio.create_task(self._drain_stdout(proc))
        return worker

    async def _await_ready(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                raise RuntimeError(f"miner worker exited with status {code} before it was ready (see its log)")
            text = line.decode(errors="replace").rstrip()
            if text.startswith(READY):
                return dict(json.loads(text[len(READY):]))
            if text.startswith(FAILED):
                await proc.wait()
                raise RuntimeError(f"miner worker could not start: {json.loads(text[len(FAILED):])['error']}")
            if text:
                print(text, flush=True)  # a worker's own stdout (its log goes to stderr, shared)

    @staticmethod
    async def _drain_stdout(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            waits = {asyncio.ensure_future(w.proc.wait()): i for i, w in self.workers.items()}
            if not waits:
                return
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for f in pending:
                f.cancel()
            if self._stopping:
                return
            for f in done:
                index = waits[f]
                worker = self.workers.pop(index, None)
                uptime = time.monotonic() - worker.started_at if worker else 0.0
                logger.error("miner worker {} (pid {}) exited with status {} after {:.0f}s", index,
                             worker.pid if worker else "?", f.result(), uptime)
                if not self.restart:
                    continue
                backoff = 1.0 if uptime > 60 else min(30.0, backoff * 2)
                await asyncio.sleep(backoff)
                if self._stopping:
                    return
                try:
                    new = await self._spawn(index)
                    self.restarts += 1
                    logger.warning("miner worker {} restarted (pid {})", index, new.pid)
                except Exception as e:
                    logger.error("could not restart miner worker {}: {}", index, e)

    async def stop(self, timeout_s: float = 15.0) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        procs = [w.proc for w in self.workers.values()]
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        if procs:
            await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=timeout_s)
            for p in procs:
                if p.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        p.kill()
                    await p.wait()
        for w in self.workers.values():
            if w._drain is not None:
                w._drain.cancel()
        self.workers.clear()


async def _run_worker(settings: Settings, index: int) -> None:
    from roadminer.miner.run import start_miner

    try:
        miner = await start_miner(settings, reuse_port=True, worker_index=index)
    except Exception as e:  # tell the supervisor why, then exit non-zero
        sys.stdout.write(FAILED + json.dumps({"index": index, "error": f"{type(e).__name__}: {e}"}) + "\n")
        sys.stdout.flush()
        raise SystemExit(2) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    watch = asyncio.create_task(_watch_parent(stop))
    ready = {"index": index, "pid": os.getpid(), "ports": miner.ports, "hotkeys": miner.hotkeys}
    sys.stdout.write(READY + json.dumps(ready) + "\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        watch.cancel()
        await miner.stop()


async def _watch_parent(stop: asyncio.Event, every_s: float = 1.0) -> None:
    """Stop when the supervisor is gone (killed without the chance to stop its workers)."""
    parent = int(os.environ.get("ROADMINER_WORKER_PARENT", "0") or 0)
    if parent <= 0:
        return
    while not stop.is_set():
        if os.getppid() != parent:
            logger.warning("miner worker: supervisor {} is gone; stopping", parent)
            stop.set()
            return
        await asyncio.sleep(every_s)


def main(argv: list[str] | None = None) -> None:
    """Worker entry point: ``python -m roadminer.miner.workers INDEX COUNT`` with the settings JSON on stdin."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        raise SystemExit("usage: python -m roadminer.miner.workers INDEX COUNT < settings.json")
    index = int(args[0])
    settings = Settings.model_validate_json(sys.stdin.buffer.read())
    from roadminer.core.logging_setup import setup_logging

    setup_logging(settings.logging.level, settings.logging.file, settings.logging.json_logs)
    logger.configure(extra={"worker": index})
    asyncio.run(_run_worker(settings, index))


if __name__ == "__main__":
    main()
