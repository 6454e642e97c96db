"""Labelled image datasets for training and evaluation, and grouped splits.

Three layouts load into one list of :class:`Sample`:

* an image folder: ``DIR/roadwork/*.jpg`` and ``DIR/no_roadwork/*.jpg`` (or the same under ``DIR/images/``),
  optional YOLO boxes in ``DIR/labels/roadwork/STEM.txt`` and an optional ``manifest.csv`` (columns
  ``file,label,source,group,...``) that names each image's source and group;
* the reference dataset's parquet layout: an ``image`` column (encoded bytes, or ``{"bytes": ...}`` as the
  Hugging Face ``Image`` feature stores it), ``label`` (0/1 or the strings), ``scene_description`` and any
  extra columns; a ``source``/``group`` column is used when present;
* a file or folder of parquet files.

Splits never cut a group: leave-one-source-out and grouped K-fold work on ``Sample.group``/``source``.
File names ``SOURCE__[SUBSET__]NAME.jpg`` give the source when no manifest says otherwise.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
POSITIVE = "roadwork"
NEGATIVE = "no_roadwork"
CLASS_NAMES = ("cone", "barrier", "sign", "other")


class DatasetError(ValueError):
    """The dataset cannot be read (missing folders, bad labels); the message says what and where."""


@dataclass
class Box:
    cls: int
    cx: float
    cy: float
    w: float
    h: float


@dataclass
class Sample:
    """One labelled image: either a path on disk or the encoded bytes (parquet rows)."""

    label: int  # 1 = roadwork, 0 = no roadwork
    path: Path | None = None
    data: bytes | None = None
    source: str = "unknown"
    group: str = "unknown"
    boxes: list[Box] = field(default_factory=list)
    has_boxes: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path.name
        return str(self.meta.get("name") or hashlib.sha256(self.data or b"").hexdigest()[:16])

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def read_pil(self) -> Image.Image:
        img = Image.open(io.BytesIO(self.data)) if self.data is not None else Image.open(self.path)  # type: ignore[arg-type]
        img.load()
        return img.convert("RGB")

    def read_rgb(self) -> np.ndarray:
        return np.asarray(self.read_pil(), dtype=np.uint8)


def _parse_label(value: Any) -> int:
    if isinstance(value, str):
        v = value.strip().lower()
        if v in (POSITIVE, "1", "true", "yes", "positive"):
            return 1
        if v in (NEGATIVE, "0", "false", "no", "negative", "none"):
            return 0
        raise DatasetError(f"unknown label {value!r}")
    if value is None:
        raise DatasetError("missing label")
    iv = int(value)
    if iv not in (0, 1):
        raise DatasetError(f"label must be 0 or 1, got {value!r}")
    return iv


def source_from_name(name: str, default: str) -> str:
    stem = Path(name).stem
    return stem.split("__", 1)[0] if "__" in stem else default


def read_yolo_boxes(path: Path) -> list[Box]:
    boxes: list[Box] = []
    if not path.is_file():
        return boxes
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue
        try:
            c, cx, cy, w, h = int(parts[0]), *map(float, parts[1:])
        except ValueError:
            continue
        boxes.append(Box(c, cx, cy, w, h))
    return boxes


def _image_root(root: Path) -> Path:
    if (root / POSITIVE).is_dir() or (root / NEGATIVE).is_dir():
        return root
    if (root / "images" / POSITIVE).is_dir() or (root / "images" / NEGATIVE).is_dir():
        return root / "images"
    raise DatasetError(f"{root} holds neither {POSITIVE}/ nor {NEGATIVE}/ (nor images/{POSITIVE}/)")


def load_image_folder(root: str | Path) -> list[Sample]:
    """Load ``roadwork/`` + ``no_roadwork/`` (optionally under ``images/``), boxes and manifest."""
    root = Path(root)
    img_root = _image_root(root)
    manifest: dict[str, dict[str, str]] = {}
    mpath = root / "manifest.csv"
    if mpath.is_file():
        with mpath.open(newline="") as f:
            for row in csv.DictReader(f):
                manifest[Path(row["file"]).name] = row
    label_root = root / "labels"
    samples: list[Sample] = []
    for label_name, label in ((POSITIVE, 1), (NEGATIVE, 0)):
        d = img_root / label_name
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTS or not p.is_file():
                continue
            row = manifest.get(p.name, {})
            source = row.get("source") or source_from_name(p.name, root.name)
            group = row.get("group") or source
            boxes = read_yolo_boxes(label_root / label_name / f"{p.stem}.txt")
            samples.append(
                Sample(
                    label=label,
                    path=p,
                    source=source,
                    group=group,
                    boxes=boxes,
                    has_boxes=bool(boxes),
                    meta=_row_meta(p.name, row),
                )
            )
    if not samples:
        raise DatasetError(f"no images found under {img_root}")
    return samples


def _row_meta(name: str, row: dict[str, str]) -> dict[str, Any]:
    """Per-image extras from a manifest row: who labelled it and its training weight (hard-example
    exports write ``provenance`` and ``weight``; ``balanced_weights`` multiplies the weight in)."""
    meta: dict[str, Any] = {"name": name}
    if row.get("provenance"):
        meta["provenance"] = row["provenance"]
    if row.get("weight") not in (None, ""):
        try:
            w = float(row["weight"])
        except ValueError as e:
            raise DatasetError(f"manifest weight of {name} is not a number: {row['weight']!r}") from e
        if not w >= 0 or w == float("inf"):
            raise DatasetError(f"manifest weight of {name} must be finite and >= 0, got {w}")
        meta["weight"] = w
    return meta


def _image_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and value.get("bytes") is not None:
        return bytes(value["bytes"])
    raise DatasetError(f"parquet image cell must be bytes or {{'bytes': ...}}, got {type(value).__name__}")


def load_parquet(path: str | Path, default_source: str | None = None) -> list[Sample]:
    """Load the reference layout (``image``, ``label``, ``scene_description``, ...) from one parquet file."""
    import pyarrow.parquet as pq

    path = Path(path)
    table = pq.read_table(path)
    cols = set(table.column_names)
    if "image" not in cols or "label" not in cols:
        raise DatasetError(f"{path}: parquet needs 'image' and 'label' columns, has {sorted(cols)}")
    src_default = default_source or path.stem
    samples: list[Sample] = []
    for i, row in enumerate(table.to_pylist()):
        data = _image_bytes(row.pop("image"))
        label = _parse_label(row.pop("label"))
        source = str(row.get("source") or src_default)
        group = str(row.get("group") or source)
        meta = {k: v for k, v in row.items() if isinstance(v, (str, int, float, bool)) or v is None}
        meta.setdefault("name", f"{path.stem}:{i}")
        samples.append(Sample(label=label, data=data, source=source, group=group, meta=meta))
    return samples


def load_dataset(path: str | Path) -> list[Sample]:
    """Any supported layout: image folder, one parquet file, or a folder of parquet files."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return load_parquet(path)
    if not path.is_dir():
        raise DatasetError(f"dataset not found: {path}")
    try:
        return load_image_folder(path)
    except DatasetError:
        parquets = sorted(path.rglob("*.parquet"))
        if not parquets:
            raise
        out: list[Sample] = []
        for p in parquets:
            out.extend(load_parquet(p))
        return out


