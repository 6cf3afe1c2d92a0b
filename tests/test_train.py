"""The real training loop on demo data, a few tiny epochs at a time."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.config import load_config
from maskstatus.train.trainer import train
from maskstatus.runs import RunDir, load_checkpoint

STABLE = ["train_loss", "val_loss", "val_f1", "val_acc", "val_mask_f1", "val_gender_f1", "val_age_f1", "lr"]


def test_run_folder_holds_everything(tiny_config):
    cfg = tiny_config("train.epochs=2", "train.limit_train_batches=3")
    result = train(cfg)
    run = RunDir(result.run_dir)
    assert load_config(run.config) == cfg
    folds = pd.read_csv(run.folds, dtype={"person_id": str})
    assert set(folds["fold"]) == set(range(cfg.split.folds))
    metrics = pd.read_csv(run.metrics)
    assert metrics["epoch"].tolist() == [0, 1]
    assert {"val_f1", "val_mask_f1", "val_gender_f1", "val_age_f1", "val_acc", "train_loss"} <= set(metrics)
    last, best = load_checkpoint(run.last), load_checkpoint(run.best)  # weights_only=True
    assert last["epoch"] == 1 and "optimizer" in last and "scheduler" in last
    assert best["epoch"] == result.best_epoch and best["metrics"]["f1"] == pytest.approx(result.best_f1)
    assert list(run.tensorboard.glob("events.out.tfevents.*"))
    assert (run.plots / "curves.png").is_file() and (run.plots / "confusion.png").is_file()
    # out-of-fold predictions cover exactly the held-out people, one row per image
    oof = pd.read_csv(run.predictions / "oof.csv", dtype={"person_id": str})
    held_out = set(folds.loc[folds["fold"] == cfg.split.fold, "person_id"])
    assert set(oof["person_id"]) == held_out and len(oof) == 7 * len(held_out)
    probs = oof[[f"p{c}" for c in range(18)]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)


def test_same_seed_same_metrics(tiny_config):
    cfg = tiny_config("train.epochs=2", "train.limit_train_batches=2")
    a = pd.read_csv(RunDir(train(cfg).run_dir).metrics)
    b = pd.read_csv(RunDir(train(cfg).run_dir).metrics)
    pd.testing.assert_frame_equal(a[STABLE], b[STABLE])


def test_workers_do_not_change_results(tiny_config):
    base = tiny_config("train.epochs=1", "train.limit_train_batches=2")
    a = pd.read_csv(RunDir(train(base).run_dir).metrics)
    b = pd.read_csv(RunDir(train(base.model_copy(update={"train": base.train.model_copy(update={"num_workers": 2})})).run_dir).metrics)
    pd.testing.assert_frame_equal(a[STABLE], b[STABLE])


def test_resume_continues_the_same_run(tiny_config, monkeypatch):
    import maskstatus.train.trainer as engine

    cfg = tiny_config("train.epochs=3", "train.limit_train_batches=2", "scheduler.name=cosine", "model.dropout=0.3")
    straight = train(cfg)

    real_epoch, calls = engine._train_epoch, []

    def crash_on_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill during epoch 1")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine, "_train_epoch", crash_on_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(engine, "_train_epoch", real_epoch)
    crashed = sorted((cfg.output_dir).iterdir())[-1]
    assert load_checkpoint(RunDir(crashed).last)["epoch"] == 0

    resumed = train(cfg, resume=crashed)
    assert resumed.run_dir == crashed and resumed.epochs_run == 3
    a, b = pd.read_csv(RunDir(straight.run_dir).metrics), pd.read_csv(RunDir(crashed).metrics)
    assert b["epoch"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(a[STABLE], b[STABLE])
    wa, wb = load_checkpoint(RunDir(straight.run_dir).last)["model"], load_checkpoint(RunDir(crashed).last)["model"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_early_stopping_and_folds_file_reuse(tiny_config):
    first = train(tiny_config("train.epochs=1", "train.limit_train_batches=1"))
    folds_csv = RunDir(first.run_dir).folds
    cfg = tiny_config(f"split.folds_file={folds_csv}", "split.seed=999", "train.epochs=6",
                      "train.limit_train_batches=1", "train.early_stopping_patience=1", "optimizer.lr=1e-9")
    second = train(cfg)
    assert RunDir(second.run_dir).folds.read_text() == folds_csv.read_text()
    assert second.epochs_run < 6  # a learning rate of 1e-9 never improves on epoch 0


def test_without_holdout_every_person_is_trained_on_and_the_last_epoch_kept(tiny_config, demo_data, tmp_path, capsys):
    from maskstatus.cli import main
    from maskstatus.infer.predict import predict
    from maskstatus.train.trainer import _prepare_data

    cfg = tiny_config("split.holdout=false", "train.epochs=2", "train.limit_train_batches=2", "train.ema_decay=0.9")
    data = _prepare_data(cfg, None)
    assert len(data.train_rows) == len(data.table) and len(data.val_rows) == 0
    result = train(cfg)
    run = RunDir(result.run_dir)
    metrics = pd.read_csv(run.metrics)
    assert metrics["epoch"].tolist() == [0, 1] and not [c for c in metrics if c.startswith("val_")]
    best, last = load_checkpoint(run.best), load_checkpoint(run.last)
    assert result.best_epoch == best["epoch"] == last["epoch"] == 1 and best["metrics"] == {}
    for key, value in best["model"].items():  # the EMA weights of the last epoch
        torch.testing.assert_close(value, last["ema"][key])
    assert not (run.predictions / "oof.csv").exists() and not (run.plots / "confusion.png").exists()
    assert (run.plots / "curves.png").is_file()
    sub, _ = predict([run.root], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    assert pd.read_csv(sub)["ans"].between(0, 17).all()
    assert main(["train", "--config", str(run.config), "train.epochs=1"]) == 0
    assert "trained on every person (split.holdout=false): best.pt holds epoch 0" in capsys.readouterr().out
    assert main(["train", "--resume", str(run.root), "train.epochs=3"]) == 0  # resumed: still the last epoch kept
    assert pd.read_csv(run.metrics)["epoch"].tolist() == [0, 1, 2] and load_checkpoint(run.best)["epoch"] == 2


@pytest.mark.parametrize("needs", ["scheduler.name=plateau", "train.early_stopping_patience=2"])
def test_without_holdout_nothing_may_need_validation(tiny_config, needs):
    from maskstatus.config import ConfigError

    with pytest.raises(ConfigError, match=f"split.holdout=false .*{needs.split('=')[0]}"):
        tiny_config("split.holdout=false", needs)


def test_cv_refuses_a_config_without_holdout(tiny_config):
    from maskstatus.config import ConfigError
    from maskstatus.train.cv import run_cv

    with pytest.raises(ConfigError, match="use maskstatus train"):
        run_cv(tiny_config("split.holdout=false"))
