"""Knowledge distillation: the loss against known values, teacher rows matched by person and photo, training."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from maskstatus.age import AGE_MEAN, AGE_SIGMA, AGE_YEARS
from maskstatus.config import ConfigError, LossConfig, load_config
from maskstatus.data.folds import split_rows
from maskstatus.train.teacher import teacher_targets
from maskstatus.data.tables import load_train_table
from maskstatus.train.trainer import train
from maskstatus.errors import DataError
from maskstatus.labels import NUM_CLASSES, PROB_COLUMNS, split_class_probs
from maskstatus.losses import TEACHER_PROBS, TEACHER_YEARS, DistillLoss, TaskLoss, build_loss


def _config(weight=0.5, **loss):
    return LossConfig.model_validate({"distill": {"teacher": "t.csv", "weight": weight}, **loss})


def test_distill_loss_mixes_the_label_loss_and_cross_entropy_to_the_teacher():
    torch.manual_seed(0)
    logits = {"class": torch.randn(4, NUM_CLASSES)}
    labels = torch.tensor([0, 5, 17, 3])
    teacher = torch.softmax(torch.randn(4, NUM_CLASSES), dim=1)
    loss = build_loss(_config(0.25), ["class"])
    assert isinstance(loss, DistillLoss)
    got, parts = loss(logits, {"class": labels, TEACHER_PROBS: teacher, TEACHER_YEARS: torch.full((4,), math.nan)})
    hard = F.cross_entropy(logits["class"], labels)
    soft = -(teacher * F.log_softmax(logits["class"], dim=1)).sum(1).mean()
    torch.testing.assert_close(got, 0.75 * hard + 0.25 * soft)
    torch.testing.assert_close(parts["class"], hard)  # logged parts stay the label loss
    # A teacher that is the labels themselves gives the label loss at any weight.
    one_hot = F.one_hot(labels, NUM_CLASSES).float()
    same, _ = loss(logits, {"class": labels, TEACHER_PROBS: one_hot, TEACHER_YEARS: torch.zeros(4)})
    torch.testing.assert_close(same, hard)
    # Without teacher targets (validation batches): the plain label loss.
    plain, _ = loss(logits, {"class": labels})
    torch.testing.assert_close(plain, hard)


def test_task_heads_learn_the_teachers_marginals_and_years_and_skip_uncovered_rows():
    torch.manual_seed(1)
    out = {"mask": torch.randn(3, 3), "gender": torch.randn(3, 2), AGE_YEARS: torch.tensor([[30.0, 4.0]] * 3)}
    targets = {"mask": torch.tensor([0, 1, 2]), "gender": torch.tensor([1, 0, 1]), AGE_YEARS: torch.tensor([20.0] * 3)}
    teacher = torch.softmax(torch.randn(3, NUM_CLASSES), dim=1)
    teacher[2] = math.nan  # a row the teacher does not cover
    years = torch.tensor([40.0, 50.0, math.nan])
    weights = {"mask": 1.0, "gender": 2.0, "age": 0.5}
    loss = build_loss(_config(1.0, task_weights=weights), list(out))
    got, _ = loss(out, {**targets, TEACHER_PROBS: teacher, TEACHER_YEARS: years})
    m = split_class_probs(teacher[:2])
    expected = (
        1.0 * -(m["mask"] * F.log_softmax(out["mask"][:2], 1)).sum(1).mean()
        + 2.0 * -(m["gender"] * F.log_softmax(out["gender"][:2], 1)).sum(1).mean()
        + 0.5 * F.gaussian_nll_loss(torch.tensor([30.0, 30.0]), years[:2], torch.tensor([16.0, 16.0]))
    )
    torch.testing.assert_close(got, expected)


def test_distill_weight_must_be_a_share():
    with pytest.raises(ConfigError, match="loss.distill.weight"):
        load_config(None, ["loss.distill.teacher=x.csv", "loss.distill.weight=1.5"])
    with pytest.raises(ConfigError, match="loss.distill"):
        load_config(None, ["loss.distill.weight=0.5"])  # no teacher
    assert isinstance(build_loss(LossConfig(), ["class"]), TaskLoss)


def _teacher_frame(table: pd.DataFrame, rows: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """OOF-shaped predictions of ``rows``, shuffled, with paths from another copy of the data."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), size=len(rows))
    df = table.iloc[rows][["person_id", "stem", "label", "fold"]].reset_index(drop=True)
    df.insert(2, "image_path", "/elsewhere/" + df["person_id"] + "/" + df["stem"] + ".jpg")
    df = pd.concat([df, pd.DataFrame(probs, columns=PROB_COLUMNS)], axis=1)
    df[AGE_MEAN] = rng.uniform(15, 80, len(df))
    df[AGE_SIGMA] = 3.0
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture
def fold0(tiny_config):
    cfg = tiny_config()
    from maskstatus.data.folds import attach_folds, make_folds

    table = load_train_table(cfg)
    table = attach_folds(table, make_folds(table, cfg.split.folds, cfg.split.seed), cfg.split.folds)
    train_rows, val_rows = split_rows(table, 0)
    return table, train_rows, val_rows


