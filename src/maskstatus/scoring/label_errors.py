"""Find training people whose labels disagree with confident out-of-fold predictions.

Input is an out-of-fold table (``oof.csv``: person_id, stem, image_path, label,
fold, p0..p17), where every probability comes from a model that never saw that
person. Labels are judged per PERSON, because gender and age are given once per
person and a mask swap concerns two photos of one person:

- ``gender``: geometric mean of the gender marginals over the person's photos,
  renormalised to sum to 1 (the mean log-probability, i.e. each photo as
  independent evidence tempered by the photo count); score = its probability
  of the other gender. Against the arithmetic mean it ranks planted gender
  flips higher when few places are left (benchmarks/label_errors.py on the
  fold-0 proxy OOF, top 10 of 540 people, see README): it is the mean
  log-odds, so a photo at 0.999 counts for more than one at 0.9, where the
  arithmetic mean saturates. A real flip shows the other gender, which a
  model sees with near certainty on the clear photos even when the masked
  ones are unsure; a face the model merely finds hard tends to be lukewarm on
  all of them. For age the same change measured slightly worse, so age
  keeps the arithmetic mean.
- ``age``: mean of the age-group marginals; score = 1 - mean probability of the
  given group; ``predicted`` is the group with the highest mean.
- ``mask_swap``: for the incorrect_mask photo (given mask A) and the normal
  photo (given mask B), score = sqrt(P(incorrect_mask photo looks B) *
  P(normal photo looks A)), the geometric mean of the two swap probabilities.
  The geometric mean is high only when both photos point to a swap, and it
  stays on the 0..1 probability scale of the other tasks (two photos at 0.9
  score 0.9), so one ``min_score`` means the same for every task. ``given`` and
  ``predicted`` are the masks of the incorrect_mask / normal photos, in that order.

These are the scores of the ``confidence`` ranker (self-confidence: the
model's own probabilities). The ``cleanlab`` ranker pools the photos the same
way and judges each task by confident learning (``confident_learning``): every
class against its own threshold, the mean probability the model gives it on the
people labelled with it, instead of against one fixed 0.5; for the swap, the
same geometric mean of the two photos' threshold-adjusted probabilities. The
``combined`` ranker averages the two scores. Which ranks planted errors higher
is measured by ``benchmarks/label_errors.py``; the default
(``defaults.LABEL_ERRORS_RANKER``) is the better one there.

Every score is "how likely the label is wrong", 0..1, higher = more suspicious;
``predicted`` is the task's most probable value (the suggestion) and ``reason``
the probabilities behind the score in words. The labels judged are those in
``oof.csv``, i.e. after any relabel file the run used.

``write_review`` turns a ranking into a review folder: ``review.csv``,
``review.png`` (each suspect person's photos with a caption) and
``relabel_draft.csv`` in the relabel format, to check by eye before use.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

from ..age import AGE_MEAN
from ..choices import LABEL_ERROR_RANKERS
from ..data.relabel import RELABEL_COLUMNS, SWAP_STEMS, SWAP_VALUE
from ..data.validate import MAX_AGE, MIN_AGE
from ..defaults import LABEL_ERRORS_MIN_SCORE, LABEL_ERRORS_RANKER, LABEL_ERRORS_TOP
from ..errors import UsageError
from ..labels import (
    AGE_NAMES,
    DEFAULT_AGE_THRESHOLDS,
    GENDER_NAMES,
    IMAGE_STEMS,
    MASK_NAMES,
    PROB_COLUMNS,
    TASKS,
    AgeThresholds,
    decode,
    split_class_probs,
)
from ..outputs import check_output, first_line
from ..runs import atomic_write, atomic_write_csv, atomic_write_text
from . import confident_learning
from .oof import OOF_COLUMNS, check_oof_frame, read_oof

__all__ = [
    "DRAFT_MIN_SCORE",
    "OOF_COLUMNS",
    "REVIEW_COLUMNS",
    "REVIEW_ROW_HEIGHT",
    "REVIEW_THUMB",
    "TASK_NAMES",
    "accepted_fixes",
    "check_review_output",
    "find_label_errors",
    "load_oof",
    "rank_suspects",
    "score_people",
    "write_review",
]

REVIEW_COLUMNS: tuple[str, ...] = ("person_id", "task", "given", "predicted", "score", "images", "reason")
# review.csv as written before it had a reason column: still a review that a new one may replace.
_REVIEW_COLUMNS_BEFORE_REASON: tuple[str, ...] = REVIEW_COLUMNS[:-1]
# The task names double as relabel field names where a fix is a relabel row.
TASK_NAMES: tuple[str, ...] = ("gender", "age", "mask_swap")

REVIEW_FILES: dict[str, str] = {
    "review_csv": "review.csv",
    "review_png": "review.png",
    "relabel_draft": "relabel_draft.csv",
}
DRAFT_HEADER = "# DRAFT written by find-label-errors"
PNG_SOFTWARE = "maskstatus find-label-errors"  # the review grid's PNG "Software" text: a later review may replace it

# A relabel draft row is written only where the model thinks the label is more likely wrong than right.
DRAFT_MIN_SCORE = 0.5

# Review grid geometry: a caption band (one line per task) above one thumbnail per photo.
REVIEW_THUMB: tuple[int, int] = (96, 128)  # width, height
_PAD = 4
_LINE_HEIGHT = 13
_CAPTION_HEIGHT = _PAD + _LINE_HEIGHT * len(TASK_NAMES) + _PAD
REVIEW_ROW_HEIGHT: int = _CAPTION_HEIGHT + REVIEW_THUMB[1] + _PAD
_GRID_WIDTH = len(IMAGE_STEMS) * (REVIEW_THUMB[0] + _PAD) + _PAD


def load_oof(path: Path | str) -> pd.DataFrame:
    """Out-of-fold predictions from a CV folder, a run folder or a CSV file (see ``oof.read_oof``)."""
    return read_oof(path)


def _mode(frame: pd.DataFrame, keys: list[str], column: str) -> pd.Series:
    """Most common ``column`` value per ``keys`` group (ties: the smallest value), in first-appearance order.

    A person's gender/age label is the same on all photos; the mode keeps one stray row from deciding it.
    """
    counts = frame.groupby([*keys, column], sort=True).size().rename("n").reset_index()
    counts = counts.sort_values("n", ascending=False, kind="stable").drop_duplicates(keys)
    order = frame[keys].drop_duplicates()
    return order.merge(counts, on=keys, how="left").set_index(keys)[column]


def _person_images(frame: pd.DataFrame) -> pd.Series:
    """person_id -> the person's image paths in IMAGE_STEMS order, ';'-joined."""
    order = frame["stem"].map({stem: i for i, stem in enumerate(IMAGE_STEMS)}).fillna(len(IMAGE_STEMS))
    ordered = frame.assign(_order=order).sort_values(["person_id", "_order", "image_path"], kind="stable")
    # One pass over the rows: a pandas groupby calls a Python function per person, which cost most of a
    # score_people call on thousands of people (the benchmark scores every draw).
    paths: dict[str, list[str]] = {}
    for pid, path in zip(ordered["person_id"], ordered["image_path"], strict=True):
        paths.setdefault(pid, []).append(path)
    return pd.Series({pid: ";".join(dict.fromkeys(p)) for pid, p in paths.items()}, dtype=object)


