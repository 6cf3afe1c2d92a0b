"""maskstatus review: the suspects of a CV, the decision store, the export, the API, and the page in chromium."""

import json
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from data_builders import make_train  # noqa: E402
from maskstatus.cli import main  # noqa: E402
from maskstatus.config import load_config, save_config  # noqa: E402
from maskstatus.data.relabel import SWAP_VALUE, read_relabel  # noqa: E402
from maskstatus.data.tables import train_table  # noqa: E402
from maskstatus.errors import DataError, RunError  # noqa: E402
from maskstatus.labels import PROB_COLUMNS, TASKS, combine_task_probs, decode  # noqa: E402
from maskstatus.review.app import open_review  # noqa: E402
from maskstatus.review.decisions import DecisionStore, ReviewError, StaleDecision, export_relabel  # noqa: E402
from maskstatus.review.suspects import load_review  # noqa: E402
from maskstatus.runs import CV_CONFIG, OOF, REVIEW, REVIEW_DECISIONS, RUN_CONFIG, RunDir  # noqa: E402

# Four people; the models see the other gender on 000003 (given male) and a swap on 000001.
PEOPLE = [
    ("000001", "female", "Asian", 45),
    ("001498-1", "male", "White", 25),
    ("000003", "male", "Black", 60),
    ("000004", "female", "Asian", 19),
]
FLIPPED, SWAPPED = "000003", "000001"


def _confident(codes, k, confidence=0.95):
    probs = np.full((len(codes), k), (1 - confidence) / (k - 1))
    probs[np.arange(len(codes)), codes] = confidence
    return probs


