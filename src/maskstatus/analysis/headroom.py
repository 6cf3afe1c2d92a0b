"""Where the score goes: what a perfect answer to each task would add, and how the age is missed.

Two views of out-of-fold predictions that no per-class table gives:

- ``task_headroom``: the 18-class macro F1 as predicted, then with one task's
  answer (mask, gender or age group) swapped for the truth at a time. The gap
  is the most a better model of that task alone could add, so it says which
  task to work on.
- ``age_error_by_band``: for runs that predict the age in years, the error and
  the bias (mean predicted minus given years) per band of given age. A
  regression shrinks towards the mean age: the youngest are predicted older
  and the oldest younger, which moves people across the group boundaries more
  than an unbiased error of the same size would.

The given years come from the train table the run was trained on
(``given_years``), read again with the run's own relabelling, so they match the
labels in the OOF file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import AGE_MEAN
from ..config import Config
from ..labels import NUM_CLASSES, PROB_COLUMNS, TASKS, decode, encode
from ..scoring.metrics import macro_f1

logger = logging.getLogger(__name__)

BAND_YEARS = 5


def task_headroom(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Macro F1 of the 18-class argmax (``f1``), and ``f1_true_<task>`` with that task's answer made right.

    The other two tasks keep their predicted answers, so each gap is what that task
    alone costs the score.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape != (len(labels), NUM_CLASSES):
        raise ValueError(f"probs must be (N, {NUM_CLASSES}) for N={len(labels)} labels, got {probs.shape}")
    predicted = list(decode(probs.argmax(axis=1)))
    true = decode(labels)
    out = {"f1": macro_f1(labels, encode(*predicted), NUM_CLASSES)}
    for i, task in enumerate(TASKS):
        answers = list(predicted)
        answers[i] = true[i]
        out[f"f1_true_{task}"] = macro_f1(labels, encode(*answers), NUM_CLASSES)
    return out


def age_error_by_band(
    given: np.ndarray, predicted: np.ndarray, people: np.ndarray | None = None, width: int = BAND_YEARS
) -> pd.DataFrame:
    """Per band of ``width`` given years: images, people, MAE and bias (mean predicted - given) in years.

    Bands start at multiples of ``width`` ("15-19", "20-24", ...); empty bands are left out.
    ``people`` (one id per image) adds a people count; the error is per image.
    """
    given = np.asarray(given, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if given.shape != predicted.shape or given.ndim != 1:
        raise ValueError(
            f"given and predicted years must be two 1-D arrays of one length, got {given.shape} and {predicted.shape}"
        )
    if width < 1:
        raise ValueError(f"band width must be at least 1 year, got {width}")
    if not (np.isfinite(given).all() and np.isfinite(predicted).all()):
        raise ValueError("given and predicted years must be finite")
    start = (np.floor(given / width) * width).astype(np.int64)
    rows = []
    for lo in np.unique(start):
        sel = start == lo
        error = predicted[sel] - given[sel]
        row = {"band": f"{lo}-{lo + width - 1}", "from": int(lo), "images": int(sel.sum())}
        if people is not None:
            row["people"] = int(pd.unique(np.asarray(people)[sel]).size)
        row.update({"mae": float(np.abs(error).mean()), "bias": float(error.mean())})
        rows.append(row)
    return pd.DataFrame(rows)


def given_years(cfg: Config, oof: pd.DataFrame) -> np.ndarray | None:
    """The given age in years of each OOF row, from the train table of ``cfg`` (its relabelling applied).

    None, with the reason logged, when the data folder cannot be read (moved, or another
    machine) or lacks some OOF person: the headroom does not need it, only the age bands do.
    """
    from ..data.tables import (
        load_train_table,  # reads and checks the whole train folder: only when the bands are asked for
    )

    train_dir = Path(cfg.data.root or "") / "train"
    try:
        table = load_train_table(cfg, check_images=False)
    except (OSError, ValueError) as err:  # ConfigError (no data.root) and DataError are ValueErrors
        logger.info("no age bands: cannot read the train table at %s (%s)", train_dir, err)
        return None
    ages = table.drop_duplicates("person_id").set_index("person_id")["age"]
    missing = ~oof["person_id"].astype(str).isin(ages.index)
    if missing.any():
        logger.info(
            "no age bands: %d OOF people are not in %s, e.g. %s",
            oof.loc[missing, "person_id"].nunique(),
            train_dir,
            oof.loc[missing, "person_id"].iloc[0],
        )
        return None
    return ages.loc[oof["person_id"].astype(str)].to_numpy(dtype=np.float64)


def oof_headroom(oof: pd.DataFrame, years: np.ndarray | None = None) -> dict:
    """``task_headroom`` of an OOF table and, with given ``years`` and predicted ones, its age bands.

    Returns ``{"headroom": {...}, "age_mae": float, "age_bias": float, "age_by_band": [rows]}``
    (the age keys only where both years are known).
    """
    out: dict = {"headroom": task_headroom(oof["label"].to_numpy(), oof[PROB_COLUMNS].to_numpy(dtype=np.float64))}
    if years is not None and AGE_MEAN in oof.columns:
        predicted = oof[AGE_MEAN].to_numpy(dtype=np.float64)
        bands = age_error_by_band(years, predicted, oof["person_id"].to_numpy())
        out.update(
            {
                "age_mae": float(np.abs(predicted - years).mean()),
                "age_bias": float((predicted - years).mean()),
                "age_by_band": bands.to_dict(orient="records"),
            }
        )
    return out


__all__ = ["BAND_YEARS", "age_error_by_band", "given_years", "oof_headroom", "task_headroom"]