def score_people(oof: pd.DataFrame, ranker: str = LABEL_ERRORS_RANKER) -> pd.DataFrame:
    """Every (person, task) suspicion score, unfiltered and unsorted; columns REVIEW_COLUMNS.

    ``ranker`` is one of LABEL_ERROR_RANKERS: ``confidence`` (the rules in the
    module docstring), ``cleanlab`` (confident learning on the same person-level
    probabilities) or ``combined`` (the mean of the two scores). A person without
    both an incorrect_mask and a normal photo, or whose two photos carry the same
    given mask, gets no mask_swap row.
    """
    if ranker not in LABEL_ERROR_RANKERS:
        raise UsageError(f"ranker must be one of {', '.join(LABEL_ERROR_RANKERS)}, got {ranker!r}")
    evidence = _person_evidence(oof)
    rows: list[pd.DataFrame] = []
    for task in ("gender", "age"):
        rows.append(_rank_task(evidence.tasks[task], ranker))
    if len(evidence.swap.people):
        rows.append(_rank_swap(evidence.swap, evidence.mask_labels, evidence.mask_probs, ranker))
    scores = pd.concat(rows, ignore_index=True)
    scores["score"] = scores["score"].clip(0.0, 1.0)
    scores["images"] = scores["person_id"].map(evidence.images)
    return scores[list(REVIEW_COLUMNS)]