def test_teacher_rows_are_matched_on_person_and_photo_not_on_paths_or_order(fold0, tmp_path, caplog):
    table, train_rows, val_rows = fold0
    frame = _teacher_frame(table, train_rows)
    frame.to_csv(tmp_path / "oof.csv", index=False)
    got = teacher_targets(tmp_path / "oof.csv", table, train_rows, val_rows)
    by_key = frame.set_index(["person_id", "stem"])
    for row in train_rows[:: max(1, len(train_rows) // 25)]:
        expected = by_key.loc[(table.person_id.iloc[row], table.stem.iloc[row])]
        np.testing.assert_allclose(got[TEACHER_PROBS][row], expected[PROB_COLUMNS].to_numpy(float), rtol=1e-5)
        assert got[TEACHER_YEARS][row] == pytest.approx(expected[AGE_MEAN], rel=1e-6)
    assert np.isnan(got[TEACHER_PROBS][val_rows]).all() and np.isnan(got[TEACHER_YEARS][val_rows]).all()
    assert "optimistic" not in caplog.text

    # A teacher that also predicts the validation people is allowed, with a warning.
    _teacher_frame(table, np.arange(len(table))).to_csv(tmp_path / "all.csv", index=False)
    with caplog.at_level(logging.WARNING, logger="maskstatus.train.teacher"):
        teacher_targets(tmp_path / "all.csv", table, train_rows, val_rows)
    assert f"predicts {len(val_rows)} validation images" in caplog.text


def test_a_teacher_missing_training_people_or_columns_is_an_error_naming_the_file(fold0, tmp_path):
    table, train_rows, val_rows = fold0
    frame = _teacher_frame(table, train_rows)
    dropped = frame.person_id.iloc[0]
    frame[frame.person_id != dropped].to_csv(tmp_path / "part.csv", index=False)
    with pytest.raises(DataError, match=r"part\.csv.*no prediction for 7 of the .*person " + dropped):
        teacher_targets(tmp_path / "part.csv", table, train_rows, val_rows)
    # Pseudo-labelled rows (fold -1) are not the teacher's to cover: they learn from their labels only.
    as_pseudo = table.assign(fold=np.where(table.person_id == dropped, -1, table.fold))
    got = teacher_targets(tmp_path / "part.csv", as_pseudo, train_rows, val_rows)
    assert np.isnan(got[TEACHER_PROBS][(table.person_id == dropped).to_numpy()]).all()
    frame.drop(columns="p3").to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(DataError, match=r"cols\.csv.*p3"):
        teacher_targets(tmp_path / "cols.csv", table, train_rows, val_rows)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        teacher_targets(tmp_path / "nowhere", table, train_rows, val_rows)


def test_training_with_a_teacher_learns_from_it(fold0, tiny_config, tmp_path):
    table, train_rows, _ = fold0
    frame = _teacher_frame(table, train_rows)
    # A confident teacher that disagrees with the labels: the distilled run must move towards it.
    frame[PROB_COLUMNS] = np.eye(NUM_CLASSES)[(frame["label"].to_numpy() + 6) % NUM_CLASSES] * 0.98 + 0.02 / NUM_CLASSES
    frame.to_csv(tmp_path / "teacher.csv", index=False)
    common = ["train.epochs=1", "train.limit_train_batches=3", "model.head=single"]
    plain = train(tiny_config(*common))
    taught = train(tiny_config(*common, f"loss.distill.teacher={tmp_path / 'teacher.csv'}", "loss.distill.weight=1.0"))
    saved = load_config(taught.run_dir / "config.yaml")
    assert saved.loss.distill is not None and saved.loss.distill.weight == 1.0
    loss_plain = pd.read_csv(plain.run_dir / "metrics.csv")["train_loss"].iloc[0]
    loss_taught = pd.read_csv(taught.run_dir / "metrics.csv")["train_loss"].iloc[0]
    assert loss_taught != pytest.approx(loss_plain, rel=1e-3)
    # The validation loss is the label loss in both runs (no teacher on validation rows), so it is comparable.
    assert np.isfinite(pd.read_csv(taught.run_dir / "metrics.csv")["val_loss"]).all()
