"""Issue 23 items 2 and 8: no command overwrites an input, a run's files or a stranger's file, and a full or
read-only disk is one line naming the path, found before the work where it can be.

The folders here are laid out by hand (a run folder is config.yaml + checkpoints/, a data folder train.csv or
info.csv beside images/): every check runs before a model is loaded, so no test needs a trained run. The disk
cases use a real tmpfs (full, or mounted read-only) where the machine lets the tests mount one, and the errors
the OS gives (raised by hand) everywhere.
"""

import errno
import json
import os
import subprocess

import pandas as pd
import pytest
import torch

from maskstatus import outputs
from maskstatus.analysis import html as H
from maskstatus.analysis.report import GENERATOR as REPORT_GENERATOR
from maskstatus.cli import main
from maskstatus.errors import MaskstatusError, UsageError
from maskstatus.labels import PROB_COLUMNS
from maskstatus.outputs import DiskWriteError, check_output
from maskstatus.runs import atomic_save_torch, atomic_write_text


@pytest.fixture
def layout(tmp_path):
    """data/{train,eval} in the competition layout, a run folder A and a CV folder CV, as the issue's user had."""
    data = tmp_path / "data"
    for split, table in (("train", "train.csv"), ("eval", "info.csv")):
        (data / split / "images").mkdir(parents=True)
        (data / split / table).write_text("id,gender,race,age,path\n" if split == "train" else "ImageID,ans\n")
    run = tmp_path / "A"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: A\n")
    (run / "checkpoints" / "best.pt").write_bytes(b"weights")
    cv = tmp_path / "CV"
    cv.mkdir()
    (cv / "cv_config.yaml").write_text("name: CV\n")
    (cv / "oof.csv").write_text("person_id,stem,image_path,label,fold\n")
    return {"data": data, "run": run, "cv": cv, "root": tmp_path}


def _no_model_loading(monkeypatch):
    import maskstatus.infer.pipeline as pipeline_module

    def fail(*args, **kwargs):
        raise AssertionError("the output should have been refused before any run was loaded")

    monkeypatch.setattr(pipeline_module, "load_run", fail)


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- item 2: the issue's commands


@pytest.mark.parametrize("target", ["data/train/train.csv", "data/eval/info.csv", "A/config.yaml",
                                    "A/checkpoints/best.pt", "CV/oof.csv", "data/eval/images/sub.csv"])
