import logging
from pathlib import Path

import pandas as pd
import pytest

from maskstatus.data.relabel import (
    COMPETITION_RELABEL,
    RelabelError,
    apply_relabel,
    read_relabel,
    resolve_relabel,
)
from maskstatus.data.tables import train_table
from maskstatus.labels import GENDER_TO_CODE, IMAGE_STEMS, STEM_TO_MASK, age_group, encode

from data_builders import PEOPLE as BASE_PEOPLE
from data_builders import make_train as build_train

# 000020 (not 000003) as the third person: the competition file swaps its masks.
PEOPLE = [*BASE_PEOPLE[:2], ("000020", "male", "Black", 60)]


def make_train(root: Path) -> Path:
    """Every image a grey .jpg."""
    return build_train(root, people=PEOPLE, exts=(".jpg",), color=(90, 90, 90))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_relabel_normalises(tmp_path):
    path = write(
        tmp_path / "fix.csv",
        "id,field,value\n# a comment\n\n000001, gender ,Male\n000002,age,61\n000020,mask_swap,1\n",
    )
    table = read_relabel(path)
    assert list(table.columns) == ["id", "field", "value", "line"]
    assert table.to_dict("records") == [
        {"id": "000001", "field": "gender", "value": "male", "line": 4},
        {"id": "000002", "field": "age", "value": "61", "line": 5},
        {"id": "000020", "field": "mask_swap", "value": "incorrect_mask<->normal", "line": 6},
    ]


@pytest.mark.parametrize(
    "row, reason",
    [
        ("000001,sex,male", "unknown field 'sex'"),
        ("000001,gender,other", "gender value 'other' is not one of ['male', 'female']"),
        ("000001,age,old", "age value 'old' is not a whole number"),
        ("000001,age,-1", "age value -1 is negative"),
        ("000001,mask_swap,maybe", "mask_swap value 'maybe'"),
        (",gender,male", "empty id"),
        ("000001,gender", "expected 3 values"),
    ],
)
def test_read_relabel_errors_name_file_and_line(tmp_path, row, reason):
    path = write(tmp_path / "fix.csv", f"id,field,value\n000009,age,30\n{row}\n")
    with pytest.raises(RelabelError) as err:
        read_relabel(path)
    message = str(err.value)
    assert str(path) in message
    assert f"line 3: {reason}" in message


def test_read_relabel_lists_every_bad_line_and_duplicates(tmp_path):
    path = write(tmp_path / "fix.csv", "id,field,value\n1,sex,m\n2,age,x\n1,gender,male\n1,gender,female\n")
    with pytest.raises(RelabelError) as err:
        read_relabel(path)
    message = str(err.value)
    assert "3 error(s)" in message
    assert "line 2: unknown field" in message and "line 3: age value" in message
    assert "line 5: id '1' field 'gender' already given on line 4" in message


def test_read_relabel_header_and_missing_file(tmp_path):
    with pytest.raises(RelabelError, match=r"line 1: header must be id,field,value"):
        read_relabel(write(tmp_path / "a.csv", "person,field,value\n1,age,3\n"))
    with pytest.raises(RelabelError, match="is empty"):
        read_relabel(write(tmp_path / "b.csv", ""))
    with pytest.raises(RelabelError, match="relabel file not found"):
        read_relabel(tmp_path / "c.csv")


def test_competition_file():
    assert COMPETITION_RELABEL.is_file()
    table = read_relabel(COMPETITION_RELABEL)
    assert len(table) == 13
    expected = {
        **{pid: ("gender", "male") for pid in ("006359", "006360", "006361", "006362", "006363", "006364", "001720")},
        **{pid: ("gender", "female") for pid in ("001498-1", "004432", "005223")},
        **{pid: ("mask_swap", "incorrect_mask<->normal") for pid in ("000020", "004418", "005227")},
    }
    assert {r.id: (r.field, r.value) for r in table.itertuples()} == expected


def test_resolve_relabel(tmp_path):
    assert resolve_relabel(None) is None
    assert resolve_relabel("") is None
    assert resolve_relabel("competition") == COMPETITION_RELABEL
    own = write(tmp_path / "own.csv", "id,field,value\n")
    assert resolve_relabel(str(own)) == own
    with pytest.raises(RelabelError, match=str(tmp_path / "missing.csv")):
        resolve_relabel(str(tmp_path / "missing.csv"))


