"""EDA and run report pages: self-contained files whose numbers match the data and the run."""

import html
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstatus.analysis.eda import NEAR_DUPLICATE_BITS, analyse, find_duplicates, phash, render
from maskstatus.analysis.headroom import task_headroom
from maskstatus.analysis.html import write_page
from maskstatus.analysis.report import _class_intervals, calibration
from maskstatus.cli import main
from maskstatus.config import load_config
from maskstatus.data.images import load_rgb
from maskstatus.data.tables import train_table
from maskstatus.data.validate import summarize, validate_eval, validate_train
from maskstatus.train.cv import run_cv
from maskstatus.scoring.oof import read_oof
from maskstatus.train.trainer import train
from maskstatus.labels import GENDER_NAMES, NUM_CLASSES, PROB_COLUMNS, TASKS, combine_task_probs, decode
from maskstatus.scoring.metrics import compute_metrics

EDA_SECTIONS = ("summary", "classes", "tasks", "gender-age", "age", "race", "images", "samples", "duplicates",
                "problems")
REPORT_SECTIONS = ("summary", "curves", "confusion", "per-class", "calibration", "headroom", "mistakes", "config")


def _page(path: Path) -> str:
    text = path.read_text(encoding="ascii")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    return text


def _assert_self_contained(text: str) -> None:
    # Nothing may load from elsewhere: every src is a data URI, no stylesheet or script links out.
    sources = re.findall(r'\bsrc="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)
    assert "<link" not in text and "<script" not in text


def _write(result, out: Path) -> Path:
    return write_page(render(result), out)


def _section(text: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', text, re.S)
    assert match, f"section {key!r} missing"
    return match.group(1)


def _table_rows(fragment: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', fragment, re.S)
    assert body, f"table {table_id!r} missing"
    return [[html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))]


# -------------------------------------------------------------------- EDA


@pytest.fixture(scope="module")
def eda_page(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eda") / "eda.html"
    assert main(["eda", str(demo_data.root), "--out", str(out)]) == 0
    return _page(out)


def test_eda_page_is_self_contained_with_every_section(eda_page):
    _assert_self_contained(eda_page)
    for key in EDA_SECTIONS:
        _section(eda_page, key)
    assert 'id="suspects"' not in eda_page  # only with --run
    assert "validate-data finds no problem" in _section(eda_page, "problems")
    # 18 classes x up to 4 thumbnails, all embedded
    assert len(re.findall(r'src="data:image/jpeg', _section(eda_page, "samples"))) >= NUM_CLASSES


def test_eda_counts_match_the_training_table(eda_page, demo_data):
    summary = summarize(train_table(demo_data.train_dir))
    rows = _table_rows(_section(eda_page, "classes"), "class-table")
    assert len(rows) == NUM_CLASSES
    assert [int(r[0]) for r in rows] == summary["class"].tolist()
    assert [int(r[4]) for r in rows] == summary["people"].tolist()
    assert [int(r[5]) for r in rows] == summary["images"].tolist()
    people = pd.read_csv(demo_data.train_dir / "train.csv", dtype=str)
    gender_age = _table_rows(_section(eda_page, "gender-age"), "gender-age-table")
    assert gender_age[-1][0] == "all" and int(gender_age[-1][-1]) == len(people)
    for name, row in zip(GENDER_NAMES, gender_age):
        assert row[0] == name and int(row[-1]) == int((people["gender"] == name).sum())
    n_eval = len(pd.read_csv(demo_data.eval_dir / "info.csv"))
    summary_text = _section(eda_page, "summary")
    assert f"<b>{len(people)}</b><span>train people" in summary_text
    assert f"<b>{n_eval}</b><span>eval images" in summary_text


@pytest.fixture(scope="module")
def planted(demo_data, tmp_path_factory):
    """A copy of the demo data with one photo copied to another person and one image corrupted."""
    root = tmp_path_factory.mktemp("planted") / "data"
    shutil.copytree(demo_data.root, root)
    folders = sorted((root / "train" / "images").iterdir())
    source = next(folders[0].glob("normal.*"))
    target = next(folders[1].glob("normal.*"))
    shutil.copyfile(source, target)
    corrupt = next(folders[2].glob("mask3.*"))
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes())
    ids = [f.name.split("_")[0] for f in folders[:2]]
    return root, ids, source, target, corrupt


def test_eda_reports_a_planted_duplicate_and_every_validation_problem(planted, tmp_path):
    root, (id_a, id_b), source, target, corrupt = planted
    out = tmp_path / "eda.html"
    assert main(["eda", str(root), "--out", str(out)]) == 0
    text = _page(out)
    _assert_self_contained(text)

    dups = _table_rows(_section(text, "duplicates"), "duplicate-table")
    identical = [r for r in dups if r[-1] == "yes"]
    assert len(identical) == 1 and {identical[0][1], identical[0][3]} == {id_a, id_b}
    assert int(identical[0][5]) == 0

    # The problems listed are exactly what validate-data finds, the planted corrupt image among them.
    expected = validate_train(root / "train")[1] + validate_eval(root / "eval")[1]
    assert len(expected) == 1 and expected[0].path == str(corrupt.resolve())
    problems = _table_rows(_section(text, "problems"), "problem-table")
    assert len(problems) == 1
    assert problems[0][0].endswith(f"{corrupt.parent.name}/{corrupt.name}")
    assert problems[0][1] == expected[0].reason
    # The corrupt image is left out of the counts, as validate-data with --skip-bad leaves it out.
    result = analyse(root)
    assert len(result.train) == len(train_table(root / "train", skip_bad=True))


def test_eda_with_a_run_lists_the_suspected_label_errors(demo_data, tmp_path):
    table = train_table(demo_data.train_dir)
    mask, gender, age = decode(table["label"].to_numpy())
    flipped = table["person_id"].iloc[0]
    shown_gender = np.where(table["person_id"] == flipped, 1 - gender, gender)
    # Confident, right predictions for everyone but the flipped person, whose gender the model disputes.
    task_probs = {t: np.full((len(table), TASKS[t]), 0.05 / (TASKS[t] - 1)) for t in TASKS}
    for t, codes in (("mask", mask), ("gender", shown_gender), ("age", age)):
        task_probs[t][np.arange(len(table)), codes] = 0.95
    oof = table[["person_id", "stem", "image_path", "label"]].assign(fold=0)
    oof = pd.concat([oof, pd.DataFrame(combine_task_probs(task_probs), columns=PROB_COLUMNS)], axis=1)
    oof_csv = tmp_path / "oof.csv"
    oof.to_csv(oof_csv, index=False)

    out = tmp_path / "eda.html"
    assert main(["eda", str(demo_data.root), "--out", str(out), "--run", str(oof_csv)]) == 0
    rows = _table_rows(_section(_page(out), "suspects"), "suspect-table")
    assert len(rows) == 1
    assert rows[0][:4] == [flipped, "gender", GENDER_NAMES[gender[0]], GENDER_NAMES[1 - gender[0]]]


def test_eda_lists_a_broken_train_csv_and_still_shows_eval(demo_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_data.root, root)
    csv = root / "train" / "train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(["id,sex,race,age,path", *lines[1:]]) + "\n")
    result = analyse(root)
    assert result.train.empty and len(result.eval) == len(pd.read_csv(root / "eval" / "info.csv"))
    text = _page(_write(result, tmp_path / "eda.html"))
    problems = _table_rows(_section(text, "problems"), "problem-table")
    assert len(problems) == 1 and problems[0][0] == "train/train.csv"
    assert "missing column(s) ['gender']" in problems[0][1]
    assert 'id="classes"' not in text  # nothing to count without a usable train.csv


def test_eda_names_a_missing_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["eda", str(missing), "--out", str(tmp_path / "x.html")]) == 2
    assert f"data folder not found: {missing}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither train/ nor eval/"):
        analyse(tmp_path / "empty")
    assert not (tmp_path / "x.html").exists()


