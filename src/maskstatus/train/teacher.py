"""A teacher's predictions of the training images, as soft targets for knowledge distillation.

The teacher is a CV folder (or run folder, or oof CSV) whose out-of-fold predictions cover the
people a run trains on. Rows are matched on (person_id, stem) rather than on paths, so a teacher
trained from another copy of the data (a nested CV over the training folds, see
``benchmarks/distill.py``) still lines up.

A clean teacher never saw the people the student is validated on: a teacher whose models trained
on them would pass their labels on through its predictions of everyone else, and the student's
validation score would be optimistic. Its OOF file then holds no rows of them either, which is
what :func:`teacher_targets` checks (and warns about).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import AGE_MEAN
from ..data.pseudo import PSEUDO_FOLD
from ..errors import DataError
from ..labels import NUM_CLASSES, PROB_COLUMNS
from ..losses import TEACHER_PROBS, TEACHER_YEARS
from ..scoring.oof import KEY_COLUMNS, oof_path, read_oof

logger = logging.getLogger(__name__)


def teacher_targets(
    teacher: Path | str, table: pd.DataFrame, train_rows: np.ndarray, val_rows: np.ndarray
) -> dict[str, np.ndarray]:
    """The teacher's 18-class probabilities ``(N, 18)`` and mean years ``(N,)`` for every row of ``table``.

    NaN where the teacher has no row (validation rows, pseudo labels) or no years (a teacher that
    classifies age groups). Every labelled training row must have a teacher row: a teacher that
    covers only part of the training set is an error naming the file and a missing person.
    """
    teacher = Path(teacher)
    source = oof_path(teacher) if teacher.is_dir() else teacher
    oof = read_oof(teacher)  # with the folder's tuned age cuts, the way it predicts
    keys = pd.MultiIndex.from_frame(table[KEY_COLUMNS].astype(str))
    at = pd.MultiIndex.from_frame(oof[KEY_COLUMNS].astype(str)).get_indexer(keys)

    train_rows = np.asarray(train_rows)
    pseudo = table["fold"].iloc[train_rows].to_numpy() == PSEUDO_FOLD
    labelled = train_rows[~pseudo]  # pseudo-labelled eval images are not the teacher's to cover
    missing = labelled[at[labelled] < 0]
    if len(missing):
        person, stem = table.iloc[missing[0]][KEY_COLUMNS]
        raise DataError.one(
            source,
            f"the teacher has no prediction for {len(missing)} of the {len(labelled)} "
            f"training images, e.g. person {person} {stem}: it must cover every person "
            "trained on",
        )
    seen_val = int((at[np.asarray(val_rows)] >= 0).sum())
    if seen_val:
        logger.warning(
            "the teacher %s predicts %d validation images: if its models trained on these people, "
            "the validation score is optimistic (a nested CV over the training folds avoids it)",
            source,
            seen_val,
        )

    probs = np.full((len(table), NUM_CLASSES), np.nan, dtype=np.float32)
    years = np.full(len(table), np.nan, dtype=np.float32)
    found = at >= 0
    p = oof[PROB_COLUMNS].to_numpy(np.float64)[at[found]]
    probs[found] = p / p.sum(axis=1, keepdims=True)
    if AGE_MEAN in oof.columns:
        years[found] = oof[AGE_MEAN].to_numpy(np.float32)[at[found]]
    logger.info(
        "teacher %s: soft targets for %d of %d training images", source, int(found[train_rows].sum()), len(train_rows)
    )
    return {TEACHER_PROBS: probs, TEACHER_YEARS: years}
