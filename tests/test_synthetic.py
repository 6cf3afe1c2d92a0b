"""The synthetic demo data: competition layout, determinism, class coverage, learnability, scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.feature import hog
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from maskstatus.data.synthetic import DemoData, make_demo_data, read_truth, score_submission
from maskstatus.labels import (
    GENDER_TO_CODE,
    IMAGE_STEMS,
    NUM_CLASSES,
    STEM_TO_MASK,
    TASKS,
    age_group,
    encode,
)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _train_table(data: DemoData) -> pd.DataFrame:
    return pd.read_csv(data.train_dir / "train.csv", dtype={"id": str})


def _train_labels(data: DemoData) -> list[tuple[Path, int, int, int]]:
    """(image path, mask, gender, age group) for every train image, read back from the files."""
    rows = []
    for r in _train_table(data).itertuples():
        for p in sorted((data.train_dir / "images" / r.path).iterdir()):
            rows.append((p, STEM_TO_MASK[p.stem], GENDER_TO_CODE[r.gender], age_group(r.age)))
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoData:
    return make_demo_data(tmp_path_factory.mktemp("demo"), people=24, seed=0)


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_same_bytes_with_any_number_of_workers(demo, tmp_path):
    again = make_demo_data(tmp_path / "again", people=24, seed=0, workers=2)
    first, second = _tree_bytes(demo.root), _tree_bytes(again.root)
    assert first.keys() == second.keys()
    for name in ("train/train.csv", "eval/info.csv", "eval_truth.csv"):
        assert first[name] == second[name], name
    images = [k for k in first if "/images/" in k]
    assert len(images) == 7 * 24 + 7 * 12
    assert all(first[k] == second[k] for k in images)


def test_different_seed_differs(demo, tmp_path):
    other = make_demo_data(tmp_path / "other", people=24, seed=1)
    assert (other.train_dir / "train.csv").read_bytes() != (demo.train_dir / "train.csv").read_bytes()
    assert (other.eval_dir / "info.csv").read_bytes() != (demo.eval_dir / "info.csv").read_bytes()
    a = sorted((demo.eval_dir / "images").iterdir())[0]
    b = sorted((other.eval_dir / "images").iterdir())[0]
    assert a.name != b.name and a.read_bytes() != b.read_bytes()


# --- layout ---------------------------------------------------------------------------------------


def test_returned_paths(demo):
    assert demo.train_dir == demo.root / "train" and demo.eval_dir == demo.root / "eval"
    # The truth sits beside train/ and eval/, so nothing reading eval/ can see it.
    assert demo.truth_csv == demo.root / "eval_truth.csv" and demo.truth_csv.is_file()
    assert not list(demo.eval_dir.rglob("*truth*"))


def test_train_layout(demo):
    raw = (demo.train_dir / "train.csv").read_text().splitlines()
    assert raw[0] == "id,gender,race,age,path"
    df = _train_table(demo)
    assert len(df) == 24 and df["id"].is_unique
    # ids are strings with leading zeros, one of them with a suffix.
    assert all(len(i.split("-")[0]) == 6 and i.split("-")[0].isdigit() for i in df["id"])
    assert any(i.startswith("0") for i in df["id"])
    assert sum("-" in i for i in df["id"]) == 1
    assert set(df["gender"]) <= set(GENDER_TO_CODE)
    assert df["age"].between(18, 80).all()
    assert (df["path"] == df["id"] + "_" + df["gender"] + "_" + df["race"] + "_" + df["age"].astype(str)).all()

    folders = sorted(p.name for p in (demo.train_dir / "images").iterdir())
    assert folders == sorted(df["path"])
    extensions = set()
    for folder in folders:
        files = list((demo.train_dir / "images" / folder).iterdir())
        assert sorted(p.stem for p in files) == sorted(IMAGE_STEMS), folder
        extensions |= {p.suffix for p in files}
    assert {".jpg", ".jpeg", ".png"} <= extensions


def test_images_have_the_requested_size(demo, tmp_path):
    img = next((demo.eval_dir / "images").iterdir())
    assert Image.open(img).size == (96, 128)  # PIL gives (width, height): portrait
    small = make_demo_data(tmp_path / "small", people=6, eval_people=6, size=(80, 60))
    for p in list((small.train_dir / "images").rglob("*.*"))[:5]:
        with Image.open(p) as im:
            assert im.size == (60, 80) and im.mode == "RGB"


def test_eval_layout(demo):
    raw = (demo.eval_dir / "info.csv").read_text().splitlines()
    assert raw[0] == "ImageID,ans"
    info = pd.read_csv(demo.eval_dir / "info.csv", dtype={"ImageID": str})
    assert len(info) == 7 * 12 and info["ImageID"].is_unique
    assert (info["ans"] == 0).all()
    for name in info["ImageID"]:
        stem, ext = name.split(".")
        assert ext == "jpg" and len(stem) == 40 and int(stem, 16) >= 0
        assert (demo.eval_dir / "images" / name).is_file()
    assert len(list((demo.eval_dir / "images").iterdir())) == len(info)

    truth = read_truth(demo.truth_csv)
    assert list(truth.columns) == ["ImageID", "ans", "mask", "gender", "age"]
    assert truth["ImageID"].tolist() == info["ImageID"].tolist()
    assert (truth["ans"] == encode(truth["mask"], truth["gender"], truth["age"])).all()
    # Rows are shuffled: the seven photos of a person are not simply consecutive.
    assert truth["mask"].tolist() != sorted(truth["mask"].tolist())


def test_eval_people_and_bad_arguments(tmp_path):
    data = make_demo_data(tmp_path / "d", people=6, eval_people=7, seed=3)
    assert len(read_truth(data.truth_csv)) == 7 * 7
    with pytest.raises(ValueError, match="people"):
        make_demo_data(tmp_path / "bad", people=0)
    with pytest.raises(ValueError, match="workers"):
        make_demo_data(tmp_path / "bad", people=6, workers=0)


def test_existing_set_needs_overwrite(tmp_path):
    first = make_demo_data(tmp_path / "d", people=6, eval_people=6, seed=0)
    with pytest.raises(FileExistsError, match="overwrite"):
        make_demo_data(tmp_path / "d", people=6, eval_people=6, seed=1)
    # Replacing leaves no stale files behind (another seed draws other extensions and names).
    second = make_demo_data(tmp_path / "d", people=7, eval_people=6, seed=1, overwrite=True)
    assert len(list((second.train_dir / "images").rglob("*.*"))) == 7 * 7
    assert len(list((second.eval_dir / "images").iterdir())) == 7 * 6
    assert first.root == second.root


# --- class balance --------------------------------------------------------------------------------


def test_all_classes_present(demo):
    train = [encode(m, g, a) for _, m, g, a in _train_labels(demo)]
    assert set(train) == set(range(NUM_CLASSES))
    assert set(read_truth(demo.truth_csv)["ans"]) == set(range(NUM_CLASSES))


def test_class_balance(tmp_path):
    data = make_demo_data(tmp_path / "d", people=60, eval_people=6, seed=5)
    df = _train_table(data)
    female = (df["gender"] == "female").mean()
    assert 0.45 < female < 0.75
    groups = np.bincount(age_group(df["age"].to_numpy()), minlength=TASKS["age"]) / len(df)
    assert groups[0] > groups[2] and groups[1] > groups[2] > 0.05


# --- learnability ---------------------------------------------------------------------------------


def _features(path: Path) -> np.ndarray:
    """Edges (mask outline, hair shape) and coarse colour (hair greyness) at 24x32."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB").resize((24, 32), Image.BILINEAR), dtype=np.float32) / 255
    edges = hog(rgb.mean(axis=2), orientations=8, pixels_per_cell=(4, 4), cells_per_block=(2, 2))
    return np.concatenate([edges, rgb[::2, ::2].ravel()])


