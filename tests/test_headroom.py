"""Where the score goes: each task's headroom, the age error by band, and the given years behind it."""

import shutil

import numpy as np
import pandas as pd
import pytest

from maskstatus.analysis.headroom import age_error_by_band, given_years, oof_headroom, task_headroom
from maskstatus.analysis.report import analyse_run, render
from maskstatus.config import load_config
from maskstatus.data.tables import train_table
from maskstatus.scoring.oof import read_oof
from maskstatus.train.trainer import train
from maskstatus.labels import NUM_CLASSES, PROB_COLUMNS, encode
from maskstatus.scoring.metrics import macro_f1


def _one_hot(classes: np.ndarray) -> np.ndarray:
    probs = np.full((len(classes), NUM_CLASSES), 0.01)
    probs[np.arange(len(classes)), classes] = 1.0
    return probs


def test_headroom_of_a_perfect_model_is_nothing():
    labels = np.arange(NUM_CLASSES).repeat(2)
    room = task_headroom(labels, _one_hot(labels))
    assert room == {"f1": 1.0, "f1_true_mask": 1.0, "f1_true_gender": 1.0, "f1_true_age": 1.0}


def test_headroom_puts_each_mistake_on_its_own_task():
    mask, gender, age = np.meshgrid(range(3), range(2), range(3), indexing="ij")
    mask, gender, age = mask.ravel().repeat(4), gender.ravel().repeat(4), age.ravel().repeat(4)
    labels = encode(mask, gender, age)
    wrong_gender = np.arange(len(labels)) % 4 == 0   # a quarter of the images get the other gender
    wrong_age = np.arange(len(labels)) % 4 == 1      # another quarter the next age group
    pred = encode(mask, np.where(wrong_gender, 1 - gender, gender), np.where(wrong_age, (age + 1) % 3, age))
    room = task_headroom(labels, _one_hot(pred))
    assert room["f1"] == pytest.approx(macro_f1(labels, pred, NUM_CLASSES)) and room["f1"] < 1
    assert room["f1_true_mask"] == room["f1"]         # the mask was never wrong: nothing to gain
    only_age_wrong = encode(mask, gender, np.where(wrong_age, (age + 1) % 3, age))
    only_gender_wrong = encode(mask, np.where(wrong_gender, 1 - gender, gender), age)
    assert room["f1_true_gender"] == pytest.approx(macro_f1(labels, only_age_wrong, NUM_CLASSES))
    assert room["f1_true_age"] == pytest.approx(macro_f1(labels, only_gender_wrong, NUM_CLASSES))
    assert room["f1"] < room["f1_true_gender"] < 1 and room["f1"] < room["f1_true_age"] < 1


def test_headroom_checks_the_shapes():
    with pytest.raises(ValueError, match=r"probs must be \(N, 18\) for N=3"):
        task_headroom(np.zeros(3, dtype=int), np.ones((2, NUM_CLASSES)))


def test_age_error_by_band_known_case():
    given = np.array([17, 19, 22, 31, 31, 64])
    predicted = np.array([27, 21, 22, 29, 35, 50])
    bands = age_error_by_band(given, predicted, people=np.array(["a", "a", "b", "c", "d", "e"]))
    assert bands["band"].tolist() == ["15-19", "20-24", "30-34", "60-64"]  # empty bands left out
    assert bands["images"].tolist() == [2, 1, 2, 1] and bands["people"].tolist() == [1, 1, 2, 1]
    assert bands["mae"].tolist() == [6.0, 0.0, 3.0, 14.0]
    assert bands["bias"].tolist() == [6.0, 0.0, 1.0, -14.0]
    wide = age_error_by_band(given, predicted, width=50)
    assert wide["band"].tolist() == ["0-49", "50-99"] and "people" not in wide


@pytest.mark.parametrize("given, predicted, width, message", [
    ([20, 30], [20], 5, "one length"),
    ([20, 30], [20, np.nan], 5, "finite"),
    ([20], [20], 0, "at least 1 year"),
])
def test_age_error_by_band_refuses_bad_input(given, predicted, width, message):
    with pytest.raises(ValueError, match=message):
        age_error_by_band(np.array(given), np.array(predicted), width=width)


