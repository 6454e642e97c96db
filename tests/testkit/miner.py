"""Helpers for tests that run a real miner on loopback: a local chain, signed requests, images."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from roadminer.cascade.router import CascadeResult
from roadminer.chain.local import LocalChainView
from roadminer.core.config import Settings
from roadminer.imaging.decode import encode_jpeg, to_b64
from roadminer.miner.run import RunningMiner, start_miner
from roadminer.models.base import ImageBatch
from roadminer.protocol import btauth, sn72
from roadminer.protocol.keys import HotkeySigner

ALICE = HotkeySigner.from_uri("//Alice")  # validator, high stake
BOB = HotkeySigner.from_uri("//Bob")  # validator, medium stake
CHARLIE = HotkeySigner.from_uri("//Charlie")  # validator, low stake
DAVE = HotkeySigner.from_uri("//Dave")  # registered, no permit
FERDIE = HotkeySigner.from_uri("//Ferdie")  # not registered
MINER = HotkeySigner.from_uri("//Eve")
MINER2 = HotkeySigner.from_uri("//Eve//2")


def write_chain(path: Path) -> Path:
    return LocalChainView.write(
        path,
        [
            {"uid": 0, "uri": "//Alice", "stake": 30000.0, "validator_permit": True},
            {"uid": 1, "uri": "//Bob", "stake": 5000.0, "validator_permit": True},
            {"uid": 2, "uri": "//Charlie", "stake": 1500.0, "validator_permit": True},
            {"uid": 3, "uri": "//Dave", "stake": 9000.0, "validator_permit": False},
            {"uid": 4, "uri": "//Eve", "stake": 0.0, "validator_permit": False},
        ],
    )


def scene(seed: int = 0, cone: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((224, 224, 3), 100, np.uint8)
    img[140:, :] = (60, 60, 66)
    if cone:
        img[120:190, 90:120] = (250, 110, 10)
    return np.clip(img + rng.integers(0, 10, img.shape), 0, 255).astype(np.uint8)


def jpeg_b64(seed: int = 0) -> str:
    return to_b64(encode_jpeg(scene(seed)))


def png_b64(w: int, h: int, noise: bool = True) -> str:
    arr = (
        np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
        if noise
        else np.zeros((h, w, 3), np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return to_b64(buf.getvalue())


class SlowPredictor:
    """A model that takes ``delay_s`` per batch (a GPU stall, a cold start)."""

    version = "slow-1"

    def __init__(self, delay_s: float, prob: float = 0.9) -> None:
        self.delay_s = delay_s
        self.prob = prob
        self.calls = 0

    def predict(self, batch: ImageBatch) -> CascadeResult:
        self.calls += 1
        time.sleep(self.delay_s)
        return CascadeResult(prob=np.full(len(batch), self.prob), exit_tier=["slow"] * len(batch))

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": "slow", "version": self.version}]


def settings_for(tmp_path: Path, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "chain": {"network": "local", "local_config": str(write_chain(tmp_path / "chain.yaml"))},
        "guards": {"min_stake": 1000.0},
    }
    for section, values in over.items():
        base.setdefault(section, {}).update(values)
    return Settings(**base)


async def run_miner(
    settings: Settings, signers: list[tuple[int, HotkeySigner]] | None = None, **kw: Any
) -> RunningMiner:
    return await start_miner(settings, signers=signers or [(0, MINER)], **kw)


async def sn72_call(
    session: aiohttp.ClientSession,
    miner: RunningMiner,
    signer: HotkeySigner,
    image_b64: str | None = None,
    idx: int = 0,
    **kw: Any,
) -> tuple[float | None, int, str]:
    port = miner.ports[idx]
    url, headers, body = sn72.build_request(
        signer,
        miner.hotkeys[idx],
        "127.0.0.1",
        port,
        image_b64 if image_b64 is not None else jpeg_b64(),
        **kw,
    )
    async with session.post(url, headers=headers, json=body) as r:
        raw = await r.read()
        return sn72.parse_response(r.status, r.headers, raw)


async def btauth_call(
    session: aiohttp.ClientSession,
    miner: RunningMiner,
    signer: HotkeySigner,
    image_b64: str | None = None,
    idx: int = 0,
    **kw: Any,
) -> tuple[int, dict[str, Any], tuple[str, dict[str, str], bytes]]:
    req = btauth.build_request(
        signer,
        miner.hotkeys[idx],
        "127.0.0.1",
        miner.ports[idx],
        image_b64 if image_b64 is not None else jpeg_b64(),
        **kw,
    )
    return await send_raw(session, req)


async def send_raw(
    session: aiohttp.ClientSession, req: tuple[str, dict[str, str], bytes]
) -> tuple[int, dict[str, Any], tuple[str, dict[str, str], bytes]]:
    url, headers, body = req
    async with session.post(url, headers=headers, data=body) as r:
        return r.status, await r.json(content_type=None), req
