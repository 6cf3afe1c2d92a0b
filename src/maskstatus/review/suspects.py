"""What the review page shows: a CV's suspects (the label-error finder on its pooled out-of-fold table), each
suspect person's photos from the data root, their given labels and what the fold models believe.

Only a CV folder is reviewed: its ``oof.csv`` judges every person with a model that never saw them, so every
training person can be a suspect (a single run's OOF covers one fold only). The photos are looked up in the
CV's data folder by (person, photo stem), never by the paths written in the OOF, so a CV copied from another
machine reviews against the data here (``data_root``) as long as it holds the same people.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..age import AGE_MEAN
from ..config import Config, load_config
from ..data.relabel import SWAP_STEMS, SWAP_VALUE, resolve_relabel
from ..data.tables import train_table
from ..data.validate import MAX_AGE, MIN_AGE
from ..defaults import LABEL_ERRORS_MIN_SCORE, LABEL_ERRORS_TOP
from ..errors import ConfigError, DataError, RunError
from ..labels import (
    AGE_NAMES,
    GENDER_NAMES,
    IMAGE_STEMS,
    MASK_NAMES,
    PROB_COLUMNS,
    AgeThresholds,
    decode,
    split_class_probs,
)
from ..runs import CV_CONFIG, OOF, RunDir
from ..scoring.label_errors import TASK_NAMES, find_label_errors
from ..scoring.oof import read_oof

logger = logging.getLogger(__name__)

# The review's tasks are the finder's; each fix is a relabel row of the field with the task's name.
REVIEW_TASKS: tuple[str, ...] = TASK_NAMES


@dataclass(frozen=True)
class Photo:
    stem: str
    path: Path
    given_mask: str
    mask_probs: dict[str, float]  # what the fold model that never saw this person makes of this photo


@dataclass(frozen=True)
class Person:
    person_id: str
    gender: str  # the given labels, as the CV trained on them (after its relabel file, if any)
    age: int
    photos: tuple[Photo, ...]
    gender_probs: dict[str, float]  # mean over the person's photos
    age_probs: dict[str, float]
    years: float | None  # mean predicted age in years: only runs that predict years (model.age_output=years) have it

    def given(self, task: str) -> str:
        """The given label of ``task`` in relabel terms: the value a relabel row would replace."""
        if task == "gender":
            return self.gender
        if task == "age":
            return str(self.age)
        masks = {p.stem: p.given_mask for p in self.photos}
        return "/".join(masks.get(stem, "?") for stem in SWAP_STEMS)


@dataclass(frozen=True)
class Suspect:
    """One (person, task) the finder lists, with the relabel value accepting it would write (None: type one)."""

    person_id: str
    task: str
    given: str
    predicted: str
    score: float
    suggestion: str | None
    reason: str

    @property
    def key(self) -> str:
        return decision_key(self.person_id, self.task)


def decision_key(person_id: str, task: str) -> str:
    return f"{person_id}/{task}"


@dataclass
class Review:
    cv_dir: Path
    data_root: Path
    config: Config
    suspects: list[Suspect]
    people: dict[str, Person]  # every person of the OOF (a decision may name one the current filter leaves out)
    relabel: Path | None  # the relabel file the CV trained with: the export keeps its rows
    thresholds: AgeThresholds = field(default_factory=AgeThresholds)


def check_cv_folder(cv_dir: Path) -> Path:
    """The CV's oof.csv; RunError saying what the folder is instead (missing, a run, an unfinished CV)."""
    cv_dir = Path(cv_dir)
    if not cv_dir.is_dir():
        raise RunError(f"no such CV folder: {cv_dir}")
    if not (cv_dir / CV_CONFIG).is_file():
        if RunDir(cv_dir).config.is_file():
            raise RunError(
                f"{cv_dir} is a run folder, not a CV folder (no {CV_CONFIG}): a review needs every person judged "
                f"out of fold, which only a CV's pooled {OOF} does; train one with maskstatus cv --config ..."
            )
        raise RunError(f"{cv_dir} is not a CV folder (no {CV_CONFIG}); give the folder maskstatus cv wrote")
    oof = cv_dir / OOF
    if not oof.is_file():
        raise RunError(
            f"{cv_dir} has no out-of-fold table ({OOF}): the CV has not finished; continue it with "
            f"maskstatus cv --resume {cv_dir}"
        )
    return oof


