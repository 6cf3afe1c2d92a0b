import logging
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from maskstatus.data.layout import EVAL_COLUMNS, TABLE_COLUMNS, TRAIN_COLUMNS, find_person_images
from maskstatus.data.tables import eval_table, folder_table, read_train_csv, train_table
from maskstatus.errors import DataError
from maskstatus.labels import GENDER_TO_CODE, IMAGE_STEMS, STEM_TO_MASK, AgeThresholds, age_group, encode

from data_builders import PEOPLE
from data_builders import make_train as build_train

# Mixed extensions, a grayscale and an RGBA image.
make_train = partial(build_train, exts=(".jpg", ".jpeg", ".PNG"), odd_modes=True)


def make_eval(root: Path, ids=("c3.jpg", "a1.jpg", "b2.png")) -> Path:
    ev = root / "eval"
    (ev / "images").mkdir(parents=True)
    for k, image_id in enumerate(ids):
        Image.new("RGB", (16, 12), (k * 50, 0, 0)).save(ev / "images" / image_id)
    pd.DataFrame({"ImageID": list(ids), "ans": 0}).to_csv(ev / "info.csv", index=False)
    return ev


def test_train_table_columns_order_and_types(tmp_path):
    table = train_table(make_train(tmp_path))
    assert tuple(table.columns) == TABLE_COLUMNS
    assert len(table) == 3 * len(IMAGE_STEMS)
    assert list(table["person_id"].unique()) == ["000001", "000003", "001498-1"]
    for _, group in table.groupby("person_id"):
        assert tuple(group["stem"]) == IMAGE_STEMS
    assert list(table.index) == list(range(len(table)))
    assert all(isinstance(x, str) for x in table["person_id"])
    for path in table["image_path"]:
        assert Path(path).is_absolute() and Path(path).is_file()
    for col in ("gender", "age", "mask", "age_group", "label"):
        assert pd.api.types.is_integer_dtype(table[col]), col


def test_train_table_codes_come_from_labels(tmp_path):
    table = train_table(make_train(tmp_path))
    assert (table["mask"] == table["stem"].map(STEM_TO_MASK)).all()
    genders = {pid: GENDER_TO_CODE[g] for pid, g, _, _ in PEOPLE}
    assert (table["gender"] == table["person_id"].map(genders)).all()
    assert (table["age_group"] == age_group(table["age"].to_numpy())).all()
    expected = encode(table["mask"].to_numpy(), table["gender"].to_numpy(), table["age_group"].to_numpy())
    assert (table["label"].to_numpy() == expected).all()
    # 000001 is a 45-year-old woman: the wear photos are class encode(0, female, middle).
    row = table[(table.person_id == "000001") & (table.stem == "mask1")].iloc[0]
    assert row["label"] == encode(0, GENDER_TO_CODE["female"], 1)


def test_train_table_thresholds(tmp_path):
    table = train_table(make_train(tmp_path), thresholds=AgeThresholds(young_below=26, old_from=45))
    groups = table.groupby("person_id")["age_group"].first().to_dict()
    assert groups == {"000001": 2, "001498-1": 0, "000003": 2}


def test_read_train_csv_keeps_ids_as_strings(tmp_path):
    train = make_train(tmp_path)
    rows = read_train_csv(train / "train.csv")
    assert list(rows.columns) == list(TRAIN_COLUMNS)
    assert list(rows["id"]) == ["000001", "001498-1", "000003"]
    assert pd.api.types.is_integer_dtype(rows["age"])
    assert list(rows["age"]) == [45, 25, 60]


