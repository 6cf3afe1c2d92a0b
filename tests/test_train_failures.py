"""Training that goes wrong: non-finite settings and losses, shrinking resumes, unsafe names, failed starts, races,
interrupted saves and Ctrl+C. Each leaves the run folder as it was and says in one line what happened."""

import multiprocessing
import pathlib
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import maskstatus.engine.train as engine
from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.engine.cv import run_cv
from maskstatus.engine.train import train
from maskstatus.errors import DataError, RunError
from maskstatus.runs import RunDir, atomic_save_torch, load_checkpoint, new_run_dir, remove_stale_temp_files

FAST = ["train.epochs=1", "train.limit_train_batches=1"]


# --- item 3: non-finite settings, losses and predictions ---------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("optimizer.lr=.inf", "optimizer.lr"),
    ("optimizer.lr=.nan", "optimizer.lr"),
    ("optimizer.weight_decay=.inf", "optimizer.weight_decay"),
    ("optimizer.params.momentum=.nan", "optimizer.params"),
    ("optimizer.params.betas=[0.9, .inf]", "optimizer.params"),
    ("scheduler.params.gamma=-.inf", "scheduler.params"),
    ("loss.task_weights.age=.nan", "loss.task_weights.age"),
    ("loss.terms=[{name: focal, weight: .inf}]", "loss.terms.0.weight"),
    ("loss.terms=[{name: focal, params: {gamma: .nan}}]", "loss.terms.0.params"),
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("train.mix.alpha=.inf", "train.mix.alpha"),
])
def test_non_finite_settings_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"\n  {key}: .*finite"):
        load_config(None, [override])


# --- item 6: run names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/tmp/x", ".hidden", "..", "a\\b", "tab\there", ""])
def test_run_names_are_one_safe_folder_name(name):
    with pytest.raises(ConfigError, match=r"\n  name: "):
        load_config(None, [f"name={name!r}"])


def test_plain_run_names_still_work():
    assert load_config(None, ["name=lite2-aug_128.v2"]).name == "lite2-aug_128.v2"


# --- item 7b: run folders are claimed atomically -----------------------------------------------------------------

def _claim(args):
    output_dir, barrier = args
    barrier.wait()
    return str(new_run_dir(Path(output_dir), "race").root)


def test_processes_started_together_get_distinct_run_folders(tmp_path, monkeypatch):
    # A slow exists() widens the window between checking a name and creating it, as a busy disk does.
    real_exists = pathlib.Path.exists

    def slow_exists(self, *args, **kwargs):
        found = real_exists(self, *args, **kwargs)
        time.sleep(0.05)
        return found

    monkeypatch.setattr(pathlib.Path, "exists", slow_exists)
    ctx = multiprocessing.get_context("fork")
    n = 6
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            roots = pool.map(_claim, [(str(tmp_path), barrier)] * n)
    assert len(set(roots)) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(r).name for r in roots)


# --- item 7c: temp files of interrupted saves are removed on resume ---------------------------------------------

def test_remove_stale_temp_files_takes_only_interrupted_saves(tmp_path):
    run = new_run_dir(tmp_path, "r")
    stale = [run.checkpoints / ".last.pt.k2j4x9_a.tmp", run.root / ".metrics.csv.abcdefgh.tmp"]
    kept = [run.checkpoints / "last.pt", run.root / "notes.tmp", run.root / ".keep"]
    for p in stale + kept:
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(run.root)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
