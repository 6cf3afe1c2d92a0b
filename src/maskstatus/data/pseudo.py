"""Pseudo labels: confident predictions on the eval images become extra training rows.

The rows get fold -1, so they are trained on in every fold and never enter a
validation fold: the held-out score stays a score on real labels only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import AGE_MEAN
from ..errors import DataError
from ..labels import PROB_COLUMNS, TASKS, encode, split_class_probs
from .layout import TABLE_COLUMNS
from .tables import eval_table

logger = logging.getLogger(__name__)

PSEUDO_FOLD = -1
PSEUDO_STEM = "pseudo"


def read_probs(path: Path) -> pd.DataFrame:
    """A probabilities file written by predict or ensemble (ImageID, p0..p17)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pseudo-label probabilities not found: {path}")
    probs = pd.read_csv(path, dtype={"ImageID": str})
    missing = [c for c in ["ImageID", *PROB_COLUMNS] if c not in probs.columns]
    if missing:
        raise DataError.one(
            path,
            f"not a probabilities file (missing columns {missing[:5]}); use the "
            f"*.probs.csv that predict or ensemble writes",
        )
    return probs


def select_pseudo(
    probs: pd.DataFrame,
    images: pd.DataFrame,
    threshold: float,
    task_thresholds: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Confident eval images as training rows (the image table's columns, plus `confidence`).

    An image is kept when its top 18-class probability reaches `threshold`, and,
    where `task_thresholds` are given, when each named task's top marginal
    reaches its own threshold (a multi-task model can be sure of the mask and
    unsure of the age). Labels are the per-task argmax of the marginals. Where the
    file holds predicted years (``age_mean``, written for models that regress the
    age), the rows carry them, rounded to whole years, so an age-regression head
    learns from pseudo labels too; otherwise their age is -1 (unknown) and only
    the age group is used.
    """
    merged = images.merge(probs, left_on="image_id", right_on="ImageID", how="inner", validate="one_to_one")
    if len(merged) < len(images):
        logger.warning("%d eval images have no pseudo-label probabilities", len(images) - len(merged))
    p = merged[PROB_COLUMNS].to_numpy(np.float64)
    keep = p.max(axis=1) >= threshold
    marginals = split_class_probs(p)
    for task, t in (task_thresholds or {}).items():
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r} in pseudo task thresholds; tasks are {list(TASKS)}")
        keep &= marginals[task].max(axis=1) >= t
    codes = {task: marginals[task].argmax(axis=1) for task in TASKS}
    rows = pd.DataFrame(
        {
            "person_id": "pseudo:" + merged["image_id"].astype(str),
            "image_path": merged["image_path"],
            "stem": PSEUDO_STEM,
            "gender": codes["gender"],
            # Without predicted years, -1: training keeps the predicted age group as it is.
            "age": (
                np.rint(merged[AGE_MEAN].to_numpy(np.float64)).clip(0).astype(np.int64) if AGE_MEAN in merged else -1
            ),
            "race": "",
            "mask": codes["mask"],
            "age_group": codes["age"],
            "label": encode(codes["mask"], codes["gender"], codes["age"]),
            "confidence": p.max(axis=1),
        }
    )[keep]
    logger.info("pseudo labels: %d of %d eval images kept", len(rows), len(merged))
    return rows[[*TABLE_COLUMNS, "confidence"]].reset_index(drop=True)


def pseudo_rows(
    probs_csv: Path, eval_dir: Path, threshold: float, task_thresholds: Mapping[str, float] | None = None
) -> pd.DataFrame:
    return select_pseudo(read_probs(probs_csv), eval_table(eval_dir, check_images=False), threshold, task_thresholds)
