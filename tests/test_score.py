"""`maskstatus score`: OOF metrics with person-bootstrap intervals, of a run, a CV folder or a CSV."""

import json

import numpy as np
import pandas as pd
import pytest

from maskstatus.age import AGE_MEAN, AGE_SIGMA, group_probs_np, write_cuts
from maskstatus.scoring.bootstrap import person_bootstrap
from maskstatus.cli import main
from maskstatus.config import load_config, save_config
from maskstatus.scoring.oof import read_oof
from maskstatus.scoring.score import score_oof
from maskstatus.labels import PROB_COLUMNS, combine_task_probs, encode
from maskstatus.scoring.metrics import compute_metrics


def _oof(people: int = 60, seed: int = 0) -> pd.DataFrame:
    """An age-regression OOF table: noisy task probabilities, years near the true age."""
    rng = np.random.default_rng(seed)
    ages = rng.integers(18, 75, people)
    gender = rng.integers(0, 2, people)
    rows = []
    for p in range(people):
        for stem, mask in (("mask1", 0), ("mask2", 0), ("incorrect_mask", 1), ("normal", 2)):
            rows.append({"person_id": f"{p:06d}", "stem": stem, "image_path": f"/x/{p:06d}/{stem}.jpg",
                         "mask": mask, "gender": gender[p], "age_years": ages[p], "fold": p % 2})
    df = pd.DataFrame(rows)
    n = len(df)
    age_group = np.digitize(df["age_years"], [30, 60])
    df["label"] = encode(df["mask"], df["gender"], age_group)
    mean = df["age_years"] + rng.normal(0, 6, n)
    sigma = np.full(n, 4.0)
    marg = {
        "mask": 0.5 * np.eye(3)[df["mask"]] + 0.5 * rng.dirichlet(np.ones(3), n),
        "gender": 0.5 * np.eye(2)[df["gender"]] + 0.5 * rng.dirichlet(np.ones(2), n),
        "age": group_probs_np(mean.to_numpy(), sigma, (29.5, 59.5)),
    }
    probs = combine_task_probs(marg)
    out = df[["person_id", "stem", "image_path", "label", "fold"]].copy()
    out[PROB_COLUMNS] = probs
    out[AGE_MEAN], out[AGE_SIGMA] = mean, sigma
    return out


@pytest.fixture
def run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    save_config(load_config(None, ["model.age_output=years"]), run / "config.yaml")
    _oof().to_csv(run / "predictions" / "oof.csv", index=False)
    return run


def test_score_of_a_run_equals_its_metrics_and_bootstrap(run_folder):
    result = score_oof(run_folder, n_boot=200, seed=3)
    oof = pd.read_csv(run_folder / "predictions" / "oof.csv", dtype={"person_id": str})
    expected = compute_metrics(oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy())
    assert result["point"] == pytest.approx(expected)
    boot = person_bootstrap(oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy(), oof["person_id"], n_boot=200, seed=3)
    assert result["ci"]["f1"] == pytest.approx(list(boot.ci["f1"]))
    assert result["people"] == 60 and result["images"] == 240 and result["folds"] == [0, 1]
    assert result["age_cuts"] is None and result["source"].endswith("oof.csv")
    # The CSV itself scores the same (no cut points to apply).
    assert score_oof(run_folder / "predictions" / "oof.csv", n_boot=200, seed=3)["ci"] == result["ci"]


def test_score_honours_tuned_age_cuts(run_folder):
    plain = score_oof(run_folder, n_boot=100)
    write_cuts(run_folder, {"cuts": [24.0, 45.0]})
    tuned = score_oof(run_folder, n_boot=100)
    assert tuned["age_cuts"] == [24.0, 45.0]
    cut = read_oof(run_folder)
    assert tuned["point"]["f1"] == pytest.approx(compute_metrics(cut[PROB_COLUMNS].to_numpy(), cut["label"])["f1"])
    assert tuned["point"]["age_f1"] != pytest.approx(plain["point"]["age_f1"])
    assert tuned["point"]["mask_f1"] == pytest.approx(plain["point"]["mask_f1"])
    # The bare CSV has no folder, so no cut points: it keeps the default ones.
    assert score_oof(run_folder / "predictions" / "oof.csv", n_boot=100)["point"] == pytest.approx(plain["point"])


