"""Model registry on disk: versions with cards and metrics, and which version each tier serves.

Layout under ``models_dir``::

    versions/<version>/card.json      what it is, the tier it serves, data it saw, metrics, parent
    versions/<version>/<files>        the artefacts (colour_cue.json, model.safetensors, ...)
    current.json                      {"generation": n, "tiers": {tier name: version}, "updated": t}
    promotions.jsonl                  one line per promotion / rejection, with the gate's numbers

The miner reads ``current.json`` (``ModelWatcher`` polls its generation) and applies each served
version's tier options over the configured cascade; ``{dir}`` in a card's options is the version folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

CARD = "card.json"
CURRENT = "current.json"
LOG = "promotions.jsonl"

# Per tier kind: the file roles a version carries and the tier option that points at each.
KIND_FILES: dict[str, dict[str, str]] = {
    "colour": {"coefs_path": "colour_cue.json"},
    "classifier": {"weights": "model.safetensors"},
}


class RegistryError(ValueError):
    """Unknown version, missing artefact, or a version that does not fit the cascade."""


@dataclass
class ModelCard:
    version: str
    tier: str  # the cascade tier (by name) this version serves
    kind: str  # tier kind (registry key of roadminer.models.base)
    options: dict[str, Any] = field(default_factory=dict)  # tier options; "{dir}" = the version folder
    parent: str | None = None
    created: float = field(default_factory=time.time)
    status: str = "candidate"  # candidate | promoted | rejected | retired
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelCard:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ModelRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / "versions"  # created by the first register()

    # -- versions -----------------------------------------------------------------------------------
    def path_of(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise RegistryError(f"bad version name {version!r}")
        return self.versions_dir / version

    def register(
        self,
        tier: str,
        kind: str,
        files: Mapping[str, str | Path],
        options: Mapping[str, Any] | None = None,
        parent: str | None = None,
        data: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        notes: str = "",
        version: str | None = None,
    ) -> ModelCard:
        """Copy ``files`` (name in the version folder -> source path) into a new version and write its card.
        Options default to pointing the tier kind's file options at the copied files."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        version = version or f"{tier}-{stamp}"
        base, n = version, 1
        while self.path_of(version).exists():
            n += 1
            version = f"{base}-{n}"
        dest = self.path_of(version)
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".{version}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, src in files.items():
            src = Path(src)
            if not src.is_file():
                raise RegistryError(f"artefact {src} not found")
            shutil.copy2(src, tmp / name)
        opts = dict(options or {})
        for opt, fname in KIND_FILES.get(kind, {}).items():
            if opt not in opts and fname in files:
                opts[opt] = "{dir}/" + fname
        card = ModelCard(
            version=version,
            tier=tier,
            kind=kind,
            options=opts,
            parent=parent,
            data=dict(data or {}),
            metrics=dict(metrics or {}),
            notes=notes,
        )
        (tmp / CARD).write_text(json.dumps(card.to_json(), indent=2) + "\n")
        os.replace(tmp, dest)  # a version appears complete or not at all
        logger.info("registered model {} for tier {} ({})", version, tier, kind)
        return card

    def get(self, version: str) -> ModelCard:
        path = self.path_of(version) / CARD
        if not path.is_file():
            raise RegistryError(f"no model version {version!r} in {self.root}")
        return ModelCard.from_json(json.loads(path.read_text()))

    def update_card(self, card: ModelCard) -> None:
        _atomic_write(self.path_of(card.version) / CARD, json.dumps(card.to_json(), indent=2) + "\n")

    def list(self, tier: str | None = None) -> list[ModelCard]:
        cards = []
        if not self.versions_dir.is_dir():
            return cards
        for d in sorted(self.versions_dir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / CARD).is_file():
                card = ModelCard.from_json(json.loads((d / CARD).read_text()))
                if tier is None or card.tier == tier:
                    cards.append(card)
        return sorted(cards, key=lambda c: c.created)

    def resolved_options(self, card: ModelCard) -> dict[str, Any]:
        folder = str(self.path_of(card.version))
        return {k: (v.replace("{dir}", folder) if isinstance(v, str) else v) for k, v in card.options.items()}

    # -- what is served -------------------------------------------------------------------------------
    def _current_doc(self) -> dict[str, Any]:
        path = self.root / CURRENT
        if not path.is_file():
            return {"generation": 0, "tiers": {}, "updated": None}
        return json.loads(path.read_text())

    def generation(self) -> int:
        """Increases on every change of what is served (the miner polls it to hot reload)."""
        try:
            return int(self._current_doc().get("generation", 0))
        except (OSError, ValueError):
            return -1

    def current(self, tier: str | None = None) -> dict[str, str] | str | None:
        tiers: dict[str, str] = dict(self._current_doc().get("tiers", {}))
        return tiers if tier is None else tiers.get(tier)

    def current_card(self, tier: str) -> ModelCard | None:
        version = self.current(tier)
        return self.get(version) if isinstance(version, str) else None

    def set_current(self, version: str, reason: str = "", gate: Mapping[str, Any] | None = None) -> ModelCard:
        card = self.get(version)
        for opt, fname in KIND_FILES.get(card.kind, {}).items():
            if opt in card.options and not (self.path_of(version) / fname).is_file():
                raise RegistryError(f"version {version} lacks its artefact {fname}")
        doc = self._current_doc()
        previous = doc.get("tiers", {}).get(card.tier)
        doc.setdefault("tiers", {})[card.tier] = version
        doc["generation"] = int(doc.get("generation", 0)) + 1
        doc["updated"] = time.time()
        _atomic_write(self.root / CURRENT, json.dumps(doc, indent=2) + "\n")
        if previous and previous != version:
            try:
                old = self.get(previous)
                old.status = "retired"
                self.update_card(old)
            except RegistryError:
                pass
        card.status = "promoted"
        self.update_card(card)
        self.log(
            {
                "event": "promote",
                "version": version,
                "tier": card.tier,
                "previous": previous,
                "reason": reason,
                "gate": dict(gate or {}),
            }
        )
        logger.info("tier {} now serves {} (was {})", card.tier, version, previous)
        return card

    def reject(self, version: str, reason: str, gate: Mapping[str, Any] | None = None) -> None:
        card = self.get(version)
        card.status = "rejected"
        self.update_card(card)
        self.log(
            {
                "event": "reject",
                "version": version,
                "tier": card.tier,
                "reason": reason,
                "gate": dict(gate or {}),
            }
        )

    def log(self, event: Mapping[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / LOG).open("a") as f:
            f.write(json.dumps({"t": time.time(), **event}) + "\n")

    def events(self) -> list[dict[str, Any]]:
        path = self.root / LOG
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def apply(self, cascade: Any, overrides: Mapping[str, str] | None = None) -> Any:
        """A copy of ``cascade`` (``CascadeConfig``) whose tiers use the served versions (or, for the tiers
        named in ``overrides``, the given versions: how a candidate is evaluated before promotion)."""
        served = dict(self.current() or {})  # type: ignore[arg-type]
        served.update(overrides or {})
        out = cascade.model_copy(deep=True)
        names = {t.name for t in out.tiers}
        for tier_name, version in served.items():
            if tier_name not in names:
                logger.warning(
                    "registry serves {} for tier {}, which the cascade does not have", version, tier_name
                )
                continue
            card = self.get(version)
            for t in out.tiers:
                if t.name == tier_name:
                    if t.kind != card.kind:
                        raise RegistryError(
                            f"version {version} is a {card.kind} model; tier {tier_name} is {t.kind}"
                        )
                    t.options = {**t.options, **self.resolved_options(card)}
        return out


def build_router(
    settings: Any,
    registry: ModelRegistry | None = None,
    overrides: dict[str, str] | None = None,
    warmup: bool = True,
) -> Any:
    """The configured cascade with the registry's served versions (or ``overrides``) applied."""
    from roadminer.cascade.router import EarlyExitRouter

    cascade = registry.apply(settings.cascade, overrides) if registry is not None else settings.cascade
    router = EarlyExitRouter.from_settings(settings, cascade)
    if warmup:
        router.warmup()
    return router