@dataclass
class _TaskEvidence:
    """One task's person-level probabilities: ``probs[i]`` for ``people[i]``, whose given label is ``given[i]``."""

    task: str
    names: tuple[str, ...]
    people: np.ndarray
    given: np.ndarray
    probs: np.ndarray
    photos: np.ndarray
    how: str  # how the photos were pooled, for the reason text


@dataclass
class _SwapEvidence:
    """People with both swap photos of different given masks: the photos' given masks and mask probabilities."""

    people: np.ndarray
    given_first: np.ndarray
    given_second: np.ndarray
    probs_first: np.ndarray
    probs_second: np.ndarray


@dataclass
class _Evidence:
    tasks: dict[str, _TaskEvidence]
    swap: _SwapEvidence
    mask_labels: np.ndarray  # every photo's given mask and mask probabilities: confident learning's
    mask_probs: np.ndarray  # mask thresholds are learnt from all photos, not the swap pairs only
    images: pd.Series


def _person_evidence(oof: pd.DataFrame) -> _Evidence:
    """The OOF table pooled per person, as every ranker sees it (the pooling rules: module docstring)."""
    check_oof_frame(oof)
    probs = oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    # oof.csv rounds to 6 decimals; renormalise so the marginals sum to 1 exactly.
    probs = probs / probs.sum(axis=1, keepdims=True)
    marginals = split_class_probs(probs)
    given_mask, given_gender, given_age = decode(oof["label"].to_numpy(dtype=np.int64))

    frame = pd.DataFrame(
        {
            "person_id": oof["person_id"].astype(str).to_numpy(),
            "stem": oof["stem"].astype(str).str.lower().to_numpy(),
            "image_path": oof["image_path"].astype(str).to_numpy(),
            "given_mask": given_mask,
            "given_gender": given_gender,
            "given_age": given_age,
        }
    )
    for task in TASKS:
        for k in range(TASKS[task]):
            frame[f"{task}{k}"] = marginals[task][:, k]
    people = frame.groupby("person_id", sort=False)
    photos = people.size()

    tasks: dict[str, _TaskEvidence] = {}
    for task, names in (("gender", GENDER_NAMES), ("age", AGE_NAMES)):
        cols = [f"{task}{k}" for k in range(TASKS[task])]
        given = _mode(frame, ["person_id"], f"given_{task}")
        if task == "gender":
            mean, how = _geometric_mean(frame, cols).loc[given.index].to_numpy(), "geometric mean"
        else:
            mean, how = people[cols].mean().loc[given.index].to_numpy(), "mean"
        tasks[task] = _TaskEvidence(
            task,
            tuple(names),
            given.index.to_numpy(),
            given.to_numpy(dtype=np.int64),
            mean,
            photos.loc[given.index].to_numpy(),
            how,
        )
    return _Evidence(tasks, _swap_evidence(frame), given_mask, marginals["mask"], _person_images(frame))


