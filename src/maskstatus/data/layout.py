"""The competition folder layout -> tables with one row per image.

Train: ``train/train.csv`` (id, gender, race, age, path) and
``train/images/<path>/{mask1..mask5,incorrect_mask,normal}.<ext>``.
Eval: ``eval/info.csv`` (ImageID, ans) and ``eval/images/<ImageID>``.

This module knows where files are; ``validate`` checks them and ``relabel``
fixes known label errors. ``train_table`` runs all three, ``eval_table`` the first two.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from ..labels import DEFAULT_AGE_THRESHOLDS, GENDER_TO_CODE, IMAGE_STEMS, STEM_TO_MASK, AgeThresholds, age_group, encode
from .images import is_image_file

if TYPE_CHECKING:
    from .validate import Problem

logger = logging.getLogger(__name__)

TRAIN_CSV = "train.csv"
EVAL_CSV = "info.csv"
IMAGES_DIR = "images"

TRAIN_COLUMNS: tuple[str, ...] = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS: tuple[str, ...] = ("ImageID", "ans")

# The columns of the tables this module returns, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "person_id", "image_path", "stem", "gender", "age", "race", "mask", "age_group", "label",
)
EVAL_TABLE_COLUMNS: tuple[str, ...] = ("image_id", "image_path")

# Files operating systems drop into folders; never data.
_SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})


def is_ignored_file(name: str) -> bool:
    """Hidden files (.DS_Store, AppleDouble ``._x.jpg``) and OS thumbnails are not data."""
    return name.startswith(".") or name.lower() in _SYSTEM_FILES


def read_csv_strings(csv_path: str | Path, keep_spaces: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV with every cell as a stripped string and nothing turned into NaN.

    Keeps ids such as "000001" and "001498-1" exactly as written. Cells of the columns in
    ``keep_spaces`` keep their spaces: a folder name may begin or end with one.
    Raises pandas' errors (EmptyDataError, ParserError) and UnicodeDecodeError.
    """
    # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark.
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    df.columns = [str(c).strip() for c in df.columns]
    return df.apply(lambda col: col if col.name in keep_spaces else col.str.strip())


def read_train_csv(csv_path: str | Path) -> pd.DataFrame:
    """Read and check ``train.csv``: columns TRAIN_COLUMNS, ids and path as strings, age as int.

    Gender is lower-cased. Raises DataError listing every problem (wrong columns,
    duplicate ids, unknown gender, bad ages).
    """
    from .validate import DataError, check_train_rows  # validate builds on this module

    rows, problems = check_train_rows(Path(csv_path))
    if problems:
        raise DataError(problems, csv_path)
    return rows.drop(columns="line").reset_index(drop=True)


def scan_person_dir(person_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Files of one person folder -> ({stem: [files]}, [files that are not expected images]).

    Stems and extensions match whatever their case; stems come out in IMAGE_STEMS
    order, lower-cased; files of a stem are sorted by name. Hidden files are skipped.
    """
    found: dict[str, list[Path]] = {}
    unexpected: list[Path] = []
    for entry in sorted(Path(person_dir).iterdir()):
        if is_ignored_file(entry.name) or not entry.is_file():
            continue
        stem = entry.stem.lower()
        if stem in STEM_TO_MASK and is_image_file(entry):
            found.setdefault(stem, []).append(entry)
        else:
            unexpected.append(entry)
    return {stem: found[stem] for stem in IMAGE_STEMS if stem in found}, unexpected


def find_person_images(person_dir: str | Path) -> dict[str, Path]:
    """The images of one person folder by stem (e.g. ``{"mask1": .../mask1.jpeg}``).

    Matches on the stem whatever the extension. Missing stems are simply absent;
    two files with one stem raise ValueError naming them.
    """
    found, _ = scan_person_dir(Path(person_dir))
    for stem, files in found.items():
        if len(files) > 1:
            names = ", ".join(f.name for f in files)
            raise ValueError(f"{person_dir}: {len(files)} images for {stem!r}: {names}")
    return {stem: files[0] for stem, files in found.items()}


def _raise_or_warn(problems: Sequence["Problem"], where: Path, skip_bad: bool, rows: int) -> None:
    from .validate import DataError, format_problems

    if rows == 0 or (problems and not skip_bad):
        # Even with skip_bad an empty table is useless; say why now instead of failing later.
        raise DataError(problems, where, note="no usable images left" if skip_bad else None)
    if problems:
        logger.warning("leaving out bad items (skip_bad): %s", format_problems(problems, where))


def train_table(
    train_dir: str | Path,
    thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS,
    relabel: "pd.DataFrame | str | Path | None" = None,
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
    from .relabel import apply_relabel, read_relabel, resolve_relabel
    from .validate import validate_train

    train_dir = Path(train_dir)
    images, problems = validate_train(train_dir, check_images=check_images)
    _raise_or_warn(problems, train_dir, skip_bad, len(images))

    images["mask"] = images["stem"].map(STEM_TO_MASK).astype("int64")
    if isinstance(relabel, (str, Path)):
        relabel = read_relabel(resolve_relabel(str(relabel)))
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
    from .validate import validate_eval

    eval_dir = Path(eval_dir)
    table, problems = validate_eval(eval_dir, check_images=check_images)
    _raise_or_warn(problems, eval_dir, skip_bad, len(table))
    return table[list(EVAL_TABLE_COLUMNS)].reset_index(drop=True)


def folder_table(folder: str | Path) -> pd.DataFrame:
    """Every image under ``folder`` (recursive, hidden files skipped) for prediction.

    Columns image_id (path relative to folder, posix) and image_path (absolute),
    sorted by image_id. Images are not decoded here.
    """
    from .validate import DataError, Problem

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError([Problem(str(folder), "folder not found")], folder)
    root = folder.resolve()
    rows = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if any(is_ignored_file(part) for part in rel.parts) or not is_image_file(path) or not path.is_file():
            continue
        rows.append((rel.as_posix(), str(path)))
    if not rows:
        raise DataError([Problem(str(folder), "no image files found")], folder)
    table = pd.DataFrame(sorted(rows), columns=list(EVAL_TABLE_COLUMNS))
    return table