def test_read_train_csv_raises_on_bad_rows(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("id,gender,race,age,path\n000001,female,Asian,old,x\n")
    with pytest.raises(DataError, match=r"train.csv:2: age 'old' is not a whole number"):
        read_train_csv(csv)


def test_find_person_images_matches_stems_any_extension(tmp_path):
    person = tmp_path / "p"
    person.mkdir()
    for name in ("mask1.JPG", "normal.jpeg", "incorrect_mask.png", ".DS_Store", "._mask2.jpg", "Thumbs.db"):
        (person / name).write_bytes(b"x")
    found = find_person_images(person)
    assert found == {
        "mask1": person / "mask1.JPG",
        "incorrect_mask": person / "incorrect_mask.png",
        "normal": person / "normal.jpeg",
    }
    assert list(found) == ["mask1", "incorrect_mask", "normal"]
    (person / "mask1.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="mask1.JPG, mask1.png"):
        find_person_images(person)


def test_eval_table_keeps_info_order(tmp_path):
    ev = make_eval(tmp_path)
    table = eval_table(ev)
    assert list(table.columns) == ["image_id", "image_path"]
    assert list(table["image_id"]) == ["c3.jpg", "a1.jpg", "b2.png"]
    assert all(Path(p).is_absolute() and Path(p).name == i for i, p in zip(table.image_id, table.image_path))


def test_eval_table_problems_and_skip_bad(tmp_path, caplog):
    ev = make_eval(tmp_path, ids=("e1.jpg", "e2.jpg", "e3.jpg", "e4.jpg"))
    (ev / "images" / "e2.jpg").unlink()
    (ev / "images" / "e3.jpg").write_bytes(b"not an image at all")
    info = pd.read_csv(ev / "info.csv", dtype=str)
    pd.concat([info, info.iloc[[0]]]).to_csv(ev / "info.csv", index=False)

    with pytest.raises(DataError) as err:
        eval_table(ev)
    message = str(err.value)
    assert message.startswith(f"3 problem(s) in {ev}:")
    assert f"{(ev / 'images' / 'e2.jpg').resolve()}: image file not found (info.csv line 3)" in message
    assert f"{(ev / 'images' / 'e3.jpg').resolve()}: not a recognised image" in message
    assert f"{ev / 'info.csv'}:6: duplicate ImageID 'e1.jpg' (first on line 2)" in message

    with caplog.at_level(logging.WARNING):
        table = eval_table(ev, skip_bad=True)
    assert list(table["image_id"]) == ["e1.jpg", "e4.jpg"]
    assert "e2.jpg" in caplog.text and "e3.jpg" in caplog.text


def test_eval_table_wrong_columns_and_missing_csv(tmp_path):
    ev = make_eval(tmp_path)
    pd.DataFrame({"image": ["a1.jpg"], "ans": [0]}).to_csv(ev / "info.csv", index=False)
    wrong = r"wrong columns: missing column\(s\) \['ImageID'\]; unexpected column\(s\) \['image'\]"
    with pytest.raises(DataError, match=wrong):
        eval_table(ev)
    (ev / "info.csv").unlink()
    with pytest.raises(DataError, match=r"info.csv: file not found"):
        eval_table(ev, skip_bad=True)
    assert EVAL_COLUMNS == ("ImageID", "ans")


def test_folder_table(tmp_path):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for rel in ("b.jpg", "sub/a.PNG", "sub/c.jpeg", ".hidden/x.jpg", "._b.jpg"):
        Image.new("RGB", (8, 8)).save(root / rel, format="PNG" if rel.lower().endswith("png") else "JPEG")
    (root / "notes.txt").write_text("not an image")
    table = folder_table(root)
    assert list(table.columns) == ["image_id", "image_path"]
    assert list(table["image_id"]) == ["b.jpg", "sub/a.PNG", "sub/c.jpeg"]
    assert all(Path(p).is_absolute() for p in table["image_path"])
    with pytest.raises(DataError, match="folder not found"):
        folder_table(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found"):
        folder_table(tmp_path / "empty")


def test_train_table_is_quiet(tmp_path, capsys):
    train_table(make_train(tmp_path))
    assert capsys.readouterr().out == ""


def test_unlisted_folder_is_a_warning_not_an_error(tmp_path, caplog):
    train = make_train(tmp_path)
    (train / "images" / "999999_male_Asian_20").mkdir()
    with caplog.at_level(logging.WARNING):
        table = train_table(train)
    assert len(table) == 21
    assert "999999_male_Asian_20" in caplog.text