def test_gender_fix_changes_all_seven_labels(tmp_path):
    train = make_train(tmp_path)
    before = train_table(train)
    fix = write(tmp_path / "f.csv", "id,field,value\n001498-1,gender,female\n")
    after = train_table(train, relabel=read_relabel(fix))
    changed = before["label"] != after["label"]
    assert changed.sum() == len(IMAGE_STEMS)
    assert set(after.loc[changed, "person_id"]) == {"001498-1"}
    assert (after.loc[changed, "gender"] == GENDER_TO_CODE["female"]).all()
    fixed = after[changed]
    assert (fixed["label"] == encode(fixed["mask"], fixed["gender"], fixed["age_group"])).all()


def test_an_empty_relabel_setting_applies_no_fixes(tmp_path):
    train = make_train(tmp_path)
    pd.testing.assert_frame_equal(train_table(train, relabel=""), train_table(train))


def test_mask_swap_swaps_incorrect_and_normal(tmp_path):
    train = make_train(tmp_path)
    before = train_table(train).set_index(["person_id", "stem"])
    after = train_table(train, relabel=read_relabel(write(tmp_path / "f.csv", "id,field,value\n000020,mask_swap,1\n")))
    after = after.set_index(["person_id", "stem"])
    assert after.loc[("000020", "incorrect_mask"), "mask"] == STEM_TO_MASK["normal"]
    assert after.loc[("000020", "normal"), "mask"] == STEM_TO_MASK["incorrect_mask"]
    assert after.loc[("000020", "incorrect_mask"), "label"] == before.loc[("000020", "normal"), "label"]
    assert after.loc[("000020", "normal"), "label"] == before.loc[("000020", "incorrect_mask"), "label"]
    changed = before["label"] != after["label"]
    assert changed.sum() == 2


def test_age_fix_and_competition_keyword(tmp_path, caplog):
    train = make_train(tmp_path)
    after = train_table(train, relabel=read_relabel(write(tmp_path / "f.csv", "id,field,value\n000001,age,61\n")))
    person = after[after.person_id == "000001"]
    assert (person["age"] == 61).all()
    assert (person["age_group"] == age_group(61)).all()

    # "competition" fixes two of our ids; the other eleven are unknown here: a warning, not an error.
    with caplog.at_level(logging.WARNING, logger="maskstatus"):
        fixed = train_table(train, relabel="competition").set_index(["person_id", "stem"])
    assert "11 id(s) not in the data" in caplog.text and "006359" in caplog.text
    assert fixed.loc[("001498-1", "mask1"), "gender"] == GENDER_TO_CODE["female"]
    assert fixed.loc[("000020", "normal"), "mask"] == STEM_TO_MASK["incorrect_mask"]


def test_apply_relabel_on_a_person_table():
    people = pd.DataFrame({"id": ["a", "b"], "gender": [0, 1], "age": [20, 40]})
    relabel = pd.DataFrame(
        {"id": ["a", "b", "zz"], "field": ["gender", "mask_swap", "age"], "value": ["female", "1", "3"]}
    )
    out = apply_relabel(people, relabel, id_column="id")
    assert out["gender"].tolist() == [GENDER_TO_CODE["female"], 1]
    assert out["age"].tolist() == [20, 40]
    assert people["gender"].tolist() == [0, 1]  # the input is not modified


def test_apply_relabel_refuses_encoded_table(tmp_path):
    table = train_table(make_train(tmp_path))
    with pytest.raises(ValueError, match="before age_group/label are computed"):
        apply_relabel(table, pd.DataFrame({"id": ["000001"], "field": ["age"], "value": ["3"]}))


def test_apply_relabel_checks_values():
    people = pd.DataFrame({"person_id": ["a"], "gender": ["male"], "age": [20]})
    with pytest.raises(ValueError, match="unknown field 'height'"):
        apply_relabel(people, pd.DataFrame({"id": ["a"], "field": ["height"], "value": ["2"]}))
