"""Pseudo labels in a CV without a leak: fold k learns from the eval predictions of the teachers' fold-k models."""

import shutil

import numpy as np
import pandas as pd
import pytest

from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.train.cv import fold_run, run_cv
from maskstatus.infer.predict import predict
from maskstatus.train.pseudo_label import fold_teacher_probs
from maskstatus.errors import DataError
from maskstatus.runs import RunDir

PROBS = [f"p{c}" for c in range(18)]
FAST = ["split.folds=2", "train.epochs=1", "train.limit_train_batches=1"]


def test_fold_placeholder_in_the_probs_path():
    cfg = load_config(None, ["data.pseudo.probs=teach/fold{fold}.probs.csv"])
    assert str(cfg.data.pseudo.probs_for(3)) == "teach/fold3.probs.csv"
    plain = load_config(None, ["data.pseudo.probs=teach/all.probs.csv"])
    assert str(plain.data.pseudo.probs_for(3)) == "teach/all.probs.csv"
    with pytest.raises(ConfigError, match="data.pseudo.probs"):
        load_config(None, ["data.pseudo.probs=teach/fold{k}.probs.csv"])


@pytest.fixture(scope="module")
def teachers(demo_data, tiny_overrides, tmp_path_factory):
    """Two 2-fold teacher CVs on one fold assignment, the second with another seed."""
    tmp = tmp_path_factory.mktemp("teachers")
    common = [f"data.root={demo_data.root}", f"output_dir={tmp / 'runs'}", f"cache.dir={tmp / 'cache'}",
              *tiny_overrides, *FAST]
    a = run_cv(load_config(None, [*common, "name=a"])).cv_dir
    b = run_cv(load_config(None, [*common, "name=b", "seed=7", f"split.folds_file={a / 'folds.csv'}"])).cv_dir
    return tmp, a, b


def test_each_fold_file_is_the_vote_of_that_folds_teachers(teachers, demo_data):
    tmp, a, b = teachers
    out = tmp / "pseudo"
    files = fold_teacher_probs([a, b], demo_data.eval_dir, out, progress=False)
    assert files == [out / "fold0.probs.csv", out / "fold1.probs.csv"]
    assert (out / "folds.csv").read_text() == (a / "folds.csv").read_text()
    for k, f in enumerate(files):
        _, expected = predict([fold_run(a, k), fold_run(b, k)], demo_data.eval_dir, tmp / f"check{k}.csv",
                              progress=False)
        np.testing.assert_allclose(pd.read_csv(f)[PROBS], pd.read_csv(expected)[PROBS], atol=1e-6)
    # The two folds' teachers trained on different people, so their answers differ.
    assert not np.allclose(pd.read_csv(files[0])[PROBS], pd.read_csv(files[1])[PROBS])


def test_student_cv_trains_each_fold_on_its_own_teachers(teachers, demo_data, tiny_overrides):
    tmp, a, b = teachers
    out = tmp / "pseudo-student"
    files = fold_teacher_probs([a, b], demo_data.eval_dir, out, progress=False)
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp / 'student'}",
                             f"cache.dir={tmp / 'cache'}", *tiny_overrides, *FAST, "name=student",
                             f"data.pseudo.probs={out / 'fold{fold}.probs.csv'}", "data.pseudo.threshold=0.0",
                             f"split.folds_file={out / 'folds.csv'}"])
    result = run_cv(cfg)
    for k, run_dir in enumerate(result.fold_runs):
        used = pd.read_csv(RunDir(run_dir).root / "pseudo.csv")
        teacher = pd.read_csv(files[k])
        assert len(used) == len(teacher)
        np.testing.assert_allclose(np.sort(used["confidence"]), np.sort(teacher[PROBS].max(axis=1)), atol=1e-6)
    # Its saved config keeps the placeholder, so the CV can be resumed or repeated as it was.
    assert "{fold}" in (result.cv_dir / "cv_config.yaml").read_text()


def test_teachers_must_share_their_folds(teachers, demo_data, tmp_path):
    _, a, b = teachers
    other = tmp_path / "other"
    shutil.copytree(b, other)
    folds = pd.read_csv(other / "folds.csv", dtype={"person_id": str})
    folds["fold"] = 1 - folds["fold"]
    folds.to_csv(other / "folds.csv", index=False)
    with pytest.raises(DataError, match="folds differently"):
        fold_teacher_probs([a, other], demo_data.eval_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_missing_fold_run_fails_before_anything_is_predicted(teachers, demo_data, tmp_path):
    _, a, b = teachers
    partial = tmp_path / "partial"
    shutil.copytree(b, partial)
    shutil.rmtree(fold_run(partial, 1))
    with pytest.raises(FileNotFoundError, match="fold 1"):
        fold_teacher_probs([a, partial], demo_data.eval_dir, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match="not a CV folder"):
        fold_teacher_probs([fold_run(a, 0)], demo_data.eval_dir, tmp_path / "out", progress=False)


def test_cli_writes_the_chosen_folds_and_prints_the_overrides(teachers, demo_data, tmp_path, capsys):
    _, a, b = teachers
    out = tmp_path / "cli"
    assert main(["pseudo-label", "--teacher", str(a), "--teacher", str(b), "--data", str(demo_data.eval_dir),
                 "--out", str(out), "--folds", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["fold1.csv", "fold1.probs.csv", "folds.csv"]
    printed = capsys.readouterr().out
    assert f"data.pseudo.probs={out / 'fold{fold}.probs.csv'}" in printed
    assert f"split.folds_file={out / 'folds.csv'}" in printed


def test_cli_predicts_the_teachers_with_onnx_as_with_pytorch(teachers, demo_data, tmp_path):
    _, a, b = teachers
    onnx_dir = tmp_path / "onnx"
    for cv in (a, b):
        assert main(["export", str(cv), "--out", str(onnx_dir)]) == 0
    common = ["pseudo-label", "--teacher", str(a), "--teacher", str(b), "--data", str(demo_data.eval_dir), "--folds", "0"]
    assert main([*common, "--out", str(tmp_path / "torch")]) == 0
    assert main([*common, "--out", str(tmp_path / "onnx-out"), "--backend", "onnx", "--onnx-dir", str(onnx_dir)]) == 0
    torch_probs, onnx_probs = (pd.read_csv(tmp_path / d / "fold0.probs.csv") for d in ("torch", "onnx-out"))
    np.testing.assert_allclose(onnx_probs[PROBS].to_numpy(), torch_probs[PROBS].to_numpy(), atol=1e-4)
