"""Fine-tune an image classifier on validator-parity views, calibrate it, and save model + card.

Every training image is what a validator would send: augmentation level drawn from ``levels``, then a
224x224 JPEG q75 round trip. Sampling balances the labels and damps big sources. Calibration (temperature
and a 50/50-prior threshold) is fitted on a grouped hold-out and stored in the card; the cascade applies it
(``cascade.temperature`` / ``cascade.threshold``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from roadminer.core.config import TrainConfig
from roadminer.core.scoring import binary_metrics
from roadminer.imaging.views import validator_view
from roadminer.models.classifier import build_model, load_classifier, save_classifier, to_tensor
from roadminer.training.calibrate import fit_calibration
from roadminer.training.data import Sample, balanced_weights, holdout_split, load_many, summarize
from roadminer.training.evaluate import loso_report

MODEL_FILE = "model.safetensors"
CARD_FILE = "card.json"


def eval_view(sample: Sample, index: int, level: int, seed: int) -> Any:
    """The fixed evaluation view of ``sample`` at position ``index`` of the evaluated list: a pure function
    of (seed, index, level), so that every model (and the colour cue) is scored on the same pixels."""
    rng = np.random.default_rng([seed, index, level])
    return validator_view(sample.read_pil(), level, rng, real_flips=False)


class ViewDataset(Dataset):
    """Validator-parity views of samples. Training: random level and fresh randomness per draw; eval:
    view (sample, level) is a pure function of (seed, index, level) so that every run sees the same views."""

    def __init__(
        self,
        samples: Sequence[Sample],
        prep: dict[str, Any],
        levels: Sequence[int],
        seed: int,
        train: bool,
        real_flip_share: float = 0.25,
        fixed_level: int | None = None,
        bank: Any = None,
        copy_paste_p: float = 0.0,
    ) -> None:
        self.samples = list(samples)
        self.prep = prep
        self.levels = list(levels)
        self.seed = seed
        self.train = train
        self.real_flip_share = real_flip_share
        self.fixed_level = fixed_level
        self.bank = bank
        self.copy_paste_p = copy_paste_p
        self._draws = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.samples[i]
        if self.train:
            self._draws += 1
            info = torch.utils.data.get_worker_info()
            wid = info.id if info is not None else 0
            rng = np.random.default_rng([self.seed, i, wid, self._draws, int(torch.initial_seed() % 2**31)])
            level = int(rng.choice(self.levels))
            real = bool(rng.random() < self.real_flip_share)
            img = s.read_pil()
            label = s.label
            if label == 0 and self.bank is not None and len(self.bank) and rng.random() < self.copy_paste_p:
                img, label = self.bank.paste(img, rng), 1
            view = validator_view(img, level, rng, real_flips=real, hflip=not real)
            return to_tensor([view], self.prep)[0], torch.tensor(float(label))
        else:
            level = self.fixed_level if self.fixed_level is not None else self.levels[0]
            view = eval_view(s, i, level, self.seed)
        x = to_tensor([view], self.prep)[0]
        return x, torch.tensor(float(s.label))


def warmup_cosine(opt: torch.optim.Optimizer, warmup_frac: float, total_steps: int) -> Any:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0 (the schedule of every fit)."""
    warm = max(1, int(warmup_frac * total_steps))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total_steps - warm)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_at)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _loader(ds: Dataset, batch_size: int, workers: int, sampler: Any = None, shuffle: bool = False) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=False,
        worker_init_fn=_worker_init,
    )


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # each loader process works on one image at a time


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    samples: Sequence[Sample],
    prep: dict[str, Any],
    levels: Sequence[int],
    seed: int = 1234,
    batch_size: int = 128,
    workers: int = 2,
    device: torch.device | None = None,
    progress: Any = None,
) -> np.ndarray:
    """Logits ``[len(levels), N]`` on each sample's fixed validator view at each level."""
    device = device or next(model.parameters()).device
    model.eval()
    out = np.zeros((len(levels), len(samples)), dtype=np.float64)
    for k, lv in enumerate(levels):
        ds = ViewDataset(samples, prep, levels, seed, train=False, fixed_level=lv)
        pos = 0
        for x, _ in _loader(ds, batch_size, workers):
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                z = model(x)
            out[k, pos : pos + len(z)] = z.float().cpu().numpy()
            pos += len(z)
            if progress is not None:
                progress()
    return out