def _write_cv(root: Path, cv: Path, relabel: Path | None = None) -> Path:
    """A CV folder as maskstatus cv leaves it (its config and oof.csv), with confident out-of-fold predictions
    that disagree with the given labels where planted."""
    overrides = [f"data.root={root}"] + ([f"data.relabel={relabel}"] if relabel else [])
    cfg = load_config(None, overrides)
    cv.mkdir(parents=True)
    save_config(cfg, cv / CV_CONFIG)
    table = train_table(root / "train", relabel=relabel, check_images=False)
    mask, gender, age = decode(table["label"].to_numpy())
    seen_gender = np.where(table["person_id"] == FLIPPED, 1 - gender, gender)
    swap = (table["person_id"] == SWAPPED).to_numpy()
    seen_mask = np.where(swap & (mask == 1), 2, np.where(swap & (mask == 2), 1, mask))
    probs = combine_task_probs({"mask": _confident(seen_mask, TASKS["mask"]),
                                "gender": _confident(seen_gender, TASKS["gender"]),
                                "age": _confident(age, TASKS["age"], 0.8)})
    oof = table[["person_id", "stem", "image_path", "label"]].assign(fold=np.arange(len(table)) % 2)
    oof = pd.concat([oof, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    oof.to_csv(cv / OOF, index=False)
    return cv


@pytest.fixture
def cv(tmp_path):
    make_train(tmp_path / "data", people=PEOPLE)
    return _write_cv(tmp_path / "data", tmp_path / "cv")


def _review(cv_dir):
    return load_review(cv_dir, min_score=0.5)


# ---- suspects
def test_suspects_are_the_planted_errors_with_photos_from_the_data(cv, tmp_path):
    review = _review(cv)
    keys = {s.key: s for s in review.suspects}
    assert set(keys) == {f"{FLIPPED}/gender", f"{SWAPPED}/mask_swap"}
    gender = keys[f"{FLIPPED}/gender"]
    assert (gender.given, gender.predicted, gender.suggestion) == ("male", "female", "female")
    assert gender.score == pytest.approx(0.95, abs=1e-3) and "female" in gender.reason
    assert keys[f"{SWAPPED}/mask_swap"].suggestion == SWAP_VALUE
    person = review.people[SWAPPED]
    assert [p.stem for p in person.photos][-2:] == ["incorrect_mask", "normal"]
    assert all(p.path.is_file() and (tmp_path / "data") in p.path.parents for p in person.photos)
    assert person.photos[-1].mask_probs["incorrect"] == pytest.approx(0.95, abs=1e-3)  # the normal photo looks off
    assert (person.gender, person.age, person.years) == ("female", 45, None)
    assert person.given("mask_swap") == "incorrect/not_wear"


def test_an_age_regression_run_suggests_the_predicted_years_inside_the_predicted_group(cv):
    oof = pd.read_csv(cv / OOF, dtype={"person_id": str})
    young = oof["person_id"] == "000004"  # given 19 (young); the models see about 27, and say middle
    probs = oof[PROB_COLUMNS].to_numpy()
    joint = probs.reshape(len(oof), 3, 2, 3).sum(axis=3, keepdims=True) * np.array([0.05, 0.9, 0.05])
    probs[young.to_numpy()] = joint.reshape(len(oof), 18)[young.to_numpy()]
    oof[PROB_COLUMNS] = probs
    oof["age_mean"] = np.where(young, 27.4, 40.0)
    oof["age_sigma"] = 3.0
    oof.to_csv(cv / OOF, index=False)
    review = _review(cv)
    age = next(s for s in review.suspects if s.key == "000004/age")
    assert (age.given, age.predicted) == ("young", "middle")
    assert age.suggestion == "30"  # 27 years is young: the suggestion stays inside the group the models see
    assert "about 27 years" in age.reason
    assert review.people["000004"].years == pytest.approx(27.4)


def test_a_cv_from_another_machine_reviews_against_the_data_given(cv, tmp_path):
    moved = tmp_path / "moved"
    (tmp_path / "data").rename(moved)
    with pytest.raises(DataError, match="--data-root"):
        _review(cv)
    review = load_review(cv, data_root=moved, min_score=0.5)
    assert all(moved in p.path.parents for p in review.people[FLIPPED].photos)


def test_each_bad_input_gets_its_own_message(cv, tmp_path):
    with pytest.raises(RunError, match="no such CV folder"):
        _review(tmp_path / "nowhere")
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_CONFIG).write_text("{}\n")
    with pytest.raises(RunError, match="is a run folder, not a CV folder"):
        _review(run)
    (cv / OOF).rename(tmp_path / "oof.csv")
    with pytest.raises(RunError, match=r"no out-of-fold table .* maskstatus cv --resume"):
        _review(cv)
    other = pd.read_csv(tmp_path / "oof.csv", dtype=str)
    other["person_id"] = other["person_id"].str.replace("0000", "9999")
    other.to_csv(cv / OOF, index=False)
    with pytest.raises(DataError, match="from other data: 21 of its 28 photos"):
        _review(cv)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "is not JSON"),
        ('{"format": "something else", "cv": "x", "decisions": []}', "not a review's decisions.*format"),
        ('{"format": "maskstatus-review-decisions", "cv": "x", "decisions": [{"person_id": "000003", '
         '"task": "age", "action": "set", "value": "200", "rev": 1, "at": "t"}]}', "outside 1..120"),
        ('{"format": "maskstatus-review-decisions", "cv": "x", "decisions": [{"person_id": "000003", '
         '"task": "gender", "action": "maybe", "value": null, "rev": 1, "at": "t"}]}', "decisions.0.action"),
        ('{"format": "maskstatus-review-decisions", "cv": "x", "decisions": [{"person_id": "123456", '
         '"task": "gender", "action": "keep", "value": null, "rev": 1, "at": "t"}]}', "not in this CV"),
    ],
)
def test_a_decisions_file_edited_into_nonsense_is_refused_and_kept(cv, text, match):
    path = cv / REVIEW / REVIEW_DECISIONS
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(ReviewError, match=match) as err:
        open_review(cv)
    assert "move it away" in str(err.value)
    assert path.read_text() == text


# ---- the decision store
def test_two_tabs_keep_each_others_decisions_and_a_stale_write_is_refused(tmp_path):
    path = tmp_path / "review" / REVIEW_DECISIONS
    a, b = DecisionStore(path, tmp_path), DecisionStore(path, tmp_path)  # two servers, or two tabs' views
    a.put("p1", "gender", "accept", "female", 0)
    b.put("p2", "age", "set", "31", 0)  # b never read p1's decision: merge on write keeps it
    saved = DecisionStore(path, tmp_path).read()
    assert {k: (d.action, d.value, d.rev) for k, d in saved.items()} == {
        "p1/gender": ("accept", "female", 1), "p2/age": ("set", "31", 1)}
    with pytest.raises(StaleDecision, match="changed in another tab") as err:
        b.put("p1", "gender", "keep", None, 0)  # b decided p1 on the revision before a's
    assert err.value.current.action == "accept"
    assert DecisionStore(path, tmp_path).read()["p1/gender"].action == "accept"
    undone = a.put("p1", "gender", "pending", None, 1)
    assert undone.rev == 2
    with pytest.raises(StaleDecision):
        b.put("p1", "gender", "keep", None, 1)  # the undone revision 1 is not the current one
    assert not list(path.parent.glob(".*.tmp"))
    json.loads(path.read_text())


