"""Every check on the competition folders -> a list of problems (file, reason).

The checks never stop at the first problem: a user fixing a data set wants the
whole list at once. ``DataError`` renders the list as one message; with
``skip_bad`` the callers in ``tables`` log it instead and leave the bad items out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import Problem
from ..labels import DEFAULT_AGE_THRESHOLDS, GENDER_TO_CODE, IMAGE_STEMS, STEM_TO_MASK, AgeThresholds, class_names
from .images import IMAGE_EXTENSIONS, ImageError, load_rgb
from .layout import (
    EVAL_COLUMNS,
    EVAL_CSV,
    EVAL_TABLE_COLUMNS,
    IMAGES_DIR,
    TRAIN_COLUMNS,
    TRAIN_CSV,
    is_ignored_file,
    read_csv_strings,
    scan_person_dir,
)

logger = logging.getLogger(__name__)

# Plausible ages in years: beyond them a value is a typo or a placeholder (e.g. 200, 0), not a person's age.
MIN_AGE, MAX_AGE = 1, 120

# Columns of the checked, not yet encoded, train image table (gender as a name).
CHECKED_COLUMNS: tuple[str, ...] = ("person_id", "image_path", "stem", "gender", "age", "race")


# ---------------------------------------------------------------- CSV files


def _read_checked_csv(
    csv_path: Path,
    expected: Sequence[str],
    required: Sequence[str],
    problems: list[Problem],
    keep_spaces: Sequence[str] = (),
) -> pd.DataFrame | None:
    """Read a CSV as strings and check its columns; None when it cannot be used at all.

    Adds a ``line`` column (the header is line 1) so row problems can point at the file line.
    """
    where = str(csv_path)
    if not csv_path.is_file():
        problems.append(Problem(where, "file not found"))
        return None
    try:
        df = read_csv_strings(csv_path, keep_spaces)
    except pd.errors.EmptyDataError:
        problems.append(Problem(where, "empty file: no header and no rows"))
        return None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        problems.append(Problem(where, f"cannot parse CSV: {exc}"))
        return None

    missing = [c for c in expected if c not in df.columns]
    unexpected = [c for c in df.columns if c not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if unexpected:
            parts.append(f"unexpected column(s) {unexpected}")
        problems.append(Problem(where, f"wrong columns: {'; '.join(parts)}; expected {list(expected)}"))
    if any(c not in df.columns for c in required):
        return None
    if df.empty:
        problems.append(Problem(where, "no rows below the header"))
        return None
    df = df[[c for c in expected if c in df.columns]].copy()
    df["line"] = np.arange(len(df), dtype=np.int64) + 2
    return df


def _parse_age(text: str) -> int | None:
    """Whole years, tolerating '45.0' (a column once saved as float); None if not a whole number."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _duplicates(values: pd.Series, lines: pd.Series) -> dict[int, str]:
    """Row position -> 'lines a, b' for every row whose value appears more than once."""
    out: dict[int, str] = {}
    dup = values.duplicated(keep=False) & (values != "")
    for _, group in lines[dup].groupby(values[dup], sort=False):
        text = ", ".join(str(x) for x in group)
        for pos in group.index:
            out[pos] = text
    return out


def check_train_rows(csv_path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """Check ``train.csv`` row by row.

    Returns (good rows with columns TRAIN_COLUMNS + line, age as int, gender
    lower-cased, problems). A bad row is left out whole: its person is unusable.
    Duplicate ids (and two rows sharing one folder) leave out every row involved,
    since no row can be trusted over the other.
    """
    csv_path = Path(csv_path)
    problems: list[Problem] = []
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in TRAIN_COLUMNS}).assign(line=pd.Series(dtype="int64"))
    # The folder name as written: " 000001_female_Asian_45" may be a real folder (see validate_train).
    df = _read_checked_csv(csv_path, TRAIN_COLUMNS, TRAIN_COLUMNS, problems, keep_spaces=("path",))
    if df is None:
        return empty, problems

    df = df.reset_index(drop=True)
    df["gender"] = df["gender"].str.lower()
    dup_ids = _duplicates(df["id"], df["line"])
    dup_paths = _duplicates(df["path"], df["line"])
    ages: list[int | None] = []
    keep: list[bool] = []
    for pos, row in enumerate(df.itertuples(index=False)):
        where = f"{csv_path}:{row.line}"
        reasons = []
        if not row.id:
            reasons.append("empty id")
        elif pos in dup_ids:
            reasons.append(f"duplicate id {row.id!r} (lines {dup_ids[pos]})")
        if row.gender not in GENDER_TO_CODE:
            reasons.append(f"gender {row.gender!r} is not one of {list(GENDER_TO_CODE)}")
        # every cell is a string (read_csv_strings); the row tuple's attributes are not typed
        age_text, path = str(row.age), str(row.path)
        age = _parse_age(age_text)
        if age is None:
            reasons.append(f"age {row.age!r} is not a whole number of years")
        elif age < 0:
            reasons.append(f"age {age} is negative")
        elif not MIN_AGE <= age <= MAX_AGE:
            reasons.append(f"age {age} is outside {MIN_AGE}..{MAX_AGE} years")
        if not path.strip():
            reasons.append("empty path")
        elif path.strip() in (".", "..") or "/" in path or "\\" in path:
            reasons.append(f"path {path!r} must be a single folder name inside {IMAGES_DIR}/")
        elif pos in dup_paths:
            reasons.append(f"folder {path!r} is listed twice (lines {dup_paths[pos]})")
        problems.extend(Problem(where, r) for r in reasons)
        ages.append(age)
        keep.append(not reasons)

    df["age"] = pd.Series(ages, dtype=object)
    good = df[keep].copy()
    good["age"] = good["age"].astype("int64")
    return good.reset_index(drop=True), problems


