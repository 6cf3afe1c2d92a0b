"""Odd files on disk (symbolic link loops, names that are not UTF-8, a Latin-1 config, a damaged cache, a file
where a folder belongs) give one line or a listed data problem naming the path, never a traceback."""

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from maskstatus.analysis.eda import write_eda
from maskstatus.cli import main
from maskstatus.config import load_config
from maskstatus.data.cache import ImageCache
from maskstatus.data.synthetic import make_demo_data
from maskstatus.data.tables import folder_table, train_table
from maskstatus.data.validate import validate_eval, validate_train
from maskstatus.train.trainer import train
from maskstatus.errors import ConfigError, DataError, UsageError

from data_builders import make_train
from test_cache import _images

LOOP = "Too many levels of symbolic links"


def _loop(path: Path) -> Path:
    """A symbolic link to itself: stat() on it fails with ELOOP."""
    os.symlink(path.name, path)
    return path


def _looped_train(root: Path) -> tuple[Path, list[Path]]:
    """A tiny train folder with a loop in a person folder, in images/, and in place of a listed person folder."""
    train_dir = make_train(root)
    people = sorted((train_dir / "images").iterdir())
    in_person = _loop(people[0] / "loop")
    shutil.rmtree(people[1])
    as_person = _loop(people[1])
    _loop(train_dir / "images" / "loop")  # not listed in train.csv: a stray, ignored like other strays
    return train_dir, [in_person, as_person]


def _one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_symlink_loops_in_train_images_are_data_problems_naming_them(tmp_path):
    train_dir, loops = _looped_train(tmp_path)
    table, problems = validate_train(train_dir)
    found = {p.path: p.reason for p in problems}
    for loop in loops:
        assert "symbolic link that cannot be followed" in found[str(loop)] and LOOP in found[str(loop)]
    assert len(table) == 14  # an odd entry drops nothing of its person; the looped person is left out
    with pytest.raises(DataError, match="loop"):
        train_table(train_dir)


def test_validate_data_eda_and_train_report_a_symlink_loop_without_a_traceback(tmp_path, capsys):
    train_dir, loops = _looped_train(tmp_path / "data")
    assert main(["validate-data", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert all(str(loop) in err for loop in loops) and "Traceback" not in err
    out, result = write_eda(tmp_path / "data", tmp_path / "eda.html")
    page = out.read_text()
    assert len(result.problems) >= 2 and "images/loop" not in page and LOOP in page
    code = main(["train", "--config", "configs/demo.yaml", f"data.root={tmp_path / 'data'}",
                 f"output_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and str(loops[0]) in err and "Traceback" not in err


def test_an_eval_image_that_is_a_symlink_loop_is_a_problem_naming_it(tmp_path):
    eval_dir = tmp_path / "eval"
    (eval_dir / "images").mkdir(parents=True)
    _images(eval_dir / "images", 2)
    loop = _loop(eval_dir / "images" / "x.jpg")
    pd.DataFrame({"ImageID": ["img0.png", "x.jpg", "img1.png"], "ans": -1}).to_csv(eval_dir / "info.csv", index=False)
    table, problems = validate_eval(eval_dir)
    assert [p.path for p in problems] == [str(loop)] and LOOP in problems[0].reason
    assert table["image_id"].tolist() == ["img0.png", "img1.png"]


def test_an_image_name_that_is_not_utf8_is_listed_with_escapes(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    _images(folder, 2)
    os.rename(folder / "img1.png", os.fsdecode(bytes(folder) + b"/caf\xe9.png"))
    with caplog.at_level(logging.WARNING, logger="maskstatus"):
        table = folder_table(folder)
    assert table["image_id"].tolist() == ["caf\\xe9.png", "img0.png"]
    assert "caf\\xe9.png" in caplog.text and "not valid UTF-8" in caplog.text
    assert os.path.isfile(table["image_path"][0])  # the path still opens the file with its own bytes
    table["image_id"].to_frame().to_csv(tmp_path / "ids.csv", index=False)  # what failed after predicting


def test_predict_on_a_folder_with_a_name_that_is_not_utf8_writes_its_answer(tiny_config, demo_data, tmp_path):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=2")).run_dir
    folder = tmp_path / "images"
    folder.mkdir()
    first = sorted((demo_data.eval_dir / "images").iterdir())[0]
    shutil.copy(first, folder / "plain.jpg")
    shutil.copy(first, os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"))  # the same photo under an odd name
    out = tmp_path / "sub.csv"
    assert main(["predict", "--run", str(run), "--data", str(folder), "--out", str(out)]) == 0
    sub = pd.read_csv(out, encoding="utf-8").set_index("image")
    assert sorted(sub.index) == ["caf\\xe9.jpg", "plain.jpg"]
    assert sub.loc["caf\\xe9.jpg", "ans"] == sub.loc["plain.jpg", "ans"]


def test_a_latin1_config_file_is_a_config_error_naming_it(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    # A run name must be a plain folder name, so the accent is in a comment.
    config.write_bytes("# modèle du café\nseed: 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{config} is not UTF-8.*line 1.*must be UTF-8"):
        load_config(config)
    assert main(["train", "--config", str(config)]) == 2
    assert str(config) in _one_error_line(capsys.readouterr().err)
    config.write_bytes("# modèle du café\nseed: 1\n".encode("utf-8"))
    assert load_config(config).seed == 1


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage", "other shape"])
def test_a_damaged_disk_cache_is_named_and_rebuilt(tmp_path, caplog, damage):
    paths = _images(tmp_path)
    cache_dir = tmp_path / "cache"
    good = ImageCache(paths, size=(20, 15), mode="disk", cache_dir=cache_dir, progress=False).fill()
    expected = np.array(good[:])
    file = good.file
    del good
    if damage == "truncate":
        os.truncate(file, file.stat().st_size // 2)
    elif damage == "empty":
        file.write_bytes(b"")
    elif damage == "garbage":
        file.write_bytes(b"not a numpy file")
    else:
        np.save(file, np.zeros((3, 20, 15, 3), dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="maskstatus"):
        again = ImageCache(paths, size=(20, 15), mode="disk", cache_dir=cache_dir, progress=False).fill()
    assert again.file == file and f"disk cache {file} is unusable" in caplog.text
    np.testing.assert_array_equal(np.array(again[:]), expected)


def test_demo_data_onto_an_existing_file_is_one_line(tmp_path, capsys):
    file = tmp_path / "somefile.txt"
    file.write_text("keep me\n")
    for target, words in ((file, "is a file"), (file / "sub", f"lies under {file}")):
        with pytest.raises(UsageError, match=words):
            make_demo_data(target, people=1)
        assert main(["demo-data", str(target), "--people", "1"]) == 2
        assert str(target) in _one_error_line(capsys.readouterr().err)
    assert file.read_text() == "keep me\n"
