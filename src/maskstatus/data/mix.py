"""CutMix and MixUp on a batch, with the matching mixed loss.

The mixed target is expressed as two hard targets and a ratio, so every loss
(soft F1 and focal included) and every head (single or per task) trains on
``lam * loss(out, y) + (1 - lam) * loss(out, y[perm])`` without soft-label code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..config import MixConfig


@dataclass
class Mixed:
    images: torch.Tensor
    perm: torch.Tensor  # partner of each sample
    lam: float  # share of the original sample in the mix; the partner gets 1 - lam


def cutmix(
    images: torch.Tensor, lam: float, perm: torch.Tensor, vertical: bool, rng: np.random.Generator
) -> tuple[torch.Tensor, float]:
    """Paste a box of each partner image; returns the images and lam corrected to the box's true area."""
    _, _, h, w = images.shape
    cut = (1.0 - lam) ** 0.5
    if vertical:  # a full-height band: left/right parts of two faces, as teams did for this task
        bh, bw = h, int(round(w * (1.0 - lam)))
    else:
        bh, bw = int(round(h * cut)), int(round(w * cut))
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - bh // 2, 0), min(cy + (bh - bh // 2), h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + (bw - bw // 2), w)
    if vertical:
        y0, y1 = 0, h
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return out, 1.0 - (y1 - y0) * (x1 - x0) / (h * w)


def mix_batch(images: torch.Tensor, cfg: MixConfig, rng: np.random.Generator) -> Mixed | None:
    """With probability cfg.cutmix CutMix the batch, with cfg.mixup MixUp it, else None (leave it as is).

    Draws come from `rng` (seeded per epoch by the trainer), so mixing is reproducible and resumable.
    """
    if cfg.cutmix == 0 and cfg.mixup == 0:
        return None
    u = rng.random()
    if u >= cfg.cutmix + cfg.mixup:
        return None
    perm = torch.as_tensor(rng.permutation(images.shape[0]), device=images.device)
    lam = float(rng.beta(cfg.alpha, cfg.alpha))
    if u < cfg.cutmix:
        mixed, lam = cutmix(images, lam, perm, cfg.vertical, rng)
        return Mixed(mixed, perm, lam)
    return Mixed(lam * images + (1.0 - lam) * images[perm], perm, lam)


def mixed_loss(loss_fn, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor], mix: Mixed):
    """The loss of a mixed batch: the two targets' losses weighted by lam and 1 - lam (they sum to 1)."""
    partner = {k: v[mix.perm] if torch.is_tensor(v) and v.ndim >= 1 else v for k, v in targets.items()}
    loss_a, parts_a = loss_fn(outputs, targets)
    loss_b, parts_b = loss_fn(outputs, partner)
    parts = {k: mix.lam * parts_a[k] + (1.0 - mix.lam) * parts_b[k] for k in parts_a}
    return mix.lam * loss_a + (1.0 - mix.lam) * loss_b, parts
