"""Oversampling of rare classes, seeded per epoch and shared out across DDP ranks.

Hand-written rather than torch's WeightedRandomSampler: that one has no
set_epoch and no notion of ranks, so under DDP every rank would draw its own
unrelated sample and a resumed run would not replay the same draws.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def inverse_frequency_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weight 1 / (count of its label), so every label is drawn equally often on average."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


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
