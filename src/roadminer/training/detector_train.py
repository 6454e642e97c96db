"""Train the YOLO detector tier on the boxed images of a dataset and measure it as an image classifier.

Steps (``train_detector``):

1. ``build_yolo_dataset``: every image is centre-cropped to a square and resized, as validators do before
   they send 224x224 frames; YOLO boxes follow the crop (a box keeps its class if at least 40% of it stays
   in view). The split is grouped: whole ``split_key`` units (``group``, refined by a dataset's own
   ``train``/``val``/``test`` subset in ``SOURCE__SUBSET__NAME`` file names when the group is a whole
   source) go to validation, about ``val_frac`` of each source, plus any ``holdout_sources``.
   Detector training uses positives with boxes and negatives as backgrounds; positives without boxes are
   never backgrounds (they only join the image-level evaluation when held out).
2. ultralytics trains the architecture from its yaml, ``amp=False``, no plots: from random init, or with
   ``init`` (e.g. the COCO-trained YOLOv5n as safetensors) for the backbone and neck (``init_state``).
3. Box metrics (mAP50 per class) on the held-out boxed images; image-level AUC/MCC on every held-out image
   after the validators' level-0 preparation (224x224, JPEG q75), with the logistic head's numbers out of
   fold (grouped K-fold over the held-out units), then the head refitted on all of them for the card.

The output is ``OUT.safetensors`` (the weights with architecture, classes, imgsz and the fitted head as
metadata: ``roadminer.models.detector.save_yolo``, no pickle) and ``OUT.card.json`` (sha256, head,
metrics, data counts). Ultralytics keeps its own ``.pt`` checkpoints in the scratch folder while training;
roadminer never loads them.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from PIL import Image

from roadminer.core.scoring import auc, prob_mcc, to_label
from roadminer.imaging.augment import photometric
from roadminer.models.detector import (
    FORMAT,
    apply_head,
    card_path_for,
    configure_ultralytics_env,
    default_head,
    feature_names,
    fit_head,
    load_yolo,
    save_yolo,
    set_yolo_head,
    sha256_file,
)
from roadminer.training.data import CLASS_NAMES, Box, Sample, export_downsized, load_dataset

DATASET_SPLITS = ("train", "val", "test")
PROBE_IMAGES = 32  # ultralytics' end-of-training validation set when nothing is held out
MIN_BOX_VISIBLE = 0.4


def split_key(s: Sample) -> str:
    """The unit a split never cuts: ``group``; when the group is the whole source and the file name carries
    the dataset's own split (``tracon__val__x.jpg``), ``source:subset``."""
    if s.group == s.source:
        parts = Path(s.name).stem.split("__")
        if len(parts) >= 3 and parts[1] in DATASET_SPLITS:
            return f"{s.group}:{parts[1]}"
    return s.group