def test_concurrent_writes_of_many_items_lose_none(tmp_path):
    path = tmp_path / REVIEW_DECISIONS
    stores = [DecisionStore(path, tmp_path) for _ in range(4)]
    threads = [threading.Thread(target=lambda s=s, i=i: [s.put(f"p{i}-{k}", "gender", "keep", None, 0)
                                                          for k in range(10)]) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(DecisionStore(path, tmp_path).read()) == 40


def test_values_are_checked_as_a_relabel_file_checks_them(tmp_path):
    store = DecisionStore(tmp_path / REVIEW_DECISIONS, tmp_path, {"p1"})
    with pytest.raises(ValueError, match="not a whole number"):
        store.put("p1", "age", "set", "forty", 0)
    with pytest.raises(ValueError, match="takes no value"):
        store.put("p1", "gender", "keep", "male", 0)
    with pytest.raises(ValueError, match="not in this review"):
        store.put("p9", "gender", "keep", None, 0)
    assert store.read() == {}


# ---- export
def test_export_writes_changed_labels_only_and_the_file_trains_the_table(cv, tmp_path):
    review = _review(cv)
    store = DecisionStore(tmp_path / REVIEW_DECISIONS, cv, set(review.people))
    store.put(FLIPPED, "gender", "accept", "female", 0)
    store.put(SWAPPED, "mask_swap", "accept", SWAP_VALUE, 0)
    store.put("000004", "age", "set", "23", 0)
    store.put("001498-1", "age", "set", "25", 0)  # the given age: no row
    store.put("001498-1", "gender", "keep", None, 0)
    store.put("000001", "gender", "skip", None, 0)
    out = export_relabel(review, store.read(), tmp_path / "relabel.csv")
    rows = read_relabel(out.path)
    assert sorted(zip(rows["id"], rows["field"], rows["value"], strict=True)) == [
        ("000001", "mask_swap", SWAP_VALUE), ("000003", "gender", "female"), ("000004", "age", "23")]
    assert (out.rows, out.new, out.kept_from) == (3, 3, None)
    fixed = train_table(tmp_path / "data" / "train", relabel=out.path, check_images=False)
    fixed = fixed.set_index(["person_id", "stem"])
    assert fixed.loc[(FLIPPED, "mask1"), "gender"] == 1 and fixed.loc[("000004", "mask1"), "age"] == 23
    assert fixed.loc[(SWAPPED, "normal"), "mask"] == 1


def test_export_carries_the_cvs_own_relabel_rows_and_a_second_swap_swaps_back(tmp_path):
    make_train(tmp_path / "data", people=PEOPLE)
    old = tmp_path / "old.csv"
    old.write_text(f"id,field,value\n000004,age,40\n{SWAPPED},mask_swap,{SWAP_VALUE}\n")
    cv = _write_cv(tmp_path / "data", tmp_path / "cv", relabel=old)
    review = _review(cv)
    assert review.relabel == old and review.people["000004"].age == 40
    store = DecisionStore(tmp_path / REVIEW_DECISIONS, cv, set(review.people))
    store.put(SWAPPED, "mask_swap", "accept", SWAP_VALUE, 0)
    store.put(FLIPPED, "gender", "accept", "female", 0)
    out = export_relabel(review, store.read(), tmp_path / "relabel.csv")
    rows = read_relabel(out.path)
    assert sorted(zip(rows["id"], rows["field"], rows["value"], strict=True)) == [
        ("000003", "gender", "female"), ("000004", "age", "40")]
    assert out.kept_from == old and out.path.read_text().startswith("# written by maskstatus review")


# ---- the API
@pytest.fixture
def client(cv):
    app, _, _ = open_review(cv, min_score=0.5)
    with TestClient(app) as c:
        yield c


def test_api_saves_decisions_refuses_stale_and_bad_ones_and_exports(client, cv):
    state = client.get("/api/review").json()
    assert {s["key"] for s in state["suspects"]} == {f"{SWAPPED}/mask_swap", f"{FLIPPED}/gender"}
    assert state["decisions"] == {} and {k["key"] for k in state["keys"]} >= {"a", "k", "v", "s", "u", "j", "h"}
    r = client.put(f"/api/decisions/gender/{FLIPPED}", json={"action": "accept", "base_rev": 0})
    assert r.status_code == 200 and r.json()["decision"]["value"] == "female"
    r = client.put(f"/api/decisions/gender/{FLIPPED}", json={"action": "keep", "base_rev": 0})
    assert r.status_code == 409 and r.json()["current"]["action"] == "accept" and "another tab" in r.json()["detail"]
    r = client.put(f"/api/decisions/age/{FLIPPED}", json={"action": "set", "value": "1000", "base_rev": 0})
    assert r.status_code == 422 and "outside" in r.json()["detail"]
    r = client.put(f"/api/decisions/age/{FLIPPED}", json={"action": "accept", "base_rev": 0})
    assert r.status_code == 422 and "no suggestion" in r.json()["detail"]
    assert client.get("/api/review").json()["decisions"][f"{FLIPPED}/gender"]["rev"] == 1
    r = client.post("/api/export")
    body = r.json()
    assert r.status_code == 200 and body["rows"] == 1
    assert body["command"] == f"maskstatus cv --config {cv / CV_CONFIG} data.relabel={cv / REVIEW / 'relabel.csv'}"


def test_api_answers_a_file_broken_while_it_runs_with_its_message(tmp_path):
    make_train(tmp_path / "data", people=PEOPLE)
    old = tmp_path / "old.csv"
    old.write_text("id,field,value\n000004,age,40\n")
    cv = _write_cv(tmp_path / "data", tmp_path / "cv", relabel=old)
    app, _, out = open_review(cv, min_score=0.5)
    with TestClient(app) as client:
        old.unlink()
        r = client.post("/api/export")
        assert r.status_code == 422
        assert "relabel file not found" in r.json()["detail"]
        (out / REVIEW_DECISIONS).parent.mkdir(exist_ok=True)
        (out / REVIEW_DECISIONS).write_text("[]")
        r = client.put(f"/api/decisions/gender/{FLIPPED}", json={"action": "keep", "base_rev": 0})
        assert r.status_code == 422
        assert "not a review's decisions" in r.json()["detail"]


def test_photos_are_served_by_person_and_place_only(client, cv):
    state = client.get("/api/review").json()
    url = state["people"][FLIPPED]["photos"][0]["url"]
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/") and len(r.content) > 50
    for bad in (f"/api/people/{FLIPPED}/photos/7", f"/api/people/{FLIPPED}/photos/-1",
                "/api/people/..%2F..%2Fcv_config.yaml/photos/0", "/api/people/999999/photos/0",
                f"/api/people/{FLIPPED}/photos/..%2F..%2Foof.csv"):
        assert client.get(bad).status_code in (404, 422), bad


def test_cli_names_the_bad_folder_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / RUN_CONFIG).write_text("{}\n")
    assert main(["review", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "not a CV folder" in err and len(err.splitlines()) == 1


# ---- the page in chromium, on a tiny CV trained on demo data with planted gender flips
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def planted_cv(tmp_path_factory, tiny_overrides):
    """A 2-fold CV (1 batch an epoch) on demo data whose train.csv has three genders flipped: (cv_dir, overrides)."""
    from maskstatus.data.synthetic import make_demo_data
    from maskstatus.train.cv import run_cv

    tmp = tmp_path_factory.mktemp("review_cv")
    demo = make_demo_data(tmp / "data", people=12, eval_people=6, seed=7)
    csv = demo.root / "train" / "train.csv"
    table = pd.read_csv(csv, dtype=str)
    flip = table.index[:3]
    table.loc[flip, "gender"] = table.loc[flip, "gender"].map({"male": "female", "female": "male"})
    table.to_csv(csv, index=False)
    overrides = [f"data.root={demo.root}", f"output_dir={tmp / 'runs'}", f"cache.dir={tmp / 'cache'}",
                 *tiny_overrides, "split.folds=2", "train.epochs=1", "train.limit_train_batches=1"]
    return run_cv(load_config(None, [*overrides, "name=planted"])).cv_dir, overrides


@pytest.fixture
def chromium():
    import shutil

    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium on PATH: the page test needs the system chromium (apt-get install chromium)")
    return path


def test_review_by_keyboard_in_chromium_resumes_after_reload_and_the_export_trains(chromium, planted_cv):
    from playwright import sync_api

    from maskstatus.data.tables import load_train_table
    from maskstatus.serve.app import running_server
    from maskstatus.train.trainer import train

    cv_dir, overrides = planted_cv
    app, review, out = open_review(cv_dir, min_score=0.3)
    assert {s.task for s in review.suspects} >= {"gender", "age"}
    with running_server(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-state=ready]")
            assert "accept the suggestion" in page.inner_text("#keys")
            stale = browser.new_page()  # a second tab, opened before any decision
            stale.goto(url + "/")
            stale.wait_for_selector("body[data-state=ready]")

            def current():
                return page.get_attribute("body", "data-current")

            def saved(n):
                page.wait_for_selector(f"body[data-saved='{n}']")

            page.keyboard.press("t")  # task filter: all -> gender
            gender_key = current()
            assert gender_key.endswith("/gender")
            page.keyboard.press("a")  # accept the other gender
            saved(1)
            page.keyboard.press("t")  # gender -> age
            age_key = current()
            given_age = review.people[age_key.split("/")[0]].age
            years = "33" if given_age != 33 else "34"
            page.keyboard.press("v")
            page.wait_for_selector("#value-box.open")
            page.keyboard.type(years)
            page.keyboard.press("Enter")
            saved(2)
            kept_key = current()
            assert kept_key != age_key and kept_key.endswith("/age")
            page.keyboard.press("k")
            saved(3)
            skipped_key = current()
            page.keyboard.press("s")
            saved(4)
            page.keyboard.press("u")  # undo the skip: that suspect is open again
            saved(5)
            assert current() == skipped_key

            stale.select_option("#task-filter", "gender")
            assert stale.get_attribute("body", "data-current") == gender_key  # still open in its view
            stale.keyboard.press("k")
            stale.wait_for_selector("#message.show")
            assert "changed in another tab" in stale.inner_text("#message")
            assert "accepted" in stale.inner_text("#suspect")  # it shows the other tab's decision now

            page.reload()
            page.wait_for_selector("body[data-state=ready]")
            assert page.get_attribute("body", "data-done") == "3"
            assert current() not in (gender_key, age_key, kept_key)
            page.select_option("#task-filter", "age")
            page.wait_for_function(f"document.body.dataset.current !== {json.dumps(gender_key)}")
            assert page.get_attribute("body", "data-done") == "2"  # the age decisions, in the age filter
            assert current() == skipped_key  # resumes at the first open suspect

            page.keyboard.press("e")
            page.wait_for_selector("body[data-exported]")
            assert "maskstatus cv --config" in page.inner_text("#message")
            assert not errors, errors
        finally:
            browser.close()

    decisions = json.loads((out / REVIEW_DECISIONS).read_text())["decisions"]
    assert {(d["person_id"] + "/" + d["task"], d["action"]) for d in decisions if d["action"] != "pending"} == {
        (gender_key, "accept"), (age_key, "set"), (kept_key, "keep")}
    relabel = out / "relabel.csv"
    rows = read_relabel(relabel)
    gender_pid, age_pid = gender_key.split("/")[0], age_key.split("/")[0]
    given_gender = review.people[gender_pid].gender
    assert sorted(zip(rows["id"], rows["field"], rows["value"], strict=True)) == sorted(
        [(gender_pid, "gender", {"male": "female", "female": "male"}[given_gender]), (age_pid, "age", years)])

    cfg = load_config(None, [*overrides, f"data.relabel={relabel}", "name=fixed"])
    fixed = load_train_table(cfg, check_images=False).groupby("person_id").first()
    assert fixed.loc[age_pid, "age"] == int(years)
    assert fixed.loc[gender_pid, "gender"] == {"male": 1, "female": 0}[given_gender]
    result = train(cfg)
    assert RunDir(result.run_dir).best.is_file()


def test_screenshot_script_saves_the_page(chromium, planted_cv, tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "docs" / "screenshots"))
    import review as screenshot

    out = tmp_path / "review.png"
    assert screenshot.main([str(planted_cv[0]), "--out", str(out), "--width", "900", "--height", "700"]) == 0
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (900, 700)
