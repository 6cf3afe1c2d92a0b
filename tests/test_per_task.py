"""Per-task models: a multitask head limited to some tasks, trained alone, combined into the 18 classes."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.config import ConfigError, load_config
from maskstatus.infer.ensemble import ensemble_oof
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.labels import PROB_COLUMNS, TASKS, combine_task_probs, split_class_probs
from maskstatus.models.heads import MultiTaskHead, outputs_to_probs, outputs_to_task_probs
from maskstatus.runs import RunDir


def test_task_subset_config():
    assert load_config(None, ["model.tasks=[age, mask]"]).model.tasks == ["mask", "age"]
    with pytest.raises(ConfigError, match="head=single"):
        load_config(None, ["model.head=single", "model.tasks=[mask]"])
    with pytest.raises(ConfigError, match="model.tasks"):
        load_config(None, ["model.tasks=[]"])
    with pytest.raises(ConfigError, match="model.tasks"):
        load_config(None, ["model.tasks=[hat]"])


def test_missing_tasks_count_as_uniform():
    pm = np.array([[0.7, 0.2, 0.1]])
    joint = combine_task_probs({"mask": pm})
    np.testing.assert_allclose(joint.sum(), 1.0)
    back = split_class_probs(joint)
    np.testing.assert_allclose(back["mask"], pm)
    np.testing.assert_allclose(back["gender"], [[0.5, 0.5]])
    tj = combine_task_probs({"age": torch.tensor([[0.1, 0.1, 0.8]])})
    np.testing.assert_allclose(split_class_probs(tj)["age"].numpy(), [[0.1, 0.1, 0.8]], rtol=1e-6)


def test_head_with_a_task_subset():
    head = MultiTaskHead(8, tasks=["gender"])
    out = head(torch.randn(3, 8))
    assert list(out) == ["gender"] and head.output_sizes == {"gender": 2}
    probs = outputs_to_probs(out)
    np.testing.assert_allclose(probs.sum(1).detach().numpy(), 1.0, rtol=1e-6)
    assert list(outputs_to_task_probs(out)) == ["gender"]
    with pytest.raises(ValueError):
        MultiTaskHead(8, tasks=["hat"])


@pytest.fixture(scope="module")
def task_runs(demo_data, tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("per_task")
    runs = {}
    for task in TASKS:
        cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                                 f"model.tasks=[{task}]", f"name={task}", "train.epochs=2",
                                 "train.limit_train_batches=3"])
        runs[task] = train(cfg).run_dir
    return runs


def test_per_task_run_scores_its_own_task(task_runs):
    metrics = pd.read_csv(RunDir(task_runs["mask"]).metrics)
    assert metrics["val_f1"].isna().all() and metrics["val_gender_f1"].isna().all()
    np.testing.assert_allclose(metrics["val_score"], metrics["val_mask_f1"])


def test_per_task_runs_combine_into_18_classes(task_runs, demo_data, tmp_path, caplog):
    own = {}
    for task, run in task_runs.items():
        _, probs = predict([run], demo_data.eval_dir, tmp_path / f"{task}.csv", progress=False)
        own[task] = split_class_probs(pd.read_csv(probs)[PROB_COLUMNS].to_numpy())[task]
    _, probs = predict(list(task_runs.values()), demo_data.eval_dir, tmp_path / "all.csv", progress=False)
    combined = pd.read_csv(probs)[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(combined, combine_task_probs(own), atol=1e-5)

    # Without an age model, age counts as uniform, and the user is told the submission guesses it.
    _, probs = predict([task_runs["mask"], task_runs["gender"]], demo_data.eval_dir, tmp_path / "x.csv", progress=False)
    age = split_class_probs(pd.read_csv(probs)[PROB_COLUMNS].to_numpy())["age"]
    np.testing.assert_allclose(age, 1 / 3, atol=1e-5)
    assert "no ensemble member predicts the 'age' task" in caplog.text


def test_per_task_runs_combine_out_of_fold(task_runs):
    oof, metrics = ensemble_oof(list(task_runs.values()))
    assert np.isfinite(metrics["f1"]) and len(oof) > 0
    np.testing.assert_allclose(oof[PROB_COLUMNS].to_numpy().sum(1), 1.0, atol=1e-4)
