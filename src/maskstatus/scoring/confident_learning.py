"""Confident learning (cleanlab) on one task's labels and out-of-fold probabilities, as plain arrays.

``label_errors`` aggregates a person's photos into one probability row per task and hands
the rows here; this module knows nothing of people or photos. Confident learning
(Northcutt et al., 2021) learns one threshold per class from the data: the mean
probability the model gives a class on the examples labelled with it (the class's
"confident threshold"). A class the model is seldom sure of (a middle age group) gets a
low threshold, a class it always recognises a high one, so each class is judged against
its own typical confidence instead of one fixed 0.5.

- :func:`suspicion`: ``1 -`` cleanlab's label quality score with ``normalized_margin`` on
  threshold-adjusted probabilities (``get_label_quality_scores(..., adjust_pred_probs=True)``),
  so higher means more suspicious, on 0..1, and 0.5 is where another class's adjusted
  probability equals the given one's: at or above it, confident learning prefers another label.
- :func:`flag_issues`: ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``): the
  examples confident learning counts as label issues, as many as the noise rates it
  estimates from the confident joint.
- :func:`adjusted_probs`: the threshold-adjusted probabilities themselves, for a score that
  is not about one label (the incorrect_mask/normal swap, which concerns two photos).
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["adjusted_probs", "confident_thresholds", "flag_issues", "suspicion"]


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} do not match")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return labels, probs


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class: the mean probability of that class over the examples labelled with it (cleanlab's)."""
    from cleanlab.count import get_confident_thresholds

    labels, probs = _check(labels, probs)
    return np.asarray(get_confident_thresholds(labels, probs), dtype=np.float64)


def adjusted_probs(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``probs`` minus each class's confident threshold, shifted back to >= 0 and renormalised per row.

    cleanlab does exactly this inside ``get_label_quality_scores(adjust_pred_probs=True)`` but keeps the
    function private (``cleanlab.internal``); written out here so the swap score can use it too.
    """
    probs = np.asarray(probs, dtype=np.float64)
    adjusted = probs - thresholds + np.max(thresholds)
    return adjusted / adjusted.sum(axis=1, keepdims=True)


def suspicion(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """How likely each label is wrong by confident learning, 0..1 (module docstring); one value per row."""
    from cleanlab.rank import get_label_quality_scores

    labels, probs = _check(labels, probs)
    if not len(labels):
        return np.zeros(0)
    quality = get_label_quality_scores(labels, probs, method="normalized_margin", adjust_pred_probs=True)
    return np.clip(1.0 - np.asarray(quality, dtype=np.float64), 0.0, 1.0)


def flag_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Boolean per row: ``find_label_issues`` counts it as a label issue. All False where it cannot run.

    Confident learning needs at least two classes among the labels; with one (a tiny table) there is
    nothing to confuse it with, so nothing is flagged.
    """
    from cleanlab.filter import find_label_issues

    labels, probs = _check(labels, probs)
    if len(np.unique(labels)) < 2:
        return np.zeros(len(labels), dtype=bool)
    with warnings.catch_warnings():
        # cleanlab warns about classes with few examples; the score above is still defined for them.
        warnings.simplefilter("ignore")
        # n_jobs=1: multiprocessing costs more than it saves on a few thousand people.
        flagged = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    return np.asarray(flagged, dtype=bool)