def square_crop(img: Image.Image, boxes: Sequence[Box], size: int) -> tuple[Image.Image, list[Box]]:
    """Centre crop to the shorter side, resize to ``size``; boxes move with the crop."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.BILINEAR)
    out: list[Box] = []
    for b in boxes:
        x0, x1 = (b.cx - b.w / 2) * w, (b.cx + b.w / 2) * w
        y0, y1 = (b.cy - b.h / 2) * h, (b.cy + b.h / 2) * h
        area = max(1e-9, (x1 - x0) * (y1 - y0))
        cx0, cx1 = max(x0, left), min(x1, left + side)
        cy0, cy1 = max(y0, top), min(y1, top + side)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        if (cx1 - cx0) * (cy1 - cy0) / area < MIN_BOX_VISIBLE:
            continue
        out.append(
            Box(
                b.cls,
                ((cx0 + cx1) / 2 - left) / side,
                ((cy0 + cy1) / 2 - top) / side,
                (cx1 - cx0) / side,
                (cy1 - cy0) / side,
            )
        )
    return img, out


def choose_split(
    samples: Sequence[Sample], val_frac: float = 0.2, seed: int = 0, holdout_sources: Sequence[str] = ()
) -> dict[str, str]:
    """``{split_key: "train" | "val"}``: per source, seeded whole units up to about ``val_frac`` of its rows
    (a source with one unit stays in training unless named in ``holdout_sources``)."""
    rng = random.Random(seed)
    sizes = Counter(split_key(s) for s in samples)
    by_source: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        by_source[s.source].add(split_key(s))
    out: dict[str, str] = {}
    for source, keys in sorted(by_source.items()):
        names = sorted(keys)
        if source in holdout_sources:
            out.update({k: "val" for k in names})
            continue
        out.update({k: "train" for k in names})
        if len(names) < 2:
            continue
        total = sum(sizes[k] for k in names)
        rng.shuffle(names)
        taken = 0
        for k in names:
            if taken >= val_frac * total:
                break
            if taken + sizes[k] > 0.5 * total:  # never more than half of a source
                continue
            out[k] = "val"
            taken += sizes[k]
    return out


@dataclass
class EvalItem:
    path: Path
    label: int
    source: str
    key: str
    has_boxes: bool


def build_yolo_dataset(
    samples: Sequence[Sample],
    out: str | Path,
    size: int = 256,
    val_frac: float = 0.2,
    seed: int = 0,
    holdout_sources: Sequence[str] = (),
    max_negatives_per_source: int | None = 200,
    quality: int = 90,
    distorted_copies: int = 0,
    distortion_level: int = 3,
) -> dict[str, Any]:
    """Write ``out/images/{train,val}``, ``out/labels/{train,val}``, ``out/images/eval_only`` (held-out
    positives without boxes), ``out/data.yaml`` and ``out/eval.csv``; returns counts and the split.

    ``distorted_copies`` adds that many copies of every training image with the photometric distortions of
    augmentation ``distortion_level`` (blur, noise, JPEG down-up, contrast, saturation; seeded, boxes
    unchanged), so the detector also learns the validators' level-3 look. ``val_frac=0`` puts everything in
    training (ultralytics then validates on a probe of ``PROBE_IMAGES`` training images)."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    split_of = choose_split(samples, val_frac, seed, holdout_sources)
    rng = random.Random(seed)
    # Cap negatives per (source, split) so one big negative-only source cannot swamp the boxes.
    negs: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        if s.label == 0:
            negs[(s.source, split_of[split_key(s)])].append(s)
    keep_neg: set[int] = set()
    for items in negs.values():
        chosen = items
        if max_negatives_per_source is not None and len(items) > max_negatives_per_source:
            chosen = rng.sample(items, max_negatives_per_source)
        keep_neg.update(id(s) for s in chosen)
    counts: Counter[str] = Counter()
    box_counts: Counter[str] = Counter()
    eval_rows: list[dict[str, Any]] = []
    used = set()
    for s in samples:
        split = split_of[split_key(s)]
        if s.label == 0 and id(s) not in keep_neg:
            continue
        if s.label == 1 and not s.has_boxes and split == "train":
            continue  # a positive without boxes would be a false background
        img, boxes = square_crop(s.read_pil(), s.boxes, size)
        if s.label == 1 and s.has_boxes and not boxes and split == "train":
            continue  # every box fell outside the crop
        folder = split if (s.label == 0 or s.has_boxes) else "eval_only"
        stem = Path(s.name).stem
        while f"{folder}/{stem}" in used:
            stem += "_"
        used.add(f"{folder}/{stem}")
        ipath = out / "images" / folder / f"{stem}.jpg"
        ipath.parent.mkdir(parents=True, exist_ok=True)
        img.save(ipath, "JPEG", quality=quality)
        copies = [stem]
        if folder == "train":
            base = np.asarray(img.convert("RGB"), dtype=np.uint8)
            for j in range(distorted_copies):
                arr = photometric(base, distortion_level, np.random.default_rng([seed, len(used), j]))
                Image.fromarray(np.ascontiguousarray(arr), "RGB").save(
                    ipath.with_name(f"{stem}__d{j}.jpg"), "JPEG", quality=quality)
                copies.append(f"{stem}__d{j}")
        if folder != "eval_only":
            text = "".join(f"{b.cls} {b.cx:.6f} {b.cy:.6f} {b.w:.6f} {b.h:.6f}\n" for b in boxes)
            for name in copies:
                lpath = out / "labels" / folder / f"{name}.txt"
                lpath.parent.mkdir(parents=True, exist_ok=True)
                lpath.write_text(text)
            for b in boxes:
                box_counts[f"{folder}:{CLASS_NAMES[b.cls] if 0 <= b.cls < len(CLASS_NAMES) else b.cls}"] += 1
        counts[f"{folder}:{'pos' if s.label else 'neg'}"] += 1
        if len(copies) > 1:
            counts[f"{folder}:distorted"] += len(copies) - 1
        if split == "val":
            eval_rows.append(
                {
                    "file": str(ipath.relative_to(out)),
                    "label": s.label,
                    "source": s.source,
                    "key": split_key(s),
                    "has_boxes": int(s.has_boxes),
                }
            )
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(CLASS_NAMES))
    val_dir = "images/val"
    if not (out / "images" / "val").is_dir():  # nothing held out: ultralytics still wants a val set; a small probe
        val_dir = "images/probe"
        probe = sorted((out / "images" / "train").glob("*.jpg"))[:PROBE_IMAGES]
        for sub in ("images", "labels"):
            (out / sub / "probe").mkdir(parents=True, exist_ok=True)
        for img_path in probe:
            shutil.copy(img_path, out / "images" / "probe" / img_path.name)
            lab = out / "labels" / "train" / f"{img_path.stem}.txt"
            if lab.is_file():
                shutil.copy(lab, out / "labels" / "probe" / lab.name)
    (out / "data.yaml").write_text(f"path: {out.resolve()}\ntrain: images/train\nval: {val_dir}\nnames:\n{names}\n")
    with (out / "eval.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "source", "key", "has_boxes"])
        w.writeheader()
        w.writerows(eval_rows)
    val_keys = sorted(k for k, v in split_of.items() if v == "val")
    info = {
        "counts": dict(sorted(counts.items())),
        "boxes": dict(sorted(box_counts.items())),
        "val_keys": val_keys,
        "size": size,
    }
    (out / "split.json").write_text(json.dumps(info, indent=2))
    return info


def read_eval(ds: str | Path) -> list[EvalItem]:
    ds = Path(ds)
    with (ds / "eval.csv").open(newline="") as f:
        return [
            EvalItem(ds / r["file"], int(r["label"]), r["source"], r["key"], bool(int(r["has_boxes"])))
            for r in csv.DictReader(f)
        ]


def square_eval_view(path: Path, size: int = 224, quality: int = 75) -> np.ndarray:
    """The detector's evaluation view: its own box-aware square crop, 224x224, JPEG q75 (decoded back to RGB);
    the level-0 counterpart of :func:`roadminer.imaging.views.validator_view` for images with boxes."""
    img = Image.open(path).convert("RGB")
    img, _ = square_crop(img, [], size)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.uint8)