def load_review(
    cv_dir: Path | str,
    data_root: Path | str | None = None,
    top: int = LABEL_ERRORS_TOP,
    min_score: float = LABEL_ERRORS_MIN_SCORE,
) -> Review:
    """Read a CV folder and its data into what the page shows; one clear error for each kind of bad input."""
    cv_dir = Path(cv_dir)
    oof_file = check_cv_folder(cv_dir)
    config = load_config(cv_dir / CV_CONFIG)
    root = Path(data_root) if data_root is not None else config.data.root
    if root is None:
        raise ConfigError(f"{cv_dir / CV_CONFIG} has no data.root: pass --data-root DIR (the folder holding train/)")
    if not (Path(root) / "train").is_dir():
        raise DataError.one(
            Path(root) / "train",
            "no train folder here: the CV's photos are not found (pass --data-root DIR if the data moved)",
        )
    oof = read_oof(cv_dir)
    thresholds = config.data.age.thresholds()
    relabel = resolve_relabel(config.data.relabel)
    table = train_table(Path(root) / "train", thresholds, relabel, skip_bad=config.data.skip_bad, check_images=False)
    _check_same_data(oof, table, oof_file, Path(root))
    suspects = _suspects(oof, table, thresholds, top, min_score)
    return Review(cv_dir, Path(root), config, suspects, _people(oof, table), relabel, thresholds)


def _check_same_data(oof: pd.DataFrame, table: pd.DataFrame, oof_file: Path, root: Path) -> None:
    """DataError when the OOF names photos the data lacks (another data set); a warning when labels differ."""
    known = set(zip(table["person_id"].astype(str), table["stem"].astype(str), strict=True))
    pairs = list(zip(oof["person_id"].astype(str), oof["stem"].astype(str).str.lower(), strict=True))
    missing = [p for p in pairs if p not in known]
    if missing:
        people = sorted({p for p, _ in missing})
        raise DataError.one(
            oof_file,
            f"out-of-fold predictions from other data: {len(missing)} of its {len(pairs)} photos ({len(people)} "
            f"people, e.g. person {people[0]!r} photo {missing[0][1]!r}) are not in {root / 'train'}; review the "
            "CV against the data it was trained on (--data-root DIR)",
        )
    labels = table.set_index(["person_id", "stem"])["label"]
    given = oof.set_index([oof["person_id"].astype(str), oof["stem"].astype(str).str.lower()])["label"]
    differ = int((labels.loc[given.index].to_numpy() != given.to_numpy()).sum())
    if differ:
        # The data or the CV's relabel file changed after the CV: the page shows the data's labels now.
        logger.warning(
            "%d photo label(s) in %s differ from the data's now: the data or its relabel file changed since the CV",
            differ,
            oof_file,
        )


def _suspects(
    oof: pd.DataFrame, table: pd.DataFrame, thresholds: AgeThresholds, top: int, min_score: float
) -> list[Suspect]:
    ranked = find_label_errors(oof, top=top, min_score=min_score)
    years = _mean_years(oof)
    ages = table.groupby("person_id")["age"].first()
    out = []
    for row in ranked.to_dict("records"):
        pid, task, given, predicted = (str(row[c]) for c in ("person_id", "task", "given", "predicted"))
        score = float(row["score"])
        if task == "gender":
            suggestion: str | None = predicted if predicted != given else None
            reason = f"the fold models see {predicted}: P({given}) is only {1 - score:.2f}"
        elif task == "age":
            suggestion = _age_suggestion(predicted, given, years.get(pid), thresholds)
            seen = f", about {years[pid]:.0f} years" if pid in years else ""
            reason = (
                f"given {int(ages[pid])} years ({given}); the fold models see {predicted}{seen}: "
                f"P({given}) is only {1 - score:.2f}"
            )
        else:
            suggestion = SWAP_VALUE
            reason = (
                f"the {SWAP_STEMS[0]} photo looks like the {SWAP_STEMS[1]} one and the other way round "
                f"(geometric mean of the two swap probabilities {score:.2f})"
            )
        out.append(Suspect(pid, task, given, predicted, score, suggestion, reason))
    return out


