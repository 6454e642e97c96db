"""Convert one trusted ultralytics ``.pt`` detector checkpoint into roadminer's pickle-free safetensors format.

A ``.pt`` is a pickle: loading it runs whatever code it names. This script is the one place that unpickles
one, and only a file whose sha256 is given on the command line (default: the project's own
``roadwork_yolo.pt`` as it shipped before the safetensors file replaced it). The head, count_conf and version
come from the model card beside it. With ``--compare DIR`` it runs both models on up to ``--n`` images of an
image folder (validator level-0 view: centre square, 224x224, JPEG q75) and prints the largest differences
in boxes and confidences.

    python scripts/convert_yolo_pt.py --pt OLD/roadwork_yolo.pt --card OLD/roadwork_yolo.card.json \\
        --out src/roadminer/assets/models/roadwork_yolo.safetensors --compare ../shared/data/roadwork-v1/images
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

# The roadwork_yolo.pt that shipped up to the safetensors conversion.
SHIPPED_PT_SHA256 = "eb4857bea64ecf61dc9f79d4ee7c75ca8a030c3e03b66f03d54d41744d9454ee"


def _images(folder: Path, n: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"no images under {folder}")
    rng = np.random.default_rng(0)
    pos = [p for p in files if "no_roadwork" not in p.parts]
    neg = [p for p in files if "no_roadwork" in p.parts]
    pick = []
    for group in (pos, neg):
        if group:
            idx = rng.choice(len(group), size=min(len(group), (n + 1) // 2), replace=False)
            pick += [group[i] for i in sorted(idx)]
    return pick[:n]


def compare(old: object, new: object, images: list[Path], imgsz: int) -> dict[str, float]:
    from roadminer.training.detector_train import square_eval_view

    worst = {"images": len(images), "boxes": 0, "count_mismatch": 0, "max_abs_conf": 0.0, "max_abs_xyxy_px": 0.0}
    for path in images:
        rgb = square_eval_view(path)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        kw = {"imgsz": imgsz, "conf": 0.05, "iou": 0.5, "max_det": 50, "device": "cpu", "verbose": False}
        a = old.predict([bgr], **kw)[0].boxes  # type: ignore[attr-defined]
        b = new.predict([bgr], **kw)[0].boxes  # type: ignore[attr-defined]
        if len(a) != len(b) or not np.array_equal(a.cls.numpy(), b.cls.numpy()):
            worst["count_mismatch"] += 1
            continue
        worst["boxes"] += len(a)
        if len(a):
            worst["max_abs_conf"] = max(worst["max_abs_conf"], float(np.abs(a.conf.numpy() - b.conf.numpy()).max()))
            worst["max_abs_xyxy_px"] = max(
                worst["max_abs_xyxy_px"], float(np.abs(a.xyxy.numpy() - b.xyxy.numpy()).max())
            )
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--pt", type=Path, required=True, help="the ultralytics checkpoint to convert")
    ap.add_argument("--card", type=Path, help="model card JSON with head/count_conf/version (default: beside --pt)")
    ap.add_argument("--out", type=Path, required=True, help="output .safetensors")
    ap.add_argument("--sha256", default=SHIPPED_PT_SHA256, help="sha256 the checkpoint must have")
    ap.add_argument("--compare", type=Path, help="image folder: compare old and new detections")
    ap.add_argument("--n", type=int, default=20, help="images to compare")
    args = ap.parse_args(argv)

    data = args.pt.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != args.sha256.lower():
        print(f"refusing to unpickle {args.pt}: sha256 {digest} is not {args.sha256}", file=sys.stderr)
        return 2
    card_path = args.card or args.pt.with_name(args.pt.stem + ".card.json")
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}

    from roadminer.models.detector import DEFAULT_COUNT_CONF, import_yolo, load_yolo, save_yolo

    YOLO = import_yolo()
    old = YOLO(str(args.pt.resolve()), task="detect")  # unpickles the checkpoint checked above
    imgsz = int(card.get("imgsz") or old.ckpt.get("train_args", {}).get("imgsz") or 224)
    save_yolo(
        old.model,
        args.out,
        imgsz=imgsz,
        head=card.get("head"),
        count_conf=float(card.get("count_conf", DEFAULT_COUNT_CONF)),
        version=card.get("version") or args.pt.stem,
    )
    out_digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    report: dict[str, object] = {
        "from": str(args.pt), "from_sha256": digest, "out": str(args.out), "sha256": out_digest
    }
    if args.compare:
        # Loaded from a copy outside assets/models, so a new file loads before its sha256 is pinned.
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / args.out.name
            shutil.copyfile(args.out, copy)
            new, _ = load_yolo(copy, sha256=out_digest)
        report["compare"] = compare(old, new, _images(args.compare, args.n), imgsz)
    report["next"] = "pin the sha256 in src/roadminer/models/shipped.py when --out is in assets/models"
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
