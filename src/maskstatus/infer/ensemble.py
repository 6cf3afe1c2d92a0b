"""Ensembles of runs: combine probabilities (soft or hard vote), score the out-of-fold ensemble.

An ensemble member is a folder given by the user: a run folder (its
``predictions/oof.csv`` and its checkpoint), or a cross-validation folder (an
``oof.csv`` at its top covering every fold, and one fold run per subfolder).
For eval predictions a CV folder stands for the mean of its fold runs, so it is
one member, just as its ``oof.csv`` is one member out of fold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from ..age import AGE_MEAN, AGE_SIGMA
from ..errors import UsageError
from ..labels import MASK_NAMES, NUM_CLASSES, PROB_COLUMNS, TASKS, split_class_probs
from ..scoring.metrics import compute_metrics
from ..scoring.oof import KEY_COLUMNS, member_config, read_oof

logger = logging.getLogger(__name__)

Vote = Literal["soft", "hard"]


def normalize_weights(weights: Sequence[float] | None, count: int) -> np.ndarray:
    """Weights (None = equal) -> float64 array summing to 1; clear errors for a bad list."""
    if weights is None:
        return np.full(count, 1.0 / count)
    w = np.asarray(list(weights), dtype=np.float64)
    if w.shape != (count,):
        raise UsageError(f"got {w.size} weight(s) for {count} ensemble member(s); give one weight per --run")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise UsageError(f"weights must be finite and >= 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise UsageError(f"weights must not all be zero, got {w.tolist()}")
    return w / w.sum()


def check_vote(vote: str) -> Vote:
    if vote not in ("soft", "hard"):
        raise UsageError(f"vote must be 'soft' or 'hard', got {vote!r}")
    return vote  # type: ignore[return-value]


def combine_probs(
    member_probs: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    vote: Vote = "soft",
    member_tasks: Sequence[Sequence[str]] | None = None,
    member_states: Sequence[Sequence[str]] | None = None,
) -> np.ndarray:
    """Per-member probabilities, each (N, 18) in the same row order -> ensemble probabilities (N, 18), float32.

    soft: the weighted mean. hard: each member votes for its argmax class with its
    weight; the class with most votes wins, ties go to the larger weighted sum of
    probabilities; the result is one-hot. When some member predicts only some
    tasks (``member_tasks``, a per-task model) or was trained on faces of some mask
    states only (``member_states``, a cascade expert), the ensemble is combined
    task by task; see :func:`_combine_per_task`.
    """
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    check_vote(vote)
    stack = np.stack([np.asarray(p, dtype=np.float64) for p in member_probs])  # (M, N, 18)
    w = normalize_weights(weights, len(stack))
    tasks = [tuple(TASKS)] * len(stack) if member_tasks is None else [tuple(t) for t in member_tasks]
    states = [MASK_NAMES] * len(stack) if member_states is None else [tuple(s) for s in member_states]
    if len(tasks) != len(stack) or len(states) != len(stack):
        raise ValueError(f"{len(stack)} members but {len(tasks)} task lists and {len(states)} mask-state lists")
    if any(set(t) != set(TASKS) for t in tasks) or any(set(s) != set(MASK_NAMES) for s in states):
        return _combine_per_task(stack, w, tasks, states, vote)
    mean = np.tensordot(w, stack, axes=1)
    if vote == "soft":
        return mean.astype(np.float32)
    n = stack.shape[1]
    votes = np.zeros((n, NUM_CLASSES))
    for wm, probs in zip(w, stack, strict=True):
        votes[np.arange(n), probs.argmax(axis=1)] += wm
    # isclose: weights are floats, so equal vote totals may differ in the last bit.
    tied = np.isclose(votes, votes.max(axis=1, keepdims=True), rtol=0.0, atol=1e-9)
    winner = np.where(tied, mean, -np.inf).argmax(axis=1)
    return np.eye(NUM_CLASSES, dtype=np.float32)[winner]


def _weighted_marginal(marginals: list[dict], w: np.ndarray, members: list[int], task: str) -> np.ndarray:
    tw = w[members] / w[members].sum() if w[members].sum() > 0 else np.full(len(members), 1 / len(members))
    return sum(wi * marginals[i][task] for wi, i in zip(tw, members, strict=True))


def _combine_per_task(
    stack: np.ndarray,
    w: np.ndarray,
    member_tasks: Sequence[Sequence[str]],
    member_states: Sequence[Sequence[str]],
    vote: Vote,
) -> np.ndarray:
    """Combine members task by task, and gender and age per mask state (the cascade).

    The mask marginal is the weighted mean over the members that predict the mask.
    For each mask state, the gender and age marginals are the weighted means over
    the members that predict that task and were trained on faces of that state
    (every member, unless some are cascade experts). The joint is
    ``p(mask) * p(gender | mask) * p(age | mask)``: each expert's say is weighted by
    the mask probability of its state, a soft version of choosing the expert by the
    predicted mask. Without experts it is the product of the averaged marginals.
    """
    if vote != "soft":
        raise UsageError(
            "per-task models and cascade experts combine by soft voting only "
            "(each task from the members that predict it)"
        )
    n = stack.shape[1]
    marginals = [split_class_probs(p) for p in stack]
    missing: dict[str, list[str]] = {}

    def marginal(task: str, state: str) -> np.ndarray:
        members = [i for i, tasks in enumerate(member_tasks) if task in tasks and state in member_states[i]]
        if not members:
            missing.setdefault(task, []).append(state)
            return np.full((n, TASKS[task]), 1.0 / TASKS[task])
        return _weighted_marginal(marginals, w, members, task)

    mask = marginal("mask", MASK_NAMES[0])  # a member predicting the mask was trained on every state
    joint = np.zeros((n, TASKS["mask"], TASKS["gender"], TASKS["age"]))
    for m, state in enumerate(MASK_NAMES):
        gender, age = marginal("gender", state), marginal("age", state)
        joint[:, m] = mask[:, m, None, None] * gender[:, :, None] * age[:, None, :]
    for task, states in missing.items():
        # Still useful to look at one per-task model's probabilities, but the submission guesses these parts.
        what = (
            f"the {task!r} task"
            if task == "mask" or len(states) == len(MASK_NAMES)
            else f"the {task!r} task of {'/'.join(states)} faces"
        )
        logger.warning(
            "no ensemble member predicts %s: it counts as uniform, so the submission guesses it; "
            "add a run trained for it",
            what,
        )
    return joint.reshape(n, NUM_CLASSES).astype(np.float32)


def member_tasks(path: Path | str) -> tuple[str, ...]:
    """The tasks a run or CV folder's model predicts (all of them unless it is a per-task model)."""
    cfg = member_config(path)
    return tuple(cfg.model.tasks) if cfg is not None else tuple(TASKS)  # a bare oof.csv: nothing says otherwise


