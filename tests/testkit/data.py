"""Where the shared research photos are (read in place, never copied into the repository)."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("ROADMINER_SHARED_DATA", REPO.parent / "shared" / "data" / "roadwork-v1"))


def have_shared_data() -> bool:
    return (SHARED_DATA / "manifest.csv").is_file()


def tiny_copy(shared: Path, dst: Path) -> Path:
    """A few real photos per source (incl. boxed positives and two wzcity cities), copied to a temp dir."""
    rows = list(csv.DictReader((shared / "manifest.csv").open()))
    keep: list[dict[str, str]] = []
    for source in ("tracon", "camvid", "gtsdb", "kagan", "pranav"):
        mine = sorted((r for r in rows if r["source"] == source), key=lambda r: (r["has_boxes"] != "1", r["file"]))
        keep += mine[:3]
    for city in ("wzcity:denver", "wzcity:houston"):
        keep += sorted((r for r in rows if r["group"] == city), key=lambda r: r["file"])[:2]
    for r in keep:
        (dst / r["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / r["file"], dst / r["file"])
        if r["has_boxes"] == "1":
            stem = Path(r["file"]).stem
            (dst / "labels" / r["label"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(shared / "labels" / r["label"] / f"{stem}.txt", dst / "labels" / r["label"] / f"{stem}.txt")
    with (dst / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep)
    return dst
