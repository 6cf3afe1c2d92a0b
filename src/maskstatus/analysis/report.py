"""A page about one run or CV folder (``maskstatus report``): what it learnt and where it goes wrong.

Everything is computed from files the run already wrote: its config, each
fold's ``metrics.csv`` (learning curves), the out-of-fold predictions
(``scoring.oof.read_oof``, so tuned age cut points apply), for a CV
folder ``cv_metrics.json``, and the train table again for the given ages.
Sections: headline scores, config, curves, the 18-class and per-task
confusion matrices, per-class precision / recall / F1 with intervals from
resampling people (the scoring of ``maskstatus score``: the same point scores,
intervals and default level), a reliability plot, where the score goes (each task's
headroom, the age error by band), the most confident wrong predictions as
thumbnails, and the fold-to-fold spread.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..age import AGE_MEAN
from ..labels import (
    DEFAULT_AGE_THRESHOLDS,
    GENDER_NAMES,
    MASK_NAMES,
    NUM_CLASSES,
    PROB_COLUMNS,
    TASKS,
    AgeThresholds,
    class_names,
    decode,
    split_class_probs,
)
from ..outputs import check_output
from ..runs import CV_CONFIG, CV_METRICS, METRICS, RUN_CONFIG, expand_runs
from ..scoring.bootstrap import DEFAULT_BOOT, DEFAULT_LEVEL, Interval, class_count_replicates
from ..scoring.metrics import compute_metrics, confusion
from ..scoring.oof import member_config, read_oof
from ..scoring.score import folder_interval
from . import html as H
from .headroom import BAND_YEARS, given_years, oof_headroom

logger = logging.getLogger(__name__)

CALIBRATION_BINS = 10
MISTAKES_SHOWN = 24
GENERATOR = "maskstatus report"  # in each page's <meta name="generator">: a later report may replace it
REPORT_NAME = "report.html"  # the default page, in the run or CV folder


@dataclass
class ReportResult:
    """What ``analyse_run`` read and computed; ``render`` turns it into a page."""

    path: Path
    is_cv: bool
    config_file: Path
    thresholds: AgeThresholds
    oof: pd.DataFrame
    interval: Interval  # the scores and their person-bootstrap intervals, as ``maskstatus score`` gives them
    runs: list[Path] = field(default_factory=list)
    cv_summary: dict[str, Any] | None = None
    years: np.ndarray | None = None  # given age of each OOF row, where the train table could be read

    @property
    def images(self) -> int:
        return len(self.oof)

    @property
    def metrics(self) -> dict[str, float]:
        """The point scores (NaN where the model does not predict: a per-task model has no 18-class F1)."""
        return self.interval.point


# ----------------------------------------------------------------- numbers


def _class_intervals(
    labels: np.ndarray,
    preds: np.ndarray,
    people: Sequence[str] | np.ndarray,
    samples: int = DEFAULT_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Percentile intervals of per-class precision, recall and F1, resampling people.

    People, not images, are drawn with replacement, because a person's seven photos share
    one face and one gender/age label: their errors come together. Returns
    ``{"precision", "recall", "f1"}`` -> (2, 18) arrays (low, high; NaN where a class is
    never true or never predicted in most resamples). The macro F1's interval is the
    scoring's own (``scoring.bootstrap``).
    """
    TP, T, P = class_count_replicates(labels, preds, people, NUM_CLASSES, samples, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(P > 0, TP / P, np.nan)
        recall = np.where(T > 0, TP / T, np.nan)
        f1 = np.where(T + P > 0, 2 * TP / (T + P), np.nan)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out = {}
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        # A class missing from more than half the resamples gets no interval rather than a misleading one.
        enough = np.isfinite(values).mean(axis=0) >= 0.5
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (a class never predicted) give NaN
            bounds = np.nanpercentile(values, q, axis=0)
        out[name] = np.where(enough, bounds, np.nan)
    return out


def per_class_table(
    labels: np.ndarray,
    preds: np.ndarray,
    people: Sequence[str] | np.ndarray | pd.Series,
    thresholds: AgeThresholds = DEFAULT_AGE_THRESHOLDS,
    level: float = DEFAULT_LEVEL,
    samples: int = DEFAULT_BOOT,
    seed: int = 0,
) -> pd.DataFrame:
    """Per class: support (images, people), precision, recall, F1 and their person-bootstrap intervals."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    person_ids = pd.Series(people).astype(str).to_numpy()
    tp = np.bincount(labels[labels == preds], minlength=NUM_CLASSES).astype(np.float64)
    true_n = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    pred_n = np.bincount(preds, minlength=NUM_CLASSES).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        f1 = np.where(true_n + pred_n > 0, 2 * tp / (true_n + pred_n), 0.0)
    ci = _class_intervals(labels, preds, person_ids, samples, level, seed)
    table = pd.DataFrame(
        {
            "class": np.arange(NUM_CLASSES),
            "name": class_names(thresholds),
            "images": true_n.astype(np.int64),
            "people": [len(set(person_ids[labels == c])) for c in range(NUM_CLASSES)],
            "predicted": pred_n.astype(np.int64),
            "precision": precision,
            "precision_lo": ci["precision"][0],
            "precision_hi": ci["precision"][1],
            "recall": recall,
            "recall_lo": ci["recall"][0],
            "recall_hi": ci["recall"][1],
            "f1": f1,
            "f1_lo": ci["f1"][0],
            "f1_hi": ci["f1"][1],
        }
    )
    return table


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Reliability of the top-class probability: per equal-width bin, images, mean confidence, accuracy.

    ``.attrs["ece"]`` is the expected calibration error (image-weighted mean |accuracy - confidence|).
    """
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    confidence, pred = probs.max(axis=1), probs.argmax(axis=1)
    correct = pred == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = which == b
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "images": int(sel.sum()),
                "confidence": float(confidence[sel].mean()) if sel.any() else np.nan,
                "accuracy": float(correct[sel].mean()) if sel.any() else np.nan,
            }
        )
    table = pd.DataFrame(rows)
    filled = table[table["images"] > 0]
    table.attrs["ece"] = float(
        (filled["images"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / max(len(probs), 1)
    )
    return table


def confident_mistakes(oof: pd.DataFrame, top: int = MISTAKES_SHOWN) -> pd.DataFrame:
    """The ``top`` wrong predictions with the highest predicted probability, most confident first."""
    probs = oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    pred = probs.argmax(axis=1)
    frame = oof[["person_id", "stem", "image_path", "label", "fold"]].assign(
        pred=pred, confidence=probs.max(axis=1), p_true=probs[np.arange(len(probs)), oof["label"].to_numpy()]
    )
    wrong = frame[frame["pred"] != frame["label"]]
    return (
        wrong.sort_values(["confidence", "person_id", "stem"], ascending=[False, True, True], kind="stable")
        .head(top)
        .reset_index(drop=True)
    )


def fold_scores(oof: pd.DataFrame) -> pd.DataFrame:
    """compute_metrics of each fold's held-out images: fold, images, f1, acc, <task>_f1."""
    rows = []
    for fold, part in oof.groupby("fold", sort=True):
        m = compute_metrics(part[PROB_COLUMNS].to_numpy(dtype=np.float64), part["label"].to_numpy())
        rows.append(
            {
                "fold": int(fold),  # type: ignore[arg-type]  # pandas types a group key as any scalar; folds are ints
                "images": len(part),
                "f1": m["f1"],
                "acc": m["acc"],
                **{f"{t}_f1": m[f"{t}_f1"] for t in TASKS},
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- reading


def analyse_run(
    path: str | Path, level: float = DEFAULT_LEVEL, n_boot: int = DEFAULT_BOOT, seed: int = 0
) -> ReportResult:
    """Read a run or CV folder for the report; FileNotFoundError / ValueError name what is missing or bad.

    The scores and their intervals are ``scoring.score``'s, as ``maskstatus score`` prints them for the same
    ``level``, ``n_boot`` and ``seed``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")
    is_cv = (path / CV_CONFIG).is_file()
    config_file = path / (CV_CONFIG if is_cv else RUN_CONFIG)
    if not config_file.is_file():
        raise FileNotFoundError(f"not a run folder (no {RUN_CONFIG}) nor a CV folder (no {CV_CONFIG}): {path}")
    cfg = member_config(path)
    thresholds = cfg.data.age.thresholds() if cfg is not None else DEFAULT_AGE_THRESHOLDS
    oof = read_oof(path)
    interval = folder_interval(path, oof, n_boot, level, seed)
    try:
        runs = expand_runs([path])
    except FileNotFoundError:  # a CV folder whose fold runs lost their weights still has its curves
        runs = sorted(p.parent for p in path.glob("*/" + RUN_CONFIG))
    summary = None
    if is_cv and (path / CV_METRICS).is_file():
        try:
            summary = json.loads((path / CV_METRICS).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"cannot read {path / CV_METRICS}: {err}") from None
    # Only runs that predict years get age bands; the others need not read the train table again.
    years = given_years(cfg, oof) if cfg is not None and AGE_MEAN in oof.columns else None
    return ReportResult(path, is_cv, config_file, thresholds, oof, interval, runs, summary, years)


# ----------------------------------------------------------------- render


def _curves_section(r: ReportResult) -> str:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    found = [(run, run / METRICS) for run in r.runs if (run / METRICS).is_file()]
    if not found:
        return H.note("No metrics.csv in the run folder(s): no learning curves.")
    fig = Figure(figsize=(12, 3.4), layout="constrained")
    ax_loss, ax_f1, ax_lr = fig.subplots(1, 3)
    colours = [f"C{i}" for i in range(10)]
    lrs = []
    for i, (run, csv) in enumerate(found):
        df = pd.read_csv(csv)
        if "epoch" not in df.columns:
            raise ValueError(f"{csv} has no 'epoch' column (columns: {list(df.columns)})")
        df = df.groupby("epoch", sort=True).last()
        label = run.name.split("-")[0] if r.is_cv else "run"
        colour = colours[i % len(colours)]
        if "train_loss" in df:
            ax_loss.plot(df.index, df["train_loss"], color=colour, marker=".", label=f"{label} train")
        if "val_loss" in df:
            ax_loss.plot(df.index, df["val_loss"], color=colour, ls="--", marker=".", label=f"{label} val")
        score = "val_f1" if "val_f1" in df and df["val_f1"].notna().any() else "val_score"
        if score in df:
            ax_f1.plot(df.index, df[score], color=colour, marker="o", ms=3, label=label)
            best = int(np.nanargmax(df[score].to_numpy(dtype=np.float64)))
            ax_f1.plot([df.index[best]], [df[score].iloc[best]], marker="*", ms=11, color=colour)
        if "lr" in df:
            ax_lr.plot(df.index, df["lr"], color=colour, label=label)
            lrs.append(df["lr"].to_numpy(dtype=np.float64))
    ax_loss.set_title("loss (solid train, dashed val)", fontsize=10)
    ax_f1.set_title("validation macro F1 (star: best epoch)", fontsize=10)
    ax_lr.set_title("learning rate", fontsize=10)
    if lrs and (np.concatenate(lrs) > 0).all():
        ax_lr.set_yscale("log")  # schedules decay by factors; a linear axis hides the late epochs
    for ax in (ax_loss, ax_f1, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.has_data() and len(found) <= 10:
            ax.legend(fontsize=7)
    return H.figure(fig, "learning curves")


def _confusion_section(r: ReportResult) -> str:
    probs = r.oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    labels = r.oof["label"].to_numpy()
    names = class_names(r.thresholds)
    short = [str(c) for c in range(NUM_CLASSES)]
    parts = [
        H.note(
            "Rows: true class, columns: predicted; cells shaded by the share of the row (green: right). "
            "Hover a cell for the share. Column numbers are class codes."
        ),
        '<div id="confusion-18">'
        + H.heat_table(confusion(probs, labels), [f"{c} {n}" for c, n in enumerate(names)], short)
        + "</div>",
    ]
    marginals = split_class_probs(probs / probs.sum(axis=1, keepdims=True))
    tasks = []
    for task, codes, task_names in zip(
        TASKS, decode(labels), (MASK_NAMES, GENDER_NAMES, r.thresholds.names()), strict=True
    ):
        k = TASKS[task]
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (codes, marginals[task].argmax(axis=1)), 1)
        tasks.append(
            f'<div id="confusion-{task}"><h3>{task}</h3>'
            + H.heat_table(matrix, list(task_names), list(task_names))
            + "</div>"
        )
    return "".join(parts) + '<div class="row">' + "".join(tasks) + "</div>"


def _interval(value: float, lo: float, hi: float) -> str:
    if np.isnan(lo) or np.isnan(hi):
        return f"{value:.3f}"
    return f"{value:.3f} <small>({lo:.2f}-{hi:.2f})</small>"


def _score_text(iv: Interval, key: str) -> str:
    """A score with its interval and level, as ``maskstatus score`` reports them; NaN: a score the model lacks."""
    point, (lo, hi) = iv.point[key], iv.ci[key]
    if np.isnan(point):
        return "not scored (the model does not predict every task)"
    return f"{point:.4f}, {iv.level:.0%} interval {lo:.4f}-{hi:.4f}"


def _rows(frame: pd.DataFrame) -> list[Any]:
    """The frame's rows as named tuples, typed Any: pandas types every field as any scalar, whatever the column."""
    return list(frame.itertuples(index=False))


def _per_class_section(r: ReportResult) -> str:
    probs = r.oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    iv = r.interval
    table = per_class_table(
        r.oof["label"].to_numpy(), probs.argmax(axis=1), r.oof["person_id"], r.thresholds, iv.level, iv.n_boot, iv.seed
    )
    rows = [
        [
            int(t.class_),
            t.name,
            int(t.images),
            int(t.people),
            int(t.predicted),
            _interval(t.precision, t.precision_lo, t.precision_hi),
            _interval(t.recall, t.recall_lo, t.recall_hi),
            _interval(t.f1, t.f1_lo, t.f1_hi),
        ]
        for t in _rows(table.rename(columns={"class": "class_"}))
    ]
    text = (
        f"Intervals: {iv.level:.0%} percentile intervals over {iv.n_boot} resamples of the "
        f"{iv.people} people (a person's photos share one face and label, so people are "
        f"drawn, not images). Macro F1 {_score_text(iv, 'f1')}."
    )
    weakest = table.sort_values("f1", kind="stable").head(3)
    worst = H.note(
        "Weakest classes: "
        + ", ".join(f"{n} (F1 {f:.2f})" for n, f in zip(weakest["name"], weakest["f1"], strict=True))
    )
    return (
        H.note(text)
        + worst
        + H.table(
            rows,
            ["class", "name", "images", "people", "predicted", "precision", "recall", "F1"],
            raw=(5, 6, 7),
            attrs='id="per-class-table"',
        )
    )


def _calibration_section(r: ReportResult) -> str:
    from matplotlib.figure import Figure

    probs = r.oof[PROB_COLUMNS].to_numpy(dtype=np.float64)
    table = calibration(probs, r.oof["label"].to_numpy())
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax, ax_n = fig.subplots(1, 2, width_ratios=[1.2, 1])
    filled = table[table["images"] > 0]
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect")
    ax.plot(filled["confidence"], filled["accuracy"], marker="o", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-class probability")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {table.attrs['ece']:.3f})", fontsize=10)
    ax.legend(fontsize=8)
    ax_n.bar((table["low"] + table["high"]) / 2, table["images"], width=1 / len(table) * 0.9, color="#90a4ae")
    ax_n.set_xlabel("top-class probability")
    ax_n.set_ylabel("images")
    ax_n.set_title("images per bin", fontsize=10)
    rows = [[f"{t.low:.1f}-{t.high:.1f}", int(t.images), t.confidence, t.accuracy] for t in _rows(table)]
    return (
        H.note("Points below the diagonal: the model is more sure than right (over-confident).")
        + '<div class="row">'
        + H.figure(fig, "reliability plot")
        + H.table(rows, ["probability", "images", "mean prob.", "accuracy"], attrs='id="calibration-table"')
        + "</div>"
    )


def _headroom_section(r: ReportResult) -> str:
    from matplotlib.figure import Figure

    found = oof_headroom(r.oof, r.years)
    room = found["headroom"]
    kpis = H.kpis(
        [
            ("macro F1 as predicted", f"{room['f1']:.4f}"),
            *[
                (f"with the {t} always right", f"{room[f'f1_true_{t}']:.4f} ({room[f'f1_true_{t}'] - room['f1']:+.3f})")
                for t in TASKS
            ],
        ]
    )
    text = H.note(
        "Each figure keeps the model's answers to the other two tasks: the gain is the most a "
        "better model of that one task could add."
    )
    if "age_by_band" not in found:
        why = (
            "the model predicts no years"
            if AGE_MEAN not in r.oof.columns
            else "the train table it was trained on could not be read again (see the log)"
        )
        return kpis + text + H.note(f"No age error by band: {why}.")
    bands = pd.DataFrame(found["age_by_band"])
    fig = Figure(figsize=(7.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    centre = bands["from"] + BAND_YEARS / 2
    ax.bar(
        centre,
        bands["bias"],
        width=BAND_YEARS * 0.8,
        color=np.where(bands["bias"] > 0, "#ef9a9a", "#90caf9"),
        label="bias (mean predicted - given)",
    )
    ax.plot(centre, bands["mae"], color="C2", marker="o", label="mean absolute error")
    ax.axhline(0, color="grey", lw=0.8)
    for cut in (r.thresholds.young_below, r.thresholds.old_from):
        ax.axvline(cut, color="grey", ls=":", lw=1)
    ax.set_xlabel("given age (years); dotted: the group boundaries")
    ax.set_ylabel("years")
    ax.set_title(
        f"age error by {BAND_YEARS}-year band (MAE {found['age_mae']:.2f}, bias {found['age_bias']:+.2f})", fontsize=10
    )
    ax.legend(fontsize=8, loc="lower left")  # the young bands' bars rise above 0, the old ones' fall below
    rows = [[b.band, int(b.people), int(b.images), b.mae, f"{b.bias:+.2f}"] for b in _rows(bands)]
    return (
        kpis
        + text
        + H.note(
            "A regression pulls its answers towards the mean age: bars above 0 on the "
            "left and below 0 on the right move people across the dotted boundaries."
        )
        + '<div class="row">'
        + H.figure(fig, "age error by band")
        + H.table(rows, ["given age", "people", "images", "MAE", "bias"], digits=2, attrs='id="age-band-table"')
        + "</div>"
    )


def _mistakes_section(r: ReportResult) -> str:
    wrong = confident_mistakes(r.oof)
    if wrong.empty:
        return '<p class="ok">No wrong out-of-fold prediction.</p>'
    names = class_names(r.thresholds)
    cards = "".join(
        H.card(
            H.thumbnail(w.image_path, (96, 128)),
            [f"{w.person_id} {w.stem}", f"true {names[w.label]}", f"pred {names[w.pred]} ({w.confidence:.2f})"],
        )
        for w in _rows(wrong)
    )
    return (
        H.note(
            f"The {len(wrong)} wrong predictions the model was most sure of, out of "
            f"{int((r.oof[PROB_COLUMNS].to_numpy().argmax(axis=1) != r.oof['label'].to_numpy()).sum())} "
            "wrong. Very confident mistakes are often label errors (see find-label-errors)."
        )
        + f'<div class="grid" id="mistakes">{cards}</div>'
    )


def _folds_section(r: ReportResult) -> str:
    from matplotlib.figure import Figure

    scores = fold_scores(r.oof)
    best = {}
    if r.cv_summary:
        best = {int(f["fold"]): f for f in r.cv_summary.get("per_fold", [])}
    rows = []
    for s in _rows(scores):
        f = best.get(int(s.fold), {})
        rows.append(
            [
                int(s.fold),
                f.get("run", ""),
                int(s.images),
                float(f.get("best_f1", np.nan)),
                f.get("best_epoch", ""),
                f.get("epochs_run", ""),
                s.f1,
                s.mask_f1,
                s.gender_f1,
                s.age_f1,
            ]
        )
    cols = ["f1", "mask_f1", "gender_f1", "age_f1"]
    mean, std = scores[cols].mean(), scores[cols].std(ddof=1) if len(scores) > 1 else scores[cols] * np.nan
    titles = {"f1": "macro F1", "mask_f1": "mask F1", "gender_f1": "gender F1", "age_f1": "age F1"}
    spread = H.kpis([(f"{titles[c]}: mean ± sd over folds", f"{mean[c]:.3f} ± {std[c]:.3f}") for c in cols])
    fig = Figure(figsize=(6, 2.6), layout="constrained")
    ax = fig.add_subplot()
    for i, c in enumerate(cols):
        ax.scatter(np.full(len(scores), i), scores[c], color="C0", zorder=3)
        ax.hlines(mean[c], i - 0.25, i + 0.25, color="C3")
    ax.set_xticks(range(len(cols)), labels=[titles[c] for c in cols])
    ax.set_title("per-fold scores (dots) and their mean (line)", fontsize=10)
    table = H.table(
        rows,
        [
            "fold",
            "run",
            "images",
            "best val F1 (cv_metrics.json)",
            "best epoch",
            "epochs",
            "macro F1",
            "mask F1",
            "gender F1",
            "age F1",
        ],
        digits=4,
        attrs='id="fold-table"',
    )
    return (
        spread
        + H.note("Each fold scored on its own held-out people; the pooled OOF score is in the summary.")
        + '<div class="row">'
        + table
        + H.figure(fig, "fold spread")
        + "</div>"
    )


def _kpi(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"  # NaN: a score a per-task model does not have


def render(r: ReportResult) -> str:
    """The report page of an ``analyse_run`` result, as one HTML string."""
    m = r.metrics
    kind = "CV folder" if r.is_cv else "run"
    head = [
        ("OOF macro F1", _kpi(m["f1"])),
        ("accuracy", _kpi(m["acc"])),
        *[(f"{t} F1", _kpi(m[f"{t}_f1"])) for t in TASKS],
        ("OOF images", r.images),
        ("people", r.oof["person_id"].nunique()),
    ]
    if r.is_cv:
        head.append(("folds", r.oof["fold"].nunique()))
    iv = r.interval
    summary = (
        H.kpis(head)
        + H.note(f"Out-of-fold predictions of the {kind}: every image scored by a model that never saw its person.")
        + H.note(
            f"Macro F1 {_score_text(iv, 'f1')}: a person-bootstrap percentile "
            f"interval over {iv.n_boot} resamples of the {iv.people} people (seed {iv.seed}), as maskstatus score "
            "gives it."
        )
    )
    sections = [
        H.Section("summary", "Summary", summary),
        H.Section("curves", "Learning curves", _curves_section(r)),
        H.Section("confusion", "Confusion matrices", _confusion_section(r)),
        H.Section("per-class", "Per class", _per_class_section(r)),
        H.Section("calibration", "Calibration", _calibration_section(r)),
        H.Section("headroom", "Where the score goes", _headroom_section(r)),
        H.Section("mistakes", "Confident mistakes", _mistakes_section(r)),
    ]
    if r.is_cv:
        sections.append(H.Section("folds", "Fold-to-fold spread", _folds_section(r)))
    # Last and folded: long, and read only when a number above needs explaining.
    config = (
        f"<details><summary>{H.esc(r.config_file)}</summary><pre>{H.esc(r.config_file.read_text())}</pre></details>"
    )
    sections.append(H.Section("config", "Config", config))
    return H.page(f"maskstatus {kind} report: {r.path.name}", str(r.path), sections, GENERATOR)


def check_report_output(path: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Refuse ``out`` before any work: inside a run, CV or data folder only ``<path>/report.html`` may be written,
    and an existing file only if it is an earlier report page, or with ``overwrite`` (see ``maskstatus.outputs``).
    """
    return check_output(
        out,
        command="report",
        own=[Path(path) / REPORT_NAME],
        previous=lambda p: H.is_page_of(p, GENERATOR),
        overwrite=overwrite,
    )


def write_report(path: str | Path, out: str | Path, overwrite: bool = False) -> tuple[Path, ReportResult]:
    """Read the run or CV folder at ``path`` and write its page to ``out``; returns (the file, the result).

    ``out`` is checked first (``check_report_output``).
    """
    check_report_output(path, out, overwrite)
    result = analyse_run(path)
    return H.write_page(render(result), out), result


__all__ = [
    "ReportResult",
    "analyse_run",
    "calibration",
    "check_report_output",
    "confident_mistakes",
    "fold_scores",
    "per_class_table",
    "render",
    "write_report",
]
