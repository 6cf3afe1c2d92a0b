"""The checked image tables: a competition folder read (``layout``), checked (``validate``) and relabelled (``relabel``).

The top of the data layer's reading side: it raises ``DataError`` with every problem
(or, with ``skip_bad``, logs them and leaves the bad items out), then encodes the
labels. ``train_table`` runs all three steps, ``eval_table`` the first two, and
``folder_table`` lists any image folder for prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import ConfigError, DataError, Problem, format_problems
from ..labels import DEFAULT_AGE_THRESHOLDS, GENDER_TO_CODE, IMAGE_STEMS, STEM_TO_MASK, AgeThresholds, age_group, encode
from .images import IMAGE_EXTENSIONS, is_image_file
from .layout import EVAL_TABLE_COLUMNS, TABLE_COLUMNS, is_ignored_file
from .relabel import apply_relabel, read_relabel, resolve_relabel
from .validate import check_train_rows, validate_eval, validate_train

if TYPE_CHECKING:
    from ..config import Config

logger = logging.getLogger(__name__)


def read_train_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read and check ``train.csv``: columns TRAIN_COLUMNS, ids and path as strings, age as int.

    Gender is lower-cased. Raises DataError listing every problem (wrong columns,
    duplicate ids, unknown gender, bad ages).
    """
    rows, problems = check_train_rows(Path(csv_path))
    if problems:
        raise DataError(problems, csv_path)
    return rows.drop(columns="line").reset_index(drop=True)


def _raise_or_warn(problems: Sequence[Problem], where: Path, skip_bad: bool, rows: int) -> None:
    if rows == 0 or (problems and not skip_bad):
        # Even with skip_bad an empty table is useless; say why now instead of failing later.
        raise DataError(problems, where, note="no usable images left" if skip_bad else None)
    if problems:
        logger.warning("leaving out bad items (skip_bad): %s", format_problems(problems, where))


