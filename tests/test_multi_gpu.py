"""The multi-GPU launches of docs/multi-gpu.md, run as the page writes them: 2 CPU processes on gloo.

The commands are read from the page's bash blocks; the test fills in only the placeholders (N, M, R, HOST,
the port, the config file, DATA) and appends the tiny-model overrides, so a launch the page gets wrong fails here.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import maskstatus
from maskstatus.config import ConfigError, load_config, save_config
from maskstatus.runs import CV_METRICS, OOF, RunDir

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "multi-gpu.md"
# torchrun is the console script of torch.distributed.run: the module, run by this interpreter (and venv).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# One epoch of two batches per process, on the CPU: the launch is under test, not the learning.
SHORT = ["train.accelerator=cpu", "train.epochs=1", "train.limit_train_batches=2", "train.limit_val_batches=2"]
TIMEOUT_S = 300


def documented(command: str, several_machines: bool) -> str:
    """The one torchrun line of the page that runs ``command`` on one machine or on several."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), flags=re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.startswith("torchrun ")]
    found = [
        line for line in lines if f" -m maskstatus.cli {command} " in line and ("--nnodes" in line) == several_machines
    ]
    assert len(found) == 1, (command, several_machines, lines)
    return found[0]


def filled(line: str, values: dict[str, str], overrides: list[str]) -> list[str]:
    """The page's command with each placeholder (a whole word, or the value of key=VALUE) replaced."""
    words = []
    for word in shlex.split(line):
        key, eq, value = word.partition("=")
        if eq and value in values:
            words.append(f"{key}={values[value]}")
        else:
            words.append(values.get(word, word))
    left = [w for w in words if re.fullmatch(r"[A-Z]+", w.partition("=")[2] or w)]
    assert not left, f"placeholders the test does not fill: {left}"
    assert words[0] == "torchrun"
    return [*TORCHRUN, *words[1:], *overrides]


def _env() -> dict[str, str]:
    src = str(Path(maskstatus.__file__).resolve().parents[1])  # the tree under test, in every process
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    # A session of its own, so a launch that hangs is stopped with every process torchrun started.
    return subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the launch did not finish in {TIMEOUT_S} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_yaml(tiny_config, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    save_config(tiny_config(), path)
    return path


def test_cv_on_one_machine_under_torchrun_makes_one_cv_folder_and_pools_once(tiny_config, demo_data, tmp_path):
    """Every process runs `maskstatus cv` from its start: rank 0 alone makes the CV folder, both train each fold."""
    values = {"N": "2", "configs/best.yaml": str(_tiny_yaml(tiny_config, tmp_path)), "DATA": str(demo_data.root)}
    args = filled(documented("cv", several_machines=False), values, [*SHORT, "--folds", "0,1"])
    out = _finish(_start(args, tmp_path))

    runs = tmp_path / "runs"
    cv_dirs = sorted(runs.iterdir())
    assert len(cv_dirs) == 1, cv_dirs
    cv_dir = cv_dirs[0]
    summary = json.loads((cv_dir / CV_METRICS).read_text())
    assert summary["folds_done"] == [0, 1]
    fold_runs = [cv_dir / name for name in summary["fold_runs"]]
    assert sorted(p for p in cv_dir.iterdir() if p.name.startswith("fold") and p.is_dir()) == fold_runs
    for run in map(RunDir, fold_runs):
        # Two processes trained each fold together: each took its 2 batches of the epoch.
        assert pd.read_csv(run.metrics)["train_images"].tolist() == [2 * 2 * 16]
    oof = pd.read_csv(cv_dir / OOF, dtype={"person_id": str})
    assert sorted(oof["fold"].unique()) == [0, 1]
    assert not oof["image_path"].duplicated().any()
    assert out.count("cv folder: ") == 1  # rank 0 prints the result, the other process nothing


def test_train_on_two_machines_under_torchrun_makes_one_run_folder(tiny_config, demo_data, tmp_path):
    """The several-machines command run twice on this machine, node ranks 0 and 1 with one process each."""
    values = {
        "M": "2",
        "N": "1",
        "HOST": "127.0.0.1",
        "29500": str(_free_port()),
        "configs/best.yaml": str(_tiny_yaml(tiny_config, tmp_path)),
        "DATA": str(demo_data.root),
    }
    line = documented("train", several_machines=True)
    machines = [_start(filled(line, {**values, "R": str(rank)}, SHORT), tmp_path) for rank in (0, 1)]
    outs = [_finish(proc) for proc in machines]

    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    assert pd.read_csv(RunDir(runs[0]).metrics)["train_images"].tolist() == [2 * 2 * 16]  # 2 ranks x 2 batches
    assert RunDir(runs[0]).best.is_file()
    assert [out.count("run folder: ") for out in outs] == [1, 0]


def test_a_launch_that_does_not_match_the_devices_names_them(monkeypatch):
    """torchrun started 2 processes but the config asks for 1: each would train a run of its own."""
    from maskstatus.train.trainer import make_fabric

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"train\.devices=1.*train\.num_nodes=1.*WORLD_SIZE=2"):
        make_fabric(load_config(None, ["train.accelerator=cpu"]))


@pytest.mark.parametrize("several_machines", [False, True])
def test_the_page_launches_train_and_cv_alike(several_machines):
    """Each launch runs above for one command only; the page's other line must differ from it by the command alone."""
    train_line = documented("train", several_machines)
    assert train_line.replace(" -m maskstatus.cli train ", " -m maskstatus.cli cv ") == documented(
        "cv", several_machines
    )
