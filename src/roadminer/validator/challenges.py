"""Challenge sources and challenge construction, as the reference validator does it.

A challenge: label drawn 50/50, an image of that label from a source (image folders, the reference
parquet layout, drawn scenes, or any synthetic-generator hook), an augmentation level drawn from 0..3,
then JPEG q75 at 224x224, base64 for the wire. Miners are drawn from a shuffled deck.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from loguru import logger
from PIL import Image

from roadminer.imaging.augment import augment_with_params, random_level
from roadminer.imaging.decode import encode_jpeg, to_b64

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
CLASS_DIRS = {1: "roadwork", 0: "no_roadwork"}


class ChallengeSource(Protocol):
    name: str

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        """An RGB image of class ``label`` and a short reference to it (file name, row, seed)."""
        ...


class FolderSource:
    """``DIR/roadwork/*`` and ``DIR/no_roadwork/*`` image files."""

    name = "folder"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files: dict[int, list[Path]] = {}
        for label, sub in CLASS_DIRS.items():
            d = self.root / sub
            files = (
                sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
            )
            self.files[label] = files
        missing = [CLASS_DIRS[k] for k, v in self.files.items() if not v]
        if missing:
            raise ValueError(
                f"{self.root} has no images in {', '.join(missing)}/ (need roadwork/ and no_roadwork/)"
            )

    def __len__(self) -> int:
        return sum(len(v) for v in self.files.values())

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        files = self.files[label]
        for _ in range(5):
            path = files[int(rng.integers(len(files)))]
            try:
                with Image.open(path) as im:
                    return im.convert("RGB"), str(path.relative_to(self.root))
            except (OSError, ValueError) as e:
                logger.warning("skipping unreadable challenge image {}: {}", path, e)
        raise RuntimeError(f"no readable {CLASS_DIRS[label]} image in {self.root}")


class ParquetSource:
    """The reference dataset's parquet layout: ``image`` (bytes, or a struct with ``bytes``) and ``label``."""

    name = "parquet"

    def __init__(self, paths: str | Path | Sequence[str | Path]) -> None:
        import pyarrow.parquet as pq

        if isinstance(paths, (str, Path)):
            p = Path(paths)
            files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        else:
            files = [Path(x) for x in paths]
        self.tables = [pq.read_table(f, columns=["image", "label"]) for f in files]
        self.index: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
        for t_i, table in enumerate(self.tables):
            for r_i, lab in enumerate(table.column("label").to_pylist()):
                if lab in (0, 1):
                    self.index[int(lab)].append((t_i, r_i))
        if not self.index[0] or not self.index[1]:
            raise ValueError("parquet source needs rows of both labels (0 and 1)")

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        rows = self.index[label]
        t_i, r_i = rows[int(rng.integers(len(rows)))]
        cell: Any = self.tables[t_i].column("image")[r_i].as_py()
        raw = cell.get("bytes") if isinstance(cell, dict) else cell
        if not isinstance(raw, (bytes, bytearray)):
            raise ValueError(f"parquet row {r_i} has no image bytes")
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB"), f"parquet[{t_i}]:{r_i}"


class SceneSource:
    """Drawn street scenes (no data needed); deterministic given the generator."""

    name = "scenes"

    def __init__(self, size: tuple[int, int] = (512, 384)) -> None:
        self.size = size

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        from roadminer.imaging.scenes import draw_scene

        seed = int(rng.integers(2**31))
        return draw_scene(np.random.default_rng(seed), bool(label), self.size), f"scene:{seed}"


class GeneratorSource:
    """Hook for synthetic generators (e.g. a text-to-image pipeline): ``fn(label, rng) -> image``."""

    def __init__(
        self, fn: Callable[[int, np.random.Generator], Image.Image | np.ndarray], name: str = "synthetic"
    ):
        self.fn = fn
        self.name = name

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        img = self.fn(label, rng)
        pil = img if isinstance(img, Image.Image) else Image.fromarray(np.asarray(img, dtype=np.uint8))
        return pil.convert("RGB"), self.name


class MixedSource:
    """Pick a source per challenge with the given weights (the reference: 50% real, 50% synthetic)."""

    def __init__(self, sources: Sequence[ChallengeSource], weights: Sequence[float] | None = None) -> None:
        if not sources:
            raise ValueError("MixedSource needs at least one source")
        self.sources = list(sources)
        w = np.asarray(weights if weights is not None else [1.0] * len(sources), dtype=np.float64)
        self.weights = w / w.sum()
        self.name = "+".join(s.name for s in sources)

    def sample(self, label: int, rng: np.random.Generator) -> tuple[Image.Image, str]:
        src = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
        img, ref = src.sample(label, rng)
        return img, f"{src.name}:{ref}"


def build_source(images: str | Path | None = None, parquet: str | Path | None = None) -> ChallengeSource:
    """Folder and/or parquet sources when given, else drawn scenes."""
    sources: list[ChallengeSource] = []
    if images:
        sources.append(FolderSource(images))
    if parquet:
        sources.append(ParquetSource(parquet))
    if not sources:
        return SceneSource()
    return sources[0] if len(sources) == 1 else MixedSource(sources)


@dataclass
class Challenge:
    label: int
    level: int
    jpeg: bytes
    source: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def image_b64(self) -> str:
        return to_b64(self.jpeg)


def make_challenge(
    source: ChallengeSource,
    rng: np.random.Generator,
    *,
    reference_flip_bug: bool = False,
    level: int | None = None,
) -> Challenge:
    """Label 50/50, an image of that label, level U{0..3}, JPEG q75 224x224."""
    label = int(rng.random() < 0.5)
    img, ref = source.sample(label, rng)
    lvl = random_level(rng) if level is None else int(level)
    aug, params = augment_with_params(img, lvl, rng, reference_flip_bug=reference_flip_bug)
    return Challenge(label=label, level=lvl, jpeg=encode_jpeg(aug), source=ref, params=params.to_dict())


class ShuffledDeck:
    """Miner selection without starvation: deal UIDs from a shuffled deck, reshuffle when it runs out."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._deck: list[int] = []

    def deal(self, available: Sequence[int], k: int) -> list[int]:
        avail = set(available)
        if not avail:
            return []
        k = min(k, len(avail))
        out: list[int] = []
        self._deck = [u for u in self._deck if u in avail]
        while len(out) < k:
            if not self._deck:
                fresh = [u for u in sorted(avail) if u not in out]
                self.rng.shuffle(fresh)
                self._deck = fresh
            out.append(self._deck.pop())
        return out
