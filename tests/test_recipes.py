"""The shipped recipes: every config validates, and the CPU-sized ones train on demo data as written."""

from pathlib import Path

import pandas as pd
import pytest

from maskstatus.config import load_config
from maskstatus.train.trainer import train
from maskstatus.runs import RunDir

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
CPU_RECIPES = [name for name in RECIPES if name.endswith("-cpu.yaml")]


def test_the_recipes_are_shipped():
    for name in ("baseline.yaml", "retrospective.yaml", "best.yaml", "baseline-cpu.yaml", "retrospective-cpu.yaml",
                 "best-cpu.yaml", "proxy-cpu.yaml", "demo.yaml"):
        assert name in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_validates(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.name


@pytest.mark.parametrize("name", CPU_RECIPES)
def test_cpu_recipe_trains_on_demo_data(name, demo_data, tmp_path):
    # Only the backbone (no weights to load offline in a test) and the budget shrink; transforms, head,
    # loss, sampler, optimiser and scheduler are the recipe's own.
    cfg = load_config(CONFIGS / name, [
        f"data.root={demo_data.root}", f"output_dir={tmp_path}", "model.backbone=test_efficientnet",
        "model.pretrained=false", "cache.size=[48, 48]", "train.epochs=1", "train.limit_train_batches=2",
        "train.batch_size=16", "train.progress=false", "split.folds=4", "split.fold=0", "data.relabel=null",
    ])
    result = train(cfg)
    metrics = pd.read_csv(RunDir(result.run_dir).metrics)
    assert len(metrics) == 1 and metrics["train_loss"].notna().all()
    assert (RunDir(result.run_dir).predictions / "oof.csv").is_file()
