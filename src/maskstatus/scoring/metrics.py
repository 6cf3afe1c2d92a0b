"""Validation metrics (macro F1 over the 18 classes, plus per task) and plots.

Plots use matplotlib's object API (``Figure`` rather than ``pyplot``) so they
need no display, never switch the global backend and hold no global state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix

from ..labels import NUM_CLASSES, TASKS, decode, split_class_probs

_logger = logging.getLogger(__name__)

PathLike = str | Path


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probs must have shape (N, {NUM_CLASSES}), got {probs.shape}")
    if probs.shape[0] != labels.shape[0]:
        raise ValueError(f"{probs.shape[0]} rows of probs but {labels.shape[0]} labels")
    if labels.shape[0] == 0:
        raise ValueError("cannot compute metrics on an empty set")
    return probs, labels


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Mean F1 over classes 0..num_classes-1 of integer codes: the competition metric, the project's one definition.

    A class missing from this split still counts (as 0), the way the leaderboard's macro F1
    over all classes does (sklearn's ``f1_score(labels=range(k), average="macro",
    zero_division=0)``). One bincount, because the age-cut tuner calls it hundreds of times.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = num_classes
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    f1 = np.divide(2 * tp, denom, out=np.zeros(k), where=denom > 0)
    return float(f1.mean())


def compute_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """18-class probabilities (N, 18) and true class codes (N,) -> metrics.

    Keys: ``f1`` (macro over all 18 classes) and ``acc`` of the argmax over the 18
    probabilities; ``<task>_f1`` and ``<task>_acc`` for each task, predicting the
    argmax of that task's marginal probabilities.
    """
    probs, labels = _check(probs, labels)
    pred = probs.argmax(axis=1)
    out = {"f1": macro_f1(labels, pred, NUM_CLASSES), "acc": float(accuracy_score(labels, pred))}
    marginals = split_class_probs(probs)
    for task, true in zip(TASKS, decode(labels), strict=True):
        task_pred = marginals[task].argmax(axis=1)
        out[f"{task}_f1"] = macro_f1(true, task_pred, TASKS[task])
        out[f"{task}_acc"] = float(accuracy_score(true, task_pred))
    return out


def model_metrics(
    probs: np.ndarray, labels: np.ndarray, tasks: Sequence[str] = tuple(TASKS), mask_states: Sequence[int] = (0, 1, 2)
) -> dict[str, float]:
    """``compute_metrics`` of what a model was trained to predict, plus ``score``.

    ``score`` is what best checkpoints, early stopping and plateaus follow: the
    18-class macro F1, or for a per-task model (``tasks`` a subset) the mean F1 of
    its tasks, with the metrics of the tasks it does not predict blanked (NaN),
    since its 18-class F1 means nothing alone. A cascade expert trained on some
    ``mask_states`` (mask codes) is scored on images of those states only.
    """
    probs, labels = _check(probs, labels)
    if len(set(mask_states)) < TASKS["mask"]:
        keep = np.isin(decode(labels)[0], list(mask_states))
        if not keep.any():
            raise ValueError(f"no image of mask state(s) {sorted(mask_states)} to score")
        probs, labels = probs[keep], labels[keep]
    metrics = compute_metrics(probs, labels)
    present = [t for t in TASKS if t in tasks]
    if len(present) == len(TASKS):
        return {**metrics, "score": metrics["f1"]}
    out = {**metrics, "f1": float("nan"), "acc": float("nan")}
    for t in TASKS:
        if t not in present:
            out[f"{t}_f1"] = out[f"{t}_acc"] = float("nan")
    out["score"] = float(np.mean([metrics[f"{t}_f1"] for t in present]))
    return out


def confusion(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(18, 18) counts: rows are true classes, columns argmax predictions."""
    probs, labels = _check(probs, labels)
    return confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(NUM_CLASSES)))


def plot_confusion(matrix: np.ndarray, path: PathLike, class_names: Sequence[str]) -> Path:
    """Save the confusion matrix as a PNG: colour is the row-normalised rate (recall), text the count."""
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix shape {matrix.shape} does not match {n} class names")
    row_sums = matrix.sum(axis=1, keepdims=True)
    # Colour by recall so rare classes are as readable as common ones.
    rates = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, dtype=np.float64), where=row_sums > 0)

    size = max(6.0, 0.55 * n + 2.0)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(n), labels=list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, f"{matrix[i, j]:g}", ha="center", va="center", fontsize=6, color=color)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _logger.debug("wrote confusion matrix plot %s", path)
    return path


def plot_curves(metrics_csv_path: PathLike, out_png: PathLike) -> Path:
    """Plot train/val loss and val F1 per epoch from a metrics.csv (columns besides those are ignored)."""
    import pandas as pd
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    df = pd.read_csv(metrics_csv_path)
    if "epoch" not in df.columns:
        raise ValueError(f"{metrics_csv_path} has no 'epoch' column (columns: {list(df.columns)})")
    # A trainer may log several rows per epoch (e.g. train and val separately);
    # keep the last non-empty value of each column per epoch.
    df = df.groupby("epoch", sort=True).last()

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_f1 = fig.subplots(1, 2)
    for col, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        if col in df.columns:
            series = df[col].dropna()
            ax_loss.plot(series.index, series.values, marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    if ax_loss.has_data():
        ax_loss.legend()
    if "val_f1" in df.columns:
        series = df["val_f1"].dropna()
        ax_f1.plot(series.index, series.values, marker="o", color="tab:green", label="val macro F1")
        if len(series):
            best = series.idxmax()
            ax_f1.axvline(best, color="gray", linestyle=":", label=f"best {series.max():.4f} @ {best}")
        ax_f1.legend()
    ax_f1.set_xlabel("epoch")
    ax_f1.set_ylabel("macro F1")
    ax_f1.set_title("validation macro F1")
    for ax in (ax_loss, ax_f1):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _logger.debug("wrote curves plot %s", out)
    return out