def test_predict_never_writes_inputs_runs_or_data_folders(layout, monkeypatch, capsys, target):
    _no_model_loading(monkeypatch)
    before = _snapshot(layout["root"])
    out = layout["root"] / target
    for extra in ([], ["--overwrite"]):  # --overwrite never makes these outputs
        assert main(["predict", "--run", str(layout["run"]), "--data", str(layout["data"] / "eval"),
                     "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and str(out) in err and err.count("\n") == 1
    assert _snapshot(layout["root"]) == before


def test_report_and_eda_refuse_the_issue_paths(layout, capsys):
    run, data = layout["run"], layout["data"]
    before = _snapshot(layout["root"])
    assert main(["report", str(run), "--out", str(run / "config.yaml")]) == 2
    assert "inside the run folder" in capsys.readouterr().err
    assert main(["eda", str(data), "--out", str(data / "eval" / "info.csv")]) == 2
    assert "info.csv" in capsys.readouterr().err
    assert main(["report", str(layout["cv"]), "--out", str(layout["cv"] / "cv_config.yaml"), "--overwrite"]) == 2
    assert "inside the CV folder" in capsys.readouterr().err
    assert _snapshot(layout["root"]) == before


def test_a_symlink_or_hard_link_to_an_input_is_refused(layout, tmp_path):
    table = layout["data"] / "train" / "train.csv"
    (tmp_path / "link.csv").symlink_to(table)
    os.link(table, tmp_path / "hard.csv")
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("id,field,value\n")
    with pytest.raises(UsageError, match="link.csv lies inside the data folder"):
        check_output(tmp_path / "link.csv", command="predict", overwrite=True)
    with pytest.raises(UsageError, match=r"hard.csv is an input of this command \(.*train.csv\)"):
        check_output(tmp_path / "hard.csv", command="validate", inputs=[table], overwrite=True)
    with pytest.raises(UsageError, match=r"relabel.csv is an input of this command"):
        check_output(relabel, command="validate", inputs=[relabel], overwrite=True)
    images = tmp_path / "photos"  # a plain image folder given to predict --data
    images.mkdir()
    with pytest.raises(UsageError, match="photos/sub.csv lies inside the input folder"):
        check_output(images / "sub.csv", command="predict", inputs=[images])


def test_an_existing_file_is_replaced_only_if_it_is_an_earlier_output_or_with_overwrite(layout, tmp_path, monkeypatch,
                                                                                          capsys):
    from maskstatus.infer.predict import check_output as check_submission
    from maskstatus.infer.predict import write_predictions

    notes = tmp_path / "notes.csv"
    notes.write_text("my,own,table\n")
    inputs = [layout["run"], layout["data"] / "eval"]
    with pytest.raises(UsageError, match=r"notes.csv: the file exists and is not an earlier output of predict; "
                                         r"add --overwrite"):
        check_submission(notes, inputs)
    check_submission(notes, inputs, overwrite=True)
    # A submission and probabilities file written before: a new prediction may replace them.
    table = pd.DataFrame({"image_id": ["a.jpg", "b.jpg"]})
    sub, probs = write_predictions(table, torch.rand(2, len(PROB_COLUMNS)).numpy(), tmp_path / "sub.csv", True)
    check_submission(sub, inputs)
    # Its probabilities file is checked too: a stranger's file there is not replaced either.
    (tmp_path / "other.probs.csv").write_text("keep me\n")
    with pytest.raises(UsageError, match="other.probs.csv"):
        check_submission(tmp_path / "other.csv", inputs)
    # Through the command line, in one line, before any run is loaded.
    _no_model_loading(monkeypatch)
    assert main(["predict", "--run", str(layout["run"]), "--data", str(layout["data"] / "eval"),
                 "--out", str(notes)]) == 2
    assert "--overwrite" in capsys.readouterr().err and notes.read_text() == "my,own,table\n"


def test_report_replaces_its_own_page_but_not_another_file(layout, tmp_path, capsys):
    from maskstatus.analysis.report import check_report_output

    run = layout["run"]
    check_report_output(run, run / "report.html")  # the default, in the run folder: its own output
    (run / "report.html").write_text("<html>an old page</html>")
    check_report_output(run, run / "report.html")
    page = tmp_path / "page.html"
    page.write_text("<html>someone's page</html>")
    with pytest.raises(UsageError, match="not an earlier output of report"):
        check_report_output(run, page)
    atomic_write_text(page, H.page("t", "s", [], REPORT_GENERATOR))
    check_report_output(run, page)
    assert not H.is_page_of(page, "maskstatus eda")  # an eda page is not a report


def test_ensemble_checks_both_outputs_before_scoring(layout, tmp_path, capsys):
    run = layout["run"]
    args = ["ensemble", "--run", str(run), "--data", str(layout["data"] / "eval")]
    assert main([*args, "--out-oof", str(tmp_path / "s.csv"), "--out", str(tmp_path / "s.csv")]) == 2
    assert "is the same file as --out-oof" in capsys.readouterr().err
    assert main([*args, "--out-oof", str(layout["cv"] / "oof.csv"), "--out", str(tmp_path / "s.csv")]) == 2
    assert "inside the CV folder" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_find_label_errors_keeps_a_foreign_review_folder(layout, tmp_path, capsys):
    from maskstatus.scoring.label_errors import check_review_output

    out = tmp_path / "review"
    out.mkdir()
    (out / "review.csv").write_text("not,a,review\n")
    assert main(["find-label-errors", str(layout["cv"]), "--out", str(out)]) == 2
    assert "review.csv: the file exists" in capsys.readouterr().err
    (out / "review.csv").write_text("person_id,task,given,predicted,score,images\n")
    check_review_output(out, layout["cv"])  # an earlier review
    check_review_output(layout["cv"] / "label_review", layout["cv"])  # the default, inside the CV folder
    with pytest.raises(UsageError, match="inside the CV folder"):
        check_review_output(layout["cv"] / "elsewhere", layout["cv"])
    with pytest.raises(UsageError, match="is an input"):
        check_review_output(tmp_path / "csv", tmp_path / "csv" / "review.csv")  # an OOF CSV named review.csv


def test_export_under_out_replaces_only_an_earlier_export(layout, tmp_path):
    from maskstatus.infer.export import check_export_outputs
    from maskstatus.infer.onnx_model import SIDECAR_FORMAT

    run, out = layout["run"], tmp_path / "onnx-out"
    check_export_outputs([run], None, "best")  # RUN/onnx/ is export's own folder
    (out / "A").mkdir(parents=True)
    (out / "A" / "best.onnx").write_bytes(b"someone's model")
    with pytest.raises(UsageError, match="best.onnx: the file exists"):
        check_export_outputs([run], out, "best")
    (out / "A" / "best.json").write_text(json.dumps({"format": SIDECAR_FORMAT}))
    check_export_outputs([run], out, "best")
    with pytest.raises(UsageError, match="inside the run folder"):
        check_export_outputs([run], run / "checkpoints", "best", overwrite=True)


# ---- item 8: full and read-only disks


def _mount_tmpfs(folder, options):
    folder.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (skipped where mounting is not permitted)."""
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "size=256k")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    """A tmpfs mounted read-only, holding one folder (skipped where mounting is not permitted)."""
    mnt = tmp_path / "ro"
    _mount_tmpfs(mnt, "size=256k")
    (mnt / "out").mkdir()
    done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, timeout=10)
    if done.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        pytest.skip(f"cannot remount read-only: {done.stderr.decode(errors='replace').strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _run_with_last(parent, weights):
    """A run folder whose checkpoints/last.pt holds ``weights``: (run, last.pt, its bytes)."""
    run = parent / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: run\n")
    last = run / "checkpoints" / "last.pt"
    atomic_save_torch({"model": {"w": weights}}, last)
    return run, last, last.read_bytes()


def test_a_full_disk_during_a_checkpoint_save_names_disk_space_and_keeps_the_last_checkpoint(small_disk):
    run, last, kept = _run_with_last(small_disk, torch.ones(10))
    with pytest.raises(DiskWriteError, match=rf"no space left on device writing {last}; free some space, then "
                                             rf"continue with maskstatus train --resume {run}") as err:
        atomic_save_torch({"model": {"w": torch.zeros(200_000)}}, last)  # 800 KB onto 256 KiB
    assert isinstance(err.value, MaskstatusError) and err.value.errno == errno.ENOSPC
    assert last.read_bytes() == kept and sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


def test_a_read_only_disk_fails_before_the_work(read_only_disk, layout, monkeypatch, capsys):
    from maskstatus.config import load_config
    from maskstatus.train.trainer import train

    _no_model_loading(monkeypatch)
    out = read_only_disk / "out" / "sub.csv"
    assert main(["predict", "--run", str(layout["run"]), "--data", str(layout["data"] / "eval"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "read-only file system" in err and str(out) in err and err.count("\n") == 1
    assert main(["eda", str(layout["data"]), "--out", str(read_only_disk / "new" / "eda.html")]) == 2
    assert "read-only file system" in capsys.readouterr().err
    cfg = load_config(None, [f"data.root={layout['data']}", f"output_dir={read_only_disk / 'runs'}"])
    with pytest.raises(DiskWriteError, match="output_dir .*read-only file system"):
        train(cfg)  # before any image is read: the data here has none


# The same cases by the errors the OS gives, for machines where no test may mount a file system.


def test_a_write_check_turns_the_os_errors_into_one_line(tmp_path, monkeypatch):
    for code, words in ((errno.EROFS, "read-only file system"), (errno.ENOSPC, "no space left on device"),
                        (errno.EDQUOT, "disk quota exceeded"), (errno.EACCES, "permission denied")):
        def refuse(*args, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(outputs.tempfile, "mkstemp", refuse)
        with pytest.raises(DiskWriteError, match=f"--out {tmp_path / 'sub.csv'}: cannot write in {tmp_path}: {words}"):
            check_output(tmp_path / "sub.csv", command="predict")
    monkeypatch.undo()
    check_output(tmp_path / "new" / "sub.csv", command="predict")
    assert list(tmp_path.iterdir()) == []  # the check writes nothing it leaves behind, not even the folder


def test_torch_wrapping_a_full_disk_error_is_still_named(tmp_path, monkeypatch):
    run, last, kept = _run_with_last(tmp_path, torch.ones(3))

    def full_disk(obj, f):
        f.write(b"partial")
        try:
            f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # as torch does: its own RuntimeError, with the OSError only as the context
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskWriteError, match=f"no space left on device writing {last}.*train --resume {run}"):
        atomic_save_torch({"model": {}}, last)
    assert last.read_bytes() == kept and sorted(p.name for p in last.parent.iterdir()) == ["last.pt"]


def test_other_write_errors_are_left_alone(tmp_path):
    def bug(path):
        raise RuntimeError("a bug, not a disk")

    from maskstatus.runs import atomic_write

    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "x.csv", bug)
    assert list(tmp_path.iterdir()) == []


def test_predict_knows_the_space_its_files_need_before_predicting(tmp_path, monkeypatch):
    from maskstatus.infer.predict import output_bytes, write_predictions

    table = pd.DataFrame({"image_id": [f"{i:040x}.jpg" for i in range(500)]})
    sub, probs = write_predictions(table, torch.rand(500, len(PROB_COLUMNS)).double().numpy(), tmp_path / "s.csv",
                                   True, years=torch.rand(500, 2).double().numpy())
    written = sub.stat().st_size + probs.stat().st_size
    assert written <= output_bytes(table) <= 4 * written
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: type("Usage", (), {"free": written // 2})())
    with pytest.raises(DiskWriteError, match=r"--out .*s.csv: no space left on device in .* needed\); free some space"):
        outputs.check_space(tmp_path, output_bytes(table), name=tmp_path / "s.csv")


def test_a_nearly_full_disk_is_found_by_its_free_space(small_disk):
    outputs.check_space(small_disk, 100_000)
    with pytest.raises(DiskWriteError, match="no space left on device"):
        outputs.check_space(small_disk / "new", 1_000_000)


def test_a_full_disk_inside_a_cv_folder_says_to_resume_the_cv(layout):
    from maskstatus.runs import atomic_write

    fold_run = layout["cv"] / "fold0-run"
    (fold_run / "checkpoints").mkdir(parents=True)
    (fold_run / "config.yaml").write_text("name: fold0\n")

    def full(path):
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    last = fold_run / "checkpoints" / "last.pt"
    with pytest.raises(DiskWriteError, match=f"writing {last}; free some space, then continue with maskstatus cv "
                                             f"--resume {layout['cv']}"):
        atomic_write(last, full)
    assert list(last.parent.iterdir()) == []
