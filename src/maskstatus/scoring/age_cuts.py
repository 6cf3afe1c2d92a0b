"""Tune the age cut points of a run or CV folder whose model regresses the exact age.

The cut points are tuned on the folder's out-of-fold predictions (for a CV folder,
the pooled OOF of every fold) and written to ``age_cuts.json`` beside its config;
``predict``, ``ensemble`` and ``find-label-errors`` then use them for that folder.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import AGE_MEAN, AGE_SIGMA, oof_with_cuts, require_years, tune_cuts, write_cuts
from ..defaults import AGE_CUT_STEP
from ..errors import RunError, RunNotFoundError
from ..labels import PROB_COLUMNS
from .metrics import compute_metrics
from .oof import member_config, oof_path, read_oof

logger = logging.getLogger(__name__)


def _tune(oof: pd.DataFrame, thresholds, step: float) -> dict:
    return tune_cuts(
        oof[PROB_COLUMNS].to_numpy(),
        oof["label"].to_numpy(),
        oof[AGE_MEAN].to_numpy(),
        oof[AGE_SIGMA].to_numpy(),
        thresholds,
        step=step,
    )


def cross_fitted_metrics(oof: pd.DataFrame, thresholds, step: float = 0.5, seed: int = 0) -> dict[str, float]:
    """An honest estimate of the tuned metrics: cuts tuned on half of the people, scored on the other half.

    Tuning and scoring on the same predictions flatters the result; splitting the people
    in two, tuning on each half and predicting the other, gives every image a prediction
    made with cuts that never saw it. The F1 is then taken over all images at once.
    """
    scored = cross_fitted_oof(oof, thresholds, step, seed)
    return compute_metrics(scored[PROB_COLUMNS].to_numpy(), scored["label"].to_numpy())


def cross_fitted_oof(oof: pd.DataFrame, thresholds, step: float = 0.5, seed: int = 0) -> pd.DataFrame:
    """The out-of-fold table with each half of the people's ages cut at the points tuned on the other half."""
    people = np.asarray(sorted(oof["person_id"].astype(str).unique()))
    half = set(np.random.default_rng(seed).permutation(people)[: len(people) // 2])
    in_a = oof["person_id"].astype(str).isin(half).to_numpy()
    if in_a.all() or not in_a.any():
        raise RunError("cross-fitting the age cut points needs out-of-fold predictions of at least two people")
    parts = []
    for tune_on, score_on in ((in_a, ~in_a), (~in_a, in_a)):
        cuts = _tune(oof[tune_on], thresholds, step)["cuts"]
        parts.append(oof_with_cuts(oof[score_on], cuts))
    return pd.concat(parts)


def tune_age_cuts(folder: Path | str, write: bool = True, step: float = AGE_CUT_STEP) -> dict:
    """Grid-search the cut points that maximise the folder's OOF macro F1; optionally store them.

    Returns ``tune_cuts``' result (cuts, F1 at the default and at the tuned cuts), the
    cross-fitted metrics (``cross_fitted``, see :func:`cross_fitted_metrics`; its F1 also as
    ``oof_f1_cross_fitted``) and the file written.
    """
    folder = Path(folder)
    cfg = member_config(folder)
    if cfg is None:
        raise RunNotFoundError(f"not a run or CV folder (no config.yaml or cv_config.yaml): {folder}")
    if cfg.model.age_output == "groups":
        raise RunError(
            f"{folder}: its model predicts age groups (model.age_output={cfg.model.age_output}); "
            "only a model that predicts years (model.age_output=years or distribution) has cut "
            "points to tune"
        )
    oof = read_oof(folder)
    require_years(oof, str(oof_path(folder)))
    result = _tune(oof, cfg.data.age.thresholds(), step)
    result["cross_fitted"] = cross_fitted_metrics(oof, cfg.data.age.thresholds(), step)
    result["oof_f1_cross_fitted"] = result["cross_fitted"]["f1"]
    logger.info(
        "age cuts %s -> %s: OOF macro F1 %.4f -> %.4f (cross-fitted %.4f) on %d images",
        result["default_cuts"],
        result["cuts"],
        result["oof_f1_default"],
        result["oof_f1_tuned"],
        result["oof_f1_cross_fitted"],
        result["images"],
    )
    if write:
        result["file"] = str(write_cuts(folder, result))
    return result
