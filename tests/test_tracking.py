"""Experiment tracking: a CV logged to W&B (offline) and MLflow (local store) is read back with each library's reader.

One module-scoped CV of two tiny folds, logged to TensorBoard, W&B and MLflow at once, serves the read-back
tests; the failure tests stop before any training, and one tiny run goes on with TensorBoard only.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maskstatus.cli import main
from maskstatus.config import ConfigError, load_config
from maskstatus.extras import MissingExtraError
from maskstatus.runs import CV_METRICS, RunDir
from maskstatus.scoring.oof import read_oof
from maskstatus.scoring.score import folder_interval
from maskstatus.tracking.run import RunTracker, git_commit

EPOCHS = 2
CURVES = ["train_loss", "val_loss", "val_f1", "val_mask_f1", "val_gender_f1", "val_age_f1", "lr"]
FINAL = ["final/f1", "final/f1_lo", "final/f1_hi", "final/mask_f1", "final/mask_f1_lo", "final/mask_f1_hi"]
POOLED = ["oof/f1", "oof/f1_lo", "oof/f1_hi", "oof/age_f1", "oof/age_f1_lo", "oof/age_f1_hi"]
PLOTS = {"plots/curves.png", "plots/confusion.png"}


def _wandb_env(monkeypatch, root: Path) -> None:
    # W&B keeps artifact staging, cache and settings in the home folder unless told otherwise.
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(root / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.fixture(scope="module")
def tracked_cv(demo_data, tiny_overrides, tmp_path_factory):
    """A CV of folds 0 and 1 (of 4), two epochs each, logged to TensorBoard, W&B offline and MLflow's file store."""
    from maskstatus.train.cv import run_cv

    tmp = tmp_path_factory.mktemp("tracked")
    cfg = load_config(
        None,
        [
            f"data.root={demo_data.root}",
            f"output_dir={tmp / 'runs'}",
            f"cache.dir={tmp / 'cache'}",
            *tiny_overrides,
            f"train.epochs={EPOCHS}",
            "train.limit_train_batches=2",
            "tracking.backends=[tensorboard, wandb, mlflow]",
            "tracking.wandb.mode=offline",
            "tracking.wandb.project=maskstatus-test",
            "tracking.mlflow.experiment=tracking-test",
        ],
    )
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, tmp / "wandb-home")
        result = run_cv(cfg, folds=[0, 1])
    return cfg, result


# W&B's own reader of offline runs (wandb.sdk.internal.datastore) is gone from wandb 0.2x's Python package:
# the .wandb file is read here as W&B writes it, LevelDB log blocks of wandb's own protobuf Records.
_BLOCK, _HEADER = 32768, 7


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, chunk = [], _HEADER, b""
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        if kind == 0:
            break
        chunk += data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind in (1, 4):  # FULL, or the LAST piece of a record split over blocks
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_run(folder: Path) -> dict:
    """The offline W&B run under ``folder``/wandb: its run record, config, history rows, summary and artifact files."""
    (log,) = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    run, config, history, summary, files = None, {}, [], {}, set()
    for r in wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "config":
            config |= {u.key: json.loads(u.value_json) for u in r.config.update if u.key}
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            summary |= {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in r.summary.update}
        elif kind == "artifact":
            files |= {c.path for c in r.artifact.manifest.contents}
    assert run is not None
    return {"run": run, "config": config, "history": history, "summary": summary, "files": files}


def _fold_runs(result) -> list[RunDir]:
    return [RunDir(p) for p in result.fold_runs]


def _final_scores(run: RunDir) -> dict[str, float]:
    interval = folder_interval(run.root, read_oof(run.root))
    return {
        **{f"final/{k}": v for k, v in interval.point.items()},
        **{f"final/{k}_lo": lo for k, (lo, _) in interval.ci.items()},
        **{f"final/{k}_hi": hi for k, (_, hi) in interval.ci.items()},
    }


def _pooled_scores(cv_dir: Path) -> dict[str, float]:
    summary = json.loads((cv_dir / CV_METRICS).read_text())
    out = {f"oof/{k}": v for k, v in summary["oof"].items() if v is not None}
    for k, bounds in summary["oof_ci"].items():
        if isinstance(bounds, list):
            out[f"oof/{k}_lo"], out[f"oof/{k}_hi"] = bounds
    return out


