"""Object-detector tier (kind ``yolo``): an ultralytics YOLO model finds cones, barriers and work signs, and
a small logistic head turns the detections into P(roadwork).

A detector is one safetensors file (never an ultralytics ``.pt``, which is a pickle): the state-dict tensors
plus metadata (``format`` = ``roadminer-yolo-2``)::

    yaml        the ultralytics model yaml as JSON (the architecture is rebuilt from it, offline)
    names       class names in index order, JSON      nc     number of classes
    imgsz       inference size                        task   "detect"
    head        the logistic head, JSON {"features": [...], "coef": [...], "intercept": ...}
    count_conf  confidence from which boxes count     version

The tier rebuilds the model from the yaml and loads the tensors with strict key and shape checks. A shipped
file (``assets/models``) must match its pin in ``roadminer.models.shipped``; an operator's file can be pinned
with the ``sha256`` option. ``NAME.card.json`` beside the weights documents data and metrics; it is not read.

Features per image (``detection_features``): the highest confidence of each class (0 when none), the
highest confidence overall, and ``log1p`` of the number of boxes at confidence >= ``count_conf``.
Ultralytics is AGPL-3.0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from roadminer.models import shipped
from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier

FORMAT = "roadminer-yolo-2"
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


def head_logit(head: dict[str, Any], feats: np.ndarray) -> np.ndarray:
    """The head's log-odds of road work for each feature row."""
    coef = np.asarray(head["coef"], dtype=np.float64)
    feats = np.atleast_2d(np.asarray(feats, dtype=np.float64))
    if feats.shape[1] != coef.size:
        raise ValueError(f"head expects {coef.size} features, got {feats.shape[1]}")
    return feats @ coef + float(head.get("intercept", 0.0))


def apply_head(head: dict[str, Any], feats: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-head_logit(head, feats)))


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
        raise ValueError("the yolo tier needs `weights`: an absolute .safetensors path or a shipped model name")
    p = Path(weights).expanduser()
    if p.suffix in (".pt", ".pth"):
        raise ValueError(
            f"detector weights {weights!r}: ultralytics .pt checkpoints are pickles and are not loaded; "
            "convert one you trust with scripts/convert_yolo_pt.py (or train with `roadminer train-detector`)"
        )
    if p.is_absolute():
        if not p.is_file():
            raise FileNotFoundError(f"detector weights not found: {p}")
        return p
    in_assets = ASSETS_MODELS / p
    if in_assets.is_file():
        return in_assets
    if p.is_file():  # relative to the working directory (an operator's local file)
        return p.resolve()
    raise FileNotFoundError(f"detector weights {weights!r}: not an absolute path and not shipped in {ASSETS_MODELS}")


def _half(v: Any) -> Any:
    v = v.detach().cpu().contiguous()
    return v.half() if v.is_floating_point() else v