def load_many(paths: Iterable[str | Path]) -> list[Sample]:
    out: list[Sample] = []
    for p in paths:
        out.extend(load_dataset(p))
    return out


def summarize(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """``{source: {"roadwork": n, "no_roadwork": n}}``."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {POSITIVE: 0, NEGATIVE: 0})
    for s in samples:
        out[s.source][POSITIVE if s.label else NEGATIVE] += 1
    return {k: dict(v) for k, v in sorted(out.items())}


def leave_one_out_folds(samples: Sequence[Sample], by: str = "source") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(held_out_value, train_idx, val_idx)`` for each distinct ``by`` value (``source`` or ``group``)."""
    keys = np.array([getattr(s, by) for s in samples])
    for k in sorted(set(keys.tolist())):
        val = np.flatnonzero(keys == k)
        train = np.flatnonzero(keys != k)
        yield k, train, val


def grouped_kfold(samples: Sequence[Sample], k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds that never split a ``group``; groups are dealt greedily to balance fold sizes."""
    groups = [s.group for s in samples]
    sizes = Counter(groups)
    rng = np.random.default_rng(seed)
    names = sorted(sizes)
    rng.shuffle(names)
    names.sort(key=lambda g: -sizes[g])  # stable: big groups first, ties in shuffled order
    fold_of: dict[str, int] = {}
    load = [0] * k
    for g in names:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    idx = np.arange(len(samples))
    fold_ids = np.array([fold_of[g] for g in groups])
    return [(idx[fold_ids != f], idx[fold_ids == f]) for f in range(k)]


def holdout_split(samples: Sequence[Sample], frac: float = 0.15, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grouped hold-out (for calibration): whole groups, about ``frac`` of the rows, both labels kept."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_group[s.group].append(i)
    names = sorted(by_group)
    rng.shuffle(names)
    target = max(1, round(frac * len(samples)))
    val: list[int] = []
    labels_seen: set[int] = set()
    for g in names:
        if len(val) >= target and len(labels_seen) == 2:
            break
        # Skip a group that would take most of the data (a single-source set with one group).
        if len(by_group[g]) > 0.5 * len(samples) and len(by_group) > 1:
            continue
        val.extend(by_group[g])
        labels_seen.update(samples[i].label for i in by_group[g])
    if len(by_group) == 1 or not val:  # one group only: fall back to a seeded row split
        perm = rng.permutation(len(samples))
        val = perm[:target].tolist()
    val_arr = np.array(sorted(val), dtype=np.int64)
    train_arr = np.setdiff1d(np.arange(len(samples)), val_arr)
    return train_arr, val_arr


def balanced_weights(samples: Sequence[Sample], source_power: float = 0.5) -> np.ndarray:
    """Sampling weights: both labels equal in total; within a label, sources get ``count**source_power``
    shares (0.5 = between "each source equal" and "each row equal"), so one big source cannot dominate.
    A sample's ``meta["weight"]`` (from its manifest row) scales its share."""
    cells = Counter((s.label, s.source) for s in samples)
    w = np.zeros(len(samples))
    for label in (0, 1):
        srcs = {src: n for (lab, src), n in cells.items() if lab == label}
        if not srcs:
            continue
        shares = {src: n**source_power for src, n in srcs.items()}
        total = sum(shares.values())
        for i, s in enumerate(samples):
            if s.label == label:
                w[i] = 0.5 * shares[s.source] / total / srcs[s.source]
    # Per-image weights (label provenance: a teacher label counts less than a human one).
    w *= np.array([float(s.meta.get("weight", 1.0)) for s in samples])
    if not w.sum() > 0:
        raise DatasetError("every training image has weight 0")
    return w / w.sum()


def export_downsized(
    src: str | Path,
    dst: str | Path,
    short_side: int = 256,
    quality: int = 78,
    max_per_source: dict[str, int] | None = None,
    every_nth: dict[str, int] | None = None,
    seed: int = 0,
    transform: Callable[[Image.Image, list[Box]], tuple[Image.Image, list[Box]]] | None = None,
    fmt: str = "JPEG",
) -> dict[str, Any]:
    """Write a smaller copy of a dataset (image-folder layout, manifest and YOLO boxes) for shipping to a
    training machine. By default images are shrunk to ``short_side`` (normalised boxes carry over);
    ``transform`` replaces that (e.g. square crops that move the boxes). ``max_per_source`` keeps a seeded
    random subset of a source; ``every_nth`` keeps every n-th file (by name) of a source (video frames).
    ``fmt`` is ``JPEG`` or ``WEBP`` (WebP files are named ``STEM.webp``: about 20% smaller at equal quality)."""
    if fmt not in ("JPEG", "WEBP"):
        raise ValueError(f"export format must be JPEG or WEBP, not {fmt!r}")
    import random

    dst = Path(dst)
    rng = random.Random(seed)
    keep: list[Sample] = []
    by_source: dict[str, list[Sample]] = defaultdict(list)
    for s in load_dataset(src):
        by_source[s.source].append(s)
    for source, items in sorted(by_source.items()):
        items = sorted(items, key=lambda s: s.name)
        if every_nth and source in every_nth:
            items = items[:: every_nth[source]]
        if max_per_source and source in max_per_source and len(items) > max_per_source[source]:
            items = sorted(rng.sample(items, max_per_source[source]), key=lambda s: s.name)
        keep.extend(items)
    rows = []
    total = 0
    for s in keep:
        sub = POSITIVE if s.label else NEGATIVE
        name = s.name if fmt == "JPEG" else f"{Path(s.name).stem}.webp"
        out = dst / "images" / sub / name
        out.parent.mkdir(parents=True, exist_ok=True)
        img, boxes = s.read_pil(), list(s.boxes)
        if transform is not None:
            img, boxes = transform(img, boxes)
        else:
            scale = short_side / min(img.size)
            if scale < 1:
                img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        img.save(out, fmt, quality=quality)
        total += out.stat().st_size
        if s.has_boxes:  # written even when a crop removed every box: YOLO then sees a background image
            lab = dst / "labels" / sub / f"{Path(s.name).stem}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text("".join(f"{b.cls} {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in boxes))
        rows.append(
            {
                "file": f"images/{sub}/{name}",
                "label": sub,
                "source": s.source,
                "group": s.group,
                "has_boxes": int(s.has_boxes),
            }
        )
    with (dst / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return {"n": len(rows), "bytes": total, "counts": summarize(keep)}