def _head_commit() -> str:
    src = Path(__file__).resolve().parents[1]
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_wandb_offline_runs_hold_config_epochs_final_score_commit_and_pictures(tracked_cv):
    _, result = tracked_cv
    for run in _fold_runs(result):
        logged = wandb_run(run.root)
        assert logged["run"].run_group == result.cv_dir.name
        assert logged["run"].display_name == run.root.name
        assert logged["config"]["train.epochs"] == EPOCHS
        assert logged["config"]["tracking.wandb.mode"] == "offline"
        assert logged["config"]["split.fold"] == load_config(run.config).split.fold
        assert logged["config"]["git_commit"] == _head_commit()
        metrics = pd.read_csv(run.metrics)
        epochs = [row for row in logged["history"] if "val_f1" in row]
        assert [row["trainer/global_step"] for row in epochs] == [0, 1]
        for name in CURVES:
            assert [row[name] for row in epochs] == pytest.approx(metrics[name].tolist()), name
        final = _final_scores(run)
        for name in FINAL:
            assert logged["summary"][name] == pytest.approx(final[name]), name
        assert logged["summary"]["final/level"] == pytest.approx(0.9)
        assert logged["files"] == PLOTS


def test_wandb_groups_the_cv_and_logs_the_pooled_oof_f1(tracked_cv):
    _, result = tracked_cv
    pooled = wandb_run(result.cv_dir)
    assert pooled["run"].run_group == result.cv_dir.name
    assert pooled["run"].job_type == "cv"
    expected = _pooled_scores(result.cv_dir)
    for name in POOLED:
        assert pooled["summary"][name] == pytest.approx(expected[name]), name
    assert {wandb_run(r.root)["run"].job_type for r in _fold_runs(result)} == {"fold"}


def _mlflow(cfg):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(cfg.output_dir / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracking-test")
    assert experiment is not None
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_local_store_holds_config_epochs_final_score_commit_and_pictures(tracked_cv, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg, result = tracked_cv
    client, runs = _mlflow(cfg)
    by_name = {r.info.run_name: r for r in runs}
    for run in _fold_runs(result):
        logged = by_name[run.root.name]
        assert logged.info.status == "FINISHED"
        assert logged.data.params["train.epochs"] == str(EPOCHS)
        assert logged.data.params["model.backbone"] == "test_efficientnet"
        assert logged.data.params["git_commit"] == _head_commit()
        metrics = pd.read_csv(run.metrics)
        for name in CURVES:
            history = client.get_metric_history(logged.info.run_id, name)
            assert [m.step for m in history] == [0, 1], name
            assert [m.value for m in history] == pytest.approx(metrics[name].tolist()), name
        final = _final_scores(run)
        for name in FINAL:
            assert logged.data.metrics[name] == pytest.approx(final[name]), name
        artifacts = {f.path for f in client.list_artifacts(logged.info.run_id, "plots")}
        assert artifacts == PLOTS


def test_mlflow_nests_the_folds_under_a_cv_parent_with_the_pooled_oof_f1(tracked_cv, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg, result = tracked_cv
    _, runs = _mlflow(cfg)
    (parent,) = [r for r in runs if r.data.tags.get("maskstatus.cv") == result.cv_dir.name]
    assert parent.info.run_name == result.cv_dir.name
    assert parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(p.name for p in result.fold_runs)
    expected = _pooled_scores(result.cv_dir)
    for name in POOLED:
        assert parent.data.metrics[name] == pytest.approx(expected[name]), name
    assert parent.data.params["split.folds"] == "4"


def test_tensorboard_is_the_default_and_gets_every_epoch(tracked_cv):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert load_config().tracking.backends == ["tensorboard"]
    _, result = tracked_cv
    run = _fold_runs(result)[0]
    events = EventAccumulator(str(run.tensorboard)).Reload()
    assert [e.step for e in events.Scalars("val_f1")] == [0, 1]
    assert events.Scalars("final/f1")[0].value == pytest.approx(_final_scores(run)["final/f1"])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def _nothing_written(output_dir: Path) -> bool:
    return not output_dir.exists() or not [p for p in output_dir.iterdir() if p.name != "mlruns"]


def test_a_missing_backend_package_stops_before_training_with_one_line(tiny_config, monkeypatch, capsys):
    from maskstatus.train.trainer import train

    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = tiny_config("tracking.backends=[tensorboard, mlflow]")
    with pytest.raises(MissingExtraError, match=r"^tracking.backends: mlflow needs the track extra "):
        train(cfg)
    assert _nothing_written(cfg.output_dir)
    overrides = [f"{k}={v}" for k, v in (("data.root", cfg.data.root), ("output_dir", cfg.output_dir))]
    config = cfg.output_dir.parent / "c.yaml"
    config.write_text("tracking:\n  backends: [wandb]\n")
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(["train", "--config", str(config), *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: tracking.backends: wandb needs the track extra (no module named wandb): ")
    assert "pip install 'maskstatus[track]'" in err
    assert "tracking.on_unavailable=tensorboard" in err


def test_an_unreachable_server_stops_before_training_or_goes_on_with_tensorboard(tiny_config, caplog):
    from maskstatus.train.trainer import train

    url = f"http://127.0.0.1:{_closed_port()}"
    cfg = tiny_config("tracking.backends=[mlflow]", f"tracking.mlflow.tracking_uri={url}")
    with pytest.raises(ConfigError, match=rf"^tracking.mlflow.tracking_uri: cannot reach the mlflow server at {url}"):
        train(cfg)
    assert _nothing_written(cfg.output_dir)

    cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"on_unavailable": "tensorboard"})})
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 1, "limit_train_batches": 1})})
    with caplog.at_level(logging.WARNING, logger="maskstatus.tracking"):
        run = RunDir(train(cfg).run_dir)
    assert "training logs to TensorBoard instead" in caplog.text
    assert load_config(run.config).tracking.backends == ["tensorboard"]
    assert list(run.tensorboard.glob("events.out.tfevents.*"))


