"""The view bank: every training view rendered once, seeded, then many fits run from device memory.

A recipe (``training/recipe.py``) fixes how many validator-parity views of each image are drawn (more for
images of small sources, as the balanced sampler would), the level mix, and copy-paste positives made from
negative scenes. Each view is a pure function of (bank seed, image index, view index), so re-runs and
every cross-validation fold see the same pixels; a fold only re-weights the rows it may use (a held-out
image, and a paste whose cut-outs came from a held-out source, are never trained on). With the views in
GPU memory a Lite0 fit takes about 13 s on one H200 instead of being bound by CPU augmentation.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from loguru import logger
from PIL import Image
from rich.progress import Progress

from roadminer.imaging.views import validator_view
from roadminer.models.classifier import build_model
from roadminer.training.copy_paste import ObjectBank, bottom_strip, orange_share, paste_strip
from roadminer.training.data import Sample, balanced_weights
from roadminer.training.mixstyle import mixstyle
from roadminer.training.recipe import RecipeBank, RecipeFit
from roadminer.training.train import resolve_device, warmup_cosine

ROLES = ("plain", "paste", "eval", "strip", "strip_pos")  # appended only: a role's index seeds its views
_G: dict[str, Any] = {}


# Strip donors: (image indices, (lowest, highest) strip height, largest orange share of a usable strip or None).
Strips = tuple[np.ndarray, tuple[float, float], float | None]
_NO_STRIPS: Strips = (np.zeros(0, dtype=np.int64), (0.0, 0.0), None)


def _init(samples: Sequence[Sample], banks: dict[str, ObjectBank],
          strips: Strips = _NO_STRIPS) -> None:
    """Render-process initialiser: the samples, cut-out banks and strip donors, one torch thread per process."""
    _G["samples"], _G["banks"], _G["strips"] = samples, banks, strips
    torch.set_num_threads(1)


def _render(task: tuple[int, int, int, tuple[float, ...], float, str]) -> tuple[np.ndarray, int, int, int, int]:
    """One view: ``(uint8 224x224x3, label, level, aux, donor)``; aux = index of the cut-out source for
    pastes, donor = the image whose bottom strip a strip view carries (-1: none)."""
    i, k, seed, level_p, real_flip_share, role = task
    s = _G["samples"][i]
    img = s.read_pil()
    label, aux, donor = s.label, -1, -1
    if role == "eval":  # the fixed evaluation view of image i at level k (training/train.eval_view's rule)
        view = validator_view(img, k, np.random.default_rng([seed, i, k]), real_flips=False)
        level = k
    else:
        rng = np.random.default_rng([seed, i, k, ROLES.index(role)])
        level = int(rng.choice(4, p=np.asarray(level_p)))
        if role == "paste":
            names = sorted(_G["banks"])
            aux = int(rng.integers(len(names)))
            img, label = _G["banks"][names[aux]].paste(img, rng), 1
        elif role in ("strip", "strip_pos"):  # a vehicle-camera positive's bottom strip (bonnet): label kept
            donor, frac, strip = _draw_strip(rng)
            img = paste_strip(img, strip, frac)
        real = bool(rng.random() < real_flip_share)
        view = validator_view(img, level, rng, real_flips=real, hflip=not real)
    arr = np.asarray(view.convert("RGB"), dtype=np.uint8)
    if arr.shape != (224, 224, 3):
        raise ValueError(f"validator view of {s.name} has shape {arr.shape}")
    return arr, label, level, aux, donor


def _draw_strip(rng: np.random.Generator, tries: int = 16) -> tuple[int, float, Image.Image]:
    """(donor image, strip height, the strip itself) of one strip view; each donor is read once per draw. With a
    largest orange share set, a strip showing work-zone orange (a cone at the bumper) is drawn again, up to
    ``tries`` times, keeping the least orange one seen."""
    donors, (lo, hi), max_orange = _G["strips"]

    def draw() -> tuple[int, float, Image.Image]:
        donor, frac = int(donors[rng.integers(len(donors))]), float(rng.uniform(lo, hi))
        return donor, frac, bottom_strip(_G["samples"][donor].read_pil(), frac)

    first = pick = draw()
    if max_orange is None:
        return first
    best_key: tuple[float, int, float] = (np.inf, first[0], first[1])
    for _ in range(tries):
        share = orange_share(pick[2])
        if share <= max_orange:
            return pick
        if (share, pick[0], pick[1]) < best_key:  # the least orange; ties to the lower donor, then height
            best_key, first = (share, pick[0], pick[1]), pick
        pick = draw()
    return first


def _render_all(
    samples: Sequence[Sample], tasks: list[Any], banks: dict[str, ObjectBank], workers: int, what: str,
    strips: Strips = _NO_STRIPS,
) -> tuple[np.ndarray, np.ndarray]:
    out: list[tuple[np.ndarray, int, int, int, int]] = []
    with Progress(disable=len(tasks) < 64) as bar:
        job = bar.add_task(f"render {what}", total=len(tasks))
        if workers <= 1:  # in this process: share the globals, leave its torch threads alone
            _G["samples"], _G["banks"], _G["strips"] = samples, banks, strips
            try:
                for t in tasks:
                    out.append(_render(t))
                    bar.advance(job)
            finally:
                _G.clear()
        else:
            with get_context("fork").Pool(workers, initializer=_init, initargs=(samples, banks, strips)) as pool:
                for r in pool.imap(_render, tasks, chunksize=32):
                    out.append(r)
                    bar.advance(job)
    views = np.stack([r[0] for r in out])
    meta = np.array([(t[0], *r[1:]) for t, r in zip(tasks, out, strict=True)], dtype=np.int64)
    return views, meta


@dataclass
class ViewBank:
    """Training rows (``views[M,224,224,3]`` uint8 and ``meta[M] = (image, label, level, aux, donor)``) and the fixed
    evaluation views of every image at levels 0-3 (``eval_views[4*N]``, level-major)."""

    samples: list[Sample]
    views: torch.Tensor
    meta: np.ndarray
    roles: np.ndarray
    eval_views: torch.Tensor
    paste_sources: list[str]

    @property
    def n(self) -> int:
        return len(self.samples)


def views_per_image(samples: Sequence[Sample], cfg: RecipeBank, source_power: float) -> np.ndarray:
    w = balanced_weights(samples, source_power)
    return np.clip(np.round(cfg.views_scale * w * len(samples)), cfg.kmin, cfg.kmax).astype(int)


def render_eval_views(samples: Sequence[Sample], eval_seed: int = 1234, workers: int = 0) -> np.ndarray:
    """The fixed evaluation view of every image at levels 0-3 (``[4*N, 224, 224, 3]`` uint8, level-major):
    the rows every out-of-fold table of every tier is scored on."""
    workers = workers or (os.cpu_count() or 1)
    tasks = [(i, lv, eval_seed, (0.25,) * 4, 0.0, "eval") for lv in range(4) for i in range(len(samples))]
    return _render_all(samples, tasks, {}, workers, "evaluation views")[0]


def render_bank(
    samples: Sequence[Sample],
    cfg: RecipeBank,
    source_power: float = 0.5,
    eval_seed: int = 1234,
    workers: int = 0,
    device: torch.device | None = None,
    eval_samples: Sequence[Sample] | None = None,
) -> ViewBank:
    """Training views of ``samples`` and their fixed evaluation views; ``eval_samples`` (the same images,
    in the same order, from another copy: e.g. at full size, as validators render theirs) lends the pixels
    of the evaluation views instead."""
    samples = list(samples)
    if eval_samples is not None and [Path(s.name).stem for s in eval_samples] != [Path(s.name).stem
                                                                                   for s in samples]:
        raise ValueError("eval_samples must be the training images, in the same order (matched by file stem)")
    device = device or resolve_device("auto")
    workers = workers or (os.cpu_count() or 1)
    paste_sources = sorted({s.source for s in samples if s.label == 1 and s.has_boxes})
    banks = {src: ObjectBank.from_samples([s for s in samples if s.source == src]) for src in paste_sources}
    banks = {k: v for k, v in banks.items() if len(v)}
    paste_sources = sorted(banks)
    donors = np.array([j for j, s in enumerate(samples) if s.label == 1 and s.source in cfg.strip_sources],
                      dtype=np.int64)
    strips: Strips = (donors, (float(cfg.strip_height[0]), float(cfg.strip_height[1])), cfg.strip_max_orange)
    k_img = views_per_image(samples, cfg, source_power)
    tasks: list[Any] = []
    roles: list[str] = []
    lp = tuple(cfg.level_p)
    lp_neg = tuple(cfg.level_p_negative) if cfg.level_p_negative is not None else lp
    for i, s in enumerate(samples):
        for k in range(int(k_img[i])):
            tasks.append((i, k, cfg.seed, lp_neg if s.label == 0 else lp, cfg.real_flip_share, "plain"))
            roles.append("plain")
        if s.label == 0 and banks and cfg.paste_frac > 0:
            for k in range(max(2, int(k_img[i] * cfg.paste_frac))):
                tasks.append((i, k, cfg.seed, lp, cfg.real_flip_share, "paste"))
                roles.append("paste")
        if s.label == 0 and len(strips[0]) and cfg.strip_frac > 0:
            for k in range(max(1, int(k_img[i] * cfg.strip_frac))):
                tasks.append((i, k, cfg.seed, lp_neg, cfg.real_flip_share, "strip"))
                roles.append("strip")
        if (s.label == 1 and s.source not in cfg.strip_sources and len(strips[0]) and cfg.strip_pos_frac > 0):
            for k in range(max(1, int(k_img[i] * cfg.strip_pos_frac))):
                tasks.append((i, k, cfg.seed, lp, cfg.real_flip_share, "strip_pos"))
                roles.append("strip_pos")
    t0 = time.time()
    views, meta = _render_all(samples, tasks, banks, workers, "training views", strips)
    eval_views = render_eval_views(samples if eval_samples is None else list(eval_samples), eval_seed, workers)
    logger.info("view bank: {} training rows + {} evaluation views in {:.1f}s ({} cut-outs from {})",
                len(views), len(eval_views), time.time() - t0, sum(len(b) for b in banks.values()), paste_sources)
    return ViewBank(samples, torch.from_numpy(views).to(device), meta, np.array(roles),
                    torch.from_numpy(eval_views).to(device), paste_sources)


def row_weights(bank: ViewBank, train: np.ndarray, cfg: RecipeFit, held_sources: set[str]) -> np.ndarray:
    """Sampling weight of every bank row for a fit on the images in ``train``: each image's balanced weight
    (``source_power``, ``source_mult``) split between its plain views and, for negatives, ``paste_p`` to
    its copy-paste views and ``strip_p`` to its strip views, for positives ``strip_pos_p`` to theirs; rows of
    held-out images, with cut-outs from a held-out source or with a held-out image's bottom strip get 0."""
    samples = bank.samples
    idx = np.flatnonzero(train)
    sw = np.zeros(bank.n)
    sw[idx] = balanced_weights([samples[i] for i in idx], cfg.source_power)
    if cfg.source_mult:
        sw *= np.array([cfg.source_mult.get(s.source, 1.0) for s in samples])
        labels = np.array([s.label for s in samples])
        for lab in (0, 1):
            m = (labels == lab) & train
            if sw[m].sum() > 0:
                sw[m] *= 0.5 / sw[m].sum()
    img, aux, donor = bank.meta[:, 0], bank.meta[:, 3], bank.meta[:, 4]
    ok = train[img].copy()
    held_aux = [k for k, src in enumerate(bank.paste_sources) if src in held_sources]
    ok &= ~np.isin(aux, held_aux)
    ok &= (donor < 0) | train[np.maximum(donor, 0)]  # a strip from a held-out image is held out too
    w = np.zeros(len(bank.meta))
    negative = np.array([s.label == 0 for s in samples])
    # shares of an image's weight off its plain views (negatives: pastes, strips; positives: strips)
    extra = {"paste": cfg.paste_p, "strip": cfg.strip_p, "strip_pos": cfg.strip_pos_p}
    of = {"paste": negative, "strip": negative, "strip_pos": ~negative}
    plain_share = np.ones(bank.n)
    for role, p in extra.items():
        has = np.zeros(bank.n, dtype=bool)
        has[img[ok & (bank.roles == role)]] = True
        plain_share -= np.where(of[role] & has, p, 0.0)
    for role in ("plain", *extra):
        rows = ok & (bank.roles == role)
        if not rows.any():
            continue
        count = np.bincount(img[rows], minlength=bank.n)
        share = plain_share if role == "plain" else np.full(bank.n, extra[role])
        r = np.flatnonzero(rows)
        w[r] = sw[img[r]] * share[img[r]] / count[img[r]]
    if w.sum() <= 0:
        raise ValueError("no training rows for this fit")
    return w / w.sum()


