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

import maskstatus.train.trainer as engine
from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.train.cv import run_cv
from maskstatus.train.trainer import train
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


def _nan_from(epoch, batch, monkeypatch):
    """Make the training loss NaN from (epoch, batch) on, as a diverging run's is."""
    real = engine._train_epoch

    def epoch_with_nan(fabric, parts, cfg, e):
        if e == epoch:
            loss_fn, calls = parts.loss_fn, []

            def nan_loss(outputs, batch_):
                loss, parts_ = loss_fn(outputs, batch_)
                calls.append(1)
                return (loss * float("nan") if len(calls) > batch else loss), parts_

            parts.loss_fn = nan_loss
        return real(fabric, parts, cfg, e)

    monkeypatch.setattr(engine, "_train_epoch", epoch_with_nan)


def test_a_nan_loss_stops_training_naming_epoch_and_batch_and_keeps_the_last_good_checkpoint(tiny_config,
                                                                                             monkeypatch):
    cfg = tiny_config("train.epochs=3", "train.limit_train_batches=3")
    _nan_from(1, 1, monkeypatch)
    with pytest.raises(RunError, match=r"training diverged: the training loss is nan at epoch 1, batch 1 .*"
                                       r"last good checkpoint, epoch 0"):
        train(cfg)
    run = RunDir(next(cfg.output_dir.iterdir()))
    last, best = load_checkpoint(run.last), load_checkpoint(run.best)
    assert last["epoch"] == 0 and best["epoch"] == 0  # epoch 1's NaN weights were never saved
    for weights in (last["model"], best["model"]):
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0]


def test_a_step_that_leaves_non_finite_weights_is_caught_before_they_are_saved(tiny_config, monkeypatch):
    """A finite loss whose gradient is NaN: the last step of the epoch breaks the weights, which are not saved."""
    cfg = tiny_config(*FAST)
    real_build = engine._build

    def build_with_nan_gradient(*args):
        parts = real_build(*args)
        loss_fn = parts.loss_fn

        def loss_with_nan_gradient(outputs, batch):
            loss, terms = loss_fn(outputs, batch)
            first = next(iter(outputs.values()))
            return loss + 0 * torch.sqrt(first * 0).sum(), terms  # value unchanged; d/dx sqrt(0) is inf

        parts.loss_fn = loss_with_nan_gradient
        return parts

    monkeypatch.setattr(engine, "_build", build_with_nan_gradient)
    with pytest.raises(RunError, match="the weights are no longer finite .* at epoch 0, batch 0.* holds no checkpoint"):
        train(cfg)
    run = RunDir(next(cfg.output_dir.iterdir()))
    assert not run.best.exists() and not run.last.exists()


def test_predict_refuses_the_nan_weights_of_a_diverged_run(tiny_config, demo_data, tmp_path):
    from maskstatus.infer.predict import predict

    run = RunDir(train(tiny_config(*FAST)).run_dir)
    state = load_checkpoint(run.best)
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    atomic_save_torch(state, run.best)
    out = tmp_path / "sub.csv"
    with pytest.raises(RunError, match=rf"{run.best}.* non-finite probabilities for \d+ of \d+ images"):
        predict([run.root], demo_data.eval_dir, out, progress=False)
    assert not out.exists() and not out.with_name("sub.probs.csv").exists()


# --- item 5: a resume may not shrink a run ----------------------------------------------------------------------

