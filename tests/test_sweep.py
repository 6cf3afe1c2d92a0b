"""maskstatus sweep: the search space's checks, trials as run folders, pruning, failures, workers, storages, outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from maskstatus.config import ConfigError, load_config
from maskstatus.sweep.space import base_values, check_space, override, read_space

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

TINY_SWEEP = ["train.epochs=2", "train.limit_train_batches=2", "split.folds=4", "scheduler.warmup_epochs=0"]


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


# ---- the search space, checked before any trial trains (no training: fast)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("optimizer.lrr: {type: float, low: 0.1, high: 0.2}", "optimizer.lrr is not a config field"),
        ("optimizer.lr.x: {type: float, low: 0.1, high: 0.2}", "optimizer.lr is not a section"),
        ("optimizer.lr: {type: float, low: 0.2, high: 0.1}", "optimizer.lr: low (0.2) must be below high (0.1)"),
        ("optimizer.lr: {type: log-float, low: 0.0, high: 0.1}", "optimizer.lr: a log-float parameter needs low > 0"),
        ("optimizer.lr: {type: uniform, low: 0.0, high: 0.1}", "optimizer.lr: type: Input should be"),
        ("train.epochs: {type: int, low: 1.5, high: 3}", "train.epochs: an int parameter needs a whole low"),
        ("loss.class_weights: {type: categorical, choices: []}", "loss.class_weights: a categorical parameter needs"),
        ("model.dropout: {type: float, low: 0.0}", "model.dropout: a float parameter needs low and high"),
        ("model.dropout: 0.3", "model.dropout: expected a mapping"),
    ],
)
def test_a_bad_key_or_range_is_a_config_error_naming_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError, match="search space") as err:
        read_space(_space(tmp_path, text))
    assert named in str(err.value)


def test_a_value_the_config_refuses_is_named_with_its_key_before_training(tmp_path):
    space = read_space(
        _space(
            tmp_path,
            "optimizer.lr: {type: log-float, low: 1.0e-4, high: 1.0e-2}\n"
            "model.dropout: {type: float, low: 0.0, high: 1.5}\n",
        )
    )
    with pytest.raises(ConfigError, match=r"model.dropout=1.5 is refused by the config") as err:
        check_space(space, ROOT / "configs" / "demo.yaml")
    assert "model.dropout" in str(err.value).split("refused", 1)[1]  # the config's own message names it too
    space = read_space(_space(tmp_path, "loss.class_weights: {type: categorical, choices: [none, no_such]}\n"))
    with pytest.raises(ConfigError, match="loss.class_weights=no_such is refused"):
        check_space(space, ROOT / "configs" / "demo.yaml")


def test_dict_fields_take_their_own_keys_and_values_survive_as_overrides(tmp_path):
    space = read_space(
        _space(
            tmp_path,
            "loss.task_weights.age: {type: float, low: 0.5, high: 2.0}\n"
            "transforms.train: {type: categorical, choices: [[], [{name: HorizontalFlip}]]}\n",
        )
    )
    base = check_space(space, ROOT / "configs" / "demo.yaml")
    assert base.name == "demo"
    for value in (1e-05, 0.30000000000000004, [{"name": "HorizontalFlip", "p": 0.5}], "none", True):
        assert yaml.safe_load(override("k", value).split("=", 1)[1]) == value


def test_the_proxy_space_holds_the_proxy_config_values():
    """benchmarks/sweep.py enqueues proxy-cpu.yaml's own values as trial 0: they must lie in the space."""
    space = read_space(ROOT / "configs" / "sweeps" / "proxy-cpu.yaml")
    cfg = check_space(space, ROOT / "configs" / "proxy-cpu.yaml")
    values = base_values(space, cfg)
    for key, value in values.items():
        param = space.params[key]
        if param.type == "categorical":
            assert value in param.choices
        else:
            assert param.low <= value <= param.high, key


def test_the_benchmark_command_line_defaults_to_the_proxy_fold():
    import sweep as bench

    args = bench.parse_args([])
    assert args.config == ROOT / "configs" / "proxy-cpu.yaml" and args.fold == 0 and args.trials == 8
    assert args.out == ROOT / "benchmarks" / "results" / "sweep-proxy-fold0.json"
    overrides = bench.base_overrides(args)
    cfg = load_config(args.config, overrides)
    assert (cfg.split.fold, cfg.train.epochs, cfg.train.limit_train_batches) == (0, 2, 60)
    assert cfg.cache.size == (96, 96) and cfg.cache.mode == "disk"
    assert bench.KIND == "study"
    assert "benchmarks/sweep.py" in bench.__doc__ and "--out benchmarks/results/sweep-proxy-fold0.json" in bench.__doc__