def _swap_evidence(frame: pd.DataFrame) -> _SwapEvidence:
    first, second = SWAP_STEMS
    mask_cols = [f"mask{k}" for k in range(TASKS["mask"])]
    none = _SwapEvidence(np.array([], dtype=object), *(np.zeros(0, dtype=np.int64),) * 2, *(np.zeros((0, 3)),) * 2)
    pair = frame[frame["stem"].isin(SWAP_STEMS)]
    # Average duplicates (an image predicted twice) so each person has one row per stem.
    probs = pair.groupby(["person_id", "stem"], sort=False)[mask_cols].mean().unstack("stem")
    given = _mode(pair, ["person_id", "stem"], "given_mask").unstack("stem")
    if first not in given.columns or second not in given.columns:
        return none
    given = given.dropna(subset=[first, second]).astype(np.int64)
    given = given[given[first] != given[second]]
    if given.empty:
        return none
    return _SwapEvidence(
        given.index.to_numpy(),
        given[first].to_numpy(),
        given[second].to_numpy(),
        np.stack([probs.loc[given.index, (c, first)].to_numpy() for c in mask_cols], axis=1),
        np.stack([probs.loc[given.index, (c, second)].to_numpy() for c in mask_cols], axis=1),
    )


def _rank_task(ev: _TaskEvidence, ranker: str) -> pd.DataFrame:
    """Scores and reasons of one person-level task (gender or age) by ``ranker``."""
    idx = np.arange(len(ev.people))
    predicted = ev.probs.argmax(axis=1)
    p_given, p_pred = ev.probs[idx, ev.given], ev.probs[idx, predicted]
    model = [
        f"{ev.names[p]} {pp:.2f} against given {ev.names[g]} {pg:.2f} ({ev.how} of {n} photos)"
        for p, pp, g, pg, n in zip(predicted, p_pred, ev.given, p_given, ev.photos, strict=True)
    ]
    confidence = 1.0 - p_given
    if ranker == "confidence":
        score, reason = confidence, model
    else:
        cl = confident_learning.suspicion(ev.given, ev.probs)
        flagged = confident_learning.flag_issues(ev.given, ev.probs)
        thresholds = confident_learning.confident_thresholds(ev.given, ev.probs)
        cl_reason = [
            f"{m}; class thresholds {ev.names[p]} {thresholds[p]:.2f}, {ev.names[g]} {thresholds[g]:.2f}; "
            + _flag_text(f, int(flagged.sum()))
            for m, p, g, f in zip(model, predicted, ev.given, flagged, strict=True)
        ]
        score = cl if ranker == "cleanlab" else (confidence + cl) / 2.0
        reason = cl_reason if ranker == "cleanlab" else _combined_text(confidence, cl, cl_reason)
    return pd.DataFrame(
        {
            "person_id": ev.people,
            "task": ev.task,
            "given": [ev.names[c] for c in ev.given],
            "predicted": [ev.names[c] for c in predicted],
            "score": score,
            "reason": reason,
        }
    )


def _combined_text(confidence: np.ndarray, cl: np.ndarray, reasons: list[str]) -> list[str]:
    return [
        f"mean of self-confidence {a:.2f} and confident learning {b:.2f}: {r}"
        for a, b, r in zip(confidence, cl, reasons, strict=True)
    ]


def _flag_text(flagged: bool, count: int) -> str:
    where = "among" if flagged else "not among"
    return f"{where} the {count} issues confident learning finds in this task"


