"""Person-grouped, class-stratified K-fold splits, stored as folds.csv (person_id, fold)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

logger = logging.getLogger(__name__)

FOLD_COLUMNS = ("person_id", "fold")


def make_folds(table: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Assign every person to one of n_folds folds.

    Images of one person always share a fold (an image split leaks the face
    across the split); StratifiedGroupKFold keeps the 18-class proportions
    close to the whole set's in every fold.
    """
    people = table["person_id"].nunique()
    if people < n_folds:
        raise ValueError(f"cannot make {n_folds} folds from {people} people")
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    fold_of = {}
    for fold, (_, val_idx) in enumerate(splitter.split(table, y=table["label"], groups=table["person_id"])):
        for pid in table["person_id"].iloc[val_idx].unique():
            fold_of[pid] = fold
    folds = pd.DataFrame({"person_id": list(fold_of), "fold": list(fold_of.values())})
    return folds.sort_values("person_id", kind="stable").reset_index(drop=True)


def read_folds(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"folds file not found: {path}")
    folds = pd.read_csv(path, dtype={"person_id": str})
    if tuple(folds.columns) != FOLD_COLUMNS:
        raise ValueError(f"{path}: expected columns {list(FOLD_COLUMNS)}, found {list(folds.columns)}")
    if folds["person_id"].duplicated().any():
        dup = folds.loc[folds["person_id"].duplicated(), "person_id"].tolist()[:10]
        raise ValueError(f"{path}: person(s) listed twice: {dup}")
    return folds


def attach_folds(table: pd.DataFrame, folds: pd.DataFrame, n_folds: int, source: str = "folds") -> pd.DataFrame:
    """Add a `fold` column; every person in the table must have a fold in range."""
    fold_of = dict(zip(folds["person_id"], folds["fold"].astype(int)))
    missing = sorted(set(table["person_id"]) - set(fold_of))
    if missing:
        raise ValueError(f"{source}: {len(missing)} person(s) have no fold, e.g. {missing[:10]}")
    bad = sorted({f for f in fold_of.values() if not 0 <= f < n_folds})
    if bad:
        raise ValueError(f"{source}: fold numbers {bad} outside 0..{n_folds - 1} (split.folds={n_folds})")
    out = table.copy()
    out["fold"] = out["person_id"].map(fold_of).astype(np.int64)
    return out