def image_level_metrics(
    feats: np.ndarray, items: Sequence[EvalItem], folds: int = 5, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw max-confidence AUC, the head's out-of-fold AUC/MCC (grouped by split unit), per-source numbers;
    returns ``(metrics, head fitted on all items)``."""
    from sklearn.model_selection import GroupKFold

    y = np.array([it.label for it in items])
    groups = np.array([it.key for it in items])
    n_cls = feats.shape[1] - 2
    raw = feats[:, n_cls]
    oof = np.full(len(items), np.nan)
    n_groups = len(set(groups.tolist()))
    k = min(folds, n_groups)
    if k >= 2 and len(set(y.tolist())) == 2:
        for tr, va in GroupKFold(n_splits=k).split(feats, y, groups):
            try:
                head = fit_head(feats[tr], y[tr])
            except ValueError:
                head = default_head(n_cls)
            oof[va] = apply_head(head, feats[va])
    oof = np.where(np.isnan(oof), apply_head(default_head(n_cls), feats), oof)
    metrics: dict[str, Any] = {
        "n": len(items),
        "positives": int(y.sum()),
        "auc_max_conf": auc(y, raw),
        "auc_head_oof": auc(y, oof),
        "mcc_head_oof": prob_mcc(y, oof),
        "per_source": {},
    }
    sources = np.array([it.source for it in items])
    boxed = np.array([it.has_boxes for it in items])
    for src in sorted(set(sources.tolist())):
        m = sources == src
        ys, ps = y[m], oof[m]
        row: dict[str, Any] = {"n": int(m.sum()), "positives": int(ys.sum()), "auc_head_oof": auc(ys, ps)}
        if ys.sum():
            row["recall"] = float(to_label(ps[ys == 1]).mean())
            if (boxed & m & (y == 1)).any() and (~boxed & m & (y == 1)).any():
                row["recall_boxed"] = float(to_label(oof[boxed & m & (y == 1)]).mean())
                row["recall_unboxed"] = float(to_label(oof[~boxed & m & (y == 1)]).mean())
        if (ys == 0).any():
            row["fpr"] = float(to_label(ps[ys == 0]).mean())
        metrics["per_source"][src] = row
    try:
        final = fit_head(feats, y)
    except ValueError:
        final = default_head(n_cls)
    return metrics, final


def _patch_without_polars() -> None:
    """ultralytics reads its results.csv with polars when saving checkpoints; where polars is not installed,
    read it with the csv module instead."""
    try:
        import polars  # noqa: F401
    except ImportError:
        from ultralytics.engine.trainer import BaseTrainer

        def read_results_csv(self: Any) -> dict[str, list[Any]]:
            try:
                with open(self.csv, newline="") as f:
                    rows = list(csv.DictReader(f))
                return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}
            except Exception:
                return {}

        BaseTrainer.read_results_csv = read_results_csv  # type: ignore[method-assign]


def init_state(path: str | Path, model: Any, max_layer: int = 23) -> dict[str, Any]:
    """Tensors of a safetensors checkpoint (e.g. the COCO YOLOv5n) for ``model``'s layers ``0..max_layer``:
    every such key of the model must be in the file with the same shape (else ValueError); the layers above
    (the detection head, sized for our classes) keep their fresh initialisation."""
    from safetensors.torch import load_file

    src = load_file(str(path))
    want = {k: v for k, v in model.state_dict().items() if k.split(".")[0] == "model"
            and k.split(".")[1].isdigit() and int(k.split(".")[1]) <= max_layer}
    missing = sorted(k for k in want if k not in src)
    wrong = sorted(k for k in want if k in src and tuple(src[k].shape) != tuple(want[k].shape))
    if not want or missing or wrong:
        raise ValueError(f"{path} does not fit layers 0-{max_layer} of the architecture: missing {missing[:4]} "
                         f"({len(missing)}), wrong shape {wrong[:4]} ({len(wrong)})")
    return {k: src[k].to(want[k].dtype) for k in want}


def train_yolo(
    dataset_yaml: str | Path,
    work: Path,
    *,
    model: str = "yolov5n.yaml",
    init: str | Path | None = None,
    init_max_layer: int = 23,
    epochs: int = 30,
    time_min: float | None = None,
    imgsz: int = 256,
    batch: int = 32,
    device: str = "cpu",
    workers: int = 2,
    seed: int = 0,
    cache: bool = True,
    extra_args: dict[str, Any] | None = None,
) -> Any:
    """Train an ultralytics architecture (``model`` yaml) on a YOLO dataset; with ``init``, layers
    ``0..init_max_layer`` start from that safetensors checkpoint (loaded when training starts, after
    ultralytics has rebuilt the model for our classes). Returns the ``YOLO`` holding the trained weights."""
    if not str(model).endswith((".yaml", ".yml")):
        raise ValueError(f"model {model!r}: give an ultralytics architecture yaml (never a .pt pickle)")
    configure_ultralytics_env(work / "ultralytics_cfg")
    from roadminer.models.detector import import_yolo

    YOLO = import_yolo()
    _patch_without_polars()
    yolo = YOLO(model)
    if init is not None:
        init_state(init, yolo.model, init_max_layer)  # fail before training if the file does not fit

        def load_init(trainer: Any) -> None:
            """After ultralytics built the model for our classes, its optimizer and its EMA copy: the tensors
            are copied in place, so both keep pointing at them."""
            import torch

            state = init_state(init, trainer.model, init_max_layer)
            with torch.no_grad():
                trainer.model.load_state_dict(state, strict=False)
                ema = getattr(getattr(trainer, "ema", None), "ema", None)
                if ema is not None:
                    ema.load_state_dict(state, strict=False)
            logger.info("detector: {} tensors of layers 0-{} from {}", len(state), init_max_layer, init)

        yolo.add_callback("on_pretrain_routine_end", load_init)
    args: dict[str, Any] = {
        "data": str(dataset_yaml),
        "epochs": int(epochs),
        "imgsz": int(imgsz),
        "batch": int(batch),
        "device": device,
        "workers": int(workers),
        "seed": int(seed),
        "amp": False,
        "plots": False,
        "project": str(work / "runs"),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
        "cache": "ram" if cache else False,
        "pretrained": False,
        "patience": 1000,
    }
    if time_min:
        args["time"] = float(time_min) / 60.0
    args.update(extra_args or {})
    yolo.train(**args)  # afterwards yolo.model holds the best epoch's weights
    return yolo


def train_detector(
    data: str | Path,
    out: str | Path,
    work_dir: str | Path | None = None,
    model: str = "yolo11n.yaml",
    epochs: int = 30,
    time_min: float | None = None,
    imgsz: int = 256,
    batch: int = 32,
    device: str = "cpu",
    workers: int = 2,
    seed: int = 0,
    val_frac: float = 0.2,
    holdout_sources: Sequence[str] = (),
    max_negatives_per_source: int | None = 200,
    cache: bool = True,
    extra_args: dict[str, Any] | None = None,
    init: str | Path | None = None,
    dataset_size: int | None = None,
    distorted_copies: int = 0,
) -> dict[str, Any]:
    """Build the dataset, train, measure; writes ``OUT.safetensors`` + ``OUT.card.json``, returns the card."""
    if not str(model).endswith((".yaml", ".yml")):
        raise ValueError(f"model {model!r}: give an ultralytics architecture yaml (never a .pt pickle)")
    t0 = time.time()
    out = Path(out)
    weights_out = out if out.suffix == ".safetensors" else out.with_name(out.name + ".safetensors")
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else weights_out.parent / f"{weights_out.stem}_work"
    work.mkdir(parents=True, exist_ok=True)
    configure_ultralytics_env(work / "ultralytics_cfg")

    samples = load_dataset(data)
    logger.info("detector data: {} images, {} with boxes", len(samples), sum(s.has_boxes for s in samples))
    ds = work / "yolo_ds"
    split = build_yolo_dataset(
        samples,
        ds,
        size=dataset_size or imgsz,
        val_frac=val_frac,
        seed=seed,
        holdout_sources=holdout_sources,
        max_negatives_per_source=max_negatives_per_source,
        distorted_copies=distorted_copies,
    )
    logger.info("YOLO dataset {}: {} boxes {}", ds, split["counts"], split["boxes"])
    yolo = train_yolo(ds / "data.yaml", work, model=model, init=init, epochs=epochs, time_min=time_min,
                      imgsz=imgsz, batch=batch, device=device, workers=workers, seed=seed, cache=cache,
                      extra_args=extra_args)
    version = weights_out.stem
    save_yolo(yolo.model, weights_out, imgsz=imgsz, head=default_head(len(CLASS_NAMES)), version=version)
    train_s = time.time() - t0

    # Box metrics on the held-out boxed images, with the model as the tier loads it (from the safetensors).
    from roadminer.models.detector import YoloTier

    trained, _ = load_yolo(weights_out)
    val = trained.val(
        data=str(ds / "data.yaml"),
        imgsz=imgsz,
        batch=batch,
        device=device,
        plots=False,
        verbose=False,
        workers=int(workers),
        project=str(work / "runs"),
        name="val",
        exist_ok=True,
    )
    names = val.names if hasattr(val, "names") else dict(enumerate(CLASS_NAMES))
    ap50 = {str(names[int(c)]): float(val.box.ap50[i]) for i, c in enumerate(val.box.ap_class_index)}
    box_metrics = {"map50": float(val.box.map50), "map50_95": float(val.box.map), "ap50_per_class": ap50}

    tier = YoloTier(weights=str(weights_out.resolve()), device=device, imgsz=imgsz)
    items = read_eval(ds)
    images = [square_eval_view(it.path) for it in items]
    feats, _ = tier.features(images)
    img_metrics, head = image_level_metrics(feats, items, seed=seed)
    # The fitted head goes into the weights file, which the tier reads (the card only documents it).
    set_yolo_head(weights_out, head, tier.count_conf)
    card: dict[str, Any] = {
        "format": FORMAT,
        "weights": weights_out.name,
        "sha256": sha256_file(weights_out),
        "arch": model,
        "imgsz": int(imgsz),
        "classes": list(CLASS_NAMES),
        "count_conf": tier.count_conf,
        "version": version,
    }
    card.update(
        {
            "head": head,
            "feature_names": feature_names(CLASS_NAMES),
            "metrics": {"boxes_val": box_metrics, "image_level_val": img_metrics},
            "data": {
                "source": str(data),
                "counts": split["counts"],
                "boxes": split["boxes"],
                "val_units": split["val_keys"],
                "holdout_sources": list(holdout_sources),
            },
            "training": {
                "epochs": int(getattr(yolo.trainer, "epochs", epochs)),
                "imgsz": int(imgsz),
                "batch": int(batch),
                "device": device,
                "seed": int(seed),
                "amp": False,
                "pretrained": str(init) if init else None,
                "train_seconds": round(train_s, 1),
            },
            "licence": "weights trained with ultralytics (AGPL-3.0); data research-only (see the data README)",
        }
    )
    card_path_for(weights_out).write_text(json.dumps(card, indent=2))
    logger.info(
        "detector: box mAP50 {:.3f} {}; image AUC max-conf {} head-oof {} MCC {:.3f}",
        box_metrics["map50"],
        ap50,
        img_metrics["auc_max_conf"],
        img_metrics["auc_head_oof"],
        img_metrics["mcc_head_oof"],
    )
    return card


def export_square_copy(
    data: str | Path,
    dst: str | Path,
    size: int = 256,
    quality: int = 85,
    max_per_source: dict[str, int] | None = None,
    every_nth: dict[str, int] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A small image-folder copy (manifest and YOLO boxes kept) of square crops, as validators crop, for
    carrying a dataset to a training machine."""
    return export_downsized(
        data, dst, quality=quality, max_per_source=max_per_source, every_nth=every_nth, seed=seed,
        transform=lambda img, boxes: square_crop(img, boxes, size),
    )
