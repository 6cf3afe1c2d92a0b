import numpy as np
import pytest
from sklearn.metrics import f1_score

from maskstatus.labels import NUM_CLASSES, TASKS, class_names, combine_task_probs, encode
from maskstatus.scoring.metrics import compute_metrics, confusion, plot_confusion, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _onehot(classes, num_classes=NUM_CLASSES) -> np.ndarray:
    return np.eye(num_classes)[np.asarray(classes)]


def test_perfect_predictions():
    labels = np.arange(NUM_CLASSES).repeat(2)
    metrics = compute_metrics(_onehot(labels), labels)
    expected_keys = {"f1", "acc"} | {f"{t}_{m}" for t in TASKS for m in ("f1", "acc")}
    assert set(metrics) == expected_keys
    for key, value in metrics.items():
        assert value == pytest.approx(1.0), key
        assert isinstance(value, float)


def test_macro_f1_hand_computed():
    # Classes 0 and 1 only; all 18 classes count, the 16 absent ones as 0.
    labels = np.array([0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 1])
    # class 0: tp=2 fp=0 fn=1 -> F1 = 4/5; class 1: tp=2 fp=1 fn=0 -> F1 = 4/5.
    hand = (0.8 + 0.8) / NUM_CLASSES
    sk = f1_score(labels, pred, labels=list(range(NUM_CLASSES)), average="macro", zero_division=0)
    metrics = compute_metrics(_onehot(pred) * 0.9 + 0.1 / NUM_CLASSES, labels)
    assert metrics["f1"] == pytest.approx(hand) == pytest.approx(sk)
    assert metrics["acc"] == pytest.approx(4 / 5)


def test_per_task_from_marginals():
    # Person 0: wear/male/young; person 1: not_wear/female/old; person 2: incorrect/female/middle.
    m, g, a = np.array([0, 2, 1]), np.array([0, 1, 1]), np.array([0, 2, 1])
    labels = encode(m, g, a)
    # Predict mask and gender right for all; age wrong for person 2 (says old).
    pm = np.eye(3)[m]
    pg = np.eye(2)[g]
    pa = np.eye(3)[[0, 2, 2]]
    probs = combine_task_probs({"mask": pm, "gender": pg, "age": pa})
    metrics = compute_metrics(probs, labels)
    assert metrics["mask_f1"] == pytest.approx(1.0) and metrics["mask_acc"] == pytest.approx(1.0)
    assert metrics["gender_f1"] == pytest.approx(1.0) and metrics["gender_acc"] == pytest.approx(1.0)
    assert metrics["age_acc"] == pytest.approx(2 / 3)
    # age: young F1 1, middle F1 0 (missed), old tp=1 fp=1 -> 2/3.
    assert metrics["age_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert metrics["acc"] == pytest.approx(2 / 3)


def test_task_prediction_uses_marginals_not_class_argmax():
    # The 18-way argmax is class 0 (wear/male/young) but the mask marginal favours not_wear.
    probs = np.zeros((1, NUM_CLASSES))
    probs[0, encode(0, 0, 0)] = 0.4
    probs[0, encode(2, 0, 0)] = 0.3
    probs[0, encode(2, 1, 0)] = 0.3
    metrics = compute_metrics(probs, np.array([encode(2, 0, 0)]))
    assert metrics["acc"] == 0.0
    assert metrics["mask_acc"] == 1.0


def test_missing_classes_do_not_crash():
    labels = np.array([3, 3, 7])
    probs = _onehot([3, 5, 7])
    metrics = compute_metrics(probs, labels)
    assert 0.0 < metrics["f1"] < 1.0
    assert all(np.isfinite(v) for v in metrics.values())
    cm = confusion(probs, labels)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES)
    assert cm[3, 3] == 1 and cm[3, 5] == 1 and cm[7, 7] == 1 and cm.sum() == 3


def test_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        compute_metrics(np.zeros((2, NUM_CLASSES)), np.array([0]))


def test_plot_confusion_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_CLASSES, 100)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), 100)
    out = plot_confusion(confusion(probs, labels), tmp_path / "sub" / "cm.png", class_names())
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plot_confusion(np.zeros((3, 3)), tmp_path / "bad.png", class_names())


def test_plot_curves_writes_png(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,train_loss,val_loss,val_f1,lr\n"
        "0,1.2,1.1,0.30,0.001\n"
        "1,0.9,0.95,0.45,0.001\n"
        "2,0.7,0.9,0.52,0.0005\n"
    )
    out = plot_curves(csv, tmp_path / "curves.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_curves_rows_split_by_stage(tmp_path):
    # Train and val logged on separate rows of the same epoch.
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,train_loss,val_loss,val_f1\n0,1.0,,\n0,,0.9,0.4\n1,0.8,,\n1,,0.85,0.5\n")
    assert plot_curves(csv, tmp_path / "c.png").stat().st_size > 0
