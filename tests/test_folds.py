import numpy as np
import pandas as pd
import pytest

from maskstatus.data.folds import attach_folds, make_folds, read_folds
from maskstatus.labels import IMAGE_STEMS, STEM_TO_MASK, encode


def _table(people=200, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(people):
        g, a = rng.integers(0, 2), rng.choice(3, p=[0.45, 0.45, 0.10])
        for s in IMAGE_STEMS:
            rows.append({"person_id": f"{p:06d}", "stem": s, "label": encode(STEM_TO_MASK[s], g, a)})
    return pd.DataFrame(rows)


def test_folds_group_people_and_keep_class_proportions():
    t = _table()
    folds = make_folds(t, 5, seed=1)
    assert folds["person_id"].is_unique and set(folds["fold"]) == set(range(5))
    t = attach_folds(t, folds, 5)
    assert t.groupby("person_id")["fold"].nunique().max() == 1  # never split a person
    overall = t["label"].value_counts(normalize=True).sort_index()
    for _, part in t.groupby("fold"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert np.abs(share - overall).max() < 0.03
        assert 0.15 < len(part) / len(t) < 0.25


def test_folds_seeded():
    t = _table()
    assert make_folds(t, 5, 3).equals(make_folds(t, 5, 3))
    assert not make_folds(t, 5, 3).equals(make_folds(t, 5, 4))


def test_folds_file_round_trip_and_errors(tmp_path):
    t = _table(30)
    folds = make_folds(t, 3, 0)
    folds.to_csv(tmp_path / "folds.csv", index=False)
    back = read_folds(tmp_path / "folds.csv")
    assert back["person_id"].iloc[0] == "000000"  # ids stay strings
    assert attach_folds(t, back, 3)["fold"].tolist() == attach_folds(t, folds, 3)["fold"].tolist()
    with pytest.raises(ValueError, match="no fold"):
        attach_folds(t, back.iloc[1:], 3, source="f.csv")
    with pytest.raises(ValueError, match="outside"):
        attach_folds(t, back, 2)
    (tmp_path / "bad.csv").write_text("pid,f\n1,0\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_folds(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError):
        read_folds(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="cannot make"):
        make_folds(_table(3), 5, 0)


def test_image_folds_reproduce_the_leaky_split(tmp_path):
    from maskstatus.data.folds import make_image_folds

    t = _table(60)
    t["image_path"] = [f"/d/{p}/{s}.jpg" for p, s in zip(t["person_id"], t["stem"])]
    folds = make_image_folds(t, 5, seed=0)
    t = attach_folds(t, folds, 5)
    assert t.groupby("person_id")["fold"].nunique().max() > 1  # a face on both sides: the pitfall, on purpose
    folds.to_csv(tmp_path / "f.csv", index=False)
    assert attach_folds(t, read_folds(tmp_path / "f.csv"), 5)["fold"].tolist() == t["fold"].tolist()
