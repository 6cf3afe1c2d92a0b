"""The review's decisions: one JSON file in the review folder, written whole and atomically at every decision,
and the relabel CSV exported from it.

Two tabs (or two servers) on one review never lose each other's work: every write re-reads the file under a
lock and changes only its own (person, task) item (merge on write). Each item carries a revision; a write
names the revision it was decided on, and a write on an item that another tab changed since is refused
(``StaleDecision``, HTTP 409): the reviewer sees the other decision instead of silently replacing it.

An undone decision stays in the file as ``pending`` with its revision, so a revision never repeats and a tab
that saw the undone decision cannot mistake a newer one for it.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..data.relabel import RELABEL_COLUMNS, SWAP_VALUE, parse_value, read_relabel
from ..errors import MaskstatusError
from ..runs import CV_CONFIG, atomic_write_text
from .suspects import REVIEW_TASKS, Review, decision_key

FORMAT = "maskstatus-review-decisions"
Action = Literal["accept", "keep", "set", "skip", "pending"]
# Decisions that change a label (a relabel row, unless the value is the given one).
CHANGES: tuple[str, ...] = ("accept", "set")
# Decisions that close an item; skip and pending leave it to do.
DONE: tuple[str, ...] = ("accept", "keep", "set")


class ReviewError(MaskstatusError, ValueError):
    """A decisions file that cannot be used as it is; the message names the file and what to do."""


class StaleDecision(MaskstatusError):
    """A write decided on an older revision of an item another tab has changed since."""

    def __init__(self, key: str, current: Decision | None, base_rev: int) -> None:
        self.key, self.current = key, current
        now = f"{current.action} {current.value or ''}".strip() if current else "nothing"
        super().__init__(
            f"{key} was changed in another tab (now: {now}, revision {current.rev if current else 0}; this page "
            f"had revision {base_rev}): nothing saved; the page shows the other decision, decide again if need be"
        )


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    person_id: str = Field(min_length=1, description="the person's id in the data")
    task: Literal["gender", "age", "mask_swap"] = Field(description="the suspect's task, also its relabel field")
    action: Action = Field(description="accept the suggestion, keep the given label, set a value, skip, or pending")
    value: str | None = Field(None, description="the relabel value of accept and set (gender, years, the swap)")
    rev: int = Field(ge=1, description="the item's revision: one more at each write")
    at: str = Field(description="when it was decided, UTC ISO 8601")

    @model_validator(mode="after")
    def _value_fits(self) -> Decision:
        if self.action in CHANGES:
            if self.value is None:
                raise ValueError(f"{self.action} needs a value")
            normal = str(parse_value(self.task, self.value))  # ValueError names the field and the value
            if normal != self.value:
                raise ValueError(f"value {self.value!r} is not written as {normal!r}")
        elif self.value is not None:
            raise ValueError(f"{self.action} takes no value, got {self.value!r}")
        return self

    @property
    def key(self) -> str:
        return decision_key(self.person_id, self.task)


class DecisionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["maskstatus-review-decisions"] = Field(description="what this file is")
    cv: str = Field(description="the CV folder reviewed")
    decisions: list[Decision] = Field(description="one entry per (person, task), sorted by person and task")


def normalise_value(task: str, value: object) -> str:
    """A value typed or sent by the page in relabel terms; ValueError naming what is wrong."""
    return str(parse_value(task, value))


class DecisionStore:
    """The decisions of one review, in ``path``; every method reads the file, so other writers' items are seen."""

    def __init__(self, path: Path, cv_dir: Path, people: set[str] | None = None) -> None:
        self.path, self.cv_dir, self.people = Path(path), Path(cv_dir), people
        self._lock = threading.Lock()
        self.read()  # a broken file is refused when the review opens, not at the first decision

    def read(self) -> dict[str, Decision]:
        if not self.path.is_file():
            return {}
        hint = "fix it, or move it away to start the review afresh"
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ReviewError(f"decisions file {self.path} is not JSON ({err}): {hint}") from None
        try:
            file = DecisionFile.model_validate(raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ReviewError(
                f"decisions file {self.path} is not a review's decisions ({err.error_count()} problem(s); "
                f"{where}: {first['msg']}): {hint}"
            ) from None
        out: dict[str, Decision] = {}
        for d in file.decisions:
            if d.key in out:
                raise ReviewError(f"decisions file {self.path} holds {d.key} twice: {hint}")
            if self.people is not None and d.person_id not in self.people:
                raise ReviewError(
                    f"decisions file {self.path} decides on person {d.person_id!r}, who is not in this CV's "
                    f"out-of-fold table (a review of other data?): {hint}"
                )
            out[d.key] = d
        return out

    def put(self, person_id: str, task: str, action: str, value: str | None, base_rev: int) -> Decision:
        """Save one decision decided on revision ``base_rev`` of its item (0: never decided); StaleDecision when
        the item is at another revision now. Returns the saved decision."""
        if task not in REVIEW_TASKS:
            raise ValueError(f"unknown task {task!r}; tasks are {list(REVIEW_TASKS)}")
        if self.people is not None and person_id not in self.people:
            raise ValueError(f"person {person_id!r} is not in this review")
        key = decision_key(person_id, task)
        with self._locked():
            decisions = self.read()
            current = decisions.get(key)
            rev = current.rev if current else 0
            if rev != base_rev:
                raise StaleDecision(key, current, base_rev)
            decision = Decision(
                person_id=person_id,
                task=task,
                action=action,
                value=value,
                rev=rev + 1,
                at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            decisions[key] = decision
            self._write(decisions)
        return decision

    def _write(self, decisions: dict[str, Decision]) -> None:
        ordered = [decisions[k] for k in sorted(decisions)]
        file = DecisionFile(format=FORMAT, cv=str(self.cv_dir), decisions=ordered)
        atomic_write_text(self.path, json.dumps(file.model_dump(), indent=1) + "\n")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's tabs queue on a thread lock; other processes on the same review on a file lock."""
        # filelock, as the CV pool lock (runs.pool_lock): it locks on every platform, fcntl on POSIX only.
        from filelock import FileLock

        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(self.path.with_name(f".{self.path.name}.lock")):
                yield


@dataclass(frozen=True)
class Export:
    path: Path
    rows: int  # relabel rows written, the CV's own relabel rows included
    new: int  # rows this review adds or changes
    kept_from: Path | None  # the CV's relabel file whose rows it carries on


def export_relabel(review: Review, decisions: dict[str, Decision], path: Path) -> Export:
    """Write the relabel CSV ``data.relabel`` reads: the CV's own relabel rows with the review's changes on top.

    The CV trained on its labels after its relabel file, and the review judged those, so the new file carries
    that file's rows on; an accepted or set value replaces a row of the same person and field, and an accepted
    swap of a person the old file already swapped removes that row (swapping back). Kept labels, skips and
    values equal to the given label leave no row. Checked by reading it back with ``read_relabel``.
    """
    rows: dict[tuple[str, str], str] = {}
    if review.relabel is not None:
        old = read_relabel(review.relabel)
        rows = {(str(r.id), str(r.field)): str(r.value) for r in old.itertuples(index=False)}
    new = 0
    for d in sorted(decisions.values(), key=lambda d: d.key):
        if d.action not in CHANGES or d.value is None:
            continue
        person = review.people.get(d.person_id)
        if person is None:
            continue
        if d.task == "mask_swap":
            if rows.pop((d.person_id, d.task), None) is None:
                rows[(d.person_id, d.task)] = SWAP_VALUE
        elif d.value != person.given(d.task):
            rows[(d.person_id, d.task)] = d.value
        else:
            continue
        new += 1
    buf = io.StringIO()
    buf.write(f"# written by maskstatus review from {review.cv_dir}")
    if review.relabel is not None:
        buf.write(f", on top of the CV's relabel file {review.relabel}")
    buf.write("\n" + ",".join(RELABEL_COLUMNS) + "\n")
    for (pid, field), value in sorted(rows.items()):
        buf.write(f"{_csv_cell(pid)},{field},{value}\n")
    atomic_write_text(path, buf.getvalue())
    read_relabel(path)
    return Export(Path(path), len(rows), new, review.relabel)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text


def next_command(review: Review, relabel: Path) -> str:
    """The command that trains the same CV again on the fixed labels."""
    return f"maskstatus cv --config {review.cv_dir / CV_CONFIG} data.relabel={relabel}"
