"""How many label errors does the finder catch? Plant errors in an OOF table's labels and count.

Each out-of-fold prediction of a person comes from a model that never saw that
person, so changing the person's label after training leaves every prediction
exactly as it would have been had the label been wrong all along: the planted
error is judged by the finder as a real one would be. Two caveats: a real
error was also in the other folds' training data (a slightly different model,
a weak effect for a few people out of thousands), and real errors need not be
spread like random ones (a real age error likely sits nearer a group boundary
than a randomly moved group does, so the age recall here is an upper bound).

Planted errors, on disjoint people picked at random per draw:

- ``gender``: the gender of all the person's photos flips.
- ``age``: the person's age group moves to another group: ``neighbour`` (young
  and old to middle, middle to young or old at random) or ``random`` (either
  other group); neighbour moves are the harder and more realistic case.
- ``mask_swap``: the mask labels of the incorrect_mask and normal photos swap.

A planted error counts as found when the finder lists that (person, task), i.e.
within the top ``top`` of its task with score >= ``min_score``. ``compare_rankers``
runs every ranker of ``find-label-errors`` on the same draws and pairs their
recalls draw by draw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd

from ..choices import LABEL_ERROR_RANKERS
from ..data.relabel import SWAP_STEMS
from ..defaults import DEFAULT_LEVEL
from ..errors import UsageError
from ..labels import TASKS, decode, encode
from .label_errors import TASK_NAMES, rank_suspects, score_people

__all__ = [
    "AGE_MODES",
    "INJECTED_COLUMNS",
    "compare_rankers",
    "inject_label_errors",
    "injected_found",
    "simulate_recall",
]

AgeMode = Literal["neighbour", "random"]
AGE_MODES: tuple[str, ...] = ("neighbour", "random")
INJECTED_COLUMNS: tuple[str, ...] = ("person_id", "task")

Scorer = Callable[[pd.DataFrame], pd.DataFrame]


def _swap_eligible(oof: pd.DataFrame, mask: np.ndarray) -> list[str]:
    """People with both swap photos carrying different masks: only they get a mask_swap row from the finder."""
    stems = oof["stem"].astype(str).str.lower()
    pair = pd.DataFrame({"person_id": oof["person_id"].to_numpy(), "stem": stems.to_numpy(), "mask": mask})
    pair = pair[pair["stem"].isin(SWAP_STEMS)].drop_duplicates(["person_id", "stem"])
    wide = pair.pivot(index="person_id", columns="stem", values="mask")
    if not set(SWAP_STEMS) <= set(wide.columns):
        return []
    wide = wide.dropna()
    return list(wide.index[wide[SWAP_STEMS[0]] != wide[SWAP_STEMS[1]]])


def inject_label_errors(
    oof: pd.DataFrame,
    rng: np.random.Generator,
    gender: int = 0,
    age: int = 0,
    swap: int = 0,
    age_mode: AgeMode = "neighbour",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A copy of ``oof`` with label errors planted on disjoint random people, and the planted (person_id, task) rows.

    Only the ``label`` column changes; the probabilities stay. Raises UsageError
    when there are not enough people (or, for swaps, people with both photos).
    """
    if age_mode not in AGE_MODES:
        raise UsageError(f"age_mode must be one of {list(AGE_MODES)}, got {age_mode!r}")
    if min(gender, age, swap) < 0:
        raise UsageError(f"error counts must be >= 0, got gender={gender}, age={age}, swap={swap}")
    ids = oof["person_id"].astype(str).to_numpy()
    mask, gen, grp = decode(oof["label"].to_numpy(dtype=np.int64))
    mask, gen, grp = mask.copy(), gen.copy(), grp.copy()

    eligible = _swap_eligible(oof.assign(person_id=ids), mask)
    if swap > len(eligible):
        raise UsageError(f"{swap} mask swaps asked for, but only {len(eligible)} people have both swap photos")
    swapped = list(rng.choice(np.array(eligible, dtype=object), size=swap, replace=False)) if swap else []
    rest = np.array(sorted(set(ids) - set(swapped)), dtype=object)
    if gender + age > len(rest):
        raise UsageError(f"{gender + age} gender/age errors asked for, but only {len(rest)} people are left")
    picked = rng.permutation(rest)[: gender + age]
    flipped, moved = list(picked[:gender]), list(picked[gender:])

    gen[np.isin(ids, flipped)] ^= 1
    for pid in moved:
        rows = ids == pid
        old = int(np.bincount(grp[rows], minlength=TASKS["age"]).argmax())
        others = [g for g in range(TASKS["age"]) if g != old]
        if age_mode == "neighbour":
            others = [g for g in others if abs(g - old) == 1]
        grp[rows] = int(rng.choice(others))
    stems = oof["stem"].astype(str).str.lower().to_numpy()
    for pid in swapped:
        first = (ids == pid) & (stems == SWAP_STEMS[0])
        second = (ids == pid) & (stems == SWAP_STEMS[1])
        a, b = mask[first][0], mask[second][0]
        mask[first], mask[second] = b, a

    out = oof.copy()
    out["label"] = encode(mask, gen, grp)
    injected = pd.DataFrame(
        [(p, "gender") for p in flipped] + [(p, "age") for p in moved] + [(p, "mask_swap") for p in swapped],
        columns=list(INJECTED_COLUMNS),
    )
    return out, injected


