import numpy as np
import pandas as pd
import pytest

from maskstatus.infer.predict import predict
from maskstatus.labels import PROB_COLUMNS
from maskstatus.train.trainer import train


@pytest.fixture(scope="module")
def two_runs(demo_data, tmp_path_factory, tiny_overrides):
    from maskstatus.config import load_config

    out = tmp_path_factory.mktemp("runs")
    runs = []
    for seed in (1, 2):
        cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides, f"seed={seed}",
                                 "train.epochs=1", "train.limit_train_batches=2"])
        runs.append(train(cfg).run_dir)
    return runs


def test_submission_in_info_order(two_runs, demo_data, tmp_path):
    sub_path, probs_path = predict([two_runs[0]], demo_data.eval_dir, tmp_path / "submission.csv", progress=False)
    info = pd.read_csv(demo_data.eval_dir / "info.csv", dtype=str)
    sub = pd.read_csv(sub_path, dtype={"ImageID": str})
    assert list(sub.columns) == ["ImageID", "ans"]
    assert sub["ImageID"].tolist() == info["ImageID"].tolist()
    assert sub["ans"].between(0, 17).all()
    probs = pd.read_csv(probs_path)
    assert probs["ImageID"].tolist() == info["ImageID"].tolist()
    p = probs[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    assert (p.argmax(1) == sub["ans"].to_numpy()).all()
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files


def test_soft_voting_is_the_mean_of_runs(two_runs, demo_data, tmp_path):
    singles = []
    for i, run in enumerate(two_runs):
        _, pp = predict([run], demo_data.eval_dir, tmp_path / f"s{i}.csv", progress=False)
        singles.append(pd.read_csv(pp)[PROB_COLUMNS].to_numpy())
    _, pp = predict(two_runs, demo_data.eval_dir, tmp_path / "both.csv", progress=False)
    np.testing.assert_allclose(pd.read_csv(pp)[PROB_COLUMNS].to_numpy(), (singles[0] + singles[1]) / 2, atol=2e-6)
    # the same run twice is the run
    _, pp = predict([two_runs[0], two_runs[0]], demo_data.eval_dir, tmp_path / "same.csv", progress=False)
    np.testing.assert_allclose(pd.read_csv(pp)[PROB_COLUMNS].to_numpy(), singles[0], atol=2e-6)


def test_predict_any_image_folder(two_runs, demo_data, tmp_path):
    person = next((demo_data.train_dir / "images").iterdir())
    sub_path, _ = predict([two_runs[0]], person, tmp_path / "folder.csv", progress=False)
    sub = pd.read_csv(sub_path)
    assert list(sub.columns) == ["image", "ans", "mask", "gender", "age"] and len(sub) == 7
    assert (sub["ans"] == sub["mask"] * 6 + sub["gender"] * 3 + sub["age"]).all()


def test_predict_errors(two_runs, tmp_path):
    # The submission goes outside the folders read: an output inside an input folder is refused first.
    out = tmp_path / "out" / "x.csv"
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        predict([tmp_path / "in"], tmp_path / "in", out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        predict([two_runs[0]], tmp_path / "nowhere", out)


def test_bf16_precision_answers_near_float32(two_runs, demo_data, tmp_path):
    _, p32 = predict([two_runs[0]], demo_data.eval_dir, tmp_path / "f32.csv", progress=False, precision="32-true")
    _, p16 = predict([two_runs[0]], demo_data.eval_dir, tmp_path / "bf16.csv", progress=False, precision="bf16-mixed")
    a, b = (pd.read_csv(p)[PROB_COLUMNS].to_numpy() for p in (p32, p16))
    np.testing.assert_allclose(b.sum(1), 1.0, atol=1e-4)
    # bfloat16 keeps 8 bits of mantissa: close to float32, but not equal (else autocast was not on)
    assert 0 < np.abs(a - b).max() < 0.1
    # the default is the run's own train.precision (32-true for the tiny run)
    _, pdef = predict([two_runs[0]], demo_data.eval_dir, tmp_path / "default.csv", progress=False)
    np.testing.assert_array_equal(pd.read_csv(pdef)[PROB_COLUMNS].to_numpy(), a)


def test_precision_errors(two_runs, demo_data, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        predict([two_runs[0]], demo_data.eval_dir, tmp_path / "x.csv", precision="8-bit")
    with pytest.raises(ValueError, match="onnx backend computes in float32"):
        predict([two_runs[0]], demo_data.eval_dir, tmp_path / "x.csv", backend="onnx", precision="bf16-mixed")
    assert not (tmp_path / "x.csv").exists()
