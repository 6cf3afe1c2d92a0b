"""Folds trained apart (separate calls, separate folders, worker processes) and merged equal one CV of one call."""

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import maskstatus
import maskstatus.train.parallel as parallel
from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.errors import RunError, RunNotFoundError, UsageError
from maskstatus.infer.predict import predict
from maskstatus.runs import RunDir
from maskstatus.train.cv import sorted_folds
from maskstatus.train.cv_merge import MAY_DIFFER, config_differences, merge_cvs
from maskstatus.train.parallel import run_cv_parallel

DEMO_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
FAST = ["split.folds=2", "train.epochs=1", "train.limit_train_batches=1", "scheduler.warmup_epochs=0"]
PROBS = [f"p{c}" for c in range(18)]
# Worker processes may run other thread counts than this one; the OOF files round to 6 decimals.
TOLERANCE = 2e-6


def _cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    assert code == 0, out.getvalue()
    return out.getvalue()


def _cv_dir(out: str) -> Path:
    return Path(out.split("cv folder:")[1].strip())


def _oof(cv_dir: Path) -> pd.DataFrame:
    oof = pd.read_csv(cv_dir / "oof.csv", dtype={"person_id": str, "stem": str})
    return oof.sort_values("image_path").reset_index(drop=True)


@pytest.fixture(scope="module")
def cvs(demo_data, tiny_overrides, tmp_path_factory):
    """One shared folds.csv; a CV of one call; the same folds as two calls on two 'machines', merged."""
    tmp = tmp_path_factory.mktemp("merge")
    common = [f"data.root={demo_data.root}", f"cache.dir={tmp / 'cache'}", *tiny_overrides, *FAST]
    folds_csv = tmp / "folds.csv"
    written = _cli("cv", "--config", DEMO_YAML, "--write-folds", str(folds_csv), *common)
    assert f"split.folds_file={folds_csv}" in written
    shared = [*common, f"split.folds_file={folds_csv}"]
    one_call = _cv_dir(_cli("cv", "--config", DEMO_YAML, *shared, f"output_dir={tmp / 'one'}"))
    # Another machine: its own output folder, name and cache, which may differ.
    part0 = _cv_dir(_cli("cv", "--config", DEMO_YAML, "--folds", "0", *shared, f"output_dir={tmp / 'a'}"))
    part1 = _cv_dir(
        _cli(
            "cv",
            "--config",
            DEMO_YAML,
            "--folds",
            "1",
            *shared,
            f"output_dir={tmp / 'b'}",
            "name=machine2",
            f"cache.dir={tmp / 'cache2'}",
        )
    )
    merged = _cv_dir(_cli("cv", "merge", str(part0), str(part1), "--out", str(tmp / "merged")))
    return {
        "tmp": tmp,
        "folds": folds_csv,
        "shared": shared,
        "one": one_call,
        "parts": (part0, part1),
        "merged": merged,
    }


def test_merged_cv_equals_the_cv_of_one_call(cvs, demo_data, tmp_path):
    one, merged = cvs["one"], cvs["merged"]
    assert merged == cvs["tmp"] / "merged"
    assert sorted_folds(merged / "folds.csv").equals(sorted_folds(cvs["folds"]))
    assert sorted_folds(one / "folds.csv").equals(sorted_folds(merged / "folds.csv"))
    # The fold runs were copied (the default): the parts keep theirs.
    assert [p.name.split("-")[0] for p in sorted(merged.glob("fold*-*"))] == ["fold0", "fold1"]
    assert all(len(list(part.glob("fold*-*"))) == 1 for part in cvs["parts"])

    a, b = _oof(one), _oof(merged)
    assert len(a) > 0 and a["image_path"].is_unique
    # Same rows, folds and labels; and the same probabilities to the last digit written, since training on the
    # CPU with the same seed and folds repeats itself bit for bit in one process.
    pd.testing.assert_frame_equal(a, b)

    ma, mb = (json.loads((d / "cv_metrics.json").read_text()) for d in (one, merged))
    assert mb["complete"] and mb["folds_done"] == [0, 1] == ma["folds_done"]
    assert mb["oof"] == pytest.approx(ma["oof"], abs=1e-6)
    assert mb["oof_ci"] == ma["oof_ci"] or all(
        mb["oof_ci"][k] == pytest.approx(ma["oof_ci"][k], abs=1e-6) for k in ma["oof_ci"]
    )
    keys = ("fold", "best_f1", "best_epoch", "epochs_run", "images")
    assert [{k: f[k] for k in keys} for f in mb["per_fold"]] == [{k: f[k] for k in keys} for f in ma["per_fold"]]

    # The merged folder predicts as the folder of one call does (its fold runs soft-voted).
    _, pa = predict([one], demo_data.eval_dir, tmp_path / "one.csv", progress=False)
    _, pb = predict([merged], demo_data.eval_dir, tmp_path / "merged.csv", progress=False)
    a, b = pd.read_csv(pa), pd.read_csv(pb)
    assert len(a) > 0 and a.drop(columns=PROBS).equals(b.drop(columns=PROBS))
    assert np.abs(a[PROBS].to_numpy() - b[PROBS].to_numpy()).max() <= 1e-5

    # The commands that take a CV folder take the merged one.
    assert main(["ensemble", "--run", str(merged), "--run", str(one)]) == 0
    assert main(["find-label-errors", str(merged), "--out", str(tmp_path / "review")]) == 0