def train_table(
    train_dir: str | Path,
    thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS,
    relabel: pd.DataFrame | str | Path | None = None,
    skip_bad: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """Check a train folder and return its image table, one row per image.

    Columns TABLE_COLUMNS: person_id (str), image_path (absolute str), stem,
    gender (code), age (years), race, mask (code), age_group (code), label
    (18-class code). Sorted by person_id, then stem in IMAGE_STEMS order.

    ``relabel`` (a read_relabel table, or a path / "competition") is applied
    before the codes are computed. With problems, raises DataError listing them
    all, unless ``skip_bad``: then bad images, or whole people for a bad CSV row,
    are left out with a logged warning.
    """
    train_dir = Path(train_dir)
    images, problems = validate_train(train_dir, check_images=check_images)
    _raise_or_warn(problems, train_dir, skip_bad, len(images))

    images["mask"] = images["stem"].map(STEM_TO_MASK).astype("int64")
    if isinstance(relabel, (str, Path)):
        path = resolve_relabel(str(relabel))
        relabel = read_relabel(path) if path is not None else None
    if relabel is not None:
        images = apply_relabel(images, relabel)

    images["gender"] = images["gender"].map(GENDER_TO_CODE).astype("int64")
    images["age"] = images["age"].astype("int64")
    images["age_group"] = pd.Series(age_group(images["age"].to_numpy(), thresholds), index=images.index, dtype="int64")
    images["label"] = pd.Series(
        encode(images["mask"].to_numpy(), images["gender"].to_numpy(), images["age_group"].to_numpy()),
        index=images.index,
        dtype="int64",
    )
    stem_order = images["stem"].map({stem: i for i, stem in enumerate(IMAGE_STEMS)})
    images = images.assign(_order=stem_order).sort_values(["person_id", "_order"], kind="stable")
    return images[list(TABLE_COLUMNS)].reset_index(drop=True)


def eval_table(eval_dir: str | Path, skip_bad: bool = False, check_images: bool = True) -> pd.DataFrame:
    """Check an eval folder and return columns image_id, image_path (absolute), in info.csv order.

    With skip_bad, bad rows are left out, so the table may be shorter than info.csv.
    """
    eval_dir = Path(eval_dir)
    table, problems = validate_eval(eval_dir, check_images=check_images)
    _raise_or_warn(problems, eval_dir, skip_bad, len(table))
    return table[list(EVAL_TABLE_COLUMNS)].reset_index(drop=True)


def _warn_skipped(folder: Path, skipped: list[str], shown: int = 20) -> None:
    names = ", ".join(skipped[:shown]) + (f" and {len(skipped) - shown} more" if len(skipped) > shown else "")
    logger.warning(
        "%s: %d file(s) left out, not images by their extension (accepted: %s): %s",
        folder,
        len(skipped),
        ", ".join(IMAGE_EXTENSIONS),
        names,
    )


def folder_table(folder: str | Path) -> pd.DataFrame:
    """Every image under ``folder`` (recursive, hidden files skipped) for prediction.

    Columns image_id (path relative to folder, posix) and image_path (absolute),
    sorted by image_id. Images are not decoded here. A name that is not valid UTF-8
    keeps its exact bytes in image_path; its image_id shows them as ``\\xNN`` escapes (see ``_image_id``).
    Files whose extension is not one of IMAGE_EXTENSIONS (a .heic, a .txt) are left out with a warning naming them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError([Problem(str(folder), "folder not found")], folder)
    root = folder.resolve()
    rows, skipped = [], []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(is_ignored_file(part) for part in rel.parts) or not path.is_file():
            continue
        if is_image_file(path):
            rows.append((_image_id(rel), str(path)))
        else:
            skipped.append(_image_id(rel))
    if skipped:
        _warn_skipped(folder, sorted(skipped))
    if not rows:
        raise DataError(
            [Problem(str(folder), f"no image files found (extensions {', '.join(IMAGE_EXTENSIONS)})")], folder
        )
    table = pd.DataFrame(sorted(rows), columns=list(EVAL_TABLE_COLUMNS))
    return table


def _image_id(rel: Path) -> str:
    """``rel`` as the output tables write it: UTF-8 text, whatever bytes the file system holds.

    A byte that is not UTF-8 comes from the OS as a lone surrogate, which no UTF-8 writer accepts, so
    the CSVs would fail after the whole prediction. It is written as ``\\xNN`` (the byte, readable and
    distinct) and named in a warning, before any work.
    """
    name = rel.as_posix()
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        logger.warning(
            "image %s: its name is not valid UTF-8, so the outputs list it with \\xNN for the odd bytes", shown
        )
        return shown


def cache_decodes_every_image(cfg: Config) -> bool:
    """Whether filling the training cache decodes (or reuses a decoding of) every image of the table.

    Then it finds every undecodable file too, naming them all in one error before the run folder is
    made, and a decoding pass of its own during validation would only decode every image twice.
    With ``data.skip_bad`` validation must decode first, to drop the bad files before folds are made.
    """
    return cfg.cache.mode != "none" and not cfg.data.skip_bad


def load_train_table(cfg: Config, check_images: bool | None = None) -> pd.DataFrame:
    """The training image table as the config describes it (layout, validation, relabel, age thresholds).

    ``check_images`` (default: ``data.check_images``, unless the cache will decode every image anyway)
    decodes every image during validation.
    """
    if check_images is None:
        check_images = cfg.data.check_images and not cache_decodes_every_image(cfg)
    if cfg.data.root is None:
        raise ConfigError("data.root is not set: pass data.root=DIR (the folder holding train/)")
    train_dir = Path(cfg.data.root) / "train"
    relabel_path = resolve_relabel(cfg.data.relabel)
    relabel = read_relabel(relabel_path) if relabel_path is not None else None
    return train_table(
        train_dir,
        thresholds=cfg.data.age.thresholds(),
        relabel=relabel,
        skip_bad=cfg.data.skip_bad,
        check_images=check_images,
    )
