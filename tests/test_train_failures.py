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
from maskstatus.runs import RunDir, atomic_save_torch, load_checkpoint, new_run_dir

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