def _normalise(x: torch.Tensor, prep: dict[str, Any]) -> torch.Tensor:
    size = int(prep.get("input_size", 224))
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(prep["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class _WeightMean:
    """Running uniform mean of a model's floating-point weights and buffers (BatchNorm statistics included);
    integer buffers (BatchNorm's step counters) keep the last step's value."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.n = 0
        self.mean = {k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def add(self, model: torch.nn.Module) -> None:
        self.n += 1
        state = model.state_dict()
        keys = list(self.mean)
        torch._foreach_lerp_([self.mean[k] for k in keys], [state[k].detach() for k in keys], 1.0 / self.n)

    @torch.no_grad()
    def load_into(self, model: torch.nn.Module) -> None:
        if self.n:
            model.load_state_dict({**model.state_dict(), **self.mean})


@dataclass
class BankFit:
    model: torch.nn.Module
    prep: dict[str, Any]
    seconds: float
    loss: list[float]


def fit_bank(
    bank: ViewBank, train: np.ndarray, cfg: RecipeFit, held_sources: set[str] = frozenset(),  # type: ignore[assignment]
    progress: bool = True, max_steps: int | None = None,
) -> BankFit:
    """Fine-tune ``cfg.arch`` from ImageNet weights on the bank rows allowed for ``train``."""
    device = bank.views.device
    torch.manual_seed(cfg.seed)
    model, prep = build_model(cfg.arch, pretrained=True, dropout=cfg.dropout)
    if cfg.input_size is not None:
        prep["input_size"] = cfg.input_size
    model = model.to(device).to(memory_format=torch.channels_last)
    w = torch.as_tensor(row_weights(bank, train, cfg, set(held_sources)), dtype=torch.double)
    steps = math.ceil(cfg.draws / cfg.batch)
    if max_steps is not None:
        steps = min(steps, max_steps)
    draws = torch.multinomial(w, steps * cfg.batch, replacement=True,
                              generator=torch.Generator().manual_seed(cfg.seed)).view(steps, cfg.batch)
    y_all = torch.as_tensor(bank.meta[:, 1], dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = warmup_cosine(opt, cfg.warmup_frac, steps)
    amp = device.type == "cuda"
    losses: list[float] = []
    average = _WeightMean(model) if cfg.average_from < 1.0 else None
    first_avg = min(steps - 1, int(cfg.average_from * steps))
    model.train()
    t0 = time.time()
    with Progress(disable=not progress) as bar, mixstyle(model, cfg.mixstyle, cfg.mixstyle_alpha):
        job = bar.add_task(f"fit {cfg.arch}", total=steps)
        for st in range(steps):
            b = draws[st].to(device)
            x = _normalise(bank.views[b], prep)
            y = y_all[b] * (1 - cfg.label_smoothing) + 0.5 * cfg.label_smoothing
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                z = model(x).float().view(-1)
            loss = F.binary_cross_entropy_with_logits(z, y)
            if cfg.consistency > 0:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    z2 = model(torch.flip(x, dims=[3])).float().view(-1)
                loss = loss + cfg.consistency * F.mse_loss(torch.sigmoid(z), torch.sigmoid(z2))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if average is not None and st >= first_avg:
                average.add(model)
            bar.advance(job)
    if average is not None:
        average.load_into(model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    model.eval()
    return BankFit(model, prep, time.time() - t0, losses)


@torch.inference_mode()
def predict_eval(bank: ViewBank, model: torch.nn.Module, prep: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Logits ``[4, len(images)]`` on the fixed evaluation views of ``images`` at levels 0-3."""
    device = bank.eval_views.device
    idx = torch.as_tensor(np.concatenate([images + lv * bank.n for lv in range(4)]), device=device)
    out = []
    amp = device.type == "cuda"
    for i in range(0, len(idx), 256):
        x = _normalise(bank.eval_views[idx[i : i + 256]], prep)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(x).float().view(-1).cpu())
    return torch.cat(out).numpy().reshape(4, len(images))


def folds_for(samples: Sequence[Sample], by: str) -> list[tuple[str, np.ndarray]]:
    """``source``: leave one source out; ``group:SRC``: leave one group of source SRC out (e.g. each
    ``wzcity`` city in turn, everything else always in training)."""
    src = np.array([s.source for s in samples])
    grp = np.array([s.group for s in samples])
    if by == "source":
        return [(f, src == f) for f in sorted(set(src.tolist()))]
    if by.startswith("group:"):
        which = by.split(":", 1)[1]
        return [(g, grp == g) for g in sorted(set(grp[src == which].tolist()))]
    raise ValueError(f"unknown folds {by!r} (source, group:SOURCE)")


def cross_validate_bank(
    bank: ViewBank, cfg: RecipeFit, by: str = "source",
    on_fold: Callable[[str, BankFit], None] | None = None, max_steps: int | None = None,
) -> dict[str, Any]:
    """Out-of-fold logits ``[4, N]`` (NaN where an image was never held out) and per-fold timings."""
    oof = np.full((4, bank.n), np.nan)
    src = np.array([s.source for s in bank.samples])
    folds: dict[str, Any] = {}
    for name, held in folds_for(bank.samples, by):
        if {s.label for s, h in zip(bank.samples, held, strict=True) if not h} != {0, 1}:
            logger.warning("fold {}: training part lacks a label; skipped", name)
            continue
        fit = fit_bank(bank, ~held, cfg, held_sources=set(src[held].tolist()), progress=False, max_steps=max_steps)
        images = np.flatnonzero(held)
        oof[:, images] = predict_eval(bank, fit.model, fit.prep, images)
        folds[name] = {"n_val": int(held.sum()), "seconds": round(fit.seconds, 1)}
        logger.info("fold {}: {} images, fit {:.1f}s", name, int(held.sum()), fit.seconds)
        if on_fold is not None:
            on_fold(name, fit)
        del fit
    return {"oof_logits": oof, "folds": folds, "by": by}


def summarize_rows(bank: ViewBank) -> dict[str, Any]:
    c = Counter(zip(bank.roles.tolist(), bank.meta[:, 1].tolist(), strict=True))
    return {f"{role}:{'roadwork' if lab else 'no_roadwork'}": n for (role, lab), n in sorted(c.items())}