def test_eda_names_a_run_without_predictions(demo_data, tmp_path, capsys):
    assert main(["eda", str(demo_data.root), "--out", str(tmp_path / "x.html"), "--run", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def _jpeg(img: Image.Image, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return load_rgb(io.BytesIO(buf.getvalue()))


def test_phash_keeps_a_recompressed_copy_near_and_a_different_photo_far(demo_data):
    paths = sorted((demo_data.train_dir / "images").glob("*/normal.*"))
    img = Image.fromarray(load_rgb(paths[0]))
    words = lambda rgb: np.frombuffer(phash(rgb), dtype=np.uint64)  # noqa: E731
    original, copy = words(np.asarray(img)), words(_jpeg(img.resize((img.width * 2, img.height * 2)), 60))
    other = words(load_rgb(paths[1]))
    assert np.bitwise_count(original ^ copy).sum() <= NEAR_DUPLICATE_BITS
    assert np.bitwise_count(original ^ other).sum() > NEAR_DUPLICATE_BITS


def test_find_duplicates_equals_all_pairs():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=(300, 4), dtype=np.uint64)
    hashes[150:] = hashes[:150]
    hashes[200:, 1] ^= np.uint64(0b111)  # 3 bits apart
    hashes[260:, 2] ^= np.uint64(0xFFFF)  # 19 bits apart, beyond the threshold
    owners = np.arange(300)
    owners[100:150] = 7  # one person: their copies among themselves are not reported
    owners[240:] = -1  # eval images: never compared with each other
    owners[150:160] = owners[0:10]
    found = find_duplicates(hashes, owners, max_bits=10, eval_owner=-1, chunk=32)
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None]).sum(axis=2)
    i, j = np.triu_indices(len(hashes), 1)
    want = (dist[i, j] <= 10) & (owners[i] != owners[j]) & ~((owners[i] == -1) & (owners[j] == -1))
    got = {(min(a, b), max(a, b), d) for a, b, d in found.itertuples(index=False)}
    assert got == {(a, b, dist[a, b]) for a, b in zip(i[want], j[want])}
    assert len(got) > 50


