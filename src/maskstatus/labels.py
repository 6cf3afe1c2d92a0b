"""The one place that knows the label codes.

Every other module asks this one for task sizes, code names, the file-stem to
mask mapping, age groups and the 18-class formula ``class = mask*6 + gender*3 + age``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from .defaults import OLD_FROM, YOUNG_BELOW

if TYPE_CHECKING:
    import torch

# The probability helpers work on numpy arrays and torch tensors alike.
Probs = TypeVar("Probs", np.ndarray, "torch.Tensor")

MASK_NAMES: tuple[str, ...] = ("wear", "incorrect", "not_wear")
GENDER_NAMES: tuple[str, ...] = ("male", "female")
AGE_NAMES: tuple[str, ...] = ("young", "middle", "old")

# Task name -> number of classes; the order is the order of the class formula's digits.
TASKS: dict[str, int] = {"mask": len(MASK_NAMES), "gender": len(GENDER_NAMES), "age": len(AGE_NAMES)}
NUM_CLASSES: int = TASKS["mask"] * TASKS["gender"] * TASKS["age"]
# Column names of the 18 class probabilities in every CSV the tool writes (oof.csv, *.probs.csv).
PROB_COLUMNS: list[str] = [f"p{c}" for c in range(NUM_CLASSES)]

# Image file stem inside a person folder -> mask code.
STEM_TO_MASK: dict[str, int] = {
    "mask1": 0,
    "mask2": 0,
    "mask3": 0,
    "mask4": 0,
    "mask5": 0,
    "incorrect_mask": 1,
    "normal": 2,
}
IMAGE_STEMS: tuple[str, ...] = tuple(STEM_TO_MASK)

GENDER_TO_CODE: dict[str, int] = {name: i for i, name in enumerate(GENDER_NAMES)}


@dataclass(frozen=True)
class AgeThresholds:
    """Age group boundaries: group 0 is ``age < young_below``, 2 is ``age >= old_from``."""

    young_below: int = YOUNG_BELOW
    old_from: int = OLD_FROM

    def __post_init__(self) -> None:
        if not 0 < self.young_below < self.old_from:
            raise ValueError(
                f"age thresholds must satisfy 0 < young_below < old_from, got "
                f"young_below={self.young_below}, old_from={self.old_from}"
            )

    def names(self) -> tuple[str, ...]:
        return (f"<{self.young_below}", f"{self.young_below}-{self.old_from - 1}", f">={self.old_from}")


DEFAULT_AGE_THRESHOLDS = AgeThresholds()


def age_group(age, thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS):
    """Age in years (scalar or array) -> age group code 0, 1 or 2."""
    arr = np.asarray(age)
    group = (arr >= thresholds.young_below).astype(np.int64) + (arr >= thresholds.old_from).astype(np.int64)
    return int(group) if group.ndim == 0 else group


def encode(mask, gender, age):
    """Task codes (scalars or arrays) -> class code in [0, 18)."""
    m, g, a = (np.asarray(x, dtype=np.int64) for x in (mask, gender, age))
    for name, x in (("mask", m), ("gender", g), ("age", a)):
        if np.any((x < 0) | (x >= TASKS[name])):
            raise ValueError(f"{name} code out of range [0, {TASKS[name]}): {np.unique(x).tolist()}")
    cls = m * (TASKS["gender"] * TASKS["age"]) + g * TASKS["age"] + a
    return int(cls) if cls.ndim == 0 else cls


def decode(cls) -> tuple:
    """Class code (scalar or array) -> (mask, gender, age) codes."""
    c = np.asarray(cls, dtype=np.int64)
    if np.any((c < 0) | (c >= NUM_CLASSES)):
        raise ValueError(f"class code out of range [0, {NUM_CLASSES}): {np.unique(c).tolist()}")
    per_mask = TASKS["gender"] * TASKS["age"]
    mask, rest = np.divmod(c, per_mask)
    gender, age = np.divmod(rest, TASKS["age"])
    if c.ndim == 0:
        return int(mask), int(gender), int(age)
    return mask, gender, age


def class_names(thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS) -> list[str]:
    """Readable names of the 18 classes, in class-code order."""
    ages = thresholds.names()
    return [
        f"{MASK_NAMES[m]}/{GENDER_NAMES[g]}/{ages[a]}"
        for m in range(TASKS["mask"])
        for g in range(TASKS["gender"])
        for a in range(TASKS["age"])
    ]


def _uniform_like(probs, k: int):
    """(N, k) uniform probabilities of the same kind (numpy or torch, dtype, device) as `probs`."""
    if isinstance(probs, np.ndarray):
        return np.full((probs.shape[0], k), 1.0 / k, dtype=probs.dtype)
    return probs.new_full((probs.shape[0], k), 1.0 / k)


def combine_task_probs(task_probs: Mapping[str, Probs]) -> Probs:
    """Per-task probabilities (N, k_task) -> 18-class probabilities (N, 18).

    The joint is the product of the task marginals, laid out by the class
    formula. A task left out counts as uniform: a model trained for some tasks
    only (a per-task model) says nothing about the others. Works on numpy
    arrays and torch tensors alike (only broadcasting and reshape are used).
    """
    if not task_probs:
        raise ValueError("combine_task_probs needs the probabilities of at least one task")
    given = next(iter(task_probs.values()))
    pm, pg, pa = (
        task_probs[t] if t in task_probs else _uniform_like(given, TASKS[t]) for t in ("mask", "gender", "age")
    )
    joint = pm[:, :, None, None] * pg[:, None, :, None] * pa[:, None, None, :]
    return joint.reshape(joint.shape[0], NUM_CLASSES)


def split_class_probs(probs) -> dict:
    """18-class probabilities (N, 18) -> per-task marginals {task: (N, k_task)}."""
    joint = probs.reshape(probs.shape[0], TASKS["mask"], TASKS["gender"], TASKS["age"])
    return {
        "mask": joint.sum(axis=(2, 3)) if isinstance(joint, np.ndarray) else joint.sum(dim=(2, 3)),
        "gender": joint.sum(axis=(1, 3)) if isinstance(joint, np.ndarray) else joint.sum(dim=(1, 3)),
        "age": joint.sum(axis=(1, 2)) if isinstance(joint, np.ndarray) else joint.sum(dim=(1, 2)),
    }