# ------------------------------------------------------------------- images


def _decode_problem(path: str) -> str | None:
    try:
        load_rgb(path)
    except ImageError as exc:
        return exc.reason
    return None


def check_image_files(paths: Iterable[str], workers: int | None = None) -> dict[str, str]:
    """Decode every image fully; {path: reason} for those that fail, in input order.

    Threads are enough: PIL releases the GIL while decoding, and tens of
    thousands of small files would otherwise take minutes.
    """
    paths = list(paths)
    bad: dict[str, str] = {}
    if not paths:
        return bad
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_decode_problem, paths)
        # disable=None: the bar shows on a terminal and stays quiet in logs and tests.
        for path, reason in tqdm(
            zip(paths, results, strict=True),
            total=len(paths),
            desc="decoding images",
            unit="img",
            disable=None,
            leave=False,
        ):
            if reason is not None:
                bad[path] = reason
    return bad


def broken_link_reason(path: Path) -> str | None:
    """Why ``path`` is a symbolic link that cannot be followed (a loop, a missing target), else None."""
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        return f"a symbolic link that cannot be followed ({exc.strerror or exc})"
    return None


def _unexpected_file_reason(path: Path) -> str:
    broken = broken_link_reason(path)
    if broken:
        return broken
    if path.stem.lower() in STEM_TO_MASK:
        return f"not an image file: extension {path.suffix!r} is not one of {list(IMAGE_EXTENSIONS)}"
    return f"unexpected file: {path.stem!r} is not one of the image names {list(IMAGE_STEMS)}"


def _empty_checked() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in CHECKED_COLUMNS})


def validate_train(train_dir: str | Path, check_images: bool = True) -> tuple[pd.DataFrame, list[Problem]]:
    """Check a train folder; return (usable images, problems).

    The table has columns CHECKED_COLUMNS (gender still a name, image_path
    absolute) and leaves out every bad item: a bad CSV row drops its person, a
    missing, duplicated or undecodable image drops that image. Unknown files in
    a person folder are reported but drop nothing.
    """
    train_dir = Path(train_dir)
    if not train_dir.is_dir():
        return _empty_checked(), [Problem(str(train_dir), "train folder not found")]
    csv_path = train_dir / TRAIN_CSV
    images_dir = train_dir / IMAGES_DIR
    problems: list[Problem] = []
    if not images_dir.is_dir():
        problems.append(Problem(str(images_dir), "images folder not found"))
    rows, row_problems = check_train_rows(csv_path)
    problems.extend(row_problems)
    if not images_dir.is_dir() or rows.empty:
        return _empty_checked(), problems

    images_root = images_dir.resolve()
    records = []
    for row in rows.itertuples(index=False):
        folder = str(row.path)  # a string cell (read_csv_strings)
        person_dir = images_root / folder
        if not person_dir.is_dir() and (images_root / folder.strip()).is_dir():
            # Spaces around a folder name are kept (a real folder may have them) unless only the
            # stripped name exists: a CSV written with a space after each comma.
            person_dir = images_root / folder.strip()
        where = f"id {row.id!r}, {TRAIN_CSV} line {row.line}"
        if not person_dir.is_dir():
            reason = broken_link_reason(person_dir) or "person folder not found"
            problems.append(Problem(str(person_dir), f"{reason} ({where})"))
            continue
        try:
            found, unexpected = scan_person_dir(person_dir)
        except OSError as exc:  # unreadable (permissions), or gone while checking
            problems.append(Problem(str(person_dir), f"cannot list the person folder: {exc.strerror or exc} ({where})"))
            continue
        problems.extend(Problem(str(f), _unexpected_file_reason(f)) for f in unexpected)
        for stem in IMAGE_STEMS:
            files = found.get(stem, [])
            if not files:
                exts = ", ".join(IMAGE_EXTENSIONS)
                problems.append(Problem(str(person_dir / stem), f"missing image {stem!r} (no {stem} file with {exts})"))
            elif len(files) > 1:
                names = ", ".join(f.name for f in files)
                problems.append(Problem(str(person_dir / stem), f"{len(files)} files for image {stem!r}: {names}"))
            else:
                records.append((row.id, str(files[0]), stem, row.gender, row.age, row.race))

    if not row_problems:
        # Strays are only a warning: a folder nobody lists cannot mislabel anything. With
        # rejected rows their folders would look unlisted too, so only a clean CSV is compared.
        listed = set(rows["path"]) | set(rows["path"].str.strip())
        # Path.is_dir, not DirEntry.is_dir: only the former answers False for a symbolic link that loops.
        strays = sorted(
            e.name
            for e in os.scandir(images_root)
            if Path(e.path).is_dir() and not is_ignored_file(e.name) and e.name not in listed
        )
        if strays:
            logger.warning(
                "%d folder(s) in %s are not listed in %s and are ignored, e.g. %s",
                len(strays),
                images_dir,
                TRAIN_CSV,
                ", ".join(strays[:5]),
            )

    if check_images:
        bad = check_image_files(r[1] for r in records)
        problems.extend(Problem(path, reason) for path, reason in bad.items())
        records = [r for r in records if r[1] not in bad]

    table = pd.DataFrame(records, columns=list(CHECKED_COLUMNS)) if records else _empty_checked()
    return table, problems