def _apply_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and "head" not in n]
    targets = sorted({n.split(".")[-1] for n in targets})
    lcfg = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=2 * cfg.lora_rank,
        target_modules=targets,
        use_dora=cfg.use_dora,
        modules_to_save=None,
    )
    return get_peft_model(model, lcfg)


@dataclass
class FitResult:
    model: nn.Module
    prep: dict[str, Any]
    history: list[dict[str, float]]
    seconds: float


def fit_model(samples: Sequence[Sample], cfg: TrainConfig, progress: bool = True) -> FitResult:
    """Train one classifier on ``samples`` (no hold-out, no saving)."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    if cfg.init_checkpoint:
        model, prep, _ = load_classifier(cfg.init_checkpoint, "cpu")
    else:
        model, prep = build_model(cfg.arch, pretrained=cfg.pretrained, dropout=cfg.dropout)
    if cfg.lora_rank > 0 and not cfg.arch.startswith("efficientnet-lite"):
        model = _apply_lora(model, cfg)
    model = model.to(device).to(memory_format=torch.channels_last)
    weights = balanced_weights(samples, cfg.source_power)
    per_epoch = cfg.samples_per_epoch or len(samples)
    total_steps = max(1, math.ceil(per_epoch / cfg.batch_size) * cfg.epochs)
    sampler = WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=per_epoch * cfg.epochs,
        replacement=True,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    bank = None
    if cfg.copy_paste_p > 0:
        from roadminer.training.copy_paste import ObjectBank

        bank = ObjectBank.from_samples(samples)
        logger.info("copy-paste: {} cut-outs, p={}", len(bank), cfg.copy_paste_p)
    ds = ViewDataset(
        samples,
        prep,
        cfg.levels,
        cfg.seed,
        train=True,
        real_flip_share=cfg.real_flip_share,
        bank=bank,
        copy_paste_p=cfg.copy_paste_p,
    )
    loader = _loader(ds, cfg.batch_size, cfg.workers, sampler=sampler)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_frac, total_steps)
    loss_fn = nn.BCEWithLogitsLoss()
    use_amp = cfg.amp and device.type == "cuda"
    history: list[dict[str, float]] = []
    t0 = time.time()
    model.train()
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[info]}"),
        TimeRemainingColumn(),
        disable=not progress,
    ) as bar:
        task = bar.add_task("train", total=total_steps, info="")
        run_loss, run_n = 0.0, 0
        for step, (x, y) in enumerate(loader):
            if step >= total_steps:
                break
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            y_s = y * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                z = model(x)
            loss = loss_fn(z.float(), y_s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            run_loss += float(loss.detach()) * len(y)
            run_n += len(y)
            if (step + 1) % max(1, total_steps // cfg.epochs) == 0 or step + 1 == total_steps:
                history.append({"step": step + 1, "loss": run_loss / max(1, run_n), "lr": sched.get_last_lr()[0]})
                bar.update(task, info=f"loss {run_loss / max(1, run_n):.4f}")
                run_loss, run_n = 0.0, 0
            bar.advance(task)
    if cfg.lora_rank > 0 and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    return FitResult(model=model, prep=prep, history=history, seconds=time.time() - t0)


def train(
    data: str | Path | Sequence[str | Path],
    out: str | Path,
    cfg: TrainConfig | None = None,
    extra_dirs: Sequence[str | Path] = (),
    init_checkpoint: str | Path | None = None,
    samples: Sequence[Sample] | None = None,
    progress: bool = True,
    calibration: dict[str, Any] | None = None,
    card_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on ``data`` (+ ``extra_dirs``, e.g. exported hard examples), calibrate on a grouped hold-out
    (``cfg.calib_frac``) unless ``calibration`` is given, and write ``out/model.safetensors`` and
    ``out/card.json``. Returns the card."""
    cfg = (cfg or TrainConfig()).model_copy()
    if init_checkpoint is not None:
        cfg.init_checkpoint = str(init_checkpoint)
    if samples is None:
        roots = [data] if isinstance(data, (str, Path)) else list(data)
        samples = load_many([*roots, *extra_dirs])
    samples = list(samples)
    labels = {s.label for s in samples}
    if labels != {0, 1}:
        raise ValueError(f"training needs both labels; found {sorted(labels)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logger.info("training {} on {} images: {}", cfg.arch, len(samples), summarize(samples))
    calib_metrics: dict[str, Any] | None = None
    if calibration is None and cfg.calib_frac > 0:
        tr, va = holdout_split(samples, cfg.calib_frac, cfg.seed)
        fit = fit_model([samples[i] for i in tr], cfg, progress)
        held = [samples[i] for i in va]
        z = predict_logits(fit.model, held, fit.prep, cfg.levels, workers=cfg.workers)
        y = np.tile([s.label for s in held], len(cfg.levels))
        calibration = fit_calibration(z.reshape(-1), y)
        calib_metrics = {"n": len(held), "groups": sorted({s.group for s in held})[:50]}
        # Refit on everything: the hold-out only sets temperature and threshold.
        fit = fit_model(samples, cfg, progress)
    else:
        fit = fit_model(samples, cfg, progress)
        calibration = calibration or {"temperature": 1.0, "bias": 0.0, "threshold": 0.5}
    card: dict[str, Any] = {
        "name": out.name,
        "version": f"{out.name}-{time.strftime('%Y%m%d%H%M%S')}",
        "arch": cfg.arch,
        "input": fit.prep,
        "train_config": cfg.model_dump(),
        "data": {
            "roots": [str(p) for p in ([data] if isinstance(data, (str, Path)) else data)],
            "extra_dirs": [str(p) for p in extra_dirs],
            "counts": summarize(samples),
            "n": len(samples),
        },
        "calibration": calibration,
        "calibration_holdout": calib_metrics,
        "train_seconds": round(fit.seconds, 1),
        "history": fit.history,
    }
    if card_extra:
        card.update(card_extra)
    save_classifier(
        fit.model,
        out / MODEL_FILE,
        cfg.arch if not cfg.init_checkpoint else _arch_of(cfg),
        fit.prep,
        extra={"version": card["version"], "calibration": calibration},
    )
    (out / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    logger.info("saved {} ({:.1f} MB)", out / MODEL_FILE, (out / MODEL_FILE).stat().st_size / 1e6)
    return card


def _arch_of(cfg: TrainConfig) -> str:
    if cfg.init_checkpoint:
        _, _, extra = load_classifier(cfg.init_checkpoint, "cpu")
        return str(extra["arch"])
    return cfg.arch


def cross_validate(
    samples: Sequence[Sample],
    cfg: TrainConfig,
    by: str = "source",
    progress: bool = True,
    eval_seed: int = 1234,
) -> dict[str, Any]:
    """Leave-one-``by``-out: train on the rest, predict the held-out part at every level. Returns the
    report (per source, dashcam pooled, pooled, per level) and the out-of-fold logits."""
    from roadminer.training.data import leave_one_out_folds

    samples = list(samples)
    oof = np.zeros((len(cfg.levels), len(samples)))
    folds: dict[str, Any] = {}
    for held, tr, va in leave_one_out_folds(samples, by=by):
        train_s = [samples[i] for i in tr]
        if {s.label for s in train_s} != {0, 1}:
            logger.warning("fold {}: training part lacks a label; skipped", held)
            continue
        fit = fit_model(train_s, cfg, progress)
        oof[:, va] = predict_logits(
            fit.model, [samples[i] for i in va], fit.prep, cfg.levels, seed=eval_seed, workers=cfg.workers
        )
        folds[held] = {"n_train": len(tr), "n_val": len(va), "seconds": round(fit.seconds, 1)}
        logger.info(
            "fold {}: {}",
            held,
            binary_metrics(
                np.tile([samples[i].label for i in va], len(cfg.levels)),
                1 / (1 + np.exp(-oof[:, va].reshape(-1))),
            ),
        )
        del fit
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    report = loso_report(samples, 1 / (1 + np.exp(-oof)), cfg.levels)
    report["folds"] = folds
    report["by"] = by
    return {"report": report, "oof_logits": oof}
