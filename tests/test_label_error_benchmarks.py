"""benchmarks/label_errors.py (every ranker on the same planted draws) on a tiny synthetic OOF table."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from data_builders import uneven_oof

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_label_errors_benchmark_compares_rankers_on_the_same_draws(tmp_path):
    import label_errors

    uneven_oof(people=40).to_csv(tmp_path / "oof.csv", index=False)
    out = tmp_path / "label-errors.json"
    args = ["--oof", str(tmp_path / "oof.csv"), "--out", str(out), "--gender", "5", "--age", "5", "--swap", "3",
            "--draws", "3", "--top", "5", "--min-score", "0.2", "--rankers", "confidence,cleanlab"]
    assert label_errors.main(args) == 0
    report = json.loads(out.read_text())
    assert report["rankers"] == ["confidence", "cleanlab"] and report["default_ranker"] == "confidence"
    assert set(report["results"]) == {"confidence", "cleanlab"}
    for ranker in report["rankers"]:
        assert set(report["results"][ranker]) == {"age_neighbour", "age_random"}
        recall = report["results"][ranker]["age_neighbour"]["overall"]["recall"]
        assert recall["min"] <= recall["lo"] <= recall["mean"] <= recall["hi"] <= recall["max"]
        assert set(report["untouched_listed"][ranker]) == {"gender", "age", "mask_swap"}
    diff = report["differences"]["age_random"]["cleanlab - confidence"]["overall"]
    means = [report["results"][r]["age_random"]["overall"]["recall"]["mean"] for r in ("confidence", "cleanlab")]
    assert abs(diff["mean"] - (means[1] - means[0])) < 1e-9
    better = report["better"]["age_random"]
    assert better["ranker"] in report["rankers"] and better["pooled_recall"] == max(means)
    assert {"machine", "commit", "command"} <= set(report)


@pytest.mark.slow
def test_label_loop_cv_trains_the_same_cv_again_on_every_accepted_suggestion(tiny_config, tmp_path):
    import label_loop_cv
    import numpy as np
    import pandas as pd

    from maskstatus.config import load_config
    from maskstatus.data.relabel import read_relabel
    from maskstatus.labels import GENDER_NAMES, NUM_CLASSES, PROB_COLUMNS, decode, encode
    from maskstatus.train.cv import run_cv

    cfg = tiny_config("split.folds=2", "train.epochs=1", "train.limit_train_batches=2",
                      "scheduler.warmup_epochs=0")
    base = run_cv(cfg).cv_dir
    # The base OOF made sure of every label but one person's gender: exactly one suggestion to accept.
    oof = pd.read_csv(base / "oof.csv", dtype={"person_id": str})
    flipped = oof["person_id"].iloc[0]
    mask, gender, age = decode(oof["label"].to_numpy())
    shown = np.where(oof["person_id"] == flipped, encode(mask, 1 - gender, age), oof["label"].to_numpy())
    oof[PROB_COLUMNS] = np.eye(NUM_CLASSES)[shown] * 0.97 + 0.03 / NUM_CLASSES
    oof.to_csv(base / "oof.csv", index=False)

    out = tmp_path / "loop.json"
    assert label_loop_cv.main(["--cv", str(base), "--out", str(out), "--runs", str(tmp_path / "loop"),
                               "--boot", "50"]) == 0
    report = json.loads(out.read_text())
    assert report["fixes"] == 1 and report["fixes_by_field"] == {"gender": 1}
    relabel = read_relabel(report["relabel"])
    true_gender = GENDER_NAMES[1 - int(gender[(oof["person_id"] == flipped).to_numpy()][0])]
    assert relabel[["id", "field", "value"]].values.tolist() == [[flipped, "gender", true_gender]]
    # The same CV again: its config and folds, and the relabel file.
    loop = Path(report["loop_cv"])
    loop_cfg = load_config(loop / "cv_config.yaml")
    assert loop_cfg.data.relabel == str(Path(report["relabel"]).resolve())
    assert loop_cfg.seed == cfg.seed and loop_cfg.model == cfg.model and loop_cfg.train == cfg.train
    assert pd.read_csv(loop / "folds.csv").equals(pd.read_csv(base / "folds.csv"))
    loop_oof = pd.read_csv(loop / "oof.csv", dtype={"person_id": str})
    loop_gender = decode(loop_oof.loc[loop_oof["person_id"] == flipped, "label"].to_numpy())[1]
    assert (loop_gender == 1 - gender[(oof["person_id"] == flipped).to_numpy()][0]).all()
    people = oof["person_id"].nunique()
    views = report["views"]
    assert views["own_labels"]["people"] == people and views["unchanged_people"]["people"] == people - 1
    assert views["fixed_labels"]["people"] == people
    for view in views.values():
        lo, hi = view["f1_gain_ci"]
        assert lo <= hi and view["f1_gain"] == pytest.approx(view["after"]["oof_f1"] - view["before"]["oof_f1"])
    # Scored on the fixed labels, the base OOF (sure of the true gender) is perfect on the flipped person's gender.
    assert views["fixed_labels"]["before"]["oof_gender_f1"] > views["own_labels"]["before"]["oof_gender_f1"]
    assert report["oof_f1"] == views["own_labels"]["after"]["oof_f1"] and report["f1_gain"] == views["own_labels"]["f1_gain"]


def test_loop_result_row_shows_the_pooled_loop_and_its_paired_change(tmp_path):
    import ablation

    sys.path.insert(0, str(ROOT / "docs"))
    import generate

    machine = {"cpu": "test CPU", "cores": 2}
    plan = {"reference": "configs/demo.yaml", "fold": 0, "rows": [
        {"name": "reference", "overrides": []},
        {"name": "every suggestion accepted", "loop_result": "label-loop-x.json"},
        {"name": "loop not measured", "loop_result": "label-loop-none.json"}]}
    results = tmp_path / "results"
    (results / "ablation").mkdir(parents=True)
    (tmp_path / "ablation.yaml").write_text(yaml.safe_dump(plan))
    (results / "ablation" / "reference.json").write_text(json.dumps(
        {"oof_f1": 0.5, "oof_f1_ci": [0.45, 0.55], "oof_mask_f1": 0.9, "oof_gender_f1": 0.8, "oof_age_f1": 0.6,
         "machine": machine}))
    (results / "label-loop-x.json").write_text(json.dumps(
        {"oof_f1": 0.6123, "oof_f1_ci": [0.6, 0.625], "oof_mask_f1": 0.99, "oof_gender_f1": 0.91,
         "oof_age_f1": 0.66, "f1_gain": 0.0042, "f1_gain_ci": [-0.0031, 0.0111], "train_s": 6000.0,
         "machine": machine, "command": "python benchmarks/label_loop_cv.py --cv x --out label-loop-x.json"}))
    table = ablation.render(plan, results / "ablation")
    row = next(line for line in table.splitlines() if line.startswith("| every suggestion accepted"))
    assert "| 0.612 | 0.600–0.625 | +0.004 paired (-0.003 to +0.011) |  |" in row
    assert "not run yet" in next(line for line in table.splitlines() if line.startswith("| loop not measured"))
    page = generate.benchmarks_page(tmp_path)
    row = next(line for line in page.splitlines() if line.startswith("| every suggestion accepted"))
    assert "0.612 [0.600, 0.625]" in row and "+0.004 [-0.003, 0.011] paired" in row
    assert "loop not measured" not in page
