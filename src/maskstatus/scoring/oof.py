"""Out-of-fold prediction files: where a run or CV folder keeps them, reading and checking them,
and the folder's config, which says how they are scored.

A run writes ``<run>/predictions/oof.csv``, a CV folder an ``oof.csv`` at its top
covering every fold. Scoring, age-cut tuning, label-error search, reports and
ensembles all read them here, so none of them needs the prediction code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import oof_with_cuts, read_cuts
from ..config import Config, load_config
from ..errors import DataError
from ..labels import PROB_COLUMNS
from ..outputs import first_line
from ..runs import CV_CONFIG, RUN_CONFIG, oof_path

KEY_COLUMNS = ["person_id", "stem"]
OOF_COLUMNS = ["person_id", "stem", "image_path", "label", "fold"]


def is_oof_csv(path: Path | str) -> bool:
    """Whether ``path`` starts like an out-of-fold file (a run's, a CV's, an ensemble's): a new one may replace it."""
    columns = first_line(Path(path)).split(",")
    return columns[: len(OOF_COLUMNS) + len(PROB_COLUMNS)] == OOF_COLUMNS + PROB_COLUMNS


def member_config(path: Path | str) -> Config | None:
    """The config of a run folder (config.yaml) or CV folder (cv_config.yaml); None for anything else."""
    path = Path(path)
    for name in (RUN_CONFIG, CV_CONFIG):
        if (path / name).is_file():
            return load_config(path / name)
    return None


def check_oof_frame(df: pd.DataFrame, required: Sequence[str] = (*OOF_COLUMNS, *PROB_COLUMNS)) -> None:
    """ValueError unless ``df`` has the ``required`` columns, rows, and valid probabilities p0..p17."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"out-of-fold table lacks column(s) {missing}; expected {list(required)}")
    if df.empty:
        raise ValueError("out-of-fold table has no rows")
    probs = df[PROB_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("out-of-fold probabilities p0..p17 must be finite numbers >= 0")
    if (probs.sum(axis=1) <= 0).any():
        raise ValueError("a row of out-of-fold probabilities sums to 0")


def read_oof(path: Path | str) -> pd.DataFrame:
    """Out-of-fold predictions from a CV folder, a run folder or an oof CSV; the one OOF reader.

    A folder is looked up as ``<path>/oof.csv`` (CV folder), then
    ``<path>/predictions/oof.csv`` (run). Columns: person_id, stem, image_path,
    label, fold, p0..p17 (ids read as strings, so "000123" keeps its zeros). A
    folder with tuned age cut points (age_cuts.json) gets its probabilities at
    those cuts, the way it predicts. Errors name the file.
    """
    path = Path(path)
    if path.is_dir():
        file = oof_path(path)
    elif path.is_file():
        file = path
    else:
        raise FileNotFoundError(f"out-of-fold predictions not found: {path} (give a CV folder, run folder or oof.csv)")
    try:
        df = pd.read_csv(file, dtype={"person_id": str, "stem": str, "image_path": str}, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError.one(file, f"cannot read out-of-fold predictions: {err}") from None
    try:
        check_oof_frame(df)
    except ValueError as err:
        raise DataError.one(file, str(err)) from None
    dup = df.duplicated(KEY_COLUMNS)
    if dup.any():
        first = df.loc[dup, KEY_COLUMNS].iloc[0].tolist()
        raise DataError.one(file, f"{int(dup.sum())} duplicate (person_id, stem) row(s), e.g. {first}")
    cuts = read_cuts(path) if path.is_dir() else None
    return oof_with_cuts(df, cuts, str(file)) if cuts is not None else df
