"""The competition folder layout: where the files are and how to read them, with no checks.

Train: ``train/train.csv`` (id, gender, race, age, path) and
``train/images/<path>/{mask1..mask5,incorrect_mask,normal}.<ext>``.
Eval: ``eval/info.csv`` (ImageID, ans) and ``eval/images/<ImageID>``.

This module knows where files are; ``validate`` checks them, ``relabel`` fixes
known label errors, and ``tables`` builds the checked image tables from all three.
It imports none of them, so they can all build on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..labels import IMAGE_STEMS, STEM_TO_MASK
from .images import is_image_file

TRAIN_CSV = "train.csv"
EVAL_CSV = "info.csv"
IMAGES_DIR = "images"

TRAIN_COLUMNS: tuple[str, ...] = ("id", "gender", "race", "age", "path")
EVAL_COLUMNS: tuple[str, ...] = ("ImageID", "ans")

# The columns of the image tables ``tables`` builds, in order.
TABLE_COLUMNS: tuple[str, ...] = (
    "person_id",
    "image_path",
    "stem",
    "gender",
    "age",
    "race",
    "mask",
    "age_group",
    "label",
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


def scan_person_dir(person_dir: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    """Files of one person folder -> ({stem: [files]}, [files that are not expected images]).

    Stems and extensions match whatever their case; stems come out in IMAGE_STEMS
    order, lower-cased; files of a stem are sorted by name. Hidden files and subfolders are skipped;
    a symbolic link that cannot be followed (a loop, a missing target) counts as unexpected.
    """
    found: dict[str, list[Path]] = {}
    unexpected: list[Path] = []
    for entry in sorted(Path(person_dir).iterdir()):
        if is_ignored_file(entry.name):
            continue
        if not entry.is_file():  # is_file() is False, not an error, for a link that loops
            if entry.is_symlink() and not entry.exists():
                unexpected.append(entry)
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
