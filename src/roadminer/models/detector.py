"""Object-detector tier (kind ``yolo``): an ultralytics YOLO model finds cones, barriers and work signs, and
a small logistic head turns the detections into P(roadwork).

Weights are ultralytics ``.pt`` checkpoints, which are pickles: this tier loads only a file the operator
configured (absolute, or relative to the working directory) or one the project ships in ``assets/models/``,
and only after its SHA-256 matches the one recorded in the model card beside it (``NAME.card.json``) or
given as the ``sha256`` option. Nothing is fetched from the network.

The card (JSON) holds::

    {"format": "roadminer-yolo-1", "weights": "NAME.pt", "sha256": "...", "imgsz": 256,
     "classes": ["cone", "barrier", "sign", "other"],
     "head": {"features": [...], "coef": [...], "intercept": -3.0}, "metrics": {...}}

Features per image (``detection_features``): the highest confidence of each class (0 when none), the
highest confidence overall, and ``log1p`` of the number of boxes at confidence >= ``count_conf``.
Ultralytics is AGPL-3.0.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier

FORMAT = "roadminer-yolo-1"
CLASS_NAMES = ("cone", "barrier", "sign", "other")
ASSETS_MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"
DEFAULT_COUNT_CONF = 0.25


def configure_ultralytics_env(config_dir: str | Path | None = None) -> None:
    """Make ultralytics safe offline; call before ``import ultralytics`` (no DNS look-ups, no pip installs,
    a writable settings folder)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "False")
    os.environ.setdefault("YOLO_VERBOSE", "False")
    if config_dir is not None:
        os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    elif "YOLO_CONFIG_DIR" not in os.environ:
        d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "roadminer" / "ultralytics"
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".w"
            probe.write_text("")
            probe.unlink()
        except OSError:
            d = Path(tempfile.gettempdir()) / "roadminer-ultralytics"
            d.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(d)


def import_yolo() -> Any:
    """``ultralytics.YOLO`` with the process left as it was: importing ultralytics replaces ``PIL.Image.open``
    process-wide with a wrapper that, on any unidentified image, tries to pip-install and import a HEIF
    plugin. The miner decodes untrusted bytes with PIL, so the original ``Image.open`` is put back."""
    configure_ultralytics_env()
    from PIL import Image

    original_open = Image.open
    from ultralytics import YOLO

    try:
        from ultralytics.utils import patches

        Image.open = getattr(patches, "_image_open", original_open)
    except ImportError:
        Image.open = original_open
    return YOLO


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_path_for(weights: str | Path) -> Path:
    p = Path(weights)
    return p.with_name(p.stem + ".card.json")


def feature_names(classes: tuple[str, ...] | list[str] = CLASS_NAMES) -> list[str]:
    return [f"max_{c}" for c in classes] + ["max_any", "log1p_count"]


def detection_features(
    cls: np.ndarray, conf: np.ndarray, n_classes: int = len(CLASS_NAMES), count_conf: float = DEFAULT_COUNT_CONF
) -> np.ndarray:
    """One image's feature vector from its detections (class ids and confidences)."""
    cls = np.asarray(cls, dtype=np.int64).reshape(-1)
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    f = np.zeros(n_classes + 2, dtype=np.float64)
    for c, p in zip(cls.tolist(), conf.tolist(), strict=True):
        if 0 <= c < n_classes and p > f[c]:
            f[c] = p
    f[n_classes] = float(conf.max()) if conf.size else 0.0
    f[n_classes + 1] = float(np.log1p((conf >= count_conf).sum()))
    return f


def default_head(n_classes: int = len(CLASS_NAMES)) -> dict[str, Any]:
    """Before a head is fitted: P rises with the best detection (0.5 at about 0.35 confidence)."""
    coef = [0.0] * n_classes + [8.0, 0.5]
    return {"features": feature_names(CLASS_NAMES[:n_classes]), "coef": coef, "intercept": -2.8}


def apply_head(head: dict[str, Any], feats: np.ndarray) -> np.ndarray:
    coef = np.asarray(head["coef"], dtype=np.float64)
    feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
    if feats.shape[1] != coef.size:
        raise ValueError(f"head expects {coef.size} features, got {feats.shape[1]}")
    z = feats @ coef + float(head.get("intercept", 0.0))
    return 1.0 / (1.0 + np.exp(-z))


