"""Person-bootstrap intervals: people are resampled (not images), definitions match compute_metrics."""

import time

import numpy as np
import pytest

from maskstatus.scoring.bootstrap import METRICS, model_bootstrap, person_bootstrap, person_weights
from maskstatus.labels import NUM_CLASSES, encode
from maskstatus.scoring.metrics import compute_metrics, model_metrics


def _onehot(classes) -> np.ndarray:
    return np.eye(NUM_CLASSES)[np.asarray(classes)]


def _realistic(people=300, seed=0):
    """People with 7 photos sharing gender and age; predictions right for most, per person wrong for some."""
    rng = np.random.default_rng(seed)
    gender, age = rng.integers(0, 2, people), rng.choice(3, people, p=[0.5, 0.43, 0.07])
    mask = np.tile([0, 0, 0, 0, 0, 1, 2], people)
    labels = encode(mask, np.repeat(gender, 7), np.repeat(age, 7))
    person = np.repeat([f"{i:06d}" for i in range(people)], 7)
    # A person's age is misjudged on all their photos at once: errors are correlated within a person.
    wrong_age = np.repeat(rng.random(people) < 0.3, 7)
    pred = np.where(wrong_age, labels - labels % 3 + (labels % 3 + 1) % 3, labels)
    probs = 0.6 * _onehot(pred) + 0.4 * rng.dirichlet(np.ones(NUM_CLASSES), len(labels))
    return probs, labels, person


def test_point_estimates_equal_compute_metrics_with_absent_classes():
    probs, labels, person = _realistic()
    labels = np.where(labels == 17, 16, labels)  # a class absent from the data still counts, as F1 0
    out = person_bootstrap(probs, labels, person, n_boot=50)
    expected = compute_metrics(probs, labels)
    assert set(out.point) == set(expected) == set(METRICS)
    for key in expected:
        assert out.point[key] == pytest.approx(expected[key], abs=1e-12), key


