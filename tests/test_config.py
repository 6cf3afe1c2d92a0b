from pathlib import Path

import pytest
import yaml

from maskstatus.config import Config, ConfigError, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config) and cfg.split.folds == 5 and cfg.data.age.old_from == 60


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\nmodel:\n  backbone: resnet18\n")
    cfg = load_config(p, ["train.epochs=7", "data.root=/x/y", "cache.size=[64, 48]", "data.age.old_from=58"])
    assert cfg.train.epochs == 7 and cfg.model.backbone == "resnet18"
    assert cfg.data.root == Path("/x/y") and cfg.cache.size == (64, 48) and cfg.data.age.old_from == 58


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"train\.epocs"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"model\.headz"):
        load_config(None, ["model.headz=single"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.epochs=0", "train.epochs"),
        ("model.head=triple", "model.head"),
        ("split.fold=5", "split"),
        ("data.age.young_below=70", "data.age"),
        ("cache.mode=gpu", "cache.mode"),
        ("loss.task_weights={colour: 1}", "loss.task_weights"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert key in str(err.value)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_save_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "cache.size=[32, 24]", "data.root=/d"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 4


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    load_config(path)


def test_the_config_types_of_mask_states_and_tasks_are_the_label_names():
    from typing import get_args

    from maskstatus.config import MaskState, Task
    from maskstatus.labels import MASK_NAMES, TASKS

    assert get_args(MaskState) == MASK_NAMES
    assert get_args(Task) == tuple(TASKS)
