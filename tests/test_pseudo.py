import numpy as np
import pandas as pd
import pytest

from maskstatus.data.pseudo import read_probs, select_pseudo
from maskstatus.labels import PROB_COLUMNS
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.labels import combine_task_probs, encode
from maskstatus.runs import RunDir


def _probs(ids, task_probs):
    p = combine_task_probs({t: np.asarray(v, dtype=float) for t, v in task_probs.items()})
    df = pd.DataFrame(p, columns=PROB_COLUMNS)
    df.insert(0, "ImageID", ids)
    return df


def test_select_pseudo_thresholds_and_labels():
    ids = ["a.jpg", "b.jpg", "c.jpg"]
    probs = _probs(ids, {
        "mask": [[0.99, 0.005, 0.005], [0.01, 0.01, 0.98], [0.98, 0.01, 0.01]],
        "gender": [[0.99, 0.01], [0.02, 0.98], [0.99, 0.01]],
        "age": [[0.99, 0.005, 0.005], [0.01, 0.98, 0.01], [0.4, 0.6, 0.0]],
    })
    images = pd.DataFrame({"image_id": ids, "image_path": [f"/e/{i}" for i in ids]})
    kept = select_pseudo(probs, images, threshold=0.9)
    assert kept["person_id"].tolist() == ["pseudo:a.jpg", "pseudo:b.jpg"]  # c: unsure of the age
    assert kept["label"].tolist() == [encode(0, 0, 0), encode(2, 1, 1)]
    loose = select_pseudo(probs, images, threshold=0.0, task_thresholds={"mask": 0.9, "gender": 0.9})
    assert len(loose) == 3 and loose.loc[2, "age_group"] == 1
    strict = select_pseudo(probs, images, threshold=0.0, task_thresholds={"age": 0.985})
    assert strict["person_id"].tolist() == ["pseudo:a.jpg"]
    with pytest.raises(ValueError, match="unknown task"):
        select_pseudo(probs, images, threshold=0.5, task_thresholds={"hat": 0.5})


def test_read_probs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        read_probs(tmp_path / "nope.csv")
    (tmp_path / "sub.csv").write_text("ImageID,ans\nx.jpg,3\n")
    with pytest.raises(ValueError, match="probs.csv"):
        read_probs(tmp_path / "sub.csv")


def test_pseudo_rows_train_but_never_validate(tiny_config, demo_data, tmp_path):
    first = train(tiny_config("train.epochs=1"))
    _, probs_csv = predict([first.run_dir], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    second = train(tiny_config("train.epochs=1", f"data.pseudo.probs={probs_csv}", "data.pseudo.threshold=0.0",
                               f"split.folds_file={RunDir(first.run_dir).folds}"))
    run = RunDir(second.run_dir)
    used = pd.read_csv(run.root / "pseudo.csv")
    info = pd.read_csv(demo_data.eval_dir / "info.csv", dtype=str)
    assert len(used) == len(info)  # threshold 0 keeps every eval image, and the run records them
    oof = pd.read_csv(run.predictions / "oof.csv", dtype={"person_id": str})
    assert not oof["person_id"].str.startswith("pseudo:").any()
    assert pd.read_csv(run.folds).shape == pd.read_csv(RunDir(first.run_dir).folds).shape
    n_first = pd.read_csv(RunDir(first.run_dir).metrics)["train_images"].iloc[0]
    n_second = pd.read_csv(run.metrics)["train_images"].iloc[0]
    assert n_second > n_first


def test_pseudo_rows_carry_predicted_years_when_the_file_has_them():
    ids = ["a.jpg", "b.jpg"]
    probs = _probs(ids, {"mask": [[1, 0, 0]] * 2, "gender": [[1, 0]] * 2, "age": [[0, 1, 0], [0, 0, 1]]})
    images = pd.DataFrame({"image_id": ids, "image_path": [f"/e/{i}" for i in ids]})
    assert select_pseudo(probs, images, threshold=0.0)["age"].tolist() == [-1, -1]  # groups only: years unknown
    probs["age_mean"], probs["age_sigma"] = [44.4, 61.6], [3.0, 4.0]
    assert select_pseudo(probs, images, threshold=0.0)["age"].tolist() == [44, 62]


@pytest.mark.slow
def test_years_runs_write_years_beside_the_probabilities_and_pseudo_labels_use_them(tiny_config, demo_data, tmp_path):
    first = train(tiny_config("train.epochs=1", "model.age_output=years"))
    _, probs_csv = predict([first.run_dir], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    probs = pd.read_csv(probs_csv)
    assert np.isfinite(probs[["age_mean", "age_sigma"]].to_numpy()).all()
    second = train(tiny_config("train.epochs=1", "model.age_output=years", f"data.pseudo.probs={probs_csv}",
                               "data.pseudo.threshold=0.0", f"split.folds_file={RunDir(first.run_dir).folds}"))
    used = pd.read_csv(RunDir(second.run_dir).root / "pseudo.csv")
    assert (used["age"] >= 0).all()
    # A model of age groups writes no years.
    groups = train(tiny_config("train.epochs=1", f"split.folds_file={RunDir(first.run_dir).folds}"))
    _, plain_csv = predict([groups.run_dir], demo_data.eval_dir, tmp_path / "plain.csv", progress=False)
    assert "age_mean" not in pd.read_csv(plain_csv).columns
