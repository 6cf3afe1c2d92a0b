"""Exact-age regression: predicted years -> age-group probabilities, and cut points tuned out of fold.

A regression head predicts each face's age as a normal distribution, a mean and a
spread in years. The probability of an age group is the mass of that
distribution between two cut points, so the head plugs into everything that
works on 18-class probabilities (TTA, ensembles, pseudo labels, submissions).
The cut points default to the scoring thresholds (30 and 60); a regressor pulls
predictions toward the mean age, so the rare old group is better served by a
lower cut, which ``tune_cuts`` finds on out-of-fold predictions and
``write_cuts`` stores in the run or CV folder, where prediction picks it up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .errors import RunError
from .labels import PROB_COLUMNS, TASKS, AgeThresholds, combine_task_probs, decode, encode, split_class_probs
from .runs import AGE_CUTS
from .scoring.metrics import macro_f1

logger = logging.getLogger(__name__)

# Output/target key of the regression head: (N, 2) = mean and spread (standard deviation) in years.
AGE_YEARS = "age_years"
# Output key of a label-distribution age head: (N, AGE_BIN_COUNT) logits over whole years 0..AGE_BIN_COUNT-1.
# Such a head also returns AGE_YEARS (the distribution's mean and spread), so everything downstream of the
# regression (TTA, OOF years, tuned cuts, ensembles) serves it unchanged.
AGE_BINS = "age_bins"
AGE_BIN_COUNT = 101
# Output key of a cumulative-logit (ordinal) age head: (N, AGE_BIN_COUNT - 1) logits of P(age > k) for whole
# years k = 0..AGE_BIN_COUNT - 2. Like the distribution head it also returns AGE_YEARS.
AGE_RANKS = "age_ranks"
# The age heads whose loss learns from the age in years (each returns AGE_YEARS, beside its own output), with
# the width of that output: the one place the heads and their losses read it from.
AGE_HEAD_SIZES = {AGE_YEARS: 2, AGE_BINS: AGE_BIN_COUNT, AGE_RANKS: AGE_BIN_COUNT - 1}
AGE_YEAR_HEADS = tuple(AGE_HEAD_SIZES)
# Columns of an out-of-fold table holding a regression head's predicted years.
AGE_MEAN, AGE_SIGMA = "age_mean", "age_sigma"
Cuts = tuple[float, float]


def thresholds_cuts(thresholds: AgeThresholds) -> Cuts:
    """The scoring thresholds as cut points on predicted years.

    Ages are whole years and group 2 starts at ``old_from``: a predicted 59.6
    rounds to 60, so the cut on the continuous scale sits half a year below.
    """
    return (thresholds.young_below - 0.5, thresholds.old_from - 0.5)


def check_cuts(cuts: Sequence[float]) -> Cuts:
    c = tuple(float(x) for x in cuts)
    if len(c) != 2 or not np.all(np.isfinite(c)) or not 0 < c[0] < c[1]:
        raise ValueError(f"age cut points must be two increasing positive numbers, got {list(cuts)}")
    return (c[0], c[1])


def group_probs(mean: torch.Tensor, sigma: torch.Tensor, cuts: Sequence[float]) -> torch.Tensor:
    """(N,) means and spreads in years -> (N, 3) probabilities of the age groups split at ``cuts``."""
    c1, c2 = check_cuts(cuts)
    z1 = torch.special.ndtr((c1 - mean) / sigma)
    z2 = torch.special.ndtr((c2 - mean) / sigma)
    probs = torch.stack([z1, z2 - z1, 1.0 - z2], dim=-1).clamp_min(0.0)
    # Far in a tail all three can round to 0 in float32; renormalising keeps rows summing to 1.
    return probs / probs.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


def group_probs_np(mean: np.ndarray, sigma: np.ndarray, cuts: Sequence[float]) -> np.ndarray:
    """numpy version of :func:`group_probs` (float64), for out-of-fold tables."""
    out = group_probs(torch.from_numpy(np.array(mean, np.float64)), torch.from_numpy(np.array(sigma, np.float64)), cuts)
    return out.numpy()


def bins_to_years(logits: torch.Tensor, min_sigma: float = 0.5) -> torch.Tensor:
    """(N, K) logits over whole years 0..K-1 -> (N, 2) the distribution's mean and standard deviation.

    The spread is floored at ``min_sigma`` because a peaked distribution on one whole year would
    otherwise give a near-zero spread and all-or-nothing age-group probabilities at a cut point.
    """
    return _moments(logits.float().softmax(dim=-1), min_sigma)


def ranks_to_years(logits: torch.Tensor, min_sigma: float = 0.5) -> torch.Tensor:
    """(N, K) logits of P(age > k), k = 0..K-1 -> (N, 2) the implied distribution's mean and standard deviation.

    P(age = j) is P(age > j-1) - P(age > j) over whole years 0..K; the spread is floored as in
    :func:`bins_to_years`. A head whose exceedance probabilities are not monotone (none of this
    package's) would get its negative masses clipped.
    """
    exceed = logits.float().sigmoid()
    ones = torch.ones_like(exceed[:, :1])
    upper = torch.cat([ones, exceed], dim=1)
    lower = torch.cat([exceed, torch.zeros_like(ones)], dim=1)
    return _moments((upper - lower).clamp_min(0.0), min_sigma)


def _moments(p: torch.Tensor, min_sigma: float) -> torch.Tensor:
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    ages = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
    mean = (p * ages).sum(dim=-1)
    var = (p * (ages - mean[:, None]) ** 2).sum(dim=-1)
    return torch.stack([mean, var.clamp_min(0.0).sqrt().clamp_min(min_sigma)], dim=1)


def age_rank_targets(years: torch.Tensor, ranks: int) -> torch.Tensor:
    """(N,) true ages -> (N, ranks) binary targets ``age > k`` for k = 0..ranks-1 (ordinal regression)."""
    ks = torch.arange(ranks, dtype=torch.float32, device=years.device)
    return (years.float()[:, None] > ks[None, :]).float()


def age_distribution_targets(years: torch.Tensor, bins: int, sigma: float) -> torch.Tensor:
    """(N,) true ages -> (N, bins) normal label distributions over whole years (DLDL, Gao et al. 2017).

    Neighbouring ages look alike, so each face teaches the head about the years around its
    label too, which suits the noisy, coarse ages of face data sets.
    """
    ages = torch.arange(bins, dtype=torch.float32, device=years.device)
    logp = -((ages[None, :] - years.float()[:, None]) ** 2) / (2.0 * sigma**2)
    return logp.softmax(dim=-1)


def mean_years(view_outputs: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor | None:
    """The regression output averaged over TTA views (N, 2), or None for a head without one.

    Means and spreads are averaged before the group probabilities are taken, so the
    out-of-fold table's years reproduce the prediction exactly at any cut points.
    """
    if not view_outputs or AGE_YEARS not in view_outputs[0]:
        return None
    return torch.stack([o[AGE_YEARS].float() for o in view_outputs]).mean(dim=0)


def tune_cuts(
    probs: np.ndarray,
    labels: np.ndarray,
    mean: np.ndarray,
    sigma: np.ndarray,
    thresholds: AgeThresholds,
    young_range: float = 6.0,
    old_range: tuple[float, float] = (10.0, 4.0),
    step: float = 0.5,
) -> dict:
    """Grid-search the two cut points that maximise the 18-class macro F1 of out-of-fold predictions.

    ``probs`` (N, 18) supply the mask and gender predictions; the age group comes from
    (``mean``, ``sigma``) at each candidate pair of cuts. The young cut is searched within
    ``young_range`` years of the scoring threshold, the old cut from ``old_range[0]`` below
    to ``old_range[1]`` above. Returns the best cuts and the F1 at the default and tuned cuts
    (the tuned F1 is optimistic: it is measured on the predictions it was tuned on).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    mean, sigma = np.asarray(mean, np.float64), np.asarray(sigma, np.float64)
    if not (len(probs) == len(labels) == len(mean) == len(sigma)) or len(labels) == 0:
        raise ValueError("tune_cuts needs probs, labels, mean and sigma of the same non-zero length")
    joint = probs.reshape(len(probs), TASKS["mask"], TASKS["gender"], TASKS["age"])
    mask_pred = joint.sum(axis=(2, 3)).argmax(axis=1)
    gender_pred = joint.sum(axis=(1, 3)).argmax(axis=1)
    _, _, true_age = decode(labels)

    def score(cuts: Cuts) -> tuple[float, float]:
        age_pred = group_probs_np(mean, sigma, cuts).argmax(axis=1)
        pred = encode(mask_pred, gender_pred, age_pred)
        return macro_f1(labels, pred, 18), macro_f1(true_age, age_pred, TASKS["age"])

    default = thresholds_cuts(thresholds)
    young = np.arange(default[0] - young_range, default[0] + young_range + step / 2, step)
    old = np.arange(default[1] - old_range[0], default[1] + old_range[1] + step / 2, step)
    best, best_f1, best_age = default, *score(default)
    default_f1, default_age = best_f1, best_age
    for c1 in young:
        for c2 in old:
            if c1 <= 0 or c2 <= c1:
                continue
            f1, age_f1 = score((float(c1), float(c2)))
            if f1 > best_f1 + 1e-12:  # ties keep the earlier (and, for the default, the unchanged) cuts
                best, best_f1, best_age = (float(c1), float(c2)), f1, age_f1
    return {
        "cuts": [round(best[0], 3), round(best[1], 3)],
        "default_cuts": list(default),
        "oof_f1_default": default_f1,
        "oof_f1_tuned": best_f1,
        "oof_age_f1_default": default_age,
        "oof_age_f1_tuned": best_age,
        "images": int(len(labels)),
        "grid": {"young": [float(young[0]), float(young[-1])], "old": [float(old[0]), float(old[-1])], "step": step},
    }


def require_years(oof: pd.DataFrame, source: str) -> None:
    """ValueError naming ``source`` unless the OOF table has the regression columns age_mean and age_sigma."""
    missing = [c for c in (AGE_MEAN, AGE_SIGMA) if c not in oof.columns]
    if missing:
        raise RunError(f"{source} lacks column(s) {missing} (only a run with model.age_output=years writes them)")


def oof_with_cuts(oof: pd.DataFrame, cuts: Sequence[float], source: str = "out-of-fold table") -> pd.DataFrame:
    """A copy of an out-of-fold table whose 18-class probabilities use ``cuts`` for the age groups.

    Mask and gender marginals are kept; the age marginal is recomputed from the
    regression columns (``age_mean``, ``age_sigma``) the table must have.
    """
    require_years(oof, source)
    probs = oof[PROB_COLUMNS].to_numpy(np.float64)
    marginals = split_class_probs(probs)
    marginals["age"] = group_probs_np(oof[AGE_MEAN].to_numpy(), oof[AGE_SIGMA].to_numpy(), cuts)
    out = oof.copy()
    out[PROB_COLUMNS] = combine_task_probs(marginals)
    return out


def write_cuts(folder: Path | str, result: dict) -> Path:
    from .runs import atomic_write_text

    path = Path(folder) / AGE_CUTS
    check_cuts(result["cuts"])
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def read_cuts(folder: Path | str) -> Cuts | None:
    """The tuned cut points stored in a run or CV folder, or None if it has none."""
    path = Path(folder) / AGE_CUTS
    if not path.is_file():
        return None
    try:
        return check_cuts(json.loads(path.read_text())["cuts"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise RunError(f"{path}: not a valid age cut file ({exc}); delete it or run tune-age again") from None