@pytest.mark.slow  # fits a classifier on drawn images
def test_labels_are_learnable(tmp_path):
    # Train on one data set's train split, score on another seed's eval split: new people.
    train = make_demo_data(tmp_path / "a", people=40, eval_people=6, seed=11)
    test = make_demo_data(tmp_path / "b", people=6, eval_people=20, seed=12)
    labelled = _train_labels(train)
    x_train = np.stack([_features(p) for p, *_ in labelled])
    y_train = np.array([labels for _, *labels in labelled])
    truth = read_truth(test.truth_csv)
    x_test = np.stack([_features(test.eval_dir / "images" / name) for name in truth["ImageID"]])
    y_test = truth[["mask", "gender", "age"]].to_numpy()

    accuracy = {}
    with threadpool_limits(1):  # tiny problem: threads only add overhead
        for k, task in enumerate(("mask", "gender", "age")):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=300))
            clf.fit(x_train, y_train[:, k])
            accuracy[task] = float(np.mean(clf.predict(x_test) == y_test[:, k]))
    # Majority-class rates are about 0.71 (mask), 0.6 (gender) and 0.45 (age).
    assert accuracy["mask"] > 0.8, accuracy
    assert accuracy["gender"] > 0.7, accuracy
    assert accuracy["age"] > 0.5, accuracy


# --- scoring --------------------------------------------------------------------------------------


def test_score_perfect_and_shuffled(demo, tmp_path):
    truth = read_truth(demo.truth_csv)
    perfect = tmp_path / "perfect.csv"
    # Reversed row order: rows are matched by ImageID, not by position.
    truth[["ImageID", "ans"]].iloc[::-1].to_csv(perfect, index=False)
    score = score_submission(perfect, demo.truth_csv)
    assert score["f1"] == pytest.approx(1.0) and score["accuracy"] == pytest.approx(1.0)

    shuffled = tmp_path / "shuffled.csv"
    wrong = truth[["ImageID", "ans"]].assign(ans=np.random.default_rng(0).permutation(truth["ans"].to_numpy()))
    wrong.to_csv(shuffled, index=False)
    score = score_submission(shuffled, demo.truth_csv)
    assert score["f1"] < 0.5 and score["accuracy"] < 0.5


def test_score_rejects_other_images(demo, tmp_path):
    truth = read_truth(demo.truth_csv)
    short = tmp_path / "short_submission.csv"
    truth[["ImageID", "ans"]].iloc[1:].to_csv(short, index=False)
    with pytest.raises(ValueError, match="short_submission.csv"):
        score_submission(short, demo.truth_csv)
    no_ans = tmp_path / "no_ans.csv"
    truth[["ImageID"]].to_csv(no_ans, index=False)
    with pytest.raises(ValueError, match="ans"):
        score_submission(no_ans, demo.truth_csv)