def test_merge_refuses_folders_that_do_not_belong_together(cvs, tmp_path, capsys):
    part0, part1 = cvs["parts"]

    def copy(src: Path, name: str) -> Path:
        return Path(shutil.copytree(src, tmp_path / name))

    out = tmp_path / "out"
    with pytest.raises(RunNotFoundError, match="not a CV folder"):  # a fold run is a run, not a CV folder
        merge_cvs([part0, next(part1.glob("fold1-*"))], out)

    other_folds = copy(part1, "other-folds")
    folds = pd.read_csv(other_folds / "folds.csv", dtype={"person_id": str})
    folds.loc[0, "fold"] = 1 - folds.loc[0, "fold"]
    folds.to_csv(other_folds / "folds.csv", index=False)
    with pytest.raises(RunError, match=rf"other-folds/folds.csv.*person_id {folds.loc[0, 'person_id']}"):
        merge_cvs([part0, other_folds], out)

    other_config = copy(part1, "other-config")
    saved = yaml.safe_load((other_config / "cv_config.yaml").read_text())
    saved["optimizer"]["lr"] = saved["optimizer"]["lr"] * 2
    (other_config / "cv_config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"other-config/cv_config.yaml differs.*optimizer\.lr"):
        merge_cvs([part0, other_config], out)

    with pytest.raises(RunError, match=r"fold 0 finished in two of the folders"):
        merge_cvs([part0, cvs["one"]], out)

    unfinished = copy(part1, "unfinished")
    (next(unfinished.glob("fold1-*")) / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RunError, match=r"fold 1 run .*unfinished/fold1-.* has not finished"):
        merge_cvs([part0, unfinished], out)

    with pytest.raises(UsageError, match="already exists"):
        merge_cvs([part0, part1], cvs["merged"])
    assert not out.exists()  # every refusal before anything was written

    # On the command line: one line naming the key, exit status 2.
    assert main(["cv", "merge", str(part0), str(other_config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "optimizer.lr" in err and len(err.strip().splitlines()) == 1

    # --move empties the parts; the merged folder is complete.
    moved = merge_cvs([copy(part0, "m0"), copy(part1, "m1")], tmp_path / "moved", move=True)
    assert moved.complete and not list((tmp_path / "m0").glob("fold*-*"))


def test_only_machine_keys_may_differ(tiny_config):
    base = tiny_config()
    local = tiny_config(
        "train.num_workers=2", "train.progress=true", "name=other", "cache.dir=/elsewhere",
        "tracking.backends=[tensorboard,mlflow]", "tracking.group=other-cv",
    )
    assert config_differences(base, local) == []
    for key, value in [
        ("train.devices", 2),
        ("train.precision", "bf16-mixed"),
        ("split.folds", 3),
        ("model.dropout", 0.5),
    ]:
        assert key not in MAY_DIFFER
        other = tiny_config(f"{key}={value}")
        assert [d[0] for d in config_differences(base, other)] == [key]


def test_write_folds_refuses_an_existing_file_and_other_options(cvs, capsys):
    assert main(["cv", "--config", DEMO_YAML, "--write-folds", str(cvs["folds"]), *cvs["shared"]]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["cv", "--config", DEMO_YAML, "--write-folds", "x.csv", "--folds", "0", *cvs["shared"]]) == 2
    assert "--write-folds" in capsys.readouterr().err


def test_parallel_folds_train_at_once_into_one_folder(cvs, tmp_path, monkeypatch, capsys):
    # The workers run this checkout's code, whatever the venv has installed.
    monkeypatch.setenv("PYTHONPATH", str(Path(maskstatus.__file__).parents[1]))
    args = ["cv", "--config", DEMO_YAML, "--parallel-folds", "2", *cvs["shared"], f"output_dir={tmp_path}"]
    assert main(args) == 0
    cv_dir = _cv_dir(capsys.readouterr().out)
    metrics = json.loads((cv_dir / "cv_metrics.json").read_text())
    assert metrics["complete"] and metrics["folds_done"] == [0, 1]
    logs = [(cv_dir / "logs" / f"fold{k}.log").read_text() for k in (0, 1)]
    # Both workers pooled into the folder as they finished; the later one, after its lock wait, saw both folds.
    assert all("OOF macro F1" in log for log in logs)
    assert any("OOF macro F1" in log and "only)" not in log for log in logs), logs
    # Trained by two processes at once, the folds are those of the one-call CV.
    a, b = _oof(cvs["one"]), _oof(cv_dir)
    pd.testing.assert_frame_equal(a.drop(columns=PROBS), b.drop(columns=PROBS))
    assert np.abs(a[PROBS].to_numpy() - b[PROBS].to_numpy()).max() <= TOLERANCE
    assert all(RunDir(r).best.is_file() for r in cv_dir.glob("fold*-*"))


def test_a_failing_worker_fails_the_call_naming_its_fold(cvs, tmp_path, monkeypatch):
    cfg = load_config(DEMO_YAML, [*cvs["shared"], f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"train\.devices=2"):
        run_cv_parallel(cfg.model_copy(update={"train": cfg.train.model_copy(update={"devices": 2})}), 2)

    def fake(cv_dir, fold, overrides):
        code = "print('fold 0 done')" if fold == 0 else "import sys; print('out of memory'); sys.exit(3)"
        return [sys.executable, "-c", code]

    monkeypatch.setattr(parallel, "worker_command", fake)
    with pytest.raises(RunError, match=r"1 fold\(s\) failed: fold 1 \(exit code 3, log .*fold1.log\)") as e:
        run_cv_parallel(cfg, 2)
    assert "fold 0" not in str(e.value) and "--resume" in str(e.value)
    cv_dir = next(tmp_path.glob("*-cv-*"))
    assert "out of memory" in (cv_dir / "logs" / "fold1.log").read_text()
    assert "fold 0 done" in (cv_dir / "logs" / "fold0.log").read_text()
