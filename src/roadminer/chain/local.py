"""File-backed chain view: ``configs/local_chain.yaml`` lists the neurons of a local subnet.

Each neuron gives ``hotkey`` (ss58) or ``uri`` (a dev key such as ``//Alice``, so local validators and
the simulator can sign as it), plus ``stake``, ``validator_permit`` and optional metagraph fields.
The file is re-read when it changes (checked at most once per ``check_interval_s`` on lookup and by the
background sync), so operators can edit it while the miner runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from roadminer.chain.base import ChainSnapshot, ChainView, NeuronInfo
from roadminer.protocol.keys import is_valid_ss58, ss58_from_uri


class LocalChainError(ValueError):
    pass


def _neuron(i: int, raw: dict[str, Any]) -> NeuronInfo:
    if not isinstance(raw, dict):
        raise LocalChainError(f"neuron #{i} must be a mapping")
    hotkey = raw.get("hotkey")
    if not hotkey and raw.get("uri"):
        hotkey = ss58_from_uri(str(raw["uri"]))
    if not hotkey or not is_valid_ss58(str(hotkey)):
        raise LocalChainError(f"neuron #{i}: needs a valid ss58 'hotkey' or a dev 'uri'")
    fields = NeuronInfo.__dataclass_fields__
    extra = {k: raw[k] for k in fields if k in raw and k not in ("uid", "hotkey")}
    return NeuronInfo(uid=int(raw.get("uid", i)), hotkey=str(hotkey), **extra)


def parse_local_chain(data: dict[str, Any], netuid: int) -> ChainSnapshot:
    if not isinstance(data, dict):
        raise LocalChainError("local chain file must hold a mapping")
    neurons = [_neuron(i, n) for i, n in enumerate(data.get("neurons") or [])]
    if len({n.uid for n in neurons}) != len(neurons):
        raise LocalChainError("duplicate uid in local chain file")
    weights: dict[int, dict[int, float]] = {}
    for v, row in (data.get("weights") or {}).items():
        weights[int(v)] = {int(m): float(w) for m, w in (row or {}).items()}
    return ChainSnapshot(
        netuid=int(data.get("netuid", netuid)),
        block=int(data.get("block", 0)),
        neurons=neurons,
        weights=weights,
    )


class LocalChainView(ChainView):
    network = "local"

    def __init__(
        self, path: str | Path, netuid: int = 72, sync_interval_s: float = 2.0, check_interval_s: float = 1.0
    ) -> None:
        super().__init__(netuid, sync_interval_s)
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._mtime: float | None = None
        self._next_check = 0.0
        self._reload_if_changed(force=True)

    def _reload_if_changed(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        self._next_check = now + self.check_interval_s
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            if force:
                logger.warning("local chain file {} not found: no neuron is registered", self.path)
            self.last_error = f"missing file {self.path}"
            return
        if not force and mtime == self._mtime:
            return
        try:
            snap = parse_local_chain(yaml.safe_load(self.path.read_text()) or {}, self.netuid)
        except (LocalChainError, yaml.YAMLError, ValueError, TypeError) as e:
            self.last_error = f"{type(e).__name__}: {e}"
            logger.warning("local chain file {} is invalid ({}); keeping the previous view", self.path, e)
            return
        self._mtime = mtime
        self._snap = snap
        self.last_error = None
        logger.debug("local chain: {} neurons from {}", len(snap.neurons), self.path)

    async def _load(self) -> ChainSnapshot:
        self._reload_if_changed(force=False)
        return self._snap

    def get(self, hotkey: str) -> NeuronInfo | None:
        self._reload_if_changed()
        return super().get(hotkey)

    def neurons(self) -> list[NeuronInfo]:
        self._reload_if_changed()
        return super().neurons()

    @classmethod
    def write(
        cls,
        path: str | Path,
        neurons: list[dict[str, Any]],
        netuid: int = 72,
        weights: dict[int, dict[int, float]] | None = None,
        block: int = 0,
    ) -> Path:
        """Write a local chain file (used by the demo and tests)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        data: dict[str, Any] = {"netuid": netuid, "block": block, "neurons": neurons}
        if weights:
            data["weights"] = weights
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        tmp.replace(p)
        return p
