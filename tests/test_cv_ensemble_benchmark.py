"""benchmarks/cv_ensemble.py on made-up out-of-fold tables: what it reports, and a known case."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from maskstatus.labels import NUM_CLASSES, PROB_COLUMNS, encode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cv_ensemble  # noqa: E402

PEOPLE = 60


def _truth() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for p in range(PEOPLE):
        gender, age = int(rng.integers(2)), float(rng.integers(18, 75))
        group = 0 if age < 30 else (1 if age < 60 else 2)
        for i, mask in enumerate([0, 0, 0, 0, 0, 1, 2]):
            rows.append((f"{p:06d}", f"mask{i}", f"/x/{p}/{i}.jpg", encode(mask, gender, group), p % 5, age))
    return pd.DataFrame(rows, columns=["person_id", "stem", "image_path", "label", "fold", "age"])


def _member(root: Path, truth: pd.DataFrame, right: float, seed: int) -> Path:
    """A run whose answer is right for about ``right`` of the people, with years near the truth."""
    rng = np.random.default_rng(seed)
    good = {p: rng.random() < right for p in truth["person_id"].unique()}
    probs = np.full((len(truth), NUM_CLASSES), 0.2 / (NUM_CLASSES - 1))
    for i, (p, label) in enumerate(zip(truth["person_id"], truth["label"])):
        probs[i, label if good[p] else (label + 1) % NUM_CLASSES] = 0.8
    oof = truth.drop(columns="age").assign(age_mean=truth["age"] + rng.normal(0, 3, len(truth)), age_sigma=3.0)
    (root / "predictions").mkdir(parents=True)
    pd.concat([oof, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1).to_csv(root / "predictions" / "oof.csv",
                                                                             index=False)
    return root


def test_reports_members_ensemble_and_the_paired_gain(tmp_path):
    truth = _truth()
    weak, strong = _member(tmp_path / "weak", truth, 0.5, 1), _member(tmp_path / "strong", truth, 0.9, 2)
    out = tmp_path / "ens.json"
    # All the weight on the strong member: the ensemble is that member, to the bit.
    assert cv_ensemble.main(["--member", str(weak), "--member", str(strong), "--weights", "0,1", "--out", str(out),
                             "--boot", "200"]) == 0
    report = json.loads(out.read_text())
    assert report["people"] == PEOPLE and report["images"] == 7 * PEOPLE
    weak_f1, strong_f1 = (m["oof_f1"] for m in report["members"])
    assert strong_f1 > weak_f1
    assert report["ensemble"]["oof_f1"] == strong_f1
    gain = report["gain_over_best_member"]
    assert gain["member"] == str(strong) and gain["f1_gain"] == 0.0 and gain["f1_gain_ci"] == [0.0, 0.0]
    (against_first,) = report["members_against_the_first"]
    assert against_first["member"] == str(strong) and against_first["f1_gain"] == strong_f1 - weak_f1
    assert 0.0 < against_first["f1_gain_ci"][0] <= against_first["f1_gain_ci"][1]  # 0.9 against 0.5 right
    for key in ("oof_f1_ci", "oof_mask_f1_ci", "oof_gender_f1_ci", "oof_age_f1_ci"):
        lo, hi = report["ensemble"][key]
        assert lo <= report["ensemble"][key.removesuffix("_ci")] <= hi
    room = report["where_the_score_goes"]
    assert room["headroom"]["f1"] == report["ensemble"]["oof_f1"]
    # Every wrong answer of the made-up members is the next class, which always moves the age group.
    assert room["headroom"]["f1_true_age"] > room["headroom"]["f1"]
    assert "age_by_band" not in room  # made-up runs: no config, so no train table to read the given years from
    tuned = report["tuned_cuts_cross_fitted"]
    assert len(tuned["members"]) == 2 and 0.0 <= tuned["ensemble"]["oof_f1"] <= 1.0
    assert report["commit"] and report["command"]