class _Broken:
    def log_metrics(self, metrics, step=None):
        raise ConnectionError("server went away")


class _Kept:
    def __init__(self):
        self.logged = []

    def log_metrics(self, metrics, step=None):
        self.logged.append((dict(metrics), step))


def test_a_backend_failing_mid_run_is_dropped_with_a_warning_not_a_crash(caplog):
    tracker = RunTracker(load_config().tracking)
    kept = _Kept()
    tracker._open = {"mlflow": _Broken(), "tensorboard": kept}  # as open() leaves them, without a run
    with caplog.at_level(logging.WARNING, logger="maskstatus.tracking"):
        tracker.log_metrics({"epoch": 0, "train_loss": 0.5, "val_f1": float("nan")}, step=0)
        tracker.log_metrics({"epoch": 1, "train_loss": 0.25}, step=1)
    assert tracker.backends == ["tensorboard"]
    assert "mlflow could not log metrics (server went away); the run goes on without it" in caplog.text
    assert kept.logged == [({"train_loss": 0.5}, 0), ({"train_loss": 0.25}, 1)]


def test_the_commit_is_left_out_outside_a_git_checkout(tmp_path):
    assert git_commit(tmp_path) is None
    assert git_commit() == _head_commit()


def test_a_resumed_run_logs_on_to_the_same_mlflow_run(tiny_config, monkeypatch):
    from maskstatus.train.trainer import train

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = tiny_config("tracking.backends=[mlflow]", "train.epochs=1", "train.limit_train_batches=1")
    run = RunDir(train(cfg).run_dir)
    first = json.loads(run.tracking.read_text())["mlflow"]
    train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})}), resume=run.root)
    assert json.loads(run.tracking.read_text())["mlflow"] == first
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(cfg.output_dir / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "maskstatus"]
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_id == first
    assert logged.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first, "val_f1")] == [0, 1]
    assert logged.data.params["train.epochs"] == "1"  # the parameters a run started with; metrics.csv tells the rest
    assert not list(run.tensorboard.glob("events.out.tfevents.*"))  # tracking.backends without TensorBoard


def test_wandb_online_without_its_server_is_named_and_tensorboard_can_stand_in(monkeypatch, tmp_path):
    from maskstatus.tracking import check_backends

    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.backends=[wandb, mlflow]"])
    with pytest.raises(ConfigError, match=r"^tracking.wandb.mode: cannot reach the wandb server at http://127"):
        check_backends(cfg)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    kept = check_backends(
        cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"on_unavailable": "tensorboard"})})
    )
    assert kept.tracking.backends == ["tensorboard"]
    offline = load_config(None, ["tracking.backends=[wandb]", "tracking.wandb.mode=offline"])
    assert check_backends(offline) == offline  # offline needs no server


def test_a_backend_named_twice_or_unknown_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"tracking.backends: .*each backend once"):
        load_config(None, ["tracking.backends=[wandb, wandb]"])
    with pytest.raises(ConfigError, match=r"tracking.backends.0: "):
        load_config(None, ["tracking.backends=[neptune]"])