def member_states(path: Path | str) -> tuple[str, ...]:
    """The mask states a run or CV folder's model was trained on (all of them unless it is a cascade expert)."""
    cfg = member_config(path)
    return tuple(cfg.data.mask_states) if cfg is not None else MASK_NAMES


def ensemble_oof(
    run_dirs: Sequence[Path | str], weights: Sequence[float] | None = None, vote: Vote = "soft"
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Combine the members' out-of-fold probabilities and score them; writes nothing.

    Rows are matched on (person_id, stem); only images every member predicted are
    kept, in the first member's order, with its labels. Returns a table with the
    columns of a run's oof.csv (so it can itself be an ensemble member) and
    ``compute_metrics`` of it. The predicted years of the members that have them
    are averaged plainly into ``age_mean`` / ``age_sigma``, as ``predict`` averages
    them, so the ensemble's age cut points can be tuned out of fold.
    """
    if not run_dirs:
        raise ValueError("an ensemble needs at least one run")
    # A bad weight list or vote fails before anything is read.
    normalize_weights(weights, len(run_dirs))
    check_vote(vote)
    tables = [read_oof(d) for d in run_dirs]
    keys = [pd.MultiIndex.from_frame(t[KEY_COLUMNS]) for t in tables]
    common = keys[0]
    for k in keys[1:]:
        common = common[common.isin(k)]
    if len(common) == 0:
        raise UsageError("the runs' out-of-fold predictions have no (person_id, stem) in common")
    for d, t, k in zip(run_dirs, tables, keys, strict=True):
        dropped = len(t) - int(k.isin(common).sum())
        if dropped:
            logger.warning("%s: %d of %d OOF images are not in every run and are left out", d, dropped, len(t))
    aligned = [t.set_index(KEY_COLUMNS).loc[common] for t in tables]

    base = aligned[0]
    labels = base["label"].to_numpy(np.int64)
    for d, a in zip(run_dirs[1:], aligned[1:], strict=True):
        differ = int((a["label"].to_numpy(np.int64) != labels).sum())
        if differ:  # e.g. runs trained with different relabel files
            logger.warning("%s: %d labels differ from %s; scoring with the latter's", d, differ, run_dirs[0])

    probs = combine_probs(
        [a[PROB_COLUMNS].to_numpy() for a in aligned],
        weights,
        vote,
        [member_tasks(d) for d in run_dirs],
        [member_states(d) for d in run_dirs],
    )
    out = base[["image_path", "label", "fold"]].reset_index()
    out = pd.concat([out, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    years = [a[[AGE_MEAN, AGE_SIGMA]].to_numpy(np.float64) for a in aligned if {AGE_MEAN, AGE_SIGMA} <= set(a.columns)]
    if years:
        out[AGE_MEAN], out[AGE_SIGMA] = np.mean(years, axis=0).T
    return out, compute_metrics(probs, labels)
