import numpy as np
import pytest
import torch

from maskstatus import labels as L


def test_formula_matches_spec_examples():
    # class = mask*6 + gender*3 + age (competition.md)
    assert L.encode(0, 0, 0) == 0
    assert L.encode(0, 1, 2) == 5
    assert L.encode(1, 0, 0) == 6
    assert L.encode(2, 1, 2) == 17
    assert L.NUM_CLASSES == 18


def test_encode_decode_round_trip_all_classes():
    cls = np.arange(L.NUM_CLASSES)
    m, g, a = L.decode(cls)
    assert np.array_equal(L.encode(m, g, a), cls)
    for c in range(L.NUM_CLASSES):
        assert L.encode(*L.decode(c)) == c


def test_out_of_range_codes_rejected():
    with pytest.raises(ValueError, match="mask"):
        L.encode(3, 0, 0)
    with pytest.raises(ValueError, match="class code"):
        L.decode(18)


def test_age_groups_default_and_custom_thresholds():
    ages = np.array([0, 29, 30, 59, 60, 90])
    assert L.age_group(ages).tolist() == [0, 0, 1, 1, 2, 2]
    t = L.AgeThresholds(young_below=30, old_from=58)
    assert L.age_group(ages, t).tolist() == [0, 0, 1, 2, 2, 2]
    assert L.age_group(58, t) == 2 and L.age_group(58) == 1
    with pytest.raises(ValueError):
        L.AgeThresholds(60, 30)


def test_stems_mask_codes():
    assert [L.STEM_TO_MASK[s] for s in L.IMAGE_STEMS] == [0, 0, 0, 0, 0, 1, 2]


def test_combine_and_split_probs_are_inverse_for_independent_tasks():
    rng = np.random.default_rng(0)
    tasks = {t: rng.dirichlet(np.ones(k), size=4) for t, k in L.TASKS.items()}
    joint = L.combine_task_probs(tasks)
    assert joint.shape == (4, 18)
    np.testing.assert_allclose(joint.sum(1), 1.0, rtol=1e-6)
    back = L.split_class_probs(joint)
    for t in L.TASKS:
        np.testing.assert_allclose(back[t], tasks[t], rtol=1e-6)
    # a one-hot per task lands on the class of the formula
    onehot = {t: np.eye(k)[[i]] for (t, k), i in zip(L.TASKS.items(), (2, 1, 0))}
    assert L.combine_task_probs(onehot).argmax() == L.encode(2, 1, 0)
    # torch tensors work too
    tj = L.combine_task_probs({t: torch.tensor(v) for t, v in tasks.items()})
    np.testing.assert_allclose(tj.numpy(), joint, rtol=1e-6)
    np.testing.assert_allclose(L.split_class_probs(tj)["age"].numpy(), tasks["age"], rtol=1e-6)


def test_class_names_follow_formula():
    names = L.class_names()
    assert len(names) == 18 and names[L.encode(1, 1, 2)] == "incorrect/female/>=60"