def test_perfect_predictions_give_one_one():
    # Every person has a photo of every class, so no replicate misses a class (which would score it 0).
    labels = np.tile(np.arange(NUM_CLASSES), 20)
    out = person_bootstrap(_onehot(labels), labels, np.arange(len(labels)) // NUM_CLASSES, n_boot=200)
    for key in METRICS:
        assert out.point[key] == 1.0 and out.ci[key] == (1.0, 1.0), key


def test_hand_computed_two_people():
    # Person A: 3 photos of class 0 predicted right; person B: 1 photo of class 1 predicted as 0.
    labels = np.array([0, 0, 0, 1])
    pred = np.array([0, 0, 0, 0])
    out = person_bootstrap(_onehot(pred), labels, ["A", "A", "A", "B"], n_boot=4000, seed=1)
    # Replicates draw two people: AA (1/4) -> class 0 perfect; BB (1/4) -> nothing right;
    # AB (1/2) -> class 0: 2*3 / (3 + 4) = 6/7. Absent classes count 0, so divide by 18.
    aa, ab, bb = 1 / NUM_CLASSES, (6 / 7) / NUM_CLASSES, 0.0
    values = out.replicates["f1"]
    assert np.all(np.isclose(values[:, None], [aa, ab, bb]).any(axis=1))  # only whole people are drawn
    shares = [np.isclose(values, v).mean() for v in (aa, ab, bb)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert out.ci["f1"] == pytest.approx((0.0, aa))
    assert out.point["f1"] == pytest.approx(ab)
    # Accuracy of AB is 3/4: an image bootstrap would also give 1/4, 2/4 ... with 4 draws of images.
    assert set(np.round(out.replicates["acc"], 9)) == {0.0, 0.75, 1.0}


def test_people_are_resampled_not_images():
    probs, labels, person = _realistic(people=200)
    base = person_bootstrap(probs, labels, person, n_boot=300, seed=5)
    # Every photo twice under the same person: the same people, the same draws, the same interval.
    doubled = person_bootstrap(np.vstack([probs, probs]), np.concatenate([labels, labels]),
                               np.concatenate([person, person]), n_boot=300, seed=5)
    for key in METRICS:
        assert doubled.ci[key] == pytest.approx(base.ci[key], abs=1e-12), key
    # The copies as people of their own: twice the people, a narrower interval.
    twins = person_bootstrap(np.vstack([probs, probs]), np.concatenate([labels, labels]),
                             np.concatenate([person, np.char.add(person, "-copy")]), n_boot=300, seed=5)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(twins.ci["f1"]) < 0.85 * width(base.ci["f1"])
    # An image bootstrap would treat the 7 photos as independent and be narrower still on
    # per-person errors: the person interval must be the wider one.
    images = person_bootstrap(probs, labels, np.arange(len(labels)), n_boot=300, seed=5)
    assert width(images.ci["age_f1"]) < width(base.ci["age_f1"])


def test_seeded_and_deterministic():
    probs, labels, person = _realistic()
    a = person_bootstrap(probs, labels, person, n_boot=200, seed=7)
    b = person_bootstrap(probs, labels, person, n_boot=200, seed=7)
    c = person_bootstrap(probs, labels, person, n_boot=200, seed=8)
    assert a.ci == b.ci and np.array_equal(a.replicates["f1"], b.replicates["f1"])
    assert a.ci["f1"] != c.ci["f1"]
    # Row order does not matter: the person weights follow the sorted ids, not the rows.
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = person_bootstrap(probs[order], labels[order], person[order], n_boot=200, seed=7)
    for key in METRICS:
        assert shuffled.ci[key] == pytest.approx(a.ci[key], abs=1e-12), key


def test_interval_contains_point_and_narrows_with_level():
    probs, labels, person = _realistic(people=540)
    wide = person_bootstrap(probs, labels, person, level=0.9)
    narrow = person_bootstrap(probs, labels, person, level=0.5)
    for key in METRICS:
        lo, hi = wide.ci[key]
        assert lo <= wide.point[key] <= hi, key
        assert wide.ci[key][0] <= narrow.ci[key][0] <= narrow.ci[key][1] <= wide.ci[key][1], key
    assert wide.ci["f1"][1] - wide.ci["f1"][0] > 0.01
    d = wide.to_dict()
    assert d["people"] == 540 and d["images"] == 540 * 7 and d["ci"]["f1"] == list(wide.ci["f1"])


def test_fast_enough_for_a_full_training_set():
    probs, labels, person = _realistic(people=2700)
    t0 = time.perf_counter()
    person_bootstrap(probs, labels, person, n_boot=1000)
    assert time.perf_counter() - t0 < 10.0  # about 0.2 s alone; generous for a shared CPU


def test_person_weights_draw_people_count_times():
    w = person_weights(50, 100, np.random.default_rng(0))
    assert w.shape == (100, 50) and np.all(w.sum(axis=1) == 50) and np.all(w >= 0)


def test_model_bootstrap_follows_model_metrics():
    probs, labels, person = _realistic()
    out = model_bootstrap(probs, labels, person, tasks=["gender", "age"], mask_states=[2], n_boot=100)
    expected = model_metrics(probs, labels, ["gender", "age"], [2])
    assert out.images == int((labels >= 12).sum())
    for key in METRICS:
        if np.isnan(expected[key]):
            assert np.isnan(out.point[key]) and np.isnan(out.ci[key][0]), key
        else:
            assert out.point[key] == pytest.approx(expected[key]), key
    d = out.to_dict()
    assert d["ci"]["f1"] is None and d["point"]["mask_f1"] is None and d["ci"]["age_f1"] is not None


def test_bad_input_is_refused():
    probs, labels, person = _realistic(people=10)
    with pytest.raises(ValueError, match="person ids"):
        person_bootstrap(probs, labels, person[:-1])
    with pytest.raises(ValueError, match="level"):
        person_bootstrap(probs, labels, person, level=90)
    with pytest.raises(ValueError, match="n_boot"):
        person_bootstrap(probs, labels, person, n_boot=0)


def test_class_count_replicates_sum_the_drawn_people():
    from maskstatus.scoring.bootstrap import class_count_replicates

    # Two people: one always right about class 0, one always wrong (true 1, predicted 2).
    true = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 2, 2])
    tp, n_true, n_pred = class_count_replicates(true, pred, ["a", "a", "b", "b"], k=3, n_boot=50, seed=1)
    drawn_a = tp[:, 0] / 2  # how often person a was drawn in each replicate
    assert set(np.unique(drawn_a)) <= {0, 1, 2}
    assert np.array_equal(n_true[:, 0], tp[:, 0]) and np.array_equal(n_true[:, 1], 2 * (2 - drawn_a))
    assert np.array_equal(n_pred[:, 2], n_true[:, 1]) and not tp[:, 1:].any()
