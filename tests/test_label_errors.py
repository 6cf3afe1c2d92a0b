"""Label-error finder: planted flips must surface at the top, clean people must score low."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maskstatus.cli import main
from maskstatus.data.relabel import SWAP_VALUE, read_relabel
from maskstatus.data.synthetic import make_demo_data
from maskstatus.data.tables import train_table
from maskstatus.scoring.label_errors import (
    PROB_COLUMNS,
    REVIEW_COLUMNS,
    REVIEW_ROW_HEIGHT,
    find_label_errors,
    load_oof,
    score_people,
    write_review,
)
from maskstatus.labels import GENDER_NAMES, IMAGE_STEMS, STEM_TO_MASK, TASKS, combine_task_probs, encode


def _noisy(codes, k, rng, confidence=0.9):
    """Confident probabilities for ``codes``: ``confidence`` on the code, the rest spread at random."""
    codes = np.asarray(codes)
    rest = rng.dirichlet(np.ones(k), size=len(codes)) * (1 - confidence)
    probs = rest
    probs[np.arange(len(codes)), codes] += confidence
    return probs


def _oof(people, rng):
    """oof table from per-image (true mask, true gender, true age) and the given labels.

    ``people``: list of (person_id, given gender, given age group, true gender, swapped),
    where ``swapped`` means the photos named incorrect_mask/normal really show the other one.
    """
    rows, true = [], []
    for fold, (pid, given_gender, age, true_gender, swapped) in enumerate(people):
        for stem in IMAGE_STEMS:
            mask = STEM_TO_MASK[stem]
            shown = {1: 2, 2: 1}.get(mask, mask) if swapped else mask
            rows.append((pid, stem, f"/data/{pid}/{stem}.jpg", encode(mask, given_gender, age), fold % 5))
            true.append((shown, true_gender, age))
    table = pd.DataFrame(rows, columns=["person_id", "stem", "image_path", "label", "fold"])
    m, g, a = np.array(true).T
    probs = combine_task_probs(
        {"mask": _noisy(m, TASKS["mask"], rng), "gender": _noisy(g, TASKS["gender"], rng),
         "age": _noisy(a, TASKS["age"], rng)}
    )
    return pd.concat([table, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)


@pytest.fixture
def planted():
    rng = np.random.default_rng(0)
    people = []
    flipped, swapped = {"000007", "000019", "000033"}, "000025"
    for i in range(40):
        pid = f"{i:06d}"
        gender, age = int(rng.integers(2)), int(rng.integers(3))
        given = 1 - gender if pid in flipped else gender
        people.append((pid, given, age, gender, pid == swapped))
    return _oof(people, rng), flipped, swapped


def test_planted_flips_rank_first_and_clean_people_score_low(planted):
    oof, flipped, swapped = planted
    scores = score_people(oof)
    assert len(scores) == 40 * 3
    gender = scores[scores.task == "gender"].sort_values("score", ascending=False)
    assert set(gender.person_id.head(3)) == flipped
    assert gender.score.head(3).min() > 0.85
    assert gender.score.iloc[3:].max() < 0.1

    swap = scores[scores.task == "mask_swap"].sort_values("score", ascending=False)
    assert swap.person_id.iloc[0] == swapped
    assert swap.score.iloc[0] > 0.85 and swap.score.iloc[1:].max() < 0.1
    assert swap.given.iloc[0] == "incorrect/not_wear" and swap.predicted.iloc[0] == "not_wear/incorrect"

    # Nobody's age was planted, so no age suspect passes the default minimum score.
    assert scores[scores.task == "age"].score.max() < 0.1

    suspects = find_label_errors(oof)
    assert list(suspects.columns) == list(REVIEW_COLUMNS)
    assert suspects.score.is_monotonic_decreasing
    assert set(suspects[suspects.task == "gender"].person_id) == flipped
    assert list(suspects[suspects.task == "mask_swap"].person_id) == [swapped]
    assert (suspects.task != "age").all()
    flip = suspects[suspects.person_id == "000007"].iloc[0]
    assert flip.predicted != flip.given and flip.predicted in GENDER_NAMES
    assert flip.images.split(";") == [f"/data/000007/{s}.jpg" for s in IMAGE_STEMS]


def test_top_and_min_score_limit_rows(planted):
    oof, flipped, _ = planted
    assert len(find_label_errors(oof, top=2, min_score=0.5).query("task == 'gender'")) == 2
    everyone = find_label_errors(oof, top=100, min_score=0.0)
    assert len(everyone) == 40 * 3
    with pytest.raises(ValueError, match="top"):
        find_label_errors(oof, top=0)


def test_person_without_normal_photo_gets_no_swap_row(planted):
    oof, _, _ = planted
    oof = oof[~((oof.person_id == "000001") & (oof.stem == "normal"))]
    scores = score_people(oof)
    assert "000001" not in set(scores[scores.task == "mask_swap"].person_id)
    assert len(scores[scores.task == "gender"]) == 40


@pytest.fixture(scope="module")
def demo_review(tmp_path_factory):
    """Demo data with the gender of 2 people flipped in the given labels; OOF from the true labels."""
    root = tmp_path_factory.mktemp("labelerr")
    data = make_demo_data(root / "data", people=24, seed=5)
    table = train_table(data.train_dir, check_images=False)
    rng = np.random.default_rng(1)
    ids = sorted(table.person_id.unique())
    flipped = [ids[3], ids[17]]
    given_gender = np.where(table.person_id.isin(flipped), 1 - table.gender, table.gender)
    probs = combine_task_probs(
        {"mask": _noisy(table["mask"], 3, rng, 0.8), "gender": _noisy(table.gender, 2, rng, 0.8),
         "age": _noisy(table.age_group, 3, rng, 0.8)}
    )
    oof = table[["person_id", "stem", "image_path"]].assign(
        label=encode(table["mask"], given_gender, table.age_group), fold=0
    )
    oof = pd.concat([oof, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    suspects = find_label_errors(oof)
    paths = write_review(suspects, root / "review")
    return table, flipped, suspects, paths


def test_demo_data_flipped_genders_rank_top_two(demo_review):
    table, flipped, suspects, _ = demo_review
    gender = suspects[suspects.task == "gender"]
    assert set(gender.person_id.head(2)) == set(flipped)
    truth = table.drop_duplicates("person_id").set_index("person_id").gender
    for row in gender.head(2).itertuples():
        assert row.predicted == GENDER_NAMES[truth[row.person_id]]


def test_write_review_files(demo_review):
    table, flipped, suspects, paths = demo_review
    assert set(paths) == {"review_csv", "review_png", "relabel_draft"}
    assert all(p.is_file() for p in paths.values())

    review = pd.read_csv(paths["review_csv"], dtype={"person_id": str})
    assert list(review.columns) == list(REVIEW_COLUMNS)
    assert list(review.person_id) == list(suspects.person_id)

    assert paths["relabel_draft"].read_text().startswith("#")
    draft = read_relabel(paths["relabel_draft"])
    truth = table.drop_duplicates("person_id").set_index("person_id").gender
    gender_rows = draft[draft.field == "gender"].set_index("id").value
    for pid in flipped:
        assert gender_rows[pid] == GENDER_NAMES[truth[pid]]
    assert set(draft.field) <= {"gender", "mask_swap"}

    with Image.open(paths["review_png"]) as img:
        assert img.height == suspects.person_id.nunique() * REVIEW_ROW_HEIGHT
        # The photos were pasted: the grid is not just a white page with captions.
        assert np.asarray(img.convert("L")).std() > 20


def test_relabel_draft_swap_and_age_comments(planted, tmp_path):
    oof, flipped, swapped = planted
    age_suspect = pd.DataFrame(
        [("000002", "age", "young", "old", 0.8, "", "")], columns=list(REVIEW_COLUMNS)
    )
    suspects = pd.concat([find_label_errors(oof), age_suspect], ignore_index=True)
    paths = write_review(suspects, tmp_path / "r", grid_people=2)
    draft = read_relabel(paths["relabel_draft"])
    assert set(draft[draft.field == "gender"].id) == flipped
    assert draft[draft.field == "mask_swap"].set_index("id").value.to_dict() == {swapped: SWAP_VALUE}
    assert "000002" not in set(draft.id)
    assert "#   000002: given young, predicted old" in paths["relabel_draft"].read_text()
    with Image.open(paths["review_png"]) as img:
        assert img.height == 2 * REVIEW_ROW_HEIGHT  # grid_people caps the rows; missing photos do not fail


def test_write_review_with_no_suspects(planted, tmp_path):
    oof, _, _ = planted
    paths = write_review(find_label_errors(oof, min_score=0.999), tmp_path / "r")
    assert read_relabel(paths["relabel_draft"]).empty
    with Image.open(paths["review_png"]) as img:
        assert img.height == REVIEW_ROW_HEIGHT


def test_load_oof_from_cv_run_and_file(planted, tmp_path):
    oof, _, _ = planted
    oof = oof.copy()
    oof.loc[oof.person_id == "000003", "person_id"] = "001498-1"
    cv = tmp_path / "cv"
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    cv.mkdir()
    oof.to_csv(cv / "oof.csv", index=False)
    oof.to_csv(run / "predictions" / "oof.csv", index=False)
    for source in (cv, run, cv / "oof.csv"):
        loaded = load_oof(source)
        assert loaded.person_id.iloc[0] == "000000"
        assert "001498-1" in set(loaded.person_id)
        assert len(loaded) == len(oof)


def test_load_oof_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_oof(tmp_path / "nope")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        load_oof(empty)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"person_id": ["1"], "stem": ["normal"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=f"{bad}.*lacks column"):
        load_oof(bad)
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(ValueError, match=str(blank)):
        load_oof(blank)


def test_cli_find_label_errors(planted, tmp_path, capsys):
    oof, flipped, _ = planted
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    oof.to_csv(run / "predictions" / "oof.csv", index=False)
    assert main(["find-label-errors", str(run), "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "gender: 2" in out and "mask_swap: 1" in out and "age: 0" in out
    review = run / "label_review"
    for name in ("review.csv", "review.png", "relabel_draft.csv"):
        assert (review / name).is_file() and str(review / name) in out

    assert main(["find-label-errors", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert str(tmp_path / "missing") in capsys.readouterr().err


def test_gender_score_is_the_renormalised_geometric_mean(planted):
    # A: lukewarm on all 7 photos; B: sure on 4 and leaning the given way on 3. The arithmetic mean
    # ranks A first (0.75 > 0.742), the geometric mean (mean log-odds) ranks B first.
    oof, _, _ = planted
    two = oof[oof.person_id.isin(["000001", "000002"])].copy()
    two["label"] = encode(np.array([STEM_TO_MASK[s] for s in two.stem]), 0, 0)
    other = {"000001": [0.75] * 7, "000002": [0.999] * 4 + [0.4] * 3}
    p_other = np.concatenate([other[pid] for pid in two.person_id.drop_duplicates()])
    masks = np.eye(3)[[STEM_TO_MASK[s] for s in two.stem]]
    gender = np.stack([1 - p_other, p_other], axis=1)
    two[PROB_COLUMNS] = combine_task_probs({"mask": masks, "gender": gender})
    scores = score_people(two).query("task == 'gender'").set_index("person_id").score
    assert scores["000001"] == pytest.approx(0.75, abs=1e-6)
    log_odds = (4 * np.log(0.999 / 0.001) + 3 * np.log(0.4 / 0.6)) / 7
    assert scores["000002"] == pytest.approx(1 / (1 + np.exp(-log_odds)), abs=1e-4)
    assert scores["000002"] > scores["000001"]


def _age_people(rows):
    """oof of people with one given age group each and the same age probabilities on all 7 photos.

    ``rows``: (person_id, given age group, age probabilities); mask and gender are right and sure.
    """
    table, probs = [], []
    for pid, given, age_probs in rows:
        for stem in IMAGE_STEMS:
            mask = STEM_TO_MASK[stem]
            table.append((pid, stem, f"/d/{pid}/{stem}.jpg", encode(mask, 0, given), 0))
            probs.append(combine_task_probs(
                {"mask": np.eye(3)[[mask]] * 0.98 + 0.01 / 1.5, "gender": np.array([[0.98, 0.02]]),
                 "age": np.array([age_probs])}
            )[0])
    frame = pd.DataFrame(table, columns=["person_id", "stem", "image_path", "label", "fold"])
    return pd.concat([frame, pd.DataFrame(np.array(probs), columns=PROB_COLUMNS)], axis=1)


def test_cleanlab_judges_each_class_against_its_own_threshold():
    # The model is sure of the young (0.95) and never of the middle group (0.55). Two suspects with
    # mirrored probabilities tie for self-confidence; confident learning flags the one labelled young
    # whose middle probability is at the middle group's usual level, and clears the one labelled middle.
    rows = [(f"y{i}", 0, [0.95, 0.04, 0.01]) for i in range(8)] + [(f"m{i}", 1, [0.3, 0.55, 0.15]) for i in range(8)]
    rows += [("young?", 0, [0.44, 0.55, 0.01]), ("middle?", 1, [0.55, 0.44, 0.01])]
    oof = _age_people(rows)
    confidence = score_people(oof, "confidence").query("task == 'age'").set_index("person_id")
    cleanlab = score_people(oof, "cleanlab").query("task == 'age'").set_index("person_id")
    combined = score_people(oof, "combined").query("task == 'age'").set_index("person_id")
    assert confidence.score["young?"] == pytest.approx(confidence.score["middle?"], abs=0.02)
    assert cleanlab.score["young?"] > 0.5 > cleanlab.score["middle?"]
    assert cleanlab.score.between(0, 1).all() and cleanlab.score.drop(["young?", "middle?"]).max() < 0.5
    assert combined.score["young?"] == pytest.approx((confidence.score["young?"] + cleanlab.score["young?"]) / 2)
    # The suggestion is the most probable group whatever the ranker; the reason names the thresholds.
    assert cleanlab.predicted["young?"] == confidence.predicted["young?"] == "middle"
    assert cleanlab.predicted["middle?"] == "young"
    assert "class thresholds middle 0.5" in cleanlab.reason["young?"]
    assert "among the" in cleanlab.reason["young?"] and "not among" in cleanlab.reason["y0"]
    assert list(find_label_errors(oof, ranker="cleanlab").query("task == 'age'").person_id) == ["young?"]


def test_every_ranker_finds_the_planted_flips(planted):
    oof, flipped, swapped = planted
    for ranker in ("confidence", "cleanlab", "combined"):
        suspects = find_label_errors(oof, ranker=ranker)
        assert list(suspects.columns) == list(REVIEW_COLUMNS)
        assert set(suspects.query("task == 'gender'").person_id) == flipped, ranker
        assert list(suspects.query("task == 'mask_swap'").person_id) == [swapped], ranker
        assert suspects.reason.str.len().min() > 0 and suspects.score.between(0.5, 1).all()
    with pytest.raises(ValueError, match="ranker must be one of confidence, cleanlab, combined"):
        score_people(oof, "cleanlab2")


def test_cli_find_label_errors_ranker(planted, tmp_path, capsys):
    oof, _, _ = planted
    oof.to_csv(tmp_path / "oof.csv", index=False)
    assert main(["find-label-errors", str(tmp_path / "oof.csv"), "--ranker", "cleanlab", "--out", str(tmp_path / "r")]) == 0
    assert "gender: 3" in capsys.readouterr().out
    review = pd.read_csv(tmp_path / "r" / "review.csv", dtype={"person_id": str})
    assert review.reason.str.contains("threshold").all()


def test_accepted_fixes_are_what_accepting_every_suggestion_writes(planted, tmp_path):
    from maskstatus.labels import AgeThresholds
    from maskstatus.scoring.label_errors import accepted_fixes

    oof, flipped, swapped = planted
    ages = pd.DataFrame(
        [("000001", "age", "young", "middle", 0.8, "", ""), ("000002", "age", "middle", "old", 0.7, "", ""),
         ("000003", "age", "old", "middle", 0.6, "", ""), ("000004", "age", "middle", "middle", 0.55, "", "")],
        columns=list(REVIEW_COLUMNS),
    )
    suspects = pd.concat([find_label_errors(oof), ages], ignore_index=True)
    fixes = accepted_fixes(suspects, oof).set_index(["id", "field"]).value
    truth = {pid: GENDER_NAMES[1 - int(oof[oof.person_id == pid].label.iloc[0]) // 3 % 2] for pid in flipped}
    assert {pid: fixes[pid, "gender"] for pid in flipped} == truth
    assert fixes[swapped, "mask_swap"] == SWAP_VALUE
    # Without predicted years: the nearest year of the suggested group; a suggestion equal to the label: no row.
    assert (fixes["000001", "age"], fixes["000002", "age"], fixes["000003", "age"]) == ("30", "60", "59")
    assert ("000004", "age") not in fixes.index
    with_years = oof.assign(age_mean=np.where(oof.person_id == "000001", 41.6, 20.0))
    years = accepted_fixes(ages, with_years, AgeThresholds(30, 58)).set_index("id").value
    assert (years["000001"], years["000002"], years["000003"]) == ("42", "58", "30")
    (tmp_path / "fix.csv").write_text(accepted_fixes(suspects, oof).to_csv(index=False))
    assert len(read_relabel(tmp_path / "fix.csv")) == len(flipped) + 1 + 3


def test_default_ranker_is_one_of_the_choices():
    from maskstatus.choices import LABEL_ERROR_RANKERS
    from maskstatus.defaults import LABEL_ERRORS_RANKER

    assert LABEL_ERRORS_RANKER in LABEL_ERROR_RANKERS
