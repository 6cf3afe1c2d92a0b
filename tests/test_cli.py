import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maskstatus.cli import main

DEMO_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
COMMANDS = ["demo-data", "validate-data", "train", "cv", "predict", "ensemble", "find-label-errors", "demo"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: maskstatus " + cmd in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "maskstatus.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo-data" in out.stdout


def test_demo_data_then_validate(tmp_path, capsys):
    assert main(["demo-data", str(tmp_path / "d"), "--people", "24", "--seed", "1"]) == 0
    assert main(["validate-data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "168" in out  # 24 people x 7 images


def test_validate_reports_bad_files_and_exits_nonzero(tmp_path, capsys):
    main(["demo-data", str(tmp_path / "d"), "--people", "24", "--seed", "1"])
    person = sorted((tmp_path / "d" / "train" / "images").iterdir())[0]
    victim = sorted(person.iterdir())[0]
    victim.write_bytes(b"not an image at all")
    missing = sorted(person.iterdir())[1]
    missing.unlink()
    capsys.readouterr()
    assert main(["validate-data", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert victim.name in err and person.name in err and missing.stem in err


def test_train_cli_prints_run_folder_and_rejects_unknown_key(demo_data, tmp_path, capsys, tiny_overrides):
    args = ["train", "--config", DEMO_YAML, f"data.root={demo_data.root}", f"output_dir={tmp_path}",
            *tiny_overrides, "train.epochs=1", "scheduler.warmup_epochs=0", "train.limit_train_batches=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out
    run_dir = out.split("run folder:")[1].splitlines()[0].strip()
    assert pd.read_csv(f"{run_dir}/metrics.csv").shape[0] == 1
    assert main(["train", "--config", DEMO_YAML, "train.epokhs=1"]) == 2
    assert "train.epokhs" in capsys.readouterr().err


def test_train_cli_resume_extends_the_run(demo_data, tmp_path, capsys, tiny_overrides):
    args = ["train", "--config", DEMO_YAML, f"data.root={demo_data.root}", f"output_dir={tmp_path}",
            *tiny_overrides, "train.epochs=1", "scheduler.warmup_epochs=0", "train.limit_train_batches=1"]
    assert main(args) == 0
    run_dir = capsys.readouterr().out.split("run folder:")[1].splitlines()[0].strip()
    assert main(["train", "--resume", run_dir, "train.epochs=2"]) == 0
    assert capsys.readouterr().out.split("run folder:")[1].splitlines()[0].strip() == run_dir
    assert pd.read_csv(f"{run_dir}/metrics.csv")["epoch"].tolist() == [0, 1]
    assert "epochs: 2" in Path(run_dir, "config.yaml").read_text()
    with pytest.raises(SystemExit, match="either --config"):
        main(["train", "--config", DEMO_YAML, "--resume", run_dir])


def test_demo_command_runs_end_to_end_twice(tmp_path, capsys, tiny_overrides):
    args = ["demo", "--out", str(tmp_path / "demo"), "--people", "24", *tiny_overrides, "train.epochs=1",
            "scheduler.warmup_epochs=0", "train.limit_train_batches=2"]
    for _ in range(2):  # a second `make demo` must work too
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "eval macro F1" in out and "run folder:" in out
    sub = pd.read_csv(tmp_path / "demo" / "submission.csv", dtype={"ImageID": str})
    info = pd.read_csv(tmp_path / "demo" / "data" / "eval" / "info.csv", dtype={"ImageID": str})
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()


@pytest.mark.parametrize("flag, expected", [([], None), (["--group-people"], True), (["--no-group-people"], False)])
def test_predict_group_people_flag_reaches_predict(monkeypatch, tmp_path, flag, expected, capsys):
    import maskstatus.infer.predict as predict_module

    seen = {}

    def fake_predict(runs, data, out, **kwargs):
        seen.update(kwargs)
        return out, out

    monkeypatch.setattr(predict_module, "predict", fake_predict)
    # --out outside the folders read: the command refuses an output inside an input folder before predict runs.
    assert main(["predict", "--run", str(tmp_path / "run"), "--data", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out" / "s.csv"), *flag]) == 0
    assert seen["group_people"] is expected