def _rank_swap(ev: _SwapEvidence, mask_labels: np.ndarray, mask_probs: np.ndarray, ranker: str) -> pd.DataFrame:
    """Scores and reasons of the incorrect_mask/normal swap by ``ranker``.

    Swapped means each photo looks like the mask the other one is labelled with; the score is the
    geometric mean of the two photos' probabilities of that (module docstring). Confident learning
    takes the same mean of the photos' threshold-adjusted probabilities, the thresholds learnt from
    every photo's mask label.
    """
    idx = np.arange(len(ev.people))
    g1, g2 = ev.given_first, ev.given_second
    looks1, looks2 = ev.probs_first[idx, g2], ev.probs_second[idx, g1]
    confidence = np.sqrt(looks1 * looks2)
    first, second = SWAP_STEMS
    reason = [
        f"{first} photo looks {MASK_NAMES[b]} {x:.2f}, {second} photo looks {MASK_NAMES[a]} {y:.2f}"
        for a, b, x, y in zip(g1, g2, looks1, looks2, strict=True)
    ]
    if ranker == "confidence":
        score = confidence
    else:
        thresholds = confident_learning.confident_thresholds(mask_labels, mask_probs)
        adj1 = confident_learning.adjusted_probs(ev.probs_first, thresholds)
        adj2 = confident_learning.adjusted_probs(ev.probs_second, thresholds)
        adj_looks1, adj_looks2 = adj1[idx, g2], adj2[idx, g1]
        cl = np.sqrt(adj_looks1 * adj_looks2)
        score = cl if ranker == "cleanlab" else (confidence + cl) / 2.0
        reason = [
            f"{r}; after the mask thresholds ({', '.join(f'{n} {t:.2f}' for n, t in zip(MASK_NAMES, thresholds, strict=True))}) "
            f"{x:.2f} and {y:.2f}"
            for r, x, y in zip(reason, adj_looks1, adj_looks2, strict=True)
        ]
        if ranker == "combined":
            reason = _combined_text(confidence, cl, reason)
    pred1, pred2 = ev.probs_first.argmax(axis=1), ev.probs_second.argmax(axis=1)
    return pd.DataFrame(
        {
            "person_id": ev.people,
            "task": "mask_swap",
            "given": [f"{MASK_NAMES[a]}/{MASK_NAMES[b]}" for a, b in zip(g1, g2, strict=True)],
            "predicted": [f"{MASK_NAMES[a]}/{MASK_NAMES[b]}" for a, b in zip(pred1, pred2, strict=True)],
            "score": score,
            "reason": reason,
        }
    )


# oof.csv rounds probabilities to 6 decimals, so a written 0 means "below 1e-6"; flooring there keeps one
# photo from vetoing a person with log(0).
_LOG_FLOOR = 1e-6


