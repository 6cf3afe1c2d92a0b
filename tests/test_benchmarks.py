"""The benchmark scripts themselves, on demo data with a tiny budget (the real runs are not CI's)."""

import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import ablation  # noqa: E402

TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "cache.size=[48, 36]", "train.batch_size=16",
        "train.limit_train_batches=2", "split.folds=4", "scheduler.warmup_epochs=0", "train.progress=false"]


@pytest.mark.slow
def test_ablation_runs_rows_once_and_renders_the_table(demo_data, tmp_path):
    import pandas as pd

    # Ages moved across a boundary change the stratified split: the row must still hold out the same people.
    ids = pd.read_csv(demo_data.root / "train" / "train.csv", dtype=str)["id"].tolist()[:8]
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("id,field,value\n" + "".join(f"{i},age,75\n" for i in ids))
    plan = {
        "reference": "configs/demo.yaml",
        "fold": 0,
        "rows": [
            {"name": "reference", "overrides": TINY},
            {"name": "EMA", "overrides": [*TINY, "train.ema_decay=0.5"]},
            {"name": "never run", "overrides": TINY},
            {"name": "unmasked expert",
             "overrides": [*TINY, "model.tasks=[gender, age]", "data.mask_states=[not_wear]"]},
            {"name": "cascade", "ensemble": ["reference", "unmasked expert"]},
            {"name": "age regression", "overrides": [*TINY, "model.age_output=years"]},
            {"name": "age cuts tuned", "tune_age_of": "age regression"},
            {"name": "reference + TTA", "tta_of": "reference", "tta": ["hflip"]},
            {"name": "relabelled", "overrides": [*TINY, f"data.relabel={relabel}"]},
            {"name": "pseudo", "overrides": [*TINY, "model.age_output=years"], "pseudo_from": "age regression",
             "pseudo": {"threshold": 0.0}},
        ],
    }
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    args = ["--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "res"), "--table", str(tmp_path / "t.md"),
            "--data", str(demo_data.root), "--epochs", "1", "--runs", str(tmp_path / "runs"),
            "--rows", "reference", "--rows", "EMA"]
    for name in ("unmasked expert", "cascade", "age regression", "age cuts tuned", "reference + TTA", "relabelled",
                 "pseudo"):
        args += ["--rows", name]
    assert ablation.main(args) == 0
    ref = json.loads((tmp_path / "res" / "reference.json").read_text())
    for key in ("oof_f1", "oof_mask_f1", "oof_gender_f1", "oof_age_f1", "train_images_per_s",
                "model_only_train_images_per_s", "predict_images_per_s", "peak_memory_mb", "wall_s", "machine",
                "commit", "command", "train_s", "oof_f1_ci", "oof_mask_f1_ci", "oof_gender_f1_ci", "oof_age_f1_ci"):
        assert key in ref
    # Every row, trained or scored from other rows' runs, carries its person-bootstrap interval.
    for name in ("EMA", "cascade", "age cuts tuned", "reference + TTA"):
        ci = json.loads((tmp_path / "res" / f"{ablation.slug(name)}.json").read_text())["oof_f1_ci"]
        assert len(ci) == 2 and 0.0 <= ci[0] <= ci[1] <= 1.0, name
    expert_ci = json.loads((tmp_path / "res" / "unmasked-expert.json").read_text())
    assert expert_ci["oof_f1_ci"] is None and expert_ci["oof_age_f1_ci"] is not None  # no 18-class F1 of its own
    # The pseudo row trained on every eval image (threshold 0) as the age regression row's run predicted them,
    # with that run's predicted years as their ages.
    pseudo_run = Path(json.loads((tmp_path / "res" / "pseudo.json").read_text())["run_dir"])
    used = pd.read_csv(pseudo_run / "pseudo.csv")
    assert len(used) == len(pd.read_csv(demo_data.eval_dir / "info.csv")) and (used["age"] >= 0).all()
    table = (tmp_path / "t.md").read_text()
    assert "| reference | " in table and f"{ref['oof_f1']:.3f}" in table
    assert "| never run |" in table and "not run yet" in table
    # An expert has no 18-class F1; the cascade built from it has one, from the members' OOF predictions.
    assert "| unmasked expert | " in table and "| — |" in table
    from maskstatus.infer.ensemble import ensemble_oof
    from maskstatus.scoring.oof import read_oof

    cascade = json.loads((tmp_path / "res" / "cascade.json").read_text())
    expert = json.loads((tmp_path / "res" / "unmasked-expert.json").read_text())
    assert cascade["oof_f1"] == pytest.approx(ensemble_oof([ref["run_dir"], expert["run_dir"]])[1]["f1"])
    assert cascade["train_s"] == pytest.approx(ref["train_s"] + expert["train_s"])
    tuned = json.loads((tmp_path / "res" / "age-cuts-tuned.json").read_text())
    assert tuned["oof_f1"] == tuned["age_cuts"]["oof_f1_cross_fitted"]
    assert "cut points of 'age regression' tuned" in table
    # TTA re-predicts the reference's held-out fold with its own weights: without TTA it gives the reference's F1.
    tta = json.loads((tmp_path / "res" / "reference-tta.json").read_text())
    assert tta["tta"] == ["hflip"] and tta["images"] == len(read_oof(ref["run_dir"]))
    assert tta["oof_f1_no_tta"] == pytest.approx(ref["oof_f1"], abs=1e-6)
    assert 0.0 <= tta["oof_f1"] <= 1.0 and tta["train_s"] == ref["train_s"]
    assert "'reference' predicted with `tta=['hflip']`" in table
    # Every trained row shares the first row's folds, though on its own the relabelled table splits otherwise.
    from maskstatus.config import load_config
    from maskstatus.data.folds import make_folds
    from maskstatus.data.tables import load_train_table

    relabelled = json.loads((tmp_path / "res" / "relabelled.json").read_text())
    ref_folds = pd.read_csv(Path(ref["run_dir"]) / "folds.csv", dtype=str)
    pd.testing.assert_frame_equal(pd.read_csv(Path(relabelled["run_dir"]) / "folds.csv", dtype=str), ref_folds)
    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data.root={demo_data.root}", *TINY, f"data.relabel={relabel}"])
    own = make_folds(load_train_table(cfg), cfg.split.folds, cfg.split.seed).astype(str)
    assert not own.equals(ref_folds)
    # measured rows are skipped the second time
    stamp = (tmp_path / "res" / f"{ablation.slug('EMA')}.json").stat().st_mtime_ns
    assert ablation.main(args) == 0
    assert (tmp_path / "res" / f"{ablation.slug('EMA')}.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_cv_benchmark_pools_folds_and_reports_again_on_resume(demo_data, tmp_path):
    import proxy_cv

    args = ["--config", "configs/demo.yaml", "--data", str(demo_data.root), "--runs", str(tmp_path / "runs"),
            "--submission", str(tmp_path / "sub.csv"), *TINY, "split.folds=2", "train.epochs=1",
            "model.age_output=years", "--tta", "hflip"]
    assert proxy_cv.main([*args, "--out", str(tmp_path / "cv.json")]) == 0
    report = json.loads((tmp_path / "cv.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1] and report["complete"]
    assert report["oof_images"] == 7 * len(set(report_people(demo_data)))
    resolved = report["resolved_config"]
    assert resolved["split"]["folds"] == 2 and resolved["model"]["age_output"] == "years"
    lo, hi = report["oof_f1_ci"]
    assert lo <= report["oof_f1"] <= hi
    assert report["tuned_age_cuts"]["oof_f1_cross_fitted"] is not None
    tta = report["with_tta"]
    assert tta["tta"] == ["hflip"] and tta["oof_f1_ci"][0] <= tta["oof_f1"] <= tta["oof_f1_ci"][1]
    assert tta["oof_f1_tuned_cuts_cross_fitted"] is not None
    assert (tmp_path / "sub.csv").is_file()
    # Reporting a finished CV folder again trains nothing and scores the same predictions.
    cv_dir = report["cv_dir"]
    assert proxy_cv.main([*args, "--resume", cv_dir, "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["oof_f1"] == report["oof_f1"] and again["folds"] == report["folds"]
    assert len(list((tmp_path / "runs").iterdir())) == 1

    # A fold of the CV reported as a proxy.py row, without training it again; another config is refused.
    import proxy

    fold0 = next(Path(cv_dir).glob("fold0-*"))
    row = ["--config", "configs/demo.yaml", "--fold", "0", "--data", str(demo_data.root), "--runs",
           str(tmp_path / "unused"), "--submission", str(tmp_path / "row.csv"), "--from-run", str(fold0), *TINY,
           "split.folds=2", "train.epochs=1", "model.age_output=years", f"split.folds_file={Path(cv_dir) / 'folds.csv'}"]
    assert proxy.main([*row, "--out", str(tmp_path / "row.json")]) == 0
    fold_report = json.loads((tmp_path / "row.json").read_text())
    assert fold_report["reported_from_run"] and fold_report["model_only_train_images_per_s"] is None
    assert fold_report["oof_f1"] == report["folds"][0]["best_f1"]
    resolved = fold_report["resolved_config"]
    assert resolved["split"]["fold"] == 0 and resolved["train"]["epochs"] == 1
    assert not (tmp_path / "unused").exists()
    with pytest.raises(SystemExit, match=r"\['optimizer.lr'\]"):
        proxy.main([*row, "optimizer.lr=0.5", "--out", str(tmp_path / "other.json")])


def report_people(demo_data):
    import pandas as pd

    return pd.read_csv(demo_data.root / "train" / "train.csv", dtype=str)["id"]


def test_run_configs_names_each_run_of_a_cv_folder_with_its_saved_config(tmp_path):
    import common

    from maskstatus.config import load_config, save_config

    cv = tmp_path / "cv"
    for fold in (1, 0):
        run = cv / f"fold{fold}-20260101-000000"
        (run / "checkpoints").mkdir(parents=True)
        (run / "checkpoints" / "best.pt").touch()  # what marks a folder as a run; its weights are not read
        save_config(load_config(ROOT / "configs" / "demo.yaml", [f"split.fold={fold}", "optimizer.lr=0.25"]),
                    run / "config.yaml")
    configs = common.run_configs(cv)
    assert list(configs) == ["fold0-20260101-000000", "fold1-20260101-000000"]  # the runs in name order
    assert [c["split"]["fold"] for c in configs.values()] == [0, 1]
    assert all(c["optimizer"]["lr"] == 0.25 for c in configs.values())
    assert list(common.run_configs(cv / "fold1-20260101-000000")) == ["fold1-20260101-000000"]


def test_same_seed_comparison_finds_a_changed_column(tmp_path):
    import pandas as pd
    import same_seed

    def demo(name, loss, submission="id,ans\na,1\n"):
        run = tmp_path / name / "runs" / "demo-1"
        run.mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1], "lr": [0.1, 0.05], "train_loss": loss, "val_f1": [0.5, 0.6],
                      "train_time_s": [1.0, 2.0]}).to_csv(run / "metrics.csv", index=False)
        (tmp_path / name / "submission.csv").write_text(submission)
        return tmp_path / name

    base = demo("base", [1.0, 0.5])
    same = compare_with(same_seed, base, demo("same", [1.0, 0.5]), tmp_path)
    assert same["differing_columns"] == [] and same["submission_identical"]
    assert "train_time_s" not in same["max_abs_diff"]  # timings differ run to run; they are not results
    moved = compare_with(same_seed, base, demo("moved", [1.0, 0.25], "id,ans\na,2\n"), tmp_path)
    assert moved["differing_columns"] == ["train_loss"] and moved["max_abs_diff"]["train_loss"] == 0.25
    assert not moved["submission_identical"]


def compare_with(same_seed, base, new, tmp_path):
    out = tmp_path / f"{new.name}.json"
    assert same_seed.main(["--base-demo", str(base), "--new-demo", str(new), "--out", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_distill_benchmark_teaches_from_a_teacher_that_never_saw_the_held_out_people(demo_data, tmp_path):
    import distill
    import pandas as pd

    from maskstatus.config import load_config
    from maskstatus.data.folds import make_folds
    from maskstatus.data.tables import load_train_table

    cfg = load_config("configs/demo.yaml", [f"data.root={demo_data.root}", *TINY, "split.folds=3"])
    folds = make_folds(load_train_table(cfg), 3, 0)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    args = ["--config", "configs/demo.yaml", "--fold", "1", "--folds-file", str(tmp_path / "folds.csv"),
            "--data", str(demo_data.root), "--runs", str(tmp_path / "runs"), "--submission", str(tmp_path / "s.csv"),
            "--weight", "0.7", *TINY, "train.epochs=1", "model.age_output=years"]
    assert distill.main([*args, "--out", str(tmp_path / "d.json")]) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    teacher = report["teacher"]
    held_out = set(folds.loc[folds["fold"] == 1, folds.columns[0]].astype(str))
    teacher_people = set(pd.read_csv(Path(teacher["cv_dir"]) / "oof.csv", dtype={"person_id": str})["person_id"])
    # The teacher covers exactly the student's training people, and was trained without the held-out ones.
    assert teacher_people == set(folds[folds.columns[0]].astype(str)) - held_out
    assert [f["fold"] for f in teacher["folds"]] == [0, 1]
    assert report["fold"] == 1 and report["train_s_whole"] == pytest.approx(report["train_s"] + teacher["train_s"])
    lo, hi = report["oof_f1_ci"]
    assert lo <= report["oof_f1"] <= hi
    student = load_config(Path(report["run_dir"]) / "config.yaml")
    assert student.loss.distill.teacher == Path(teacher["cv_dir"]) and student.loss.distill.weight == 0.7
    oof = pd.read_csv(Path(report["run_dir"]) / "predictions" / "oof.csv", dtype={"person_id": str})
    assert set(oof["person_id"]) == held_out


def test_distill_and_label_loop_rows_train_through_their_benchmarks(tmp_path, monkeypatch):
    import distill

    calls = []

    def fake_main(argv):
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        out.write_text(json.dumps({"oof_f1": 0.6, "oof_mask_f1": 1.0, "oof_gender_f1": 0.9, "oof_age_f1": 0.7,
                                   "oof_f1_ci": [0.55, 0.65], "train_s": 600.0, "train_s_whole": 3000.0,
                                   "machine": {"cpu": "test CPU", "cores": 2}}))
        return 0

    import label_loop

    monkeypatch.setattr(distill, "main", fake_main)
    monkeypatch.setattr(label_loop, "main", fake_main)
    plan = {"reference": "configs/demo.yaml", "fold": 0,
            "rows": [{"name": "reference", "overrides": []},
                     {"name": "distilled", "overrides": ["train.epochs=2"], "distill": {"weight": 0.3}},
                     {"name": "relabelled", "overrides": [], "label_loop": {"oof": "cv"}}]}
    folds = tmp_path / "folds.csv"
    ablation.run_row(plan, plan["rows"][1], tmp_path, tmp_path / "data", None, tmp_path / "runs", folds)
    (argv,) = calls
    assert argv[argv.index("--folds-file") + 1] == str(folds) and argv[argv.index("--weight") + 1] == "0.3"
    assert argv[argv.index("--fold") + 1] == "0" and "train.epochs=2" in argv
    row = [line for line in ablation.render(plan, tmp_path).splitlines() if line.startswith("| distilled")][0]
    assert "distilled from a teacher CV over the other folds (weight 0.3)" in row
    assert "| 50.0 |" in row  # the teachers' and the student's training, 3000 s
    ablation.run_row(plan, plan["rows"][2], tmp_path, tmp_path / "data", 2, tmp_path / "runs", folds)
    argv = calls[-1]
    assert argv[argv.index("--oof") + 1] == "cv" and argv[argv.index("--folds-file") + 1] == str(folds)
    assert argv[argv.index("--epochs") + 1] == "2"
    row = [line for line in ablation.render(plan, tmp_path).splitlines() if line.startswith("| relabelled")][0]
    assert "relabel draft (held-out people's fixes dropped)" in row


@pytest.mark.slow
def test_label_loop_retrains_with_the_draft_of_the_training_people_only(demo_data, tmp_path):
    import label_loop
    import numpy as np
    import pandas as pd

    from maskstatus.config import load_config
    from maskstatus.data.folds import make_folds
    from maskstatus.data.tables import load_train_table
    from maskstatus.labels import NUM_CLASSES, PROB_COLUMNS, decode, encode

    cfg = load_config("configs/demo.yaml", [f"data.root={demo_data.root}", *TINY])
    table = load_train_table(cfg)
    folds = make_folds(table, 4, 0)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    table = table.merge(folds, on="person_id")
    # An OOF table sure of every label but the gender of one person in fold 0 and one in fold 1.
    flipped = {table.loc[table["fold"] == f, "person_id"].iloc[0]: f for f in (0, 1)}
    labels = table["label"].to_numpy()
    mask, gender, age = decode(labels)
    predicted = np.where(table["person_id"].isin(list(flipped)), encode(mask, 1 - np.asarray(gender), age), labels)
    probs = np.eye(NUM_CLASSES)[predicted] * 0.97 + 0.03 / NUM_CLASSES
    oof = pd.concat([table[["person_id", "stem", "image_path", "label", "fold"]],
                     pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    (tmp_path / "cv").mkdir()
    oof.to_csv(tmp_path / "cv" / "oof.csv", index=False)

    args = ["--oof", str(tmp_path / "cv"), "--folds-file", str(tmp_path / "folds.csv"), "--fold", "1",
            "--config", "configs/demo.yaml", "--out", str(tmp_path / "loop.json"), "--submission",
            str(tmp_path / "s.csv"), "--data", str(demo_data.root), "--runs", str(tmp_path / "runs"),
            *TINY, "train.epochs=1"]
    assert label_loop.main(args) == 0
    report = json.loads((tmp_path / "loop.json").read_text())
    loop = report["label_loop"]
    assert loop["fixes_found"] == 2 and loop["fixes_applied"] == 1 and loop["fixes_of_held_out_people_dropped"] == 1
    assert loop["fixes_by_field"] == {"gender": 1}
    draft = Path(loop["draft"]).read_text()
    in_fold0 = next(p for p, f in flipped.items() if f == 0)
    in_fold1 = next(p for p, f in flipped.items() if f == 1)
    assert f"\n{in_fold0},gender," in draft and in_fold1 not in draft
    run_cfg = load_config(Path(report["run_dir"]) / "config.yaml")
    assert run_cfg.data.relabel == loop["draft"] and run_cfg.split.fold == 1


@pytest.mark.slow
def test_pseudo_teachers_row_learns_from_the_teachers_models_of_its_fold(demo_data, tmp_path):
    import numpy as np
    import pandas as pd

    from maskstatus.config import load_config
    from maskstatus.train.cv import run_cv

    common = [f"data.root={demo_data.root}", f"output_dir={tmp_path / 'teachers'}", *TINY, "train.epochs=1"]
    teacher = run_cv(load_config(ROOT / "configs" / "demo.yaml", [*common, "name=t"]), folds=[0]).cv_dir
    other = run_cv(load_config(ROOT / "configs" / "demo.yaml", [*common, "name=o", "split.seed=5"]), folds=[0]).cv_dir
    plan = {"reference": "configs/demo.yaml", "fold": 0, "rows": [
        {"name": "reference", "overrides": TINY},
        {"name": "taught", "overrides": TINY, "pseudo_teachers": [str(teacher)], "pseudo": {"threshold": 0.0}},
        {"name": "taught elsewhere", "overrides": TINY, "pseudo_teachers": [str(other)]},
    ]}
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    args = ["--plan", str(tmp_path / "plan.yaml"), "--out", str(tmp_path / "res"), "--table", str(tmp_path / "t.md"),
            "--data", str(demo_data.root), "--epochs", "1", "--runs", str(tmp_path / "runs")]
    assert ablation.main([*args, "--rows", "taught"]) == 0
    run = Path(json.loads((tmp_path / "res" / "taught.json").read_text())["run_dir"])
    used = pd.read_csv(run / "pseudo.csv")
    taught = pd.read_csv(tmp_path / "res" / "submissions" / "taught-teachers" / "fold0.probs.csv")
    # Every eval image (threshold 0), labelled as the teacher's fold-0 model predicted it.
    assert len(used) == len(taught)
    np.testing.assert_allclose(np.sort(used["confidence"]),
                               np.sort(taught[[f"p{c}" for c in range(18)]].max(axis=1)), atol=1e-6)
    assert (run / "folds.csv").read_text() == (teacher / "folds.csv").read_text()
    # Teachers trained on another split would have seen the row's held-out people.
    with pytest.raises(ValueError, match="not the reference's"):
        ablation.main([*args, "--rows", "taught elsewhere"])


def test_train_step_benchmark_times_each_precision(tmp_path, tiny_overrides):
    import train_step

    out = tmp_path / "train-step.json"
    assert train_step.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--steps", "2", "--repeats", "2", "--out", str(out),
                            *tiny_overrides]) == 0
    report = json.loads(out.read_text())
    each = report["train_step_images_per_s_each"]
    assert list(each) == ["32-true", "bf16-mixed"] and all(len(v) == 2 and min(v) > 0 for v in each.values())
    assert report["speedup_over_first"]["bf16-mixed"] == pytest.approx(
        report["train_step_images_per_s"]["bf16-mixed"] / report["train_step_images_per_s"]["32-true"], rel=0.02,
        abs=0.006)  # the speed-up is rounded to 2 decimals: a slow bf16 (0.16x) is off by more than 2 %
    assert report["batch_size"] == 16 and report["image_size"] == [48, 36]
    resolved = report["resolved_config"]
    assert resolved["train"]["batch_size"] == 16 and resolved["cache"]["size"] == [48, 36]
    for key in ("machine", "commit", "command"):
        assert report[key]


def test_learning_curve_scores_every_size_on_the_same_people(demo_data, tmp_path, tiny_overrides):
    import pandas as pd

    import learning_curve
    from maskstatus.config import load_config
    from maskstatus.data.folds import make_folds
    from maskstatus.data.tables import load_train_table

    cfg = load_config(ROOT / "configs" / "demo.yaml", [f"data.root={demo_data.root}", *tiny_overrides])
    folds_file = tmp_path / "folds.csv"
    make_folds(load_train_table(cfg), cfg.split.folds, cfg.split.seed).to_csv(folds_file, index=False)
    out = tmp_path / "curve.json"
    common = ["--config", str(ROOT / "configs" / "demo.yaml"), "--folds-file", str(folds_file), "--fold", "0",
              "--work", str(tmp_path / "work"), "--out", str(out), f"data.root={demo_data.root}", *tiny_overrides,
              "train.epochs=1", "train.limit_train_batches=1", "scheduler.warmup_epochs=0"]
    assert learning_curve.main([*common, "--drop", "1"]) == 0
    report = json.loads(out.read_text())
    full, fewer = report["sizes"]
    folds = pd.read_csv(folds_file, dtype={"person_id": str})
    assert full["training_people"] == (folds["fold"] != 0).sum()
    assert fewer["training_people"] == (~folds["fold"].isin([0, 1])).sum() and fewer["dropped_folds"] == [1]
    assert report["scored_people"] == (folds["fold"] == 0).sum()
    assert report["resolved_config"]["split"]["folds_file"] == str(folds_file)
    assert report["resolved_config"]["split"]["fold"] == 0
    # the smaller run never saw the dropped people, and both were scored on fold 0's people only
    subset = pd.read_csv(tmp_path / "work" / "drop-1" / "train" / "train.csv", dtype=str)
    assert set(subset["id"]).isdisjoint(folds.loc[folds["fold"] == 1, "person_id"])
    for size in (full, fewer):
        oof = pd.read_csv(Path(size["run"]) / "predictions" / "oof.csv", dtype={"person_id": str})
        assert set(oof["person_id"]) == set(folds.loc[folds["fold"] == 0, "person_id"])
    gain = fewer["against_all"]
    assert gain["f1_gain"] == pytest.approx(fewer["oof_f1"] - full["oof_f1"])
    assert gain["f1_gain_ci"][0] <= gain["f1_gain"] <= gain["f1_gain_ci"][1]
    # runs already trained are reported, not trained again
    runs_before = sorted((tmp_path / "work" / "runs").iterdir())
    assert learning_curve.main([*common, "--drop", "1", "--run-for", f"all={full['run']}",
                                "--run-for", f"1={fewer['run']}"]) == 0
    assert sorted((tmp_path / "work" / "runs").iterdir()) == runs_before
    assert json.loads(out.read_text())["sizes"] == report["sizes"]
    with pytest.raises(SystemExit):
        learning_curve.main([*common, "--drop", "0"])
    with pytest.raises(SystemExit):  # a run for a size the curve does not have
        learning_curve.main([*common, "--drop", "1", "--run-for", f"2={fewer['run']}"])