def test_resume_with_fewer_epochs_than_trained_is_refused_before_anything_changes(tiny_config, capsys):
    run = RunDir(train(tiny_config("train.epochs=2", "train.limit_train_batches=1")).run_dir)
    before = {p: p.read_bytes() for p in (run.config, run.metrics, run.last, run.best)}
    assert main(["train", "--resume", str(run.root), "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.epochs=1 is fewer than the 2 epochs" in err and str(run.root) in err
    assert {p: p.read_bytes() for p in before} == before


def test_cv_resume_with_fewer_epochs_than_trained_is_refused(tiny_config, capsys):
    cfg = tiny_config("split.folds=3", "train.epochs=2", "train.limit_train_batches=1")
    result = run_cv(cfg, folds=[0])
    metrics = (result.cv_dir / "cv_metrics.json").read_bytes()
    assert main(["cv", "--resume", str(result.cv_dir), "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs=1 is fewer than the epochs fold runs" in err and f"{result.fold_runs[0].name}: 2" in err
    assert (result.cv_dir / "cv_metrics.json").read_bytes() == metrics


# --- item 6: run names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "a/b", "/tmp/x", ".hidden", "..", "a\\b", "tab\there", ""])
def test_run_names_are_one_safe_folder_name(name):
    with pytest.raises(ConfigError, match=r"\n  name: "):
        load_config(None, [f"name={name!r}"])


def test_plain_run_names_still_work():
    assert load_config(None, ["name=lite2-aug_128.v2"]).name == "lite2-aug_128.v2"


# --- item 7a: images of several sizes are all named, before the run folder exists -------------------------------

def test_images_of_other_sizes_are_all_named_before_the_run_folder_exists(tiny_config, demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data.root / "train", data / "train")
    images = sorted((data / "train" / "images").rglob("*.jpg"))
    odd = [images[3], images[40], images[100]]
    for path in odd:
        Image.open(path).resize((80, 100)).save(path)
    cfg = tiny_config(f"data.root={data}", "cache.size=null", *FAST)
    with pytest.raises(DataError, match="images of different sizes") as err:
        train(cfg)
    assert sorted(p.path for p in err.value.problems) == sorted(str(p) for p in odd)
    assert "100x80 image makes a 100x80" in str(err.value) and "not 128x96" in str(err.value)
    assert not cfg.output_dir.exists()


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


def test_resume_removes_the_temp_file_a_killed_save_left(tiny_config, caplog):
    run = RunDir(train(tiny_config(*FAST)).run_dir)
    tmp = run.checkpoints / ".last.pt.q8w2e7r1.tmp"
    tmp.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run.root), "train.epochs=2"]) == 0
    assert not tmp.exists() and load_checkpoint(run.last)["epoch"] == 1
    assert "removed 1 temp file(s) of interrupted saves" in caplog.text and "checkpoints/.last.pt.q8w2e7r1.tmp" in \
        caplog.text


# --- item 9: Ctrl+C says where to resume from ----------------------------------------------------------------

def _interrupt_epoch(n, monkeypatch):
    real, calls = engine._train_epoch, []

    def epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_train_epoch", epoch)


def _config_file(tmp_path, tiny_config, *overrides) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(*overrides).model_dump(mode="json")))
    return str(path)


def test_ctrl_c_during_training_says_how_to_resume_in_one_line(tiny_config, tmp_path, monkeypatch, capsys):
    config = _config_file(tmp_path, tiny_config, "train.epochs=3", "train.limit_train_batches=1")
    _interrupt_epoch(2, monkeypatch)
    assert main(["train", "--config", config]) == 130
    run = next((tmp_path / "runs").iterdir())
    assert capsys.readouterr().err == f"interrupted during training; continue with: maskstatus train --resume {run}\n"
    _interrupt_epoch(1, monkeypatch)  # before any epoch is saved: nothing to resume
    assert main(["train", "--config", config]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished no epoch, so there is nothing to resume" in err


def test_ctrl_c_during_cv_says_how_to_resume_the_cv(tiny_config, tmp_path, monkeypatch, capsys):
    config = _config_file(tmp_path, tiny_config, "split.folds=3", *FAST)
    _interrupt_epoch(2, monkeypatch)  # in fold 1, after fold 0 finished
    assert main(["cv", "--config", config, "--folds", "0,1"]) == 130
    cv_dir = next((tmp_path / "runs").iterdir())
    assert capsys.readouterr().err == ("interrupted during cross-validation; continue with: maskstatus cv --resume "
                                       f"{cv_dir} --folds 0,1\n")