def _geometric_mean(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Per person: the geometric mean of ``cols`` over their photos, renormalised to sum to 1."""
    logs = np.log(np.clip(frame[cols].to_numpy(dtype=np.float64), _LOG_FLOOR, 1.0))
    mean_log = pd.DataFrame(logs, columns=cols).groupby(frame["person_id"].to_numpy(), sort=False).mean()
    # Subtracting the row maximum before exp keeps tiny probabilities from underflowing to 0/0.
    q = np.exp(mean_log.to_numpy() - mean_log.to_numpy().max(axis=1, keepdims=True))
    return pd.DataFrame(q / q.sum(axis=1, keepdims=True), index=mean_log.index, columns=cols)


def find_label_errors(
    oof: pd.DataFrame,
    top: int = LABEL_ERRORS_TOP,
    min_score: float = LABEL_ERRORS_MIN_SCORE,
    ranker: str = LABEL_ERRORS_RANKER,
) -> pd.DataFrame:
    """Rank people whose labels disagree with confident out-of-fold predictions.

    Returns one row per (person, task) with columns person_id, task (gender,
    age or mask_swap), given, predicted, score (0..1, how likely the label is
    wrong by ``ranker``; rules in the module docstring), images (the person's
    image paths in stem order, ';'-joined) and reason (the probabilities behind
    the score, in words). A row is kept when its score is at least
    ``min_score`` (default 0.5: the model finds the label more likely wrong
    than right) and it is among the ``top`` highest of its task. Sorted by
    score, highest first.
    """
    return rank_suspects(score_people(oof, ranker), top, min_score)


def rank_suspects(scores: pd.DataFrame, top: int = 50, min_score: float = 0.5) -> pd.DataFrame:
    """The filter and order of :func:`find_label_errors` applied to a ``score_people`` table."""
    if top < 1:
        raise UsageError(f"top must be >= 1, got {top}")
    kept = scores[scores["score"] >= min_score]
    kept = kept.sort_values(["score", "task", "person_id"], ascending=[False, True, True], kind="stable")
    kept = kept.groupby("task", sort=False).head(top)
    return kept.reset_index(drop=True)


def accepted_fixes(
    suspects: pd.DataFrame, oof: pd.DataFrame, thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS
) -> pd.DataFrame:
    """The relabel rows (id, field, value) of a user who accepts every suggestion in ``suspects``.

    Gender takes the predicted gender and a mask_swap row swaps the pair. An age
    needs whole years: the person's predicted years (the OOF's ``age_mean``, an
    age-regression run's) clipped into the suggested group, else the year of the
    suggested group nearest the given one (the smallest move that changes the
    group, e.g. 30 for young -> middle). A suggestion equal to the given label
    changes nothing and gives no row. ``thresholds`` are the run's age groups.
    """
    years = oof.groupby(oof["person_id"].astype(str))[AGE_MEAN].mean() if AGE_MEAN in oof.columns else None
    edges = [
        (MIN_AGE, thresholds.young_below - 1),
        (thresholds.young_below, thresholds.old_from - 1),
        (thresholds.old_from, MAX_AGE),
    ]
    rows: list[tuple[str, str, str]] = []
    columns = [suspects[c].astype(str) for c in ("person_id", "task", "given", "predicted")]
    for pid, task, given_name, predicted in zip(*columns, strict=True):
        if given_name == predicted:
            continue
        if task == "mask_swap":
            rows.append((pid, "mask_swap", SWAP_VALUE))
        elif task == "gender":
            rows.append((pid, "gender", predicted))
        elif task == "age":
            given, group = AGE_NAMES.index(given_name), AGE_NAMES.index(predicted)
            low, high = edges[group]
            if years is not None and pid in years.index:
                age = int(np.clip(round(float(years[pid])), low, high))
            else:
                age = high if group < given else low
            rows.append((pid, "age", str(age)))
    return pd.DataFrame(rows, columns=list(RELABEL_COLUMNS)).drop_duplicates(["id", "field"])


def write_review(suspects: pd.DataFrame, out_dir: Path, grid_people: int = 20) -> dict[str, Path]:
    """Write review.csv, review.png and relabel_draft.csv for a find_label_errors table.

    review.png has one row per suspect person (the first ``grid_people`` in
    ranking order; a person suspect for several tasks gets one row with one
    caption line per task) showing the person's photos, each tagged with its stem.
    relabel_draft.csv holds gender and mask_swap fixes scoring above
    DRAFT_MIN_SCORE; age suspects are listed as '#' comments because a relabel
    needs the age in whole years. Returns {"review_csv", "review_png",
    "relabel_draft"} -> path. Every file is written atomically.
    """
    missing = [c for c in REVIEW_COLUMNS if c not in suspects.columns]
    if missing:
        raise ValueError(f"suspects table lacks column(s) {missing}; expected {list(REVIEW_COLUMNS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / name for key, name in REVIEW_FILES.items()}
    atomic_write_csv(suspects[list(REVIEW_COLUMNS)], paths["review_csv"], float_format="%.4f")
    _write_png(_review_grid(suspects, grid_people), paths["review_png"])
    atomic_write_text(paths["relabel_draft"], _relabel_draft(suspects))
    return paths


def _relabel_draft(suspects: pd.DataFrame) -> str:
    buf = io.StringIO()
    buf.write(
        f"{DRAFT_HEADER} from out-of-fold predictions: check every row against "
        "review.png and delete the wrong ones before using it as a relabel file.\n"
        "# The fixes are relative to the labels the run trained on (after its relabel file, if any).\n"
    )
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "field", "value"])
    sure = suspects[suspects["score"] > DRAFT_MIN_SCORE]
    for row in sure.itertuples(index=False):
        if row.task == "gender":
            writer.writerow([row.person_id, "gender", row.predicted])
        elif row.task == "mask_swap":
            writer.writerow([row.person_id, "mask_swap", SWAP_VALUE])
    ages = suspects[suspects["task"] == "age"]
    if len(ages):
        buf.write("# Age suspects: a relabel needs whole years, so look at the photos and add rows like ID,age,YEARS\n")
        for row in ages.itertuples(index=False):
            buf.write(f"#   {row.person_id}: given {row.given}, predicted {row.predicted}, score {row.score:.2f}\n")
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumbnail(path: str, font) -> Image.Image:
    w, h = REVIEW_THUMB
    tile = Image.new("RGB", (w, h), (200, 200, 200))
    draw = ImageDraw.Draw(tile)
    try:
        with Image.open(path) as opened:
            img = ImageOps.contain(ImageOps.exif_transpose(opened).convert("RGB"), (w, h))
        tile.paste(img, ((w - img.width) // 2, (h - img.height) // 2))
    except (OSError, ValueError):
        # A moved or broken file should not stop the review; the tile says what is missing.
        draw.text((4, h // 2 - 6), "unreadable", fill=(120, 0, 0), font=font)
    stem = Path(path).stem
    draw.rectangle([0, h - 14, w, h], fill=(0, 0, 0))
    draw.text((3, h - 13), stem, fill=(255, 255, 255), font=font)
    return tile


def _review_grid(suspects: pd.DataFrame, grid_people: int) -> Image.Image:
    font = _font(11)
    people = list(dict.fromkeys(suspects["person_id"].astype(str)))[: max(0, grid_people)]
    grid = Image.new("RGB", (_GRID_WIDTH, REVIEW_ROW_HEIGHT * max(1, len(people))), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    if not people:
        draw.text((_PAD, _PAD), "no suspects", fill=(0, 0, 0), font=font)
        return grid
    ids = suspects["person_id"].astype(str)
    for r, pid in enumerate(people):
        top = r * REVIEW_ROW_HEIGHT
        rows = suspects[ids == pid]
        for k, row in enumerate(rows.head(len(TASK_NAMES)).itertuples(index=False)):
            text = f"{pid}  {row.task}: given {row.given}, predicted {row.predicted}, score {row.score:.2f}"
            draw.text((_PAD, top + _PAD + k * _LINE_HEIGHT), text, fill=(0, 0, 0), font=font)
        images = [p for p in str(rows["images"].iloc[0]).split(";") if p][: len(IMAGE_STEMS)]
        for c, path in enumerate(images):
            grid.paste(_thumbnail(path, font), (_PAD + c * (REVIEW_THUMB[0] + _PAD), top + _CAPTION_HEIGHT))
        draw.line([(0, top + REVIEW_ROW_HEIGHT - 1), (grid.width, top + REVIEW_ROW_HEIGHT - 1)], fill=(180, 180, 180))
    return grid


def _write_png(img: Image.Image, path: Path) -> None:
    info = PngInfo()
    info.add_text("Software", PNG_SOFTWARE)
    atomic_write(path, lambda p: img.save(p, format="PNG", pnginfo=info))


def _is_previous_review(path: Path) -> bool:
    """A file write_review wrote (by its header, its first line or its PNG text), which a new review may replace.

    A grid without the text (written by an older version) counts when the review.csv beside it is a review.
    """
    if path.name == REVIEW_FILES["review_png"]:
        try:
            with Image.open(path) as img:
                if img.info.get("Software") == PNG_SOFTWARE:
                    return True
        except (OSError, ValueError):
            return False
        return _is_previous_review(path.with_name(REVIEW_FILES["review_csv"]))
    line = first_line(path)
    return line in (",".join(REVIEW_COLUMNS), ",".join(_REVIEW_COLUMNS_BEFORE_REASON)) or line.startswith(DRAFT_HEADER)


def check_review_output(out_dir: Path | str, source: Path | str, overwrite: bool = False) -> None:
    """Refuse a review folder before any work (see ``maskstatus.outputs``): never the OOF ``source`` or inside a
    run, CV or data folder other than the default ``<source>/label_review``, and its files are replaced only if
    they are an earlier review, or with ``overwrite``."""
    source = Path(source)
    default = (source if source.is_dir() else source.parent) / "label_review"
    for name in REVIEW_FILES.values():
        check_output(
            Path(out_dir) / name,
            command="find-label-errors",
            inputs=[] if source.is_dir() else [source],
            own=[default / name],
            previous=_is_previous_review,
            overwrite=overwrite,
        )
