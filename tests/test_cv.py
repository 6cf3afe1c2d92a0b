"""Cross-validation: every fold on one shared split, out-of-fold predictions pooled and scored."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import maskstatus.train.cv as cv_engine
from maskstatus.cli import main
from maskstatus.config import load_config
from maskstatus.train.cv import run_cv
from maskstatus.data.tables import load_train_table
from maskstatus.scoring.metrics import compute_metrics
from maskstatus.runs import RunDir

DEMO_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
FAST = ["split.folds=3", "train.epochs=1", "train.limit_train_batches=1"]
PROBS = [f"p{c}" for c in range(18)]


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"person_id": str, "stem": str})


@pytest.fixture(scope="module")
def full_cv(demo_data, tiny_overrides, tmp_path_factory):
    """One 3-fold CV shared by the tests that only read it."""
    tmp = tmp_path_factory.mktemp("cv")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp / 'runs'}", f"cache.dir={tmp / 'cache'}",
                             "name=tiny", *tiny_overrides, *FAST])
    return cfg, run_cv(cfg)


def test_every_fold_trains_on_the_shared_folds(full_cv):
    cfg, result = full_cv
    cv_dir = result.cv_dir
    assert cv_dir.parent == cfg.output_dir and cv_dir.name.startswith("tiny-cv-")
    # A CV folder is a folder of runs, not a run: its config is cv_config.yaml, and no single-run subfolders.
    assert load_config(cv_dir / "cv_config.yaml") == cfg
    assert not (cv_dir / "config.yaml").exists() and not (cv_dir / "checkpoints").exists()
    shared = (cv_dir / "folds.csv").read_text()
    assert set(_read(cv_dir / "folds.csv")["fold"]) == {0, 1, 2}
    assert [r.parent for r in result.fold_runs] == [cv_dir] * 3
    assert [r.name.split("-")[0] for r in result.fold_runs] == ["fold0", "fold1", "fold2"]
    for k, run_dir in enumerate(result.fold_runs):
        run = RunDir(run_dir)
        assert run.folds.read_text() == shared
        assert load_config(run.config).split.fold == k
        assert run.best.is_file()


def test_oof_covers_every_image_once_from_its_held_out_fold_model(full_cv):
    cfg, result = full_cv
    oof = _read(result.cv_dir / "oof.csv")
    table = load_train_table(cfg)
    assert len(oof) == len(table) and not oof["image_path"].duplicated().any()
    assert set(oof["image_path"]) == set(table["image_path"])
    fold_of = dict(zip(*_read(result.cv_dir / "folds.csv")[["person_id", "fold"]].T.values))
    assert (oof["fold"] == oof["person_id"].map(fold_of)).all()
    for k, run_dir in enumerate(result.fold_runs):
        rows = oof[oof["fold"] == k].reset_index(drop=True)
        from_run = _read(RunDir(run_dir).predictions / "oof.csv")
        pd.testing.assert_frame_equal(rows, from_run)
    np.testing.assert_allclose(oof[PROBS].sum(axis=1), 1.0, atol=1e-4)


def test_cv_metrics_are_the_oof_scores(full_cv):
    cfg, result = full_cv
    saved = json.loads((result.cv_dir / "cv_metrics.json").read_text())
    oof = _read(result.cv_dir / "oof.csv")
    expected = compute_metrics(oof[PROBS].to_numpy(), oof["label"].to_numpy())
    expected["score"] = expected["f1"]  # a model of all tasks is scored by its 18-class F1
    assert saved["oof"] == pytest.approx(expected)
    assert result.metrics == pytest.approx(expected)
    assert {"f1", "acc", "mask_f1", "gender_f1", "age_f1", "age_acc"} <= set(saved["oof"])
    assert saved["complete"] is True and result.complete
    assert saved["fold_runs"] == [r.name for r in result.fold_runs]
    assert saved["per_fold"] == result.per_fold
    for k, (entry, run_dir) in enumerate(zip(saved["per_fold"], result.fold_runs)):
        history = pd.read_csv(RunDir(run_dir).metrics)
        assert entry["fold"] == k and entry["run"] == run_dir.name
        assert entry["best_f1"] == pytest.approx(history["val_f1"].max())
        assert entry["best_epoch"] == int(history.loc[history["val_f1"].idxmax(), "epoch"])


def test_cv_metrics_hold_the_pooled_person_bootstrap_interval(full_cv):
    from maskstatus.scoring.bootstrap import person_bootstrap

    cfg, result = full_cv
    saved = json.loads((result.cv_dir / "cv_metrics.json").read_text())["oof_ci"]
    oof = _read(result.cv_dir / "oof.csv")
    expected = person_bootstrap(oof[PROBS].to_numpy(), oof["label"].to_numpy(), oof["person_id"].to_numpy())
    assert saved["level"] == 0.9 and saved["n_boot"] == 1000 and saved["people"] == oof["person_id"].nunique()
    for key in ("f1", "acc", "mask_f1", "gender_f1", "age_f1"):
        assert saved[key] == pytest.approx(list(expected.ci[key])), key
    assert result.ci == saved

def test_cli_resume_skips_finished_folds_and_prints_the_scores(full_cv, monkeypatch, capsys):
    cfg, result = full_cv

    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(cv_engine, "train", no_training)
    assert main(["cv", "--resume", str(result.cv_dir)]) == 0
    out = capsys.readouterr().out
    assert Path(out.split("cv folder:")[1].strip()) == result.cv_dir
    assert len(list(result.cv_dir.glob("fold*-*"))) == 3
    m = json.loads((result.cv_dir / "cv_metrics.json").read_text())["oof"]
    assert m == pytest.approx(result.metrics)
    ci = json.loads((result.cv_dir / "cv_metrics.json").read_text())["oof_ci"]

    def shown(key):
        return f"{m[key]:.4f} [{ci[key][0]:.4f}, {ci[key][1]:.4f}]"

    assert f"OOF macro F1 {shown('f1')}  accuracy {shown('acc')}\n" in out
    assert f"mask {shown('mask_f1')}  gender {shown('gender_f1')}  age {shown('age_f1')}" in out
    assert f"90% intervals over {ci['people']} people resampled" in out
    for f in result.per_fold:
        assert f"fold {f['fold']}: best val macro F1 {f['best_f1']:.4f} at epoch {f['best_epoch']} ({f['run']})" in out


def test_bad_fold_lists_are_refused(tiny_config, capsys):
    cfg = tiny_config(*FAST)
    with pytest.raises(ValueError, match="outside 0..2"):
        run_cv(cfg, folds=[3])
    with pytest.raises(ValueError, match="twice"):
        run_cv(cfg, folds=[1, 1])
    assert not cfg.output_dir.exists()  # refused before any folder is made
    with pytest.raises(SystemExit):
        main(["cv", "--config", DEMO_YAML, "--folds", "one"])
    assert "comma-separated" in capsys.readouterr().err


def test_cli_cv_one_fold_then_resume_extends_it(demo_data, tmp_path, capsys, tiny_overrides):
    with pytest.raises(SystemExit) as e:
        main(["cv", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert "usage: maskstatus cv" in help_text and "--folds" in help_text and "--resume" in help_text

    args = ["cv", "--config", DEMO_YAML, f"data.root={demo_data.root}", f"output_dir={tmp_path}",
            *tiny_overrides, *FAST, "scheduler.warmup_epochs=0"]
    assert main([*args, "--folds", "0"]) == 0
    out = capsys.readouterr().out
    cv_dir = Path(out.split("cv folder:")[1].strip())
    fold_runs = sorted(cv_dir.glob("fold*-*"))
    assert [p.name.split("-")[0] for p in fold_runs] == ["fold0"]  # a subset trains only its folds
    saved = json.loads((cv_dir / "cv_metrics.json").read_text())
    assert saved["folds_done"] == [0] and not saved["complete"]
    assert f"OOF macro F1 {saved['oof']['f1']:.4f}" in out and "(folds [0] only)" in out
    assert set(_read(cv_dir / "oof.csv")["fold"]) == {0}

    # More epochs on resume: the fold continues in its own run folder rather than starting over.
    assert main(["cv", "--resume", str(cv_dir), "--folds", "0", "train.epochs=2"]) == 0
    out = capsys.readouterr().out
    assert Path(out.split("cv folder:")[1].strip()) == cv_dir
    assert sorted(cv_dir.glob("fold*-*")) == fold_runs
    assert pd.read_csv(RunDir(fold_runs[0]).metrics)["epoch"].tolist() == [0, 1]
    saved = json.loads((cv_dir / "cv_metrics.json").read_text())
    assert saved["per_fold"][0]["epochs_run"] == 2
    assert f"OOF macro F1 {saved['oof']['f1']:.4f}" in out
