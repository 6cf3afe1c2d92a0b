"""Pseudo labels for a CV without a leak: each fold learns from teachers that never saw its held-out people.

A CV trained with ``data.pseudo`` from one teacher file leaks: a CV folder's fold
models trained on every person between them, so a teacher that votes them all has
seen, through its other folds, the very people a student's fold is scored on, and
its eval predictions pass that on. The clean protocol follows the folds: the
student of fold k learns from the eval predictions of the teachers' fold-k models
only (trained on the same people as the student, none of its held-out ones).

``fold_teacher_probs`` writes those predictions, ``<out>/fold<k>.probs.csv`` for
every fold, by soft-voting the fold-k run of each teacher CV folder (the teachers
must share one fold assignment, the student's too); the student's config then
names them all with ``data.pseudo.probs: <out>/fold{fold}.probs.csv``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.folds import FOLD_COLUMNS, IMAGE_FOLD_COLUMNS
from ..errors import DataError, UsageError
from ..infer.predict import predict
from ..outputs import check_output, check_prediction_output, first_line
from ..runs import FOLDS, atomic_write_csv
from .cv import fold_list, fold_run, load_cv_config, sorted_folds

logger = logging.getLogger(__name__)

FOLDS_COPY = FOLDS  # named as a CV folder's, whose table it copies


def _shared_folds(teachers: Sequence[Path]) -> pd.DataFrame:
    """The one person -> fold table every teacher CV folder holds; an error naming the first that differs."""
    tables = []
    for cv in teachers:
        if not (cv / FOLDS).is_file():
            raise FileNotFoundError(f"not a CV folder (no {FOLDS}): {cv}")
        tables.append(sorted_folds(cv / FOLDS))
    first = tables[0]
    for cv, t in zip(teachers[1:], tables[1:], strict=True):
        if not t.equals(first):
            raise DataError.one(
                cv / FOLDS,
                f"assigns people to folds differently from {teachers[0] / FOLDS}; "
                "the fold-k teachers would have seen different people",
            )
    return first


def fold_teacher_probs(
    teachers: Sequence[Path | str],
    data: Path | str,
    out_dir: Path | str,
    folds: Sequence[int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **predict_options: Any,
) -> list[Path]:
    """For each fold k, the eval predictions of the teachers' fold-k models, soft-voted: ``out_dir/fold<k>.probs.csv``.

    ``teachers`` are CV folders sharing one fold assignment (copied to ``out_dir/folds.csv``, to train the
    student on with ``split.folds_file``). ``folds`` defaults to every fold of the first teacher's split.
    Each file holds the predicted years too where a teacher regresses the age. Returns the files, in fold order.
    ``predict_options`` go to ``predict`` as they are (``batch_size``, ``accelerator``, ``backend``, ``onnx_dir``,
    ``precision``, ``tta``, ...). Every file is checked before any prediction (``maskstatus.outputs``): an
    existing one is replaced only if it is an earlier output of pseudo-label, or with ``overwrite``.
    """
    teacher_dirs = [Path(t) for t in teachers]
    if not teacher_dirs:
        raise UsageError("pseudo labels need at least one teacher CV folder")
    fold_table = _shared_folds(teacher_dirs)
    todo = fold_list(load_cv_config(teacher_dirs[0]), folds)
    found_runs = {k: [fold_run(cv, k) for cv in teacher_dirs] for k in todo}
    missing = [
        f"{cv} fold {k}"
        for k, found in found_runs.items()
        for cv, run in zip(teacher_dirs, found, strict=True)
        if run is None
    ]
    if missing:  # checked for every fold before predicting any, so nothing is half done
        raise FileNotFoundError(f"teacher fold runs not found: {', '.join(missing)}")
    runs = {k: [run for run in found if run is not None] for k, found in found_runs.items()}

    out_dir = Path(out_dir)
    inputs = [*teacher_dirs, data]
    check_output(
        out_dir / FOLDS_COPY,
        command="pseudo-label",
        inputs=inputs,
        overwrite=overwrite,
        previous=lambda p: first_line(p) in (",".join(FOLD_COLUMNS), ",".join(IMAGE_FOLD_COLUMNS)),
    )
    for k in todo:
        check_prediction_output(out_dir / f"fold{k}.csv", inputs, overwrite, command="pseudo-label")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(fold_table, out_dir / FOLDS_COPY)
    written = []
    for k in todo:
        logger.info("fold %d: eval predictions of %s", k, ", ".join(str(r) for r in runs[k]))
        _, probs = predict(
            runs[k], data, out_dir / f"fold{k}.csv", progress=progress, overwrite=True, **predict_options
        )
        written.append(probs)
    return written