# ----------------------------------------------------------------- report


FAST = ["train.epochs=2", "train.limit_train_batches=1"]


@pytest.fixture(scope="module")
def tiny_run(demo_data, tiny_overrides, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp / 'runs'}", f"cache.dir={tmp / 'cache'}",
                             *tiny_overrides, *FAST])
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def tiny_cv(demo_data, tiny_overrides, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp / 'runs'}", f"cache.dir={tmp / 'cache'}",
                             *tiny_overrides, *FAST, "split.folds=2"])
    return run_cv(cfg).cv_dir


def _check_report(text: str, run: Path) -> None:
    _assert_self_contained(text)
    for key in REPORT_SECTIONS:
        _section(text, key)
    oof = read_oof(run)
    probs, labels = oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy()
    m = compute_metrics(probs, labels)
    summary = _section(text, "summary")
    assert f"<b>{m['f1']:.4f}</b><span>OOF macro F1" in summary
    assert f"<b>{m['age_f1']:.4f}</b><span>age F1" in summary
    # Confusion row totals and the per-class table count the same images as the OOF labels.
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    confusion_rows = re.findall(r'<td class="num">(\d+)</td></tr>', re.search(
        r'<div id="confusion-18">(.*?)</div>', text, re.S).group(1))
    assert [int(c) for c in confusion_rows] == counts.tolist()
    per_class = _table_rows(_section(text, "per-class"), "per-class-table")
    assert [int(r[2]) for r in per_class] == counts.tolist()
    assert [int(r[4]) for r in per_class] == np.bincount(probs.argmax(axis=1), minlength=NUM_CLASSES).tolist()
    room = task_headroom(labels, probs)
    headroom = _section(text, "headroom")
    assert f"<b>{room['f1']:.4f}</b><span>macro F1 as predicted" in headroom
    assert f"<b>{room['f1_true_age']:.4f} ({room['f1_true_age'] - room['f1']:+.3f})</b>" in headroom
    wrong = int((probs.argmax(axis=1) != labels).sum())
    assert _section(text, "mistakes").count('class="card"') == min(24, wrong)
    assert (run / ("cv_config.yaml" if (run / "cv_config.yaml").exists() else "config.yaml")).read_text().splitlines()[0] \
        in _section(text, "config")