# ---- trials that train (tiny config, demo data)


def test_the_benchmark_writes_its_json_and_copies_the_page(demo_data, tiny_overrides, tmp_path):
    import sweep as bench

    out = tmp_path / "results" / "sweep-demo.json"
    argv = [
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--space",
        str(ROOT / "configs" / "sweeps" / "proxy-cpu.yaml"),
        "--data",
        str(demo_data.root),
        "--trials",
        "2",
        "--epochs",
        "1",
        "--limit-train-batches",
        "2",
        "--boot",
        "50",
        "--sweep-dir",
        str(tmp_path / "sw"),
        "--out",
        str(out),
        *tiny_overrides,
        "scheduler.warmup_epochs=0",
    ]
    assert bench.main(argv) == 0
    report = json.loads(out.read_text())
    for key in (
        "trials",
        "counts",
        "epochs",
        "best_vs_baseline",
        "importance",
        "machine",
        "command",
        "commit",
        "resolved_config",
        "best_resolved_config",
    ):
        assert key in report
    assert [t["number"] for t in report["trials"]] == [0, 1]
    assert report["trials"][0]["params"] == {
        "optimizer.lr": 0.003,
        "optimizer.weight_decay": 0.0001,
        "model.dropout": 0.2,
        "loss.class_weights": "none",
    }  # demo.yaml's own
    assert report["epochs"]["if_none_pruned"] == 2 and report["resolved_config"]["split"]["fold"] == 0
    comparison = report["best_vs_baseline"]
    assert comparison["baseline_trial"] == 0 and len(comparison["f1_gain_ci"]) == 2
    assert comparison["baseline"]["oof_f1"] == pytest.approx(report["trials"][0]["value"])
    copied = out.with_suffix("")
    assert (copied / "index.html").is_file() and (copied / "best.yaml").is_file()
    assert (copied / "plots" / "history.png").is_file()
    assert 'src="plots/history.png"' in (copied / "index.html").read_text()


def test_the_command_refuses_a_bad_space_before_anything_is_made(tmp_path, capsys):
    from maskstatus.cli import main

    space = _space(
        tmp_path,
        "optimizer.lr: {type: log-float, low: 1.0e-4, high: 1.0e-2}\ntrain.no_such_key: {type: int, low: 1, high: 3}\n",
    )
    out = tmp_path / "sw"
    assert (
        main(["sweep", "--config", str(ROOT / "configs" / "demo.yaml"), "--space", str(space), "--out", str(out)]) == 2
    )
    assert "train.no_such_key is not a config field" in capsys.readouterr().err
    assert not out.exists()


def test_a_worker_killed_on_this_machine_leaves_a_trial_the_next_run_fails(tmp_path):
    import subprocess

    import optuna

    from maskstatus.runs import SweepDir
    from maskstatus.sweep.study import WORKER_ATTR, fail_abandoned_trials, open_storage, worker_id

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = worker_id().rpartition(":")[0]
    for storage in (f"journal:{tmp_path / 'j.log'}", None):
        study = optuna.create_study(storage=open_storage(storage, SweepDir(tmp_path / "sw")), study_name="s")
        gone, alive, elsewhere = study.ask(), study.ask(), study.ask()
        gone.set_user_attr(WORKER_ATTR, f"{host}:{dead.pid}")
        alive.set_user_attr(WORKER_ATTR, worker_id())
        elsewhere.set_user_attr(WORKER_ATTR, f"another-machine:{dead.pid}")
        assert fail_abandoned_trials(study) == [gone.number]
        states = [t.state.name for t in study.get_trials()]
        assert states == ["FAIL", "RUNNING", "RUNNING"]
        assert "ended without it" in study.get_trials()[0].user_attrs["abandoned"]


def _one_batch(demo_data, tiny_overrides: list[str], tmp_path: Path) -> list[str]:
    """Overrides of the tiny config for trials of one epoch of one batch (the sweep's plumbing, not its learning)."""
    return [
        f"data.root={demo_data.root}",
        *tiny_overrides,
        "train.epochs=1",
        "train.limit_train_batches=1",
        "train.limit_val_batches=1",
        "scheduler.warmup_epochs=0",
        f"cache.dir={tmp_path / 'cache'}",
    ]


