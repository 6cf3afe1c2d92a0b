"""Person-bootstrap confidence intervals of the validation metrics.

One held-out fold is a few hundred people, and a person's seven photos share a
face, a gender and an age: they are not independent samples. So the interval
resamples people with replacement, each bringing all their images, and scores
every replicate with the definitions of :func:`metrics.compute_metrics` (macro
F1 over every class, a class absent from a replicate counting as F1 0).

Fast because F1 and accuracy are functions of per-class counts (true positives,
true and predicted totals) and counts add up over people: each person's counts
are computed once, and a replicate is the person-weighted sum of them, where a
person's weight is how often the resampling drew them. A thousand replicates of
~20,000 images are one matrix product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..defaults import DEFAULT_BOOT, DEFAULT_LEVEL
from ..labels import NUM_CLASSES, TASKS, decode, split_class_probs
from .metrics import _check

# The metrics of compute_metrics, in its key order.
METRICS: tuple[str, ...] = ("f1", "acc", *(f"{t}_{m}" for t in TASKS for m in ("f1", "acc")))


@dataclass
class Interval:
    """Point estimates of the metrics on the data as it is, and their person-bootstrap percentile intervals."""

    point: dict[str, float]
    ci: dict[str, tuple[float, float]]
    level: float
    n_boot: int
    seed: int
    people: int
    images: int
    replicates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # (n_boot,) per metric

    def to_dict(self) -> dict:
        """JSON-ready: the point estimates, ``ci`` as [lo, hi] lists, and how they were drawn (no replicates)."""
        return {
            "level": self.level,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "people": self.people,
            "images": self.images,
            # NaN (a metric a per-task model does not have) -> null, which JSON can hold.
            "point": {k: _json_float(v) for k, v in self.point.items()},
            "ci": {k: None if lo != lo else [lo, hi] for k, (lo, hi) in self.ci.items()},
        }


def _json_float(x: float) -> float | None:
    return None if x != x else x


def _count_columns(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(N, 3k + 1) per-image indicator columns: true positive per class, true class, predicted class, correct."""
    n = len(true)
    out = np.zeros((n, 3 * k + 1), dtype=np.float64)
    rows = np.arange(n)
    hit = true == pred
    out[rows[hit], true[hit]] = 1.0
    out[rows, k + true] = 1.0
    out[rows, 2 * k + pred] = 1.0
    out[:, 3 * k] = hit
    return out