@pytest.mark.slow
def test_report_of_a_run(tiny_run, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(tiny_run), "--out", str(out)]) == 0
    text = _page(out)
    _check_report(text, tiny_run)
    assert 'id="folds"' not in text
    assert 'alt="learning curves"' in _section(text, "curves")


@pytest.mark.slow
def test_report_of_a_cv_folder_shows_each_fold(tiny_cv):
    assert main(["report", str(tiny_cv)]) == 0  # default: inside the CV folder
    text = _page(tiny_cv / "report.html")
    _check_report(text, tiny_cv)
    oof = read_oof(tiny_cv)
    folds = _table_rows(_section(text, "folds"), "fold-table")
    assert [int(r[0]) for r in folds] == [0, 1]
    for row, (fold, part) in zip(folds, oof.groupby("fold")):
        m = compute_metrics(part[PROB_COLUMNS].to_numpy(), part["label"].to_numpy())
        assert int(row[2]) == len(part) and row[6] == f"{m['f1']:.4f}" and row[9] == f"{m['age_f1']:.4f}"


def test_report_names_a_missing_or_wrong_folder(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"run folder not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert f"not a run folder (no config.yaml) nor a CV folder (no cv_config.yaml): {tmp_path}" in \
        capsys.readouterr().err


def test_class_intervals_resample_people():
    rng = np.random.default_rng(0)
    people = np.repeat([f"p{i}" for i in range(200)], 7)
    labels = rng.integers(0, NUM_CLASSES, len(people))
    perfect = _class_intervals(labels, labels, people, samples=200)
    assert np.allclose(perfect["f1"], 1.0)

    preds = np.where(rng.random(len(labels)) < 0.7, labels, rng.integers(0, NUM_CLASSES, len(labels)))
    preds[preds == 5] = 4  # class 5 is never predicted: no precision interval
    ci = _class_intervals(labels, preds, people, samples=300)
    again = _class_intervals(labels, preds, people, samples=300)
    assert np.array_equal(ci["f1"], again["f1"], equal_nan=True)
    assert np.isnan(ci["precision"][:, 5]).all() and np.allclose(ci["recall"][:, 5], 0.0)
    recall = (preds[labels == 0] == 0).mean()
    assert ci["recall"][0, 0] < recall < ci["recall"][1, 0]
    # Fewer people, wider intervals.
    few = np.isin(people, [f"p{i}" for i in range(20)])
    narrow = ci["recall"][1, 0] - ci["recall"][0, 0]
    wide = _class_intervals(labels[few], preds[few], people[few], samples=300)["recall"][:, 0]
    assert wide[1] - wide[0] > narrow


def test_calibration_bins():
    probs = np.full((10, NUM_CLASSES), 0.05 / (NUM_CLASSES - 1))
    probs[:, 3] = 0.95
    labels = np.array([3] * 8 + [4] * 2)
    table = calibration(probs, labels)
    top = table.iloc[-1]
    assert top["images"] == 10 and top["confidence"] == pytest.approx(0.95) and top["accuracy"] == pytest.approx(0.8)
    assert table["images"].iloc[:-1].sum() == 0
    assert table.attrs["ece"] == pytest.approx(0.15)