def _cli_sweep(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "maskstatus.cli", "-q", "sweep", *args]


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_two_workers_share_one_study_and_run_every_trial_once(demo_data, tiny_overrides, tmp_path, storage, capsys):
    import os
    import subprocess

    from maskstatus.cli import main

    out = tmp_path / "sw"
    store = f"journal:{tmp_path / 'study.log'}" if storage == "journal" else f"sqlite:///{tmp_path / 'study.db'}"
    space = _space(
        tmp_path,
        "optimizer.lr: {type: log-float, low: 1.0e-3, high: 1.0e-2}\n"
        "model.dropout: {type: categorical, choices: [0.0, 0.2]}\n",
    )
    args = [
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--space",
        str(space),
        "--out",
        str(out),
        "--storage",
        store,
        "--study",
        "shared",
        "--trials",
        "3",
        *_one_batch(demo_data, tiny_overrides, tmp_path),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    workers = [
        subprocess.Popen(_cli_sweep(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    ran = sorted(int(log.split("this worker ran ")[1].split()[0]) for log in logs)
    assert sum(ran) == 3, logs  # between them, every trial once
    summary = json.loads((out / "sweep.json").read_text())
    assert [t["number"] for t in summary["trials"]] == [0, 1, 2]
    assert [t["state"] for t in summary["trials"]] == ["COMPLETE"] * 3
    folders = sorted(p.name for p in (out / "trials").iterdir())
    assert [f.rsplit("-", 2)[0] for f in folders] == ["trial-0000", "trial-0001", "trial-0002"]
    assert sorted(t["run_dir"] for t in summary["trials"]) == [f"trials/{f}" for f in folders]
    assert len({t["worker"] for t in summary["trials"]}) in (1, 2)
    best = load_config(out / "best.yaml")  # the base config with the best trial's values, valid as it is
    assert best.name == "demo" and best.model.dropout in (0.0, 0.2)
    # Rerunning the command (a resume) finds the study complete and trains nothing; --page rewrites the page.
    capsys.readouterr()
    assert main(["sweep", *args]) == 0
    assert "this worker ran 0 trial(s)" in capsys.readouterr().out
    (out / "index.html").unlink()
    assert main(["sweep", "--page", str(out), "--storage", store]) == 0
    page = (out / "index.html").read_text()
    assert "Optimisation history" in page and "plots/history.png" in page and "trial-0002" in page


def test_a_hopeless_trial_is_pruned_and_a_crashing_one_fails_while_the_sweep_goes_on(
    demo_data, tiny_overrides, tmp_path, monkeypatch
):
    import optuna

    from maskstatus.runs import RunDir
    from maskstatus.sweep.study import SweepSettings, sweep
    from maskstatus.train import trainer

    # The tiny model learns nothing in two batches, so the scores are fixed by the learning rate: the pruner's
    # decision is then known (the good trials 0.5 and 0.6, the hopeless one 0.0), and a learning rate of 5
    # diverges at once, as a real one would after a few steps.
    validate, train_epoch = trainer._validate, trainer._train_epoch

    def scored(fabric, parts, cfg, table, epoch):
        val = validate(fabric, parts, cfg, table, epoch)
        val.metrics["score"] = 0.0 if cfg.optimizer.lr < 1e-6 else 0.5 + 0.1 * epoch
        return val

    def diverging(fabric, parts, cfg, epoch):
        if cfg.optimizer.lr > 1:
            raise trainer.NonFiniteLoss(epoch, 0, "the training loss is nan")
        return train_epoch(fabric, parts, cfg, epoch)

    monkeypatch.setattr(trainer, "_validate", scored)
    monkeypatch.setattr(trainer, "_train_epoch", diverging)
    space = _space(tmp_path, "optimizer.lr: {type: log-float, low: 1.0e-10, high: 10.0}\n")
    overrides = [
        f"data.root={demo_data.root}",
        *tiny_overrides,
        *TINY_SWEEP,
        "train.limit_train_batches=1",
        "train.limit_val_batches=1",
        f"cache.dir={tmp_path / 'cache'}",
    ]
    lrs = [3e-3, 2e-3, 5.0, 1e-9]
    settings = SweepSettings(
        out=tmp_path / "sw", study="s", n_trials=len(lrs), prune_startup=2, enqueue=[{"optimizer.lr": lr} for lr in lrs]
    )
    result = sweep(space, ROOT / "configs" / "demo.yaml", overrides, settings)
    trials = result.study.get_trials()
    assert all(t.params for t in trials), [(t.state.name, t.params, t.user_attrs) for t in trials]
    assert [t.params["optimizer.lr"] for t in trials] == lrs
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert "training diverged" in trials[2].user_attrs["error"]
    pruned = RunDir(tmp_path / "sw" / trials[3].user_attrs["run_dir"])
    assert trials[3].user_attrs["epochs_run"] == 1 and pruned.last.is_file()  # a valid, resumable run
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert summary["epochs"]["saved_by_pruning"] == 1 and summary["counts"]["PRUNED"] == 1
    assert summary["best"]["value"] == pytest.approx(0.6) and isinstance(result.study, optuna.Study)
    assert summary["trials"][2]["error"].startswith("RunError: training diverged")


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on a free localhost port, from the Debian binaries `make setup` installs."""
    import glob
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): `make setup` installs them")
    bin_dir = Path(found[-1]).parent
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: the server runs as nobody
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: initdb refuses root and there is no way to drop it")
        run_as = ["runuser", "-u", "nobody", "--"]
    # Not tmp_path: its parents are private to the user running the tests, and the server's user must reach it.
    folder = Path(tempfile.mkdtemp(prefix="maskstatus-pg-"))
    folder.chmod(0o755)
    if run_as:
        nobody = pwd.getpwnam("nobody")
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = folder / "data"
    try:
        subprocess.run(
            [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(folder / "log"),
                "-w",
                "-o",
                f"-p {port} -k {folder} -c listen_addresses=127.0.0.1",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


def test_a_sweep_on_a_postgresql_server(demo_data, tiny_overrides, tmp_path, postgres_url):
    from maskstatus.sweep.study import SweepSettings, load_study, sweep

    space = _space(tmp_path, "optimizer.lr: {type: log-float, low: 1.0e-3, high: 1.0e-2}\n")
    overrides = _one_batch(demo_data, tiny_overrides, tmp_path)
    settings = SweepSettings(out=tmp_path / "sw", study="pg", n_trials=2, storage=postgres_url)
    result = sweep(space, ROOT / "configs" / "demo.yaml", overrides, settings, enqueue_base=True)
    assert result.ran == 2
    # Read back from the server by a fresh connection, as a worker on another machine would.
    study = load_study(tmp_path / "sw", postgres_url, "pg")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert study.trials[0].params == {"optimizer.lr": 0.003}  # demo.yaml's own, enqueued
    assert not (tmp_path / "sw" / "study.db").exists()
    assert load_study(tmp_path / "sw", postgres_url).study_name == "pg"  # the only study there
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["counts"]["COMPLETE"] == 2


def test_with_cv_a_trial_is_a_cv_folder_scored_by_its_pooled_oof(demo_data, tiny_overrides, tmp_path):
    from maskstatus.runs import CV_CONFIG, CV_METRICS
    from maskstatus.sweep.study import SweepSettings, sweep

    space = _space(tmp_path, "optimizer.lr: {type: log-float, low: 1.0e-3, high: 1.0e-2}\n")
    overrides = [*_one_batch(demo_data, tiny_overrides, tmp_path), "split.folds=2"]
    result = sweep(
        space,
        ROOT / "configs" / "demo.yaml",
        overrides,
        SweepSettings(out=tmp_path / "sw", study="cv", n_trials=1, cv=True),
    )
    (trial,) = result.study.trials
    folder = tmp_path / "sw" / trial.user_attrs["run_dir"]
    assert (folder / CV_CONFIG).is_file() and folder.name.startswith("trial-0000-cv-")
    pooled = json.loads((folder / CV_METRICS).read_text())
    assert pooled["folds_done"] == [0, 1] and trial.value == pytest.approx(pooled["oof"]["score"])
    assert sorted(trial.intermediate_values) == [0, 1] and trial.user_attrs["epochs_run"] == 2
    assert json.loads((tmp_path / "sw" / "sweep.json").read_text())["objective"].startswith("pooled out-of-fold")