def save_yolo(
    model: Any,
    path: str | Path,
    *,
    imgsz: int,
    head: dict[str, Any] | None = None,
    count_conf: float = DEFAULT_COUNT_CONF,
    version: str | None = None,
) -> Path:
    """Write an ultralytics ``DetectionModel`` (or a ``YOLO`` wrapping one) as a roadminer-yolo safetensors:
    fp16 tensors (as ultralytics saves its checkpoints) and the metadata in the module docstring."""
    from safetensors.torch import save_file

    import_yolo()  # ultralytics imported the safe way (no process-wide PIL patch)
    from ultralytics.engine.model import Model

    if isinstance(model, Model):
        model = model.model
    if hasattr(model, "is_fused") and model.is_fused():
        raise ValueError("cannot save a fused detector (conv+bn folded): its keys no longer match its yaml")
    cfg = dict(model.yaml)
    names = model.names
    ordered = [str(names[i]) for i in sorted(names)] if isinstance(names, dict) else [str(n) for n in names]
    nc = int(cfg.get("nc", len(ordered)))
    if nc != len(ordered):
        raise ValueError(f"model has nc={nc} but {len(ordered)} class names")
    head = head or default_head(nc)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import ultralytics

        ul_version = str(ultralytics.__version__)
    except ImportError:
        ul_version = ""
    meta = {
        "format": FORMAT,
        "task": "detect",
        "yaml": json.dumps(cfg),
        "names": json.dumps(ordered),
        "nc": str(nc),
        "imgsz": str(int(imgsz)),
        "head": json.dumps(head),
        "count_conf": repr(float(count_conf)),
        "version": version or path.stem,
        "ultralytics": ul_version,
    }
    save_file({k: _half(v) for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


def set_yolo_head(path: str | Path, head: dict[str, Any], count_conf: float | None = None) -> Path:
    """Rewrite a roadminer-yolo file's head (and ``count_conf``) in place; tensors and the rest unchanged."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save_file

    path = Path(path)
    data = path.read_bytes()
    meta = shipped.safetensors_metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a roadminer detector (format {meta.get('format')!r})")
    meta["head"] = json.dumps(head)
    if count_conf is not None:
        meta["count_conf"] = repr(float(count_conf))
    save_file(load_tensors(data), str(path), metadata=meta)
    return path


def read_yolo_file(path: Path, sha256: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(state dict, metadata)`` of a roadminer-yolo safetensors: shipped files are checked against their
    pin, ``sha256`` (an operator's pin) against the bytes read; ValueError on anything malformed."""
    from safetensors.torch import load as load_tensors

    data = shipped.read_verified(path)
    if sha256:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise ValueError(f"refusing to load {path}: sha256 {actual} does not match the configured {sha256}")
    raw = shipped.safetensors_metadata(data)
    if raw.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a roadminer detector (safetensors format {raw.get('format')!r}, want {FORMAT})"
        )
    try:
        meta: dict[str, Any] = {
            "yaml": json.loads(raw["yaml"]),
            "names": [str(n) for n in json.loads(raw["names"])],
            "nc": int(raw["nc"]),
            "imgsz": int(raw["imgsz"]),
            "head": json.loads(raw["head"]) if raw.get("head") else None,
            "count_conf": float(raw.get("count_conf", DEFAULT_COUNT_CONF)),
            "version": raw.get("version") or path.stem,
            "task": raw.get("task", "detect"),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: bad detector metadata ({type(e).__name__}: {e})") from None
    if not isinstance(meta["yaml"], dict) or meta["task"] != "detect" or meta["nc"] != len(meta["names"]):
        raise ValueError(f"{path}: detector metadata is inconsistent (yaml, task or nc vs names)")
    return load_tensors(data), meta


def _yaml_file_name(cfg: dict[str, Any]) -> str:
    # ultralytics takes the model scale (n/s/m/l/x) from the yaml's file name, so keep the original name.
    name = Path(str(cfg.get("yaml_file") or "model.yaml")).name
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}\.ya?ml", name):
        name = "model.yaml"
    return name


def build_yolo(cfg: dict[str, Any], names: list[str], state: dict[str, Any]) -> Any:
    """An ultralytics ``YOLO`` built from ``cfg`` (offline, no download) with ``state`` loaded strictly."""
    import torch
    import yaml

    YOLO = import_yolo()
    body = {k: v for k, v in cfg.items() if k not in ("yaml_file", "scale")}
    with tempfile.TemporaryDirectory(prefix="roadminer-yolo-") as tmp:
        yaml_path = Path(tmp) / _yaml_file_name(cfg)
        yaml_path.write_text(yaml.safe_dump(body, sort_keys=False))
        yolo = YOLO(str(yaml_path), task="detect")
    model = yolo.model
    built_scale, want_scale = model.yaml.get("scale", ""), cfg.get("scale", "")
    if want_scale and built_scale != want_scale:
        raise ValueError(f"detector yaml scale {want_scale!r} rebuilt as {built_scale!r}")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            "detector weights do not fit the architecture in their metadata: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"wrong shape {wrong[:5]}{'...' if len(wrong) > 5 else ''} ({len(wrong)})"
        )
    with torch.no_grad():
        model.load_state_dict(
            {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in state.items()}, strict=True
        )
    model.names = dict(enumerate(names))
    model.eval()
    return yolo


def load_yolo(weights: Path, sha256: str | None = None) -> tuple[Any, dict[str, Any]]:
    """``(ultralytics YOLO, metadata)`` from a roadminer-yolo safetensors file."""
    state, meta = read_yolo_file(weights, sha256)
    return build_yolo(meta["yaml"], meta["names"], state), meta


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
        self.model, self.meta = load_yolo(self.path, sha256)
        self.classes = list(self.meta["names"])
        self.n_classes = len(self.classes)
        self.head = head or self.meta["head"] or default_head(self.n_classes)
        if len(self.head["coef"]) != self.n_classes + 2:
            raise ValueError(f"head has {len(self.head['coef'])} coefficients; model has {self.n_classes} classes")
        self.imgsz = int(imgsz or self.meta["imgsz"])
        self.conf = float(conf)
        self.iou = float(iou)
        self.max_det = int(max_det)
        self.device = device
        self.batch_size = int(batch_size)
        self.count_conf = float(count_conf if count_conf is not None else self.meta["count_conf"])
        self.version = str(self.meta["version"])

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
