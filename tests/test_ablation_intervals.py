"""The ablation table's person-bootstrap intervals: rendered from row JSONs, added where a row's OOF is at hand."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskstatus.age import AGE_MEAN, AGE_SIGMA, group_probs_np
from maskstatus.scoring.bootstrap import person_bootstrap
from maskstatus.config import load_config, save_config
from maskstatus.scoring.age_cuts import cross_fitted_metrics
from maskstatus.infer.ensemble import ensemble_oof
from maskstatus.scoring.oof import read_oof
from maskstatus.labels import PROB_COLUMNS, combine_task_probs, encode
from maskstatus.scoring.metrics import compute_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ablation  # noqa: E402


def _fake_run(folder: Path, seed: int, people: int = 80) -> Path:
    """A run folder holding only what scoring reads: config.yaml and an age-regression predictions/oof.csv."""
    truth = np.random.default_rng(100)  # every fake run predicts the same people
    ages, gender = truth.integers(18, 75, people), truth.integers(0, 2, people)
    rng = np.random.default_rng(seed)
    stems = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]
    masks = [0, 0, 0, 0, 0, 1, 2]
    n = people * 7
    person = np.repeat(np.arange(people), 7)
    mask = np.tile(masks, people)
    labels = encode(mask, gender[person], np.digitize(ages[person], [30, 60]))
    mean = ages[person] + rng.normal(0, 8, n)
    probs = combine_task_probs({
        "mask": 0.6 * np.eye(3)[mask] + 0.4 * rng.dirichlet(np.ones(3), n),
        "gender": 0.5 * np.eye(2)[gender[person]] + 0.5 * rng.dirichlet(np.ones(2), n),
        "age": group_probs_np(mean, np.full(n, 5.0), (29.5, 59.5)),
    })
    oof = pd.DataFrame({"person_id": [f"{p:06d}" for p in person], "stem": np.tile(stems, people),
                        "image_path": [f"/img/{p}/{s}.jpg" for p, s in zip(person, np.tile(stems, people))],
                        "label": labels, "fold": 0})
    oof[PROB_COLUMNS] = probs
    oof[AGE_MEAN], oof[AGE_SIGMA] = mean, 5.0
    (folder / "predictions").mkdir(parents=True)
    save_config(load_config(None, ["model.age_output=years"]), folder / "config.yaml")
    oof.to_csv(folder / "predictions" / "oof.csv", index=False)
    return folder


def _row_json(f1, **extra) -> dict:
    return {"oof_f1": f1, "oof_acc": 0.6, "oof_mask_f1": 0.99, "oof_gender_f1": 0.9, "oof_age_f1": 0.6,
            "machine": {"cpu": "Test CPU", "cores": 2}, **extra}


def test_table_shows_intervals_and_whether_rows_lie_inside_the_reference(tmp_path):
    plan = {"reference": "configs/demo.yaml", "fold": 0, "rows": [
        {"name": "reference"}, {"name": "close"}, {"name": "far"}, {"name": "old"}, {"name": "expert"},
        {"name": "not yet"}]}
    rows = {
        "reference": _row_json(0.53, oof_f1_ci=[0.50, 0.56]),
        "close": _row_json(0.55, oof_f1_ci=[0.52, 0.58]),
        "far": _row_json(0.60, oof_f1_ci=[0.57, 0.63]),
        "old": _row_json(0.54),
        "expert": _row_json(None, oof_f1_ci=None),
    }
    for name, r in rows.items():
        (tmp_path / f"{ablation.slug(name)}.json").write_text(json.dumps(r))
    lines = {line.split(" | ")[0][2:]: line.split(" | ") for line in ablation.render(plan, tmp_path).splitlines()
             if line.startswith("| ") and not line.startswith("| row ")}
    header = next(line for line in ablation.render(plan, tmp_path).splitlines() if line.startswith("| row "))
    col = {name: i for i, name in enumerate(header.split(" | "))}
    assert lines["reference"][col["90 % CI"]] == "0.500–0.560" and lines["reference"][col["in ref. CI"]] == ""
    assert lines["close"][col["90 % CI"]] == "0.520–0.580" and lines["close"][col["in ref. CI"]] == "yes"
    assert lines["far"][col["in ref. CI"]] == "no"
    assert lines["old"][col["90 % CI"]] == "no OOF kept" and lines["old"][col["in ref. CI"]] == "yes"
    assert lines["expert"][col["90 % CI"]] == "—" and lines["expert"][col["in ref. CI"]] == ""
    assert "not run yet" in lines["not yet"][col["OOF macro F1"]]
    body = [line for line in ablation.render(plan, tmp_path).splitlines() if line.startswith("| ")]
    assert len(body) == 1 + len(plan["rows"]) and {line.count("|") for line in body} == {header.count("|")}
    # Without the reference's interval nothing can be said about the others.
    (tmp_path / "reference.json").write_text(json.dumps(_row_json(0.53)))
    table = ablation.render(plan, tmp_path)
    assert "| yes |" not in table and "| no |" not in table


def test_intervals_are_added_from_the_runs_at_hand(tmp_path):
    out, runs = tmp_path / "res", tmp_path / "runs"
    out.mkdir()
    a, b = _fake_run(runs / "a", 0), _fake_run(runs / "b", 1)
    oof_a = read_oof(a)
    f1_a = compute_metrics(oof_a[PROB_COLUMNS].to_numpy(), oof_a["label"].to_numpy())["f1"]
    ens_oof, ens = ensemble_oof([a, b])
    tuned = cross_fitted_metrics(oof_a, load_config(a / "config.yaml").data.age.thresholds())
    plan = {"reference": "configs/demo.yaml", "fold": 0, "rows": [
        {"name": "reference", "overrides": []},
        {"name": "gone", "overrides": []},
        {"name": "changed", "overrides": []},
        {"name": "pair", "ensemble": ["reference", "changed"]},
        {"name": "tuned", "tune_age_of": "reference"},
        {"name": "tta", "tta_of": "reference", "tta": ["hflip"]},
    ]}
    rows = {
        "reference": _row_json(f1_a, run_dir=str(a)),
        "gone": _row_json(0.5, run_dir=str(runs / "deleted")),
        "changed": _row_json(0.123, run_dir=str(b)),  # the folder now holds another run than the row measured
        "pair": _row_json(ens["f1"], run_dirs=[str(a), str(b)]),
        "tuned": _row_json(tuned["f1"], run_dir=str(a)),
        "tta": _row_json(0.6, run_dir=str(a)),
    }
    for name, r in rows.items():
        (out / f"{ablation.slug(name)}.json").write_text(json.dumps(r))

    assert ablation.add_intervals(plan, out) == ["reference", "pair", "tuned"]
    saved = {name: json.loads((out / f"{ablation.slug(name)}.json").read_text()) for name in rows}
    expected = person_bootstrap(oof_a[PROB_COLUMNS].to_numpy(), oof_a["label"].to_numpy(), oof_a["person_id"])
    assert saved["reference"]["oof_f1_ci"] == pytest.approx(list(expected.ci["f1"]))
    assert saved["reference"]["oof_age_f1_ci"] == pytest.approx(list(expected.ci["age_f1"]))
    assert saved["reference"]["oof_ci"] == {"level": 0.9, "n_boot": 1000, "seed": 0, "people": 80}
    assert saved["reference"]["oof_f1"] == rows["reference"]["oof_f1"]  # the numbers are kept
    pair = person_bootstrap(ens_oof[PROB_COLUMNS].to_numpy(), ens_oof["label"].to_numpy(), ens_oof["person_id"])
    assert saved["pair"]["oof_f1_ci"] == pytest.approx(list(pair.ci["f1"]))
    assert saved["tuned"]["oof_f1_ci"] != saved["reference"]["oof_f1_ci"]
    for name in ("gone", "changed", "tta"):
        assert "oof_f1_ci" not in saved[name], name
    # Rows that have one are left alone; the table shows them.
    assert ablation.add_intervals(plan, out) == []
    table = ablation.render(plan, out)
    lo, hi = saved["reference"]["oof_f1_ci"]
    assert f"| {f1_a:.3f} | {lo:.3f}–{hi:.3f} |" in table
    assert table.count("| no OOF kept |") == 3