def _fake_oof(table: pd.DataFrame, offset: float) -> pd.DataFrame:
    """An OOF table over ``table``'s images, right about every label, predicting the age ``offset`` years off."""
    probs = _one_hot(table["label"].to_numpy())
    return pd.DataFrame({"person_id": table["person_id"], "stem": table["stem"], "image_path": table["image_path"],
                         "label": table["label"], "fold": 0, **dict(zip(PROB_COLUMNS, probs.T)),
                         "age_mean": table["age"] + offset, "age_sigma": 3.0})


def test_given_years_read_the_train_table_with_the_runs_relabelling(demo_data, tmp_path):
    table = train_table(demo_data.root / "train", check_images=False)
    oof = _fake_oof(table, 4.0).sample(frac=1.0, random_state=0)  # any row order
    cfg = load_config(None, [f"data.root={demo_data.root}"])
    years = given_years(cfg, oof)
    assert np.array_equal(years, oof["person_id"].map(table.groupby("person_id")["age"].first()).to_numpy())
    person = table["person_id"].iloc[0]
    fix = tmp_path / "fix.csv"
    fix.write_text(f"id,field,value\n{person},age,77\n")
    relabelled = given_years(load_config(None, [f"data.root={demo_data.root}", f"data.relabel={fix}"]), oof)
    assert (relabelled[oof["person_id"].to_numpy() == person] == 77).all()
    found = oof_headroom(oof, years)
    assert found["headroom"]["f1"] == 1.0
    assert found["age_mae"] == pytest.approx(4.0) and found["age_bias"] == pytest.approx(4.0)
    assert all(b["bias"] == pytest.approx(4.0) for b in found["age_by_band"])


def test_given_years_are_none_when_the_data_is_gone_or_lacks_a_person(demo_data, tmp_path, caplog):
    table = train_table(demo_data.root / "train", check_images=False)
    oof = _fake_oof(table, 0.0)
    caplog.set_level("INFO", logger="maskstatus.analysis.headroom")
    assert given_years(load_config(None, [f"data.root={tmp_path / 'moved'}"]), oof) is None
    assert "cannot read the train table" in caplog.text
    assert given_years(load_config(None, []), oof) is None  # a config without data.root
    assert "data.root is not set" in caplog.text
    stranger = oof.assign(person_id="999999")
    assert given_years(load_config(None, [f"data.root={demo_data.root}"]), stranger) is None
    assert "not in" in caplog.text and "999999" in caplog.text
    assert "age_by_band" not in oof_headroom(oof, None)


@pytest.mark.slow
def test_report_of_an_age_regression_run_shows_the_error_by_band(demo_data, tiny_overrides, tmp_path):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path / 'runs'}",
                             f"cache.dir={tmp_path / 'cache'}", *tiny_overrides, "model.age_output=years",
                             "train.epochs=1", "train.limit_train_batches=1"])
    run = train(cfg).run_dir
    result = analyse_run(run)
    oof = read_oof(run)
    table = train_table(demo_data.root / "train", check_images=False).drop_duplicates("person_id")
    assert np.array_equal(result.years, oof["person_id"].map(table.set_index("person_id")["age"]).to_numpy())
    page = render(result)
    bands = age_error_by_band(result.years, oof["age_mean"].to_numpy())
    section = page.split('<section id="headroom">')[1].split("</section>")[0]
    assert 'id="age-band-table"' in section and 'alt="age error by band"' in section
    for band in bands.itertuples():
        assert f"<td>{band.band}</td>" in section and f"{band.bias:+.2f}" in section
    # The run folder copied to a machine without its data: the headroom stays, the bands say why they are gone.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    config = moved / "config.yaml"
    config.write_text(config.read_text().replace(str(demo_data.root), str(tmp_path / "gone")))
    section = render(analyse_run(moved)).split('<section id="headroom">')[1].split("</section>")[0]
    assert "macro F1 as predicted" in section and 'id="age-band-table"' not in section
    assert "could not be read again" in section
