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