def injected_found(suspects: pd.DataFrame, injected: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Per task: planted errors, how many the suspects list holds, the list's length and how many of it are planted."""
    listed = set(zip(suspects["person_id"].astype(str), suspects["task"], strict=True))
    planted = set(zip(injected["person_id"].astype(str), injected["task"], strict=True))
    out: dict[str, dict[str, int]] = {}
    for task in TASK_NAMES:
        mine = {key for key in planted if key[1] == task}
        rows = {key for key in listed if key[1] == task}
        out[task] = {
            "injected": len(mine),
            "found": len(mine & rows),
            "listed": len(rows),
            "listed_injected": len(rows & planted),
        }
    return out


def _summary(values: list[float], level: float = DEFAULT_LEVEL) -> dict[str, float]:
    """Mean, min, max and the central ``level`` interval (lo, hi) of per-draw values."""
    arr = np.asarray(values, dtype=np.float64)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(arr, [alpha, 1.0 - alpha])
    return {
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "lo": float(lo),
        "hi": float(hi),
    }


def _difference(values: np.ndarray, level: float, seed: int) -> dict[str, float]:
    """A paired per-draw difference: its spread over draws, and the bootstrap interval of its mean over draws."""
    from scipy.stats import bootstrap

    out = _summary(list(values), level)
    if len(values) > 1 and np.ptp(values) > 0:
        mean_ci = bootstrap(
            (values,),
            np.mean,
            confidence_level=level,
            method="percentile",
            n_resamples=2000,
            random_state=np.random.default_rng(seed),
        ).confidence_interval
        out["mean_lo"], out["mean_hi"] = float(mean_ci.low), float(mean_ci.high)
    else:  # every draw the same difference (or one draw): nothing to resample
        out["mean_lo"] = out["mean_hi"] = float(values.mean())
    out["share_above_0"] = float((values > 0).mean())
    out["share_below_0"] = float((values < 0).mean())
    return out


def _check_counts(counts: Mapping[str, int], draws: int) -> None:
    unknown = set(counts) - set(TASK_NAMES)
    if unknown:
        raise UsageError(f"unknown task(s) {sorted(unknown)} in counts; tasks are {list(TASK_NAMES)}")
    if draws < 1:
        raise UsageError(f"draws must be >= 1, got {draws}")


def _per_draw(
    oof: pd.DataFrame,
    counts: Mapping[str, int],
    scorers: Mapping[str, Scorer],
    draws: int,
    seed: int,
    top: int,
    min_score: float,
    age_mode: AgeMode,
) -> dict[str, dict]:
    """Per scorer, per task: the injected_found counts of every draw and the found counts by rank alone.

    Every scorer judges the same planted tables, so their recalls pair draw by draw.
    """
    _check_counts(counts, draws)
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {
        name: {"found": {t: [] for t in TASK_NAMES}, "rank_only": {t: [] for t in TASK_NAMES}} for name in scorers
    }
    for _ in range(draws):
        planted_oof, injected = inject_label_errors(
            oof, rng, counts.get("gender", 0), counts.get("age", 0), counts.get("mask_swap", 0), age_mode
        )
        for name, scorer in scorers.items():
            scores = scorer(planted_oof)
            found = injected_found(rank_suspects(scores, top, min_score), injected)
            by_rank = injected_found(rank_suspects(scores, top, -np.inf), injected)
            for task in TASK_NAMES:
                out[name]["found"][task].append(found[task])
                out[name]["rank_only"][task].append(by_rank[task]["found"])
    return out


def _recalls(draws: dict) -> dict[str, np.ndarray]:
    """Per task with planted errors, and "overall" (the tasks pooled): the recall of every draw."""
    out: dict[str, np.ndarray] = {}
    found = draws["found"]
    for task in TASK_NAMES:
        n = found[task][0]["injected"]
        if n:
            out[task] = np.array([r["found"] / n for r in found[task]], dtype=np.float64)
    total = sum(found[t][0]["injected"] for t in TASK_NAMES)
    if total:
        out["overall"] = np.array(
            [sum(found[t][d]["found"] for t in TASK_NAMES) / total for d in range(len(found[TASK_NAMES[0]]))]
        )
    return out


def _report(draws: dict, level: float) -> dict:
    report: dict = {"per_task": {}}
    recalls = _recalls(draws)
    for task in TASK_NAMES:
        rows = draws["found"][task]
        n = rows[0]["injected"]
        task_report: dict[str, float | dict[str, float]] = {
            key: float(np.mean([r[key] for r in rows])) for key in rows[0]
        }
        if n:
            task_report["recall"] = _summary(list(recalls[task]), level)
            task_report["rank_only_recall"] = float(np.mean(draws["rank_only"][task]) / n)
        report["per_task"][task] = task_report
    if "overall" in recalls:
        report["overall"] = {"recall": _summary(list(recalls["overall"]), level)}
    return report


def simulate_recall(
    oof: pd.DataFrame,
    counts: Mapping[str, int],
    draws: int = 20,
    seed: int = 0,
    top: int = 50,
    min_score: float = 0.5,
    age_mode: AgeMode = "neighbour",
    scorer: Scorer = score_people,
    level: float = DEFAULT_LEVEL,
) -> dict:
    """Recall of planted errors over ``draws`` random draws; ``counts`` maps gender/age/mask_swap to errors per draw.

    Returns {"per_task": {task: {"recall": {mean,min,max,lo,hi}, "found", "injected",
    "listed", "listed_injected" (means per draw), "rank_only_recall" (the mean
    recall within the top ``top`` with no minimum score)}}, "overall": {"recall":
    {mean,min,max,lo,hi}}} where overall pools the tasks' planted errors of a draw
    and lo..hi holds the central ``level`` of the draws. ``scorer`` is
    ``score_people`` or a variant with the same output.
    """
    per_draw = _per_draw(oof, counts, {"scorer": scorer}, draws, seed, top, min_score, age_mode)
    return _report(per_draw["scorer"], level)


def compare_rankers(
    oof: pd.DataFrame,
    counts: Mapping[str, int],
    rankers: Sequence[str] = LABEL_ERROR_RANKERS,
    draws: int = 20,
    seed: int = 0,
    top: int = 50,
    min_score: float = 0.5,
    age_mode: AgeMode = "neighbour",
    level: float = DEFAULT_LEVEL,
) -> dict:
    """:func:`simulate_recall` of every ranker on the SAME planted draws, and their paired differences.

    Returns {"rankers": {ranker: simulate_recall's report}, "differences": {"B - A":
    {task or "overall": {mean, min, max, lo, hi, mean_lo, mean_hi, share_above_0,
    share_below_0}}}} for every later ranker B against every earlier A: the
    recall of B minus that of A draw by draw; lo..hi holds the central ``level`` of
    the draws, mean_lo..mean_hi is the bootstrap interval (over draws) of the mean
    difference, which says whether one ranker finds more on average.
    """
    unknown = [r for r in rankers if r not in LABEL_ERROR_RANKERS]
    if unknown or not rankers:
        raise UsageError(f"rankers must be some of {', '.join(LABEL_ERROR_RANKERS)}, got {list(rankers)}")
    scorers = {r: partial(score_people, ranker=r) for r in dict.fromkeys(rankers)}
    per_draw = _per_draw(oof, counts, scorers, draws, seed, top, min_score, age_mode)
    recalls = {r: _recalls(per_draw[r]) for r in scorers}
    names = list(scorers)
    differences = {
        f"{b} - {a}": {key: _difference(recalls[b][key] - recalls[a][key], level, seed) for key in recalls[a]}
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    return {"rankers": {r: _report(per_draw[r], level) for r in names}, "differences": differences}
