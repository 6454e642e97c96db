"""MixStyle (Zhou et al., ICLR 2021) for the EfficientNet-Lite fine-tunes: a training-only feature augmentation.

In early layers a feature map's per-channel mean and standard deviation carry an image's "style" (colour cast,
contrast, sensor noise, compression), which in roadwork-v1 tells sources apart and so, through sources that hold one
label only, tells labels apart. MixStyle replaces each image's statistics by a random mix of its own and another
batch image's, ``mu = lam * mu_i + (1 - lam) * mu_j`` (the same for sigma, ``lam ~ Beta(alpha, alpha)``), after the
last block of the chosen stages, so the head cannot rely on them. It does nothing in eval mode: a model trained with
it is served exactly like one trained without.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

STAGES = (1, 2, 3)  # stages (0-based, by output width) after whose last block the statistics are mixed


def stage_ends(blocks: nn.ModuleList) -> list[int]:
    """Index of the last block of each stage (a stage = consecutive blocks with the same output width)."""
    widths = [int(b._block_args.output_filters) for b in blocks]
    return [i for i in range(len(widths)) if i == len(widths) - 1 or widths[i + 1] != widths[i]]


def mix_statistics(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x`` ``[B,C,H,W]`` with each image's channel mean/std mixed with those of a random other batch image."""
    b = x.shape[0]
    if b < 2:
        return x
    xf = x.float()
    mu = xf.mean(dim=(2, 3), keepdim=True).detach()
    sig = (xf.var(dim=(2, 3), keepdim=True) + 1e-6).sqrt().detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((b, 1, 1, 1)).to(x.device)
    perm = torch.randperm(b).to(x.device)
    mu2 = lam * mu + (1 - lam) * mu[perm]
    sig2 = lam * sig + (1 - lam) * sig[perm]
    return ((xf - mu) / sig * sig2 + mu2).to(x.dtype)


@contextmanager
def mixstyle(model: nn.Module, p: float, alpha: float = 0.1, stages: tuple[int, ...] = STAGES) -> Iterator[None]:
    """Apply MixStyle (with probability ``p`` per batch and stage) inside the ``with``, in training mode only."""
    if p <= 0:
        yield
        return
    body = getattr(model, "body", model)
    blocks = getattr(body, "_blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError("fit.mixstyle needs an EfficientNet-Lite arch (a model with `_blocks`)")
    ends = stage_ends(blocks)
    if max(stages) >= len(ends) - 1:
        raise ValueError(f"mixstyle stages {stages} do not exist before the last of {len(ends)} stages")

    def hook(module: nn.Module, _inputs: Any, out: torch.Tensor) -> torch.Tensor:
        if module.training and float(torch.rand(())) < p:
            return mix_statistics(out, alpha)
        return out

    handles = [blocks[ends[s]].register_forward_hook(hook) for s in stages]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
