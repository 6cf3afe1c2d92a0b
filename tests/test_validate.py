import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstatus.data.tables import train_table
from maskstatus.data.validate import summarize, validate_eval, validate_train
from maskstatus.errors import DataError, Problem, format_problems
from maskstatus.labels import IMAGE_STEMS, NUM_CLASSES, class_names

from data_builders import make_train


def person_dir(train: Path, pid: str) -> Path:
    (match,) = [p for p in (train / "images").iterdir() if p.name.startswith(pid + "_")]
    return match


def image_of(train: Path, pid: str, stem: str) -> Path:
    (match,) = [p for p in person_dir(train, pid).iterdir() if p.stem == stem]
    return match


def set_csv(train: Path, **changes) -> None:
    """Rewrite cells of train.csv: changes map id -> {column: value}."""
    df = pd.read_csv(train / "train.csv", dtype=str, keep_default_na=False)
    for pid, cells in changes.items():
        for col, value in cells.items():
            df.loc[df["id"] == pid, col] = value
    df.to_csv(train / "train.csv", index=False)


def raise_and_skip(train: Path, caplog):
    """The DataError message, then the table with skip_bad=True and the warning text."""
    with pytest.raises(DataError) as err:
        train_table(train)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskstatus"):
        table = train_table(train, skip_bad=True)
    assert "leaving out bad items" in caplog.text
    return str(err.value), err.value, table


def test_clean_data_has_no_problems(tmp_path):
    train = make_train(tmp_path)
    # Hidden and OS files are not data and must not be reported.
    (person_dir(train, "000001") / ".DS_Store").write_bytes(b"x")
    (person_dir(train, "000001") / "._mask1.jpg").write_bytes(b"x")
    (train / "images" / "._000001_female_Asian_45").write_bytes(b"x")
    table, problems = validate_train(train)
    assert problems == []
    assert len(table) == 21


def test_corrupt_image(tmp_path, caplog):
    train = make_train(tmp_path)
    bad = image_of(train, "000003", "mask2")
    bad.write_bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8).tobytes())
    message, err, table = raise_and_skip(train, caplog)
    assert message.startswith(f"1 problem(s) in {train}:")
    assert f"  {bad.resolve()}: not a recognised image" in message
    assert err.problems == [Problem(str(bad.resolve()), err.problems[0].reason)]
    assert len(table) == 20
    assert not ((table.person_id == "000003") & (table.stem == "mask2")).any()
    assert str(bad.resolve()) in caplog.text
    # Without decoding, a corrupt file goes unnoticed.
    assert len(train_table(train, check_images=False)) == 21


def test_truncated_jpeg(tmp_path, caplog):
    train = make_train(tmp_path)
    bad = image_of(train, "000001", "mask1")
    noisy = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(bad, format="JPEG", quality=95)
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    message, _, table = raise_and_skip(train, caplog)
    line = next(x for x in message.splitlines() if str(bad.resolve()) in x)
    assert "truncated" in line.lower()
    assert len(table) == 20


def test_missing_image(tmp_path, caplog):
    train = make_train(tmp_path)
    gone = image_of(train, "001498-1", "normal")
    gone.unlink()
    message, _, table = raise_and_skip(train, caplog)
    assert f"{(gone.parent / 'normal').resolve()}: missing image 'normal'" in message
    assert len(table) == 20
    assert set(table[table.person_id == "001498-1"].stem) == set(IMAGE_STEMS) - {"normal"}


def test_wrong_columns(tmp_path):
    train = make_train(tmp_path)
    df = pd.read_csv(train / "train.csv", dtype=str).rename(columns={"gender": "sex"})
    df.to_csv(train / "train.csv", index=False)
    with pytest.raises(DataError) as err:
        train_table(train)
    message = str(err.value)
    assert f"{train / 'train.csv'}: wrong columns" in message
    assert "missing column(s) ['gender']" in message
    assert "unexpected column(s) ['sex']" in message
    # Nothing usable is left, so skip_bad cannot help either.
    with pytest.raises(DataError, match="no usable images left"):
        train_table(train, skip_bad=True)


def test_extra_column_is_reported_but_skippable(tmp_path, caplog):
    train = make_train(tmp_path)
    df = pd.read_csv(train / "train.csv", dtype=str).assign(note="x")
    df.to_csv(train / "train.csv", index=False)
    message, _, table = raise_and_skip(train, caplog)
    assert "unexpected column(s) ['note']" in message
    assert len(table) == 21


def test_duplicate_id(tmp_path, caplog):
    train = make_train(tmp_path)
    set_csv(train, **{"000003": {"id": "000001"}})
    message, _, table = raise_and_skip(train, caplog)
    csv = train / "train.csv"
    assert f"{csv}:2: duplicate id '000001' (lines 2, 4)" in message
    assert f"{csv}:4: duplicate id '000001' (lines 2, 4)" in message
    assert list(table["person_id"].unique()) == ["001498-1"]


def test_bad_gender_and_age(tmp_path, caplog):
    train = make_train(tmp_path)
    set_csv(train, **{"000001": {"gender": "unknown"}, "000003": {"age": "-4"}, "001498-1": {"age": "2x"}})
    with pytest.raises(DataError) as err:
        train_table(train)
    message = str(err.value)
    csv = train / "train.csv"
    assert f"{csv}:2: gender 'unknown' is not one of ['male', 'female']" in message
    assert f"{csv}:3: age '2x' is not a whole number of years" in message
    assert f"{csv}:4: age -4 is negative" in message
    assert len(err.value.problems) == 3
    # Every row is bad: skip_bad has nothing left to return and says so.
    with pytest.raises(DataError, match="no usable images left"):
        train_table(train, skip_bad=True)