def validate_eval(eval_dir: str | Path, check_images: bool = True) -> tuple[pd.DataFrame, list[Problem]]:
    """Check an eval folder; return (usable rows with image_id and absolute image_path in info.csv order, problems).

    Of duplicated ImageIDs the first row is kept (they name the same file);
    rows with a missing or undecodable image are left out.
    """
    eval_dir = Path(eval_dir)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in EVAL_TABLE_COLUMNS})
    if not eval_dir.is_dir():
        return empty, [Problem(str(eval_dir), "eval folder not found")]
    csv_path = eval_dir / EVAL_CSV
    images_dir = eval_dir / IMAGES_DIR
    problems: list[Problem] = []
    if not images_dir.is_dir():
        problems.append(Problem(str(images_dir), "images folder not found"))
    # Only ImageID is needed to predict; a missing ans column is reported but not fatal.
    df = _read_checked_csv(csv_path, EVAL_COLUMNS, ("ImageID",), problems)
    if df is None or not images_dir.is_dir():
        return empty, problems

    images_root = images_dir.resolve()
    first_line: dict[str, int] = {}
    records = []
    for image_id, line in zip(df["ImageID"].tolist(), df["line"].tolist(), strict=True):
        where = f"{csv_path}:{line}"
        if not image_id:
            problems.append(Problem(where, "empty ImageID"))
            continue
        if image_id in first_line:
            problems.append(Problem(where, f"duplicate ImageID {image_id!r} (first on line {first_line[image_id]})"))
            continue
        first_line[image_id] = line
        rel = Path(image_id)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(Problem(where, f"ImageID {image_id!r} must be a file name inside {IMAGES_DIR}/"))
            continue
        path = images_root / rel
        if not path.is_file():
            reason = broken_link_reason(path) or "image file not found"
            problems.append(Problem(str(path), f"{reason} ({EVAL_CSV} line {line})"))
            continue
        records.append((image_id, str(path)))

    if check_images:
        bad = check_image_files(r[1] for r in records)
        problems.extend(Problem(path, reason) for path, reason in bad.items())
        records = [r for r in records if r[1] not in bad]

    table = pd.DataFrame(records, columns=list(EVAL_TABLE_COLUMNS)) if records else empty
    return table, problems


# ------------------------------------------------------------------ summary


def summarize(table: pd.DataFrame, thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS) -> pd.DataFrame:
    """Per-class counts of an image table (from ``train_table``), all 18 classes listed.

    Columns: class, mask, gender, age (names), people, images. The totals are in
    ``.attrs["people"]`` and ``.attrs["images"]`` (a person counts once in each class they appear in).
    """
    names = [name.split("/") for name in class_names(thresholds)]
    per_class = table.groupby("label").agg(people=("person_id", "nunique"), images=("image_path", "size"))
    per_class = per_class.reindex(range(len(names)), fill_value=0)
    summary = pd.DataFrame(
        {
            "class": np.arange(len(names)),
            "mask": [n[0] for n in names],
            "gender": [n[1] for n in names],
            "age": [n[2] for n in names],
            "people": per_class["people"].to_numpy(dtype=np.int64),
            "images": per_class["images"].to_numpy(dtype=np.int64),
        }
    )
    summary.attrs["people"] = int(table["person_id"].nunique())
    summary.attrs["images"] = int(len(table))
    return summary
