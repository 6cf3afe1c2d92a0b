"""Oversampling of rare classes, seeded per epoch and shared out across DDP ranks.

Hand-written rather than torch's WeightedRandomSampler: that one has no
set_epoch and no notion of ranks, so under DDP every rank would draw its own
unrelated sample and a resumed run would not replay the same draws.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def inverse_frequency_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weight 1 / (count of its label), so every label is drawn equally often on average."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


def inverse_density_weights(years: np.ndarray, bandwidth: float = 2.0, power: float = 0.5) -> np.ndarray:
    """Per-sample weight (smoothed density of its age in years) ** -power, for a regression target.

    Label-distribution smoothing (Yang et al., "Delving into Deep Imbalanced
    Regression", 2021): the ages' histogram in whole years, blurred by a Gaussian
    of ``bandwidth`` years so that a year with few people borrows from its
    neighbours, then inverted. ``power`` 0.5 (the square root) oversamples the
    rare ages (teenagers, the old) without letting a handful of 80-year-olds fill
    the epoch. Written here because no sampler in torch or scikit-learn weighs by
    a smoothed density. Rows without years (< 0, e.g. pseudo labels without an
    age) get the median weight of those with years.
    """
    years = np.asarray(years, dtype=np.float64)
    if years.ndim != 1 or len(years) == 0:
        raise ValueError("years must be a non-empty 1-D array")
    if bandwidth <= 0 or power < 0:
        raise ValueError(f"bandwidth must be > 0 and power >= 0, got {bandwidth} and {power}")
    known = years >= 0
    if not known.any():
        raise ValueError("no sample has an age in years to weigh by (all < 0)")
    whole = np.rint(years[known]).astype(np.int64)
    reach = int(np.ceil(4 * bandwidth))
    kernel = np.exp(-0.5 * (np.arange(-reach, reach + 1) / bandwidth) ** 2)
    density = np.convolve(np.bincount(whole).astype(np.float64), kernel, mode="full")[reach:-reach]
    weights = np.empty(len(years))
    weights[known] = density[whole] ** -power
    weights[~known] = np.median(weights[known])
    return weights / weights.mean()


class WeightedEpochSampler(Sampler[int]):
    """Draw len(weights) indices with replacement by weight; rank r takes every world-th draw."""

    def __init__(self, weights: np.ndarray, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or len(self.weights) == 0 or bool((self.weights < 0).any()):
            raise ValueError("sampler weights must be a non-empty 1-D array of non-negative numbers")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = len(self.weights) // world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        draws = torch.multinomial(self.weights, self.num_samples * self.world_size, replacement=True, generator=g)
        return iter(draws[self.rank :: self.world_size].tolist())