def test_per_task_model_has_no_18_class_interval(run_folder):
    save_config(load_config(None, ["model.age_output=years", "model.tasks=[gender, age]"]), run_folder / "config.yaml")
    result = score_oof(run_folder, n_boot=50)
    assert result["point"]["f1"] is None and result["ci"]["f1"] is None and result["ci"]["mask_f1"] is None
    assert result["ci"]["age_f1"] is not None and result["tasks"] == ["gender", "age"]


def test_cli_prints_intervals_and_json(run_folder, capsys):
    assert main(["score", str(run_folder), "--boot", "100", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    result = score_oof(run_folder, n_boot=100, seed=1)
    lo, hi = result["ci"]["f1"]
    assert f"macro F1   {result['point']['f1']:.4f}  [{lo:.4f}, {hi:.4f}]" in out
    lo, hi = result["ci"]["age_f1"]
    assert f"age F1     {result['point']['age_f1']:.4f}  [{lo:.4f}, {hi:.4f}]" in out
    assert "60 people" in out and "90% person-bootstrap interval (100 replicates)" in out
    assert main(["score", str(run_folder), "--boot", "100", "--seed", "1", "--level", "0.5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["level"] == 0.5 and printed["n_boot"] == 100
    assert printed["point"] == pytest.approx(result["point"])
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(printed["ci"]["f1"]) < width(result["ci"]["f1"])


def test_cli_score_of_a_cv_folder(tmp_path, capsys):
    cv = tmp_path / "cv"
    cv.mkdir()
    save_config(load_config(None, []), cv / "cv_config.yaml")
    _oof(seed=1).drop(columns=[AGE_MEAN, AGE_SIGMA]).to_csv(cv / "oof.csv", index=False)
    assert main(["score", str(cv), "--boot", "50", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["source"] == str(cv / "oof.csv") and printed["folds"] == [0, 1]


def test_cli_score_errors_name_the_path(tmp_path, run_folder, capsys):
    assert main(["score", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("person_id,label\n1,0\n")
    assert main(["score", str(bad)]) == 2
    assert "lacks column" in capsys.readouterr().err
    assert main(["score", str(run_folder), "--level", "90"]) == 2
    assert "level must lie strictly between 0 and 1" in capsys.readouterr().err


def test_report_and_score_give_the_same_f1_interval_and_level(run_folder, tmp_path, capsys):
    """One scoring policy: the report page and ``maskstatus score`` show the same point F1, interval and level."""
    from maskstatus.analysis.report import analyse_run, render
    from maskstatus.scoring.bootstrap import DEFAULT_LEVEL

    scored = score_oof(run_folder, seed=5)
    result = analyse_run(run_folder, seed=5)
    assert result.interval.level == scored["level"] == DEFAULT_LEVEL
    assert result.metrics["f1"] == scored["point"]["f1"]
    assert list(result.interval.ci["f1"]) == scored["ci"]["f1"]
    lo, hi = scored["ci"]["f1"]
    assert f"Macro F1 {scored['point']['f1']:.4f}, {DEFAULT_LEVEL:.0%} interval {lo:.4f}-{hi:.4f}" in render(result)

    def macro_f1_line(argv):
        assert main(argv) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("macro F1")]
        assert len(lines) == 1
        return lines[0]

    report_line = macro_f1_line(["report", str(run_folder), "--out", str(tmp_path / "report.html")])
    assert report_line == macro_f1_line(["score", str(run_folder)])


def test_ensemble_of_one_member_scores_as_score_does(run_folder, capsys):
    import re

    assert main(["score", str(run_folder), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert main(["ensemble", "--run", str(run_folder)]) == 0
    out = capsys.readouterr().out
    lo, hi = scored["ci"]["f1"]
    assert re.search(rf"OOF macro F1 {scored['point']['f1']:.4f} \[{lo:.4f}, {hi:.4f}\]", out), out
    assert f"{scored['level']:.0%} intervals over {scored['people']} people" in out