def test_bad_rows_drop_only_their_people(tmp_path, caplog):
    train = make_train(tmp_path)
    set_csv(train, **{"000001": {"gender": "F?"}, "001498-1": {"age": "30.0"}})
    message, _, table = raise_and_skip(train, caplog)
    assert "gender 'f?'" in message
    assert "30.0" not in message  # a whole number written as float is fine
    assert sorted(table["person_id"].unique()) == ["000003", "001498-1"]
    assert table.loc[table.person_id == "001498-1", "age"].unique().tolist() == [30]


def test_unknown_stem_and_bad_extension(tmp_path, caplog):
    train = make_train(tmp_path)
    folder = person_dir(train, "000001")
    Image.new("RGB", (16, 12)).save(folder / "mask6.jpg")
    (folder / "foo.png").write_bytes(b"x")
    (folder / "mask1.txt").write_text("x")
    message, err, table = raise_and_skip(train, caplog)
    base = folder.resolve()
    assert f"{base / 'mask6.jpg'}: unexpected file: 'mask6' is not one of the image names" in message
    assert f"{base / 'foo.png'}: unexpected file: 'foo'" in message
    assert f"{base / 'mask1.txt'}: not an image file: extension '.txt'" in message
    assert len(err.problems) == 3
    assert len(table) == 21  # unknown files drop nothing


def test_two_files_for_one_stem(tmp_path, caplog):
    train = make_train(tmp_path)
    folder = person_dir(train, "000003")
    existing = image_of(train, "000003", "mask1")
    other = folder / ("mask1.png" if existing.suffix != ".png" else "mask1.jpg")
    Image.new("RGB", (16, 12)).save(other)
    message, _, table = raise_and_skip(train, caplog)
    assert f"{(folder / 'mask1').resolve()}: 2 files for image 'mask1'" in message
    assert existing.name in message and other.name in message
    assert len(table) == 20


def test_missing_person_folder(tmp_path, caplog):
    train = make_train(tmp_path)
    folder = person_dir(train, "001498-1")
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    message, _, table = raise_and_skip(train, caplog)
    assert f"{folder.resolve()}: person folder not found (id '001498-1', train.csv line 3)" in message
    assert sorted(table["person_id"].unique()) == ["000001", "000003"]
    assert len(table) == 14


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataError, match="train folder not found"):
        train_table(tmp_path / "nope")

    train = make_train(tmp_path)
    (train / "train.csv").unlink()
    with pytest.raises(DataError, match=r"train.csv: file not found"):
        train_table(train)

    (train / "train.csv").write_text("")
    with pytest.raises(DataError, match=r"train.csv: empty file"):
        train_table(train)

    (train / "train.csv").write_text("id,gender,race,age,path\n")
    with pytest.raises(DataError, match=r"train.csv: no rows below the header"):
        train_table(train)

    empty = tmp_path / "empty_train"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        train_table(empty)
    assert f"{empty / 'images'}: images folder not found" in str(err.value)
    assert f"{empty / 'train.csv'}: file not found" in str(err.value)


def test_all_problems_are_listed_at_once(tmp_path):
    train = make_train(tmp_path)
    image_of(train, "000001", "mask3").unlink()
    image_of(train, "000003", "normal").write_bytes(b"garbage")
    set_csv(train, **{"001498-1": {"gender": "x"}})
    with pytest.raises(DataError) as err:
        train_table(train)
    assert len(err.value.problems) == 3
    assert str(err.value).count("\n") == 3


def test_validate_eval_returns_problems(tmp_path):
    ev = tmp_path / "eval"
    (ev / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(ev / "images" / "a.jpg")
    pd.DataFrame({"ImageID": ["a.jpg", "b.jpg", ""], "ans": 0}).to_csv(ev / "info.csv", index=False)
    table, problems = validate_eval(ev)
    assert list(table["image_id"]) == ["a.jpg"]
    reasons = [p.reason for p in problems]
    assert reasons[0].startswith("image file not found")
    assert reasons[1] == "empty ImageID"


def test_format_problems():
    text = format_problems([Problem("/a.jpg", "bad"), Problem("/b.jpg", "worse")], "/data")
    assert text == "2 problem(s) in /data:\n  /a.jpg: bad\n  /b.jpg: worse"
    err = DataError([Problem("/a.jpg", "bad")], "/data")
    assert isinstance(err, ValueError) and err.problems[0].path == "/a.jpg"


def test_summarize(tmp_path):
    table = train_table(make_train(tmp_path))
    summary = summarize(table)
    assert list(summary.columns) == ["class", "mask", "gender", "age", "people", "images"]
    assert len(summary) == NUM_CLASSES
    assert summary["images"].sum() == len(table) == summary.attrs["images"]
    assert summary.attrs["people"] == 3
    names = ["/".join(r) for r in summary[["mask", "gender", "age"]].itertuples(index=False)]
    assert names == class_names()
    counts = table["label"].value_counts()
    for cls, n in counts.items():
        assert summary.loc[cls, "images"] == n
    assert summary["people"].max() == 1