def fit_head(feats: np.ndarray, labels: np.ndarray, c: float = 1.0) -> dict[str, Any]:
    """A logistic regression on detection features (class-balanced, L2)."""
    from sklearn.linear_model import LogisticRegression

    feats = np.asarray(feats, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(set(labels.tolist())) < 2:
        raise ValueError("fitting the detector head needs both labels")
    lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    lr.fit(feats, labels)
    n_classes = feats.shape[1] - 2
    return {
        "features": feature_names(CLASS_NAMES[:n_classes]),
        "coef": [float(x) for x in lr.coef_[0]],
        "intercept": float(lr.intercept_[0]),
    }


def resolve_weights(weights: str | Path | None) -> Path:
    """An absolute path as configured, or a file name shipped in ``assets/models/``."""
    if weights is None:
        raise ValueError("the yolo tier needs `weights`: an absolute .pt path or a shipped model name")
    p = Path(weights).expanduser()
    if p.is_absolute():
        if not p.is_file():
            raise FileNotFoundError(f"detector weights not found: {p}")
        return p
    shipped = ASSETS_MODELS / p
    if shipped.is_file():
        return shipped
    if p.is_file():  # relative to the working directory (an operator's local file)
        return p.resolve()
    raise FileNotFoundError(f"detector weights {weights!r}: not an absolute path and not shipped in {ASSETS_MODELS}")


def load_card(weights: Path) -> dict[str, Any]:
    cp = card_path_for(weights)
    if not cp.is_file():
        return {}
    card = json.loads(cp.read_text())
    if card.get("format") not in (None, FORMAT):
        raise ValueError(f"{cp} is not a roadminer detector card (format {card.get('format')!r})")
    return card


def verify_weights(weights: Path, expected: str | None) -> str:
    """Refuse to unpickle a checkpoint whose SHA-256 is unknown or differs."""
    if not expected:
        raise ValueError(
            f"refusing to load {weights}: no sha256 recorded (write it in {card_path_for(weights).name} "
            "or pass the `sha256` option)"
        )
    actual = sha256_file(weights)
    if actual.lower() != expected.lower():
        raise ValueError(f"refusing to load {weights}: sha256 {actual} does not match the recorded {expected}")
    return actual


def load_yolo(weights: Path, sha256: str | None = None) -> Any:
    """The ultralytics model from a verified checkpoint (or a ``.yaml`` architecture, which is no pickle)."""
    YOLO = import_yolo()

    if weights.suffix in (".yaml", ".yml"):
        return YOLO(str(weights))
    verify_weights(weights, sha256)
    return YOLO(str(weights.resolve()), task="detect")


class YoloTier(Tier):
    """Runs a YOLO detector on each image and maps its detections to P(roadwork) with the card's head."""

    def __init__(
        self,
        name: str = "yolo",
        weights: str | Path | None = None,
        sha256: str | None = None,
        imgsz: int | None = None,
        conf: float = 0.05,
        iou: float = 0.5,
        max_det: int = 50,
        device: str = "cpu",
        batch_size: int = 32,
        head: dict[str, Any] | None = None,
        count_conf: float | None = None,
    ) -> None:
        self.name = name
        self.path = resolve_weights(weights)
        self.card = load_card(self.path)
        self.model = load_yolo(self.path, sha256 or self.card.get("sha256"))
        names = getattr(self.model, "names", None) or {}
        self.classes = [str(names[i]) for i in sorted(names)] if names else list(CLASS_NAMES)
        self.n_classes = len(self.classes)
        self.head = head or self.card.get("head") or default_head(self.n_classes)
        if len(self.head["coef"]) != self.n_classes + 2:
            raise ValueError(f"head has {len(self.head['coef'])} coefficients; model has {self.n_classes} classes")
        self.imgsz = int(imgsz or self.card.get("imgsz") or 224)
        self.conf = float(conf)
        self.iou = float(iou)
        self.max_det = int(max_det)
        self.device = device
        self.batch_size = int(batch_size)
        self.count_conf = float(
            count_conf if count_conf is not None else self.card.get("count_conf", DEFAULT_COUNT_CONF)
        )
        self.version = str(self.card.get("version") or self.path.stem)

    def detect(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(cls, conf, xyxyn)`` per image. Images are RGB; ultralytics reads numpy arrays as BGR."""
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [np.ascontiguousarray(im[..., ::-1]) for im in images[i : i + self.batch_size]]
            results = self.model.predict(
                chunk,
                imgsz=self.imgsz,
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_det,
                device=self.device,
                verbose=False,
            )
            for r in results:
                b = r.boxes
                if b is None or len(b) == 0:
                    out.append((np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4))))
                else:
                    out.append(
                        (
                            b.cls.cpu().numpy().astype(np.int64),
                            b.conf.cpu().numpy().astype(np.float64),
                            b.xyxyn.cpu().numpy().astype(np.float64),
                        )
                    )
        return out

    def features(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        dets = self.detect(images)
        feats = (
            np.stack([detection_features(c, p, self.n_classes, self.count_conf) for c, p, _ in dets])
            if dets
            else np.zeros((0, self.n_classes + 2))
        )
        return feats, dets

    def predict(self, batch: ImageBatch) -> TierOutput:
        feats, dets = self.features(batch.rgb)
        prob = apply_head(self.head, feats) if len(feats) else np.zeros(0)
        detections = [
            [
                {
                    "cls": self.classes[int(c)] if 0 <= int(c) < self.n_classes else str(int(c)),
                    "conf": round(float(p), 4),
                    "box": [round(float(v), 4) for v in xy],
                }
                for c, p, xy in zip(cs, ps, xys, strict=True)
                if p >= self.count_conf
            ]
            for cs, ps, xys in dets
        ]
        return TierOutput(prob=clip_prob(prob), extras={"features": feats, "detections": detections})

    def warmup(self) -> None:
        self.detect([np.zeros((224, 224, 3), dtype=np.uint8)])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"weights": str(self.path), "imgsz": self.imgsz, "classes": self.classes})
        return d


@register_tier("yolo")
def _factory(name: str, **options: Any) -> Tier:
    return YoloTier(name=name, **options)
