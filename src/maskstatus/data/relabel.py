"""Fix known label errors on load with a small CSV: ``id,field,value``.

Fields:
  gender     male / female
  age        whole years
  mask_swap  ``incorrect_mask<->normal`` (or 1 / true / yes): the person's
             incorrect_mask and normal photos were taken the wrong way round,
             so their mask labels swap.

Blank lines and lines starting with ``#`` are skipped. ``relabel: competition``
in a config picks the shipped public fixes (configs/relabel/competition.csv).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pandas as pd

from ..errors import MaskstatusError
from ..labels import GENDER_TO_CODE, STEM_TO_MASK
from .validate import MAX_AGE, MIN_AGE

logger = logging.getLogger(__name__)

RELABEL_COLUMNS: tuple[str, ...] = ("id", "field", "value")
FIELDS: tuple[str, ...] = ("gender", "age", "mask_swap")

# The two photos a mask_swap exchanges.
SWAP_STEMS: tuple[str, str] = ("incorrect_mask", "normal")
SWAP_VALUE = f"{SWAP_STEMS[0]}<->{SWAP_STEMS[1]}"
_SWAP_SPELLINGS = frozenset({SWAP_VALUE, f"{SWAP_STEMS[1]}<->{SWAP_STEMS[0]}", "1", "true", "yes"})

# The package's configs/: a link to the repository's configs/ in a checkout, a copy of it in the wheel.
COMPETITION_RELABEL: Path = Path(__file__).resolve().parents[1] / "configs" / "relabel" / "competition.csv"


class RelabelError(MaskstatusError, ValueError):
    """A relabel file is missing or invalid; the message names the file and line."""


def parse_value(field: str, value: object) -> str | int:
    """Check one relabel value; returns the normalised value or raises ValueError with the reason."""
    text = str(value).strip()
    if field == "gender":
        gender = text.lower()
        if gender not in GENDER_TO_CODE:
            raise ValueError(f"gender value {text!r} is not one of {list(GENDER_TO_CODE)}")
        return gender
    if field == "age":
        try:
            age = int(text)
        except ValueError:
            raise ValueError(f"age value {text!r} is not a whole number of years") from None
        if age < 0:
            raise ValueError(f"age value {age} is negative")
        if not MIN_AGE <= age <= MAX_AGE:
            raise ValueError(f"age value {age} is outside {MIN_AGE}..{MAX_AGE} years")
        return age
    if field == "mask_swap":
        if text.lower().replace(" ", "") not in _SWAP_SPELLINGS:
            raise ValueError(f"mask_swap value {text!r} must be {SWAP_VALUE!r} (or 1/true/yes)")
        return SWAP_VALUE
    raise ValueError(f"unknown field {field!r}; fields are {list(FIELDS)}")


def read_relabel(path: str | Path) -> pd.DataFrame:
    """Read and check a relabel CSV -> columns id, field, value (normalised strings), line.

    Raises RelabelError listing every bad line (unknown field, bad value, empty
    id, an id and field given twice). Ids are not checked against any data here.
    """
    path = Path(path)
    if not path.is_file():
        raise RelabelError(f"relabel file not found: {path}")
    errors: list[str] = []
    rows: list[tuple[str, str, str, int]] = []
    seen: dict[tuple[str, str], int] = {}
    header: list[str] | None = None
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        for cells in reader:
            line = reader.line_num
            cells = [c.strip() for c in cells]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if header is None:
                header = [c.lower() for c in cells]
                if tuple(header) != RELABEL_COLUMNS:
                    expected, got = ",".join(RELABEL_COLUMNS), ",".join(cells)
                    raise RelabelError(f"relabel file {path} line {line}: header must be {expected}, got {got}")
                continue
            if len(cells) != len(RELABEL_COLUMNS):
                errors.append(f"line {line}: expected 3 values (id,field,value), got {len(cells)}")
                continue
            pid, field, value = cells
            field = field.lower()
            if not pid:
                errors.append(f"line {line}: empty id")
                continue
            try:
                parsed = parse_value(field, value)
            except ValueError as exc:
                errors.append(f"line {line}: {exc}")
                continue
            if (pid, field) in seen:
                errors.append(f"line {line}: id {pid!r} field {field!r} already given on line {seen[pid, field]}")
                continue
            seen[pid, field] = line
            rows.append((pid, field, str(parsed), line))
    if header is None:
        raise RelabelError(f"relabel file {path} is empty: expected the header {','.join(RELABEL_COLUMNS)}")
    if errors:
        raise RelabelError(f"relabel file {path} has {len(errors)} error(s):\n" + "\n".join(f"  {e}" for e in errors))
    table = pd.DataFrame(rows, columns=[*RELABEL_COLUMNS, "line"])
    table["line"] = table["line"].astype("int64")
    return table


def resolve_relabel(value: str | None) -> Path | None:
    """Config value -> relabel file: None or '' -> None, 'competition' -> the shipped fixes, else an existing path."""
    if value is None or not str(value).strip():
        return None
    if str(value).strip() == "competition":
        path = COMPETITION_RELABEL
        if not path.is_file():
            raise RelabelError(
                f"the shipped relabel file is missing: {path} (it lives in the repository's configs/; "
                f"install the package editable, or pass the file's path instead of 'competition')"
            )
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise RelabelError(f"relabel file not found: {path} (give a CSV path or 'competition')")
    return path


def apply_relabel(table: pd.DataFrame, relabel: pd.DataFrame, id_column: str = "person_id") -> pd.DataFrame:
    """Return a copy of ``table`` with the relabel rows applied.

    ``table`` is a person table or an image table before codes are computed:
    ``gender`` holds names (or codes; the same kind is written back), ``age``
    years. mask_swap needs the per-image columns ``stem`` and ``mask`` and is
    skipped on a person table. Ids not in the table are logged and ignored.
    """
    if "age_group" in table.columns or "label" in table.columns:
        raise ValueError(
            "apply_relabel must run before age_group/label are computed; pass relabel= to train_table instead"
        )
    missing = [c for c in RELABEL_COLUMNS if c not in relabel.columns]
    if missing:
        raise ValueError(f"relabel table lacks column(s) {missing}; expected {list(RELABEL_COLUMNS)}")

    out = table.copy()
    ids = out[id_column].astype(str)
    present = set(ids)
    unknown = sorted({str(i) for i in relabel["id"]} - present)
    if unknown:
        logger.warning("relabel: %d id(s) not in the data, ignored: %s", len(unknown), ", ".join(unknown))

    gender_as_code = pd.api.types.is_integer_dtype(out["gender"]) if "gender" in out.columns else False
    can_swap = "stem" in out.columns and "mask" in out.columns
    changed: set[str] = set()
    applied = 0
    for row in relabel.itertuples(index=False):
        pid, field = str(row.id), str(row.field).strip().lower()
        value = parse_value(field, row.value)
        if pid not in present:
            continue
        rows = ids == pid
        if field == "gender":
            out.loc[rows, "gender"] = GENDER_TO_CODE[str(value)] if gender_as_code else value
        elif field == "age":
            out.loc[rows, "age"] = value
        elif can_swap:
            first, second = SWAP_STEMS
            out.loc[rows & (out["stem"] == first), "mask"] = STEM_TO_MASK[second]
            out.loc[rows & (out["stem"] == second), "mask"] = STEM_TO_MASK[first]
        else:
            logger.debug("relabel: mask_swap for %s skipped, the table has no stem/mask columns", pid)
            continue
        changed.add(pid)
        applied += 1
    logger.info("relabel: %d fix(es) applied to %d person(s)", applied, len(changed))
    return out