def _mean_years(oof: pd.DataFrame) -> dict[str, float]:
    if AGE_MEAN not in oof.columns:
        return {}
    means = pd.to_numeric(oof[AGE_MEAN], errors="coerce").groupby(oof["person_id"].astype(str)).mean()
    return {str(k): float(v) for k, v in means.items() if np.isfinite(v)}


def age_group_range(group: int, thresholds: AgeThresholds) -> tuple[int, int]:
    """The whole years of an age group: (first, last)."""
    bounds = (MIN_AGE, thresholds.young_below, thresholds.old_from, MAX_AGE + 1)
    return bounds[group], bounds[group + 1] - 1


def _age_suggestion(predicted: str, given: str, years: float | None, thresholds: AgeThresholds) -> str | None:
    """Whole years to relabel to: the predicted years, inside the predicted group. None where the run predicts no
    years (a group is not an age: the reviewer types one) or the models' likeliest group is the given one."""
    if years is None or predicted == given:
        return None
    first, last = age_group_range(AGE_NAMES.index(predicted), thresholds)
    return str(int(np.clip(round(years), first, last)))


def _people(oof: pd.DataFrame, table: pd.DataFrame) -> dict[str, Person]:
    """Every OOF person's photos (from the data table, in stem order) and the fold models' beliefs.

    Built from whole columns and plain lists: a per-person pandas loop took 15 s for the 2,700 people of the
    competition's data, this takes well under one.
    """
    probs = oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    marginals = split_class_probs(probs / probs.sum(axis=1, keepdims=True))
    oof_ids = oof["person_id"].astype(str).to_numpy()
    oof_row = pd.Series(
        np.arange(len(oof)), index=pd.MultiIndex.from_arrays([oof_ids, oof["stem"].astype(str).str.lower()])
    )
    ids = table["person_id"].astype(str).to_numpy()
    found = oof_row.reindex(pd.MultiIndex.from_arrays([ids, table["stem"].astype(str)]))
    at = found.fillna(-1).astype(np.int64).tolist()  # the OOF row of each photo, -1 for none
    beliefs = {
        task: pd.DataFrame(marginals[task], columns=list(names)).groupby(oof_ids, sort=False).mean()
        for task, names in (("gender", GENDER_NAMES), ("age", AGE_NAMES))
    }
    gender, age = beliefs["gender"].round(4).to_dict("index"), beliefs["age"].round(4).to_dict("index")
    masks = decode(table["label"].to_numpy(dtype=np.int64))[0].tolist()
    mask_probs = marginals["mask"].round(4).tolist()
    stems, paths = table["stem"].astype(str).tolist(), table["image_path"].astype(str).tolist()
    genders, ages = table["gender"].tolist(), table["age"].tolist()
    order = {stem: i for i, stem in enumerate(IMAGE_STEMS)}
    years = _mean_years(oof)
    people: dict[str, Person] = {}
    groups: dict[str, list[int]] = {}
    for r, pid in enumerate(ids.tolist()):
        groups.setdefault(pid, []).append(r)
    for pid, rows in groups.items():
        if pid not in gender:
            continue  # a person the CV left out (data.mask_states, skip_bad): nothing to review
        photos = []
        for r in sorted(rows, key=lambda r: order.get(stems[r], len(order))):
            seen = {} if at[r] < 0 else dict(zip(MASK_NAMES, mask_probs[at[r]], strict=True))
            photos.append(Photo(stems[r], Path(paths[r]), MASK_NAMES[masks[r]], seen))
        first = rows[0]
        people[pid] = Person(
            person_id=pid,
            gender=GENDER_NAMES[int(genders[first])],
            age=int(ages[first]),
            photos=tuple(photos),
            gender_probs={str(k): float(v) for k, v in gender[pid].items()},
            age_probs={str(k): float(v) for k, v in age[pid].items()},
            years=years.get(pid),
        )
    return people


def _named(values: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {name: round(float(v), 4) for name, v in zip(names, values, strict=True)}
