"""Planting label errors in an OOF table and counting how many the finder catches."""

import numpy as np
import pandas as pd
import pytest
from data_builders import clean_oof_rows, uneven_oof, with_task_probs

from maskstatus.scoring.label_error_recall import (
    compare_rankers,
    inject_label_errors,
    injected_found,
    simulate_recall,
)
from functools import partial

from maskstatus.scoring.label_errors import find_label_errors, score_people
from maskstatus.errors import UsageError
from maskstatus.labels import PROB_COLUMNS, TASKS, decode


def _oof(people: int = 30, confidence: float = 0.97, seed: int = 0) -> pd.DataFrame:
    """Clean labels; each photo's prediction puts ``confidence`` on its true label (uniform when 1/k)."""
    table, truth, _ = clean_oof_rows(people, np.random.default_rng(seed))
    task_probs = {}
    for t, codes in zip(("mask", "gender", "age"), truth.T):
        k = TASKS[t]
        probs = np.full((len(codes), k), (1 - confidence) / (k - 1))
        probs[np.arange(len(codes)), codes] = confidence
        task_probs[t] = probs
    return with_task_probs(table, task_probs)


def test_inject_changes_only_the_planted_labels():
    oof = _oof()
    planted, injected = inject_label_errors(oof, np.random.default_rng(1), gender=3, age=4, swap=2)
    assert injected.groupby("task").size().to_dict() == {"gender": 3, "age": 4, "mask_swap": 2}
    assert injected.person_id.is_unique  # disjoint people
    assert (planted[PROB_COLUMNS].to_numpy() == oof[PROB_COLUMNS].to_numpy()).all()
    m0, g0, a0 = decode(oof.label.to_numpy())
    m1, g1, a1 = decode(planted.label.to_numpy())
    for pid, task in injected.itertuples(index=False):
        rows = (oof.person_id == pid).to_numpy()
        if task == "gender":
            assert (g1[rows] != g0[rows]).all() and (a1[rows] == a0[rows]).all() and (m1[rows] == m0[rows]).all()
        elif task == "age":
            # neighbour mode: one group away, the same on every photo
            assert (np.abs(a1[rows] - a0[rows]) == 1).all() and len(set(a1[rows])) == 1
            assert (g1[rows] == g0[rows]).all()
        else:
            stems = oof.stem[rows].tolist()
            masks = dict(zip(stems, m1[rows]))
            assert (masks["incorrect_mask"], masks["normal"]) == (2, 1)
            assert all(masks[s] == 0 for s in stems if s.startswith("mask"))
    untouched = ~oof.person_id.isin(injected.person_id).to_numpy()
    assert (planted.label.to_numpy()[untouched] == oof.label.to_numpy()[untouched]).all()


def test_inject_refuses_more_than_there_are_people():
    with pytest.raises(UsageError, match="swap"):
        inject_label_errors(_oof(people=3), np.random.default_rng(0), swap=4)
    with pytest.raises(UsageError, match="age_mode"):
        inject_label_errors(_oof(people=3), np.random.default_rng(0), age=1, age_mode="far")


def test_confident_model_finds_every_planted_error():
    report = simulate_recall(_oof(), {"gender": 3, "age": 2, "mask_swap": 2}, draws=4, seed=0, top=10)
    for task in ("gender", "age", "mask_swap"):
        assert report["per_task"][task]["recall"] == {"mean": 1.0, "min": 1.0, "max": 1.0, "lo": 1.0, "hi": 1.0}
        assert report["per_task"][task]["listed_injected"] == report["per_task"][task]["listed"]
    assert report["overall"]["recall"]["mean"] == 1.0


def test_uninformative_model_finds_nothing():
    # Uniform predictions: gender scores 0.5, age 0.67, swap 0.33 for everyone, all below min_score=0.9.
    uniform = _oof(confidence=0.5)
    uniform[PROB_COLUMNS] = 1.0 / len(PROB_COLUMNS)
    report = simulate_recall(uniform, {"gender": 3, "age": 2, "mask_swap": 2}, draws=3, top=50, min_score=0.9)
    for task in ("gender", "age", "mask_swap"):
        assert report["per_task"][task]["recall"]["max"] == 0.0
        assert report["per_task"][task]["listed"] == 0.0
    assert report["overall"]["recall"]["max"] == 0.0


def test_injected_found_counts_per_task():
    oof = _oof()
    planted, injected = inject_label_errors(oof, np.random.default_rng(3), gender=2, swap=1)
    counts = injected_found(find_label_errors(planted), injected)
    assert counts["gender"] == {"injected": 2, "found": 2, "listed": 2, "listed_injected": 2}
    assert counts["mask_swap"]["found"] == 1 and counts["age"]["injected"] == 0


def test_compare_rankers_pairs_the_same_draws():
    oof, counts = uneven_oof(), {"gender": 5, "age": 5, "mask_swap": 3}
    report = compare_rankers(oof, counts, draws=5, seed=2, top=5, min_score=0.0)
    assert set(report["rankers"]) == {"confidence", "cleanlab", "combined"}
    # The same seed plants the same errors: each ranker's report is simulate_recall's with that ranker alone.
    alone = simulate_recall(oof, counts, draws=5, seed=2, top=5, min_score=0.0,
                            scorer=partial(score_people, ranker="cleanlab"))
    assert report["rankers"]["cleanlab"] == alone
    assert set(report["differences"]) == {"cleanlab - confidence", "combined - confidence", "combined - cleanlab"}
    for task in ("gender", "age", "mask_swap", "overall"):
        diff = report["differences"]["cleanlab - confidence"][task]
        a, b = (report["rankers"][r]["overall" if task == "overall" else "per_task"] for r in ("confidence", "cleanlab"))
        a, b = (x["recall"] if task == "overall" else x[task]["recall"] for x in (a, b))
        assert diff["mean"] == pytest.approx(b["mean"] - a["mean"])
        assert diff["min"] <= diff["lo"] <= diff["mean"] <= diff["hi"] <= diff["max"]
        assert diff["lo"] <= diff["mean_lo"] <= diff["mean"] <= diff["mean_hi"] <= diff["hi"]
        assert 0 <= diff["share_above_0"] + diff["share_below_0"] <= 1
    # The rankers do disagree on these draws, so the pairing above is not a comparison of zeros.
    assert report["differences"]["cleanlab - confidence"]["age"]["share_below_0"] > 0
    with pytest.raises(UsageError, match="rankers"):
        compare_rankers(oof, counts, rankers=["confidence", "margin"], draws=1)


def test_compare_rankers_perfect_model_no_difference():
    report = compare_rankers(_oof(), {"gender": 3, "age": 2, "mask_swap": 2}, rankers=["confidence", "cleanlab"],
                             draws=3, top=10)
    assert report["rankers"]["cleanlab"]["overall"]["recall"]["mean"] == 1.0
    diff = report["differences"]["cleanlab - confidence"]["overall"]
    assert diff["mean"] == diff["mean_lo"] == diff["mean_hi"] == 0.0 and diff["share_above_0"] == 0.0
