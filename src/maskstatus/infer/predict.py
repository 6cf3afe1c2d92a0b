"""Inference: class probabilities for a table of images, test-time augmentation, voting over runs, submission files."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .. import outputs
from ..age import AGE_MEAN, AGE_SIGMA

# The argument checks live where they need no torch (the command line runs them first); importers find them here too.
from ..choices import check_accelerator_available, check_backend
from ..data.tables import eval_table, folder_table
from ..errors import DataError, UsageError
from ..labels import PROB_COLUMNS, decode
from ..outputs import check_prediction_output as check_output
from ..outputs import probs_path_for
from ..runs import atomic_write_csv
from .ensemble import Vote, check_vote, normalize_weights

# The run's pipeline lives in .pipeline (shared with serve and export); these names were found here first.
from .pipeline import Backend, Pipeline
from .tta import tta_views

logger = logging.getLogger(__name__)


def read_images(data: Path) -> tuple[pd.DataFrame, bool]:
    """A competition eval folder (info.csv + images/, or a parent holding eval/), else any image folder.

    Returns the table and whether it is a competition eval set (submission rows keep info.csv order).
    Images are not decoded here: the image cache decodes each once and names every file it cannot decode.
    """
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"data folder not found: {data}")
    for candidate in (data, data / "eval"):
        if (candidate / "info.csv").is_file():
            logger.info(
                "%s: competition eval folder (%s found): the submission has ImageID,ans in info.csv order",
                data,
                candidate / "info.csv",
            )
            return eval_table(candidate, check_images=False), True
    if (data.parent / "info.csv").is_file():
        # The images/ folder of an eval set: the plain format would not be a valid submission.
        logger.warning(
            "%s sits beside %s: predicting it as a plain image folder (image,ans,mask,gender,age); "
            "for a competition submission (ImageID,ans) pass --data %s",
            data,
            data.parent / "info.csv",
            data.parent,
        )
    else:
        logger.info(
            "%s: plain image folder (no info.csv in it or in %s/eval): the output has image,ans,mask,gender,age",
            data,
            data,
        )
    return folder_table(data), False


def output_bytes(table: pd.DataFrame) -> int:
    """About what ``write_predictions`` writes for ``table``, with room for the temp files (to check disk space)."""
    per_row = 2 * table["image_id"].astype(str).str.len().mean() + len(PROB_COLUMNS) * 9 + 64
    return int(2 * len(table) * per_row) + 2 * outputs.PROBE_BYTES


def write_predictions(
    table: pd.DataFrame, probs: np.ndarray, out: Path, competition: bool, years: np.ndarray | None = None
) -> tuple[Path, Path]:
    """submission (ImageID,ans in table order) and a probabilities file beside it; both written atomically.

    With ``years`` (N, 2) the probabilities file also holds the predicted age in years (age_mean, age_sigma).
    """
    out = Path(out)
    ans = probs.argmax(axis=1)
    if competition:
        submission = pd.DataFrame({"ImageID": table["image_id"].to_numpy(), "ans": ans})
    else:
        mask, gender, age = decode(ans)
        submission = pd.DataFrame(
            {"image": table["image_id"].to_numpy(), "ans": ans, "mask": mask, "gender": gender, "age": age}
        )
    probs_path = probs_path_for(out)
    prob_df = pd.DataFrame(probs, columns=PROB_COLUMNS)
    prob_df.insert(0, "ImageID" if competition else "image", table["image_id"].to_numpy())
    if years is not None:
        prob_df[AGE_MEAN], prob_df[AGE_SIGMA] = years[:, 0], years[:, 1]
    atomic_write_csv(prob_df, probs_path, float_format="%.6f")
    atomic_write_csv(submission, out)
    return out, probs_path


def predict(
    run_dirs: Sequence[Path | str],
    data: Path | str,
    out: Path | str,
    checkpoint: str = "best",
    batch_size: int | None = None,
    accelerator: str = "auto",
    num_workers: int | str = 0,
    progress: bool = True,
    tta: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    vote: Vote = "soft",
    backend: Backend = "torch",
    onnx_dir: Path | str | None = None,
    group_people: bool | None = None,
    precision: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Predict with one or more runs and write the submission and probabilities.

    Each of ``run_dirs`` is an ensemble member: a run folder, or a CV folder whose
    fold runs are averaged into one member (see ``runs.expand_runs``).
    ``weights`` (one per member) and ``vote`` combine the members (default: the
    plain mean). ``tta`` overrides the runs' ``predict.tta``; None keeps each run's own, and so for
    ``group_people`` and ``predict.group_people``.
    ``backend="onnx"`` predicts on the CPU with ONNX Runtime from the files ``maskstatus export``
    wrote (in each run's ``onnx/`` folder, or under ``onnx_dir``); a run not exported is an error.
    ``precision`` (a Fabric precision of ``PRECISIONS``) overrides the first run's ``train.precision``
    for the torch backend; ``bf16-mixed`` is faster on CPUs with bf16 instructions and on GPUs, at the
    cost of answers that differ from float32 on about 1 % of images (``benchmarks/predict_cpu.py``).
    ``out`` may not be an input nor lie in a run or data folder; an existing file other than an earlier
    prediction is replaced only with ``overwrite`` (``check_output``).
    """
    check_backend(backend, accelerator, precision)
    check_accelerator_available(accelerator)
    if not run_dirs:
        raise UsageError("predict needs at least one run folder")
    check_output(out, [*run_dirs, data], overwrite)
    # A bad weight list or vote fails here, before any model is loaded or image decoded.
    normalize_weights(weights, len(run_dirs))
    check_vote(vote)
    if tta is not None:
        tta_views(tta)  # unknown names fail now too
    pipeline = Pipeline.load(run_dirs, checkpoint, backend, onnx_dir, accelerator, precision)
    table, competition = read_images(Path(data))
    if table.empty:
        raise DataError.one(data, "no images found")
    outputs.check_space(Path(out).parent, output_bytes(table), name=out)  # before the images are decoded
    probs, years = pipeline.predict_files(
        table["image_path"].tolist(), batch_size, num_workers, progress, tta, weights, vote, group_people
    )
    return write_predictions(table, probs, Path(out), competition, years)