def _scores(counts: np.ndarray, k: int, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Summed count columns (B, 3k + 1) -> macro F1 (B,) and accuracy (B,) of each replicate."""
    tp, n_true, n_pred = counts[:, :k], counts[:, k : 2 * k], counts[:, 2 * k : 3 * k]
    denom = n_true + n_pred
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (true + predicted); 0 where a class is neither (sklearn's zero_division=0).
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1.mean(axis=1), counts[:, 3 * k] / images


def person_weights(people: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, people) how many times each person is drawn when ``people`` are drawn with replacement."""
    draws = rng.integers(0, people, size=(n_boot, people))
    offsets = (np.arange(n_boot) * people)[:, None]
    return np.bincount((draws + offsets).ravel(), minlength=n_boot * people).reshape(n_boot, people).astype(np.float64)


def _sum_per_person(person_ids: Sequence | np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(people, columns) each person's summed rows of ``columns``, and each image's person index."""
    _, person = np.unique(np.asarray(person_ids).astype(str), return_inverse=True)
    per_person = np.zeros((int(person.max()) + 1, columns.shape[1]))
    np.add.at(per_person, person, columns)
    return per_person, person


def class_count_replicates(
    true: np.ndarray,
    pred: np.ndarray,
    person_ids: Sequence | np.ndarray,
    k: int = NUM_CLASSES,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per replicate of a person bootstrap and per class: true positives, true and predicted totals ((n_boot, k) each).

    The counts :func:`person_bootstrap` scores, for intervals of per-class precision, recall and F1.
    """
    true, pred = np.asarray(true, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    per_person, _ = _sum_per_person(person_ids, _count_columns(true, pred, k))
    counts = person_weights(len(per_person), int(n_boot), np.random.default_rng(seed)) @ per_person
    return counts[:, :k], counts[:, k : 2 * k], counts[:, 2 * k : 3 * k]


def person_bootstrap(
    probs: np.ndarray,
    labels: np.ndarray,
    person_ids: Sequence | np.ndarray,
    n_boot: int = DEFAULT_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Percentile intervals of ``compute_metrics``' metrics, resampling people (with all their images).

    ``probs`` (N, 18) class probabilities, ``labels`` (N,) true class codes,
    ``person_ids`` (N,) any hashable ids; rows of one id are one person. The
    point estimates equal ``compute_metrics(probs, labels)``. Deterministic for a
    given ``seed``.
    """
    probs, labels = _check(probs, labels)
    ids = np.asarray(person_ids)
    if ids.shape != labels.shape:
        raise ValueError(f"{len(labels)} labels but person ids of shape {ids.shape}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    marginals = split_class_probs(probs)
    parts = [(NUM_CLASSES, labels, probs.argmax(axis=1))]
    parts += [(TASKS[t], true, marginals[t].argmax(axis=1)) for t, true in zip(TASKS, decode(labels), strict=True)]
    columns = np.concatenate([_count_columns(true, pred, k) for k, true, pred in parts], axis=1)
    # (people, columns): each person's counts; a replicate's counts are its weights times these.
    per_person, person = _sum_per_person(ids, columns)
    people = len(per_person)
    images_per_person = np.bincount(person, minlength=people).astype(np.float64)

    weights = person_weights(people, int(n_boot), np.random.default_rng(seed))
    weights = np.vstack([np.ones((1, people)), weights])  # row 0: the data as it is (the point estimate)
    counts = weights @ per_person
    images = weights @ images_per_person

    values: dict[str, np.ndarray] = {}
    start = 0
    for name, (k, _, _) in zip(("", *TASKS), parts, strict=True):
        width = 3 * k + 1
        f1, acc = _scores(counts[:, start : start + width], k, images)
        prefix = f"{name}_" if name else ""
        values[f"{prefix}f1"], values[f"{prefix}acc"] = f1, acc
        start += width

    alpha = (1.0 - float(level)) / 2.0
    point = {m: float(values[m][0]) for m in METRICS}
    ci = {}
    for m in METRICS:
        lo, hi = np.quantile(values[m][1:], [alpha, 1.0 - alpha])
        ci[m] = (float(lo), float(hi))
    return Interval(
        point, ci, float(level), int(n_boot), int(seed), people, len(labels), {m: values[m][1:] for m in METRICS}
    )


def model_bootstrap(
    probs: np.ndarray,
    labels: np.ndarray,
    person_ids: Sequence | np.ndarray,
    tasks: Sequence[str] = tuple(TASKS),
    mask_states: Sequence[int] = (0, 1, 2),
    n_boot: int = DEFAULT_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """:func:`person_bootstrap` of what a model was trained to predict, as ``metrics.model_metrics`` scores it.

    A cascade expert (``mask_states``, mask codes) is scored on images of those states
    only; for a per-task model (``tasks`` a subset) the 18-class metrics and those of the
    tasks it does not predict are NaN, their intervals (NaN, NaN).
    """
    probs, labels = _check(probs, labels)
    ids = np.asarray(person_ids)
    if ids.shape != labels.shape:
        raise ValueError(f"{len(labels)} labels but person ids of shape {ids.shape}")
    if len(set(mask_states)) < TASKS["mask"]:
        keep = np.isin(decode(labels)[0], list(mask_states))
        if not keep.any():
            raise ValueError(f"no image of mask state(s) {sorted(mask_states)} to score")
        probs, labels, ids = probs[keep], labels[keep], ids[keep]
    out = person_bootstrap(probs, labels, ids, n_boot, level, seed)
    if all(t in tasks for t in TASKS):
        return out
    blank = ["f1", "acc", *(f"{t}_{m}" for t in TASKS if t not in tasks for m in ("f1", "acc"))]
    nan = float("nan")
    for m in blank:
        out.point[m], out.ci[m] = nan, (nan, nan)
        out.replicates[m] = np.full(out.n_boot, nan)
    return out
