"""Age regression: years -> group probabilities, the regression head and loss, cut points tuned out of fold."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.age import (
    AGE_MEAN,
    AGE_SIGMA,
    AGE_YEARS,
    group_probs,
    group_probs_np,
    oof_with_cuts,
    read_cuts,
    thresholds_cuts,
    tune_cuts,
    write_cuts,
)
from maskstatus.cli import main as cli_main
from maskstatus.runs import AGE_CUTS
from maskstatus.config import ConfigError, load_config
from maskstatus.scoring.age_cuts import cross_fitted_metrics, tune_age_cuts
from maskstatus.infer.ensemble import ensemble_oof
from maskstatus.scoring.oof import read_oof
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.infer.tta import average_view_probs
from maskstatus.labels import DEFAULT_AGE_THRESHOLDS, PROB_COLUMNS, age_group, encode, split_class_probs
from maskstatus.losses import AgeNLL, build_loss, class_weights
from maskstatus.models.heads import MultiTaskHead, outputs_to_probs, outputs_to_task_probs
from maskstatus.runs import RunDir


def test_group_probs_are_the_normal_mass_between_the_cuts():
    mean = torch.tensor([10.0, 29.5, 45.0, 59.5, 90.0])
    sigma = torch.tensor([2.0, 3.0, 3.0, 3.0, 2.0])
    p = group_probs(mean, sigma, (29.5, 59.5)).numpy()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert p[0, 0] > 0.999 and p[4, 2] > 0.999 and p[2, 1] > 0.99
    np.testing.assert_allclose(p[1, 0], 0.5, atol=1e-6)  # a mean on a cut is split evenly across it
    np.testing.assert_allclose(p[3, 2], 0.5, atol=1e-6)
    # A wider spread moves mass away from the group the mean is in.
    wide = group_probs_np(np.array([45.0]), np.array([15.0]), (29.5, 59.5))
    assert wide[0, 1] < p[2, 1] and wide[0, 0] > 0.1
    # Far in a tail every float32 mass underflows; the row still sums to 1.
    tail = group_probs(torch.tensor([1e6]), torch.tensor([1.0]), (29.5, 59.5))
    assert torch.isfinite(tail).all() and float(tail.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cut points"):
        group_probs(mean, sigma, (60, 30))


def test_default_cuts_reproduce_the_scoring_groups_of_whole_years():
    cuts = thresholds_cuts(DEFAULT_AGE_THRESHOLDS)
    assert cuts == (29.5, 59.5)
    years = np.arange(18, 80)
    # An exact, confident prediction of a whole age lands in that age's group.
    pred = group_probs_np(years.astype(float), np.full(len(years), 0.05), cuts).argmax(axis=1)
    np.testing.assert_array_equal(pred, age_group(years))


def _biased_oof(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    ages = rng.integers(18, 75, n)
    mask, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    labels = encode(mask, gender, age_group(ages))
    # A regressor that shrinks toward the middle: old people come out about 4 years too young.
    mean = np.where(ages >= 55, ages - 4.0, ages.astype(float)) + rng.normal(0, 0.5, n)
    probs = np.zeros((n, 18))
    probs[np.arange(n), encode(mask, gender, 0)] = 1.0  # mask and gender right, so only the age decides
    oof = pd.DataFrame(probs, columns=PROB_COLUMNS)
    return oof.assign(person_id=[f"{i // 7:06d}" for i in range(n)], label=labels, **{AGE_MEAN: mean, AGE_SIGMA: 1.0})


@pytest.mark.slow  # grid-searches the cut points many times over
def test_cross_fitted_tuning_keeps_a_real_gain():
    oof = _biased_oof()
    default = tune_cuts(oof[PROB_COLUMNS].to_numpy(), oof["label"].to_numpy(), oof[AGE_MEAN].to_numpy(),
                        oof[AGE_SIGMA].to_numpy(), DEFAULT_AGE_THRESHOLDS)["oof_f1_default"]
    assert cross_fitted_metrics(oof, DEFAULT_AGE_THRESHOLDS)["f1"] > default + 0.05
    with pytest.raises(ValueError, match="two people"):
        cross_fitted_metrics(oof.assign(person_id="one"), DEFAULT_AGE_THRESHOLDS)


@pytest.mark.slow
def test_tune_cuts_recovers_a_planted_bias():
    rng = np.random.default_rng(0)
    n = 3000
    ages = rng.integers(18, 75, n)
    mask, gender = rng.integers(0, 3, n), rng.integers(0, 2, n)
    labels = encode(mask, gender, age_group(ages))
    # A regressor that shrinks toward the middle: old people come out about 4 years too young.
    mean = np.where(ages >= 55, ages - 4.0, ages.astype(float)) + rng.normal(0, 0.5, n)
    sigma = np.full(n, 1.0)
    # Mask and gender predicted perfectly (one-hot), so only the age decides the score.
    probs = np.zeros((n, 18))
    probs[np.arange(n), encode(mask, gender, 0)] = 1.0
    result = tune_cuts(probs, labels, mean, sigma, DEFAULT_AGE_THRESHOLDS)
    assert result["default_cuts"] == [29.5, 59.5]
    assert 54.5 <= result["cuts"][1] <= 56.5, result
    assert abs(result["cuts"][0] - 29.5) <= 1.0
    assert result["oof_f1_tuned"] > result["oof_f1_default"] + 0.05
    assert result["oof_age_f1_tuned"] > result["oof_age_f1_default"]
    with pytest.raises(ValueError, match="same non-zero length"):
        tune_cuts(probs[:5], labels, mean, sigma, DEFAULT_AGE_THRESHOLDS)


def test_cut_file_round_trip_and_bad_file(tmp_path):
    assert read_cuts(tmp_path) is None
    write_cuts(tmp_path, {"cuts": [28.0, 56.5], "note": "x"})
    assert read_cuts(tmp_path) == (28.0, 56.5)
    (tmp_path / AGE_CUTS).write_text(json.dumps({"cuts": [60, 30]}))
    with pytest.raises(ValueError, match=AGE_CUTS):
        read_cuts(tmp_path)
    with pytest.raises(ValueError, match="cut points"):
        write_cuts(tmp_path, {"cuts": [1]})


def test_regression_head_outputs_and_probabilities():
    head = MultiTaskHead(8, age_output="years")
    assert head.output_sizes == {"mask": 3, "gender": 2, AGE_YEARS: 2}
    out = head(torch.randn(5, 8))
    assert set(out) == {"mask", "gender", AGE_YEARS} and out[AGE_YEARS].shape == (5, 2)
    assert (out[AGE_YEARS][:, 1] >= 1.0).all()  # the spread never collapses below a year
    probs = outputs_to_probs(out)
    np.testing.assert_allclose(probs.sum(1).detach().numpy(), 1.0, rtol=1e-5)
    # The age marginal is the normal mass at the cuts given; other cuts give other probabilities.
    years = out[AGE_YEARS]
    expected = group_probs(years[:, 0], years[:, 1], (25.0, 50.0))
    torch.testing.assert_close(outputs_to_task_probs(out, (25.0, 50.0))["age"], expected)
    np.testing.assert_allclose(split_class_probs(outputs_to_probs(out, (25.0, 50.0)).detach().numpy())["age"],
                               expected.detach().numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="age_output"):
        MultiTaskHead(8, age_output="decades")
    # An age-only regression model is a per-task model.
    only = MultiTaskHead(8, tasks=["age"], age_output="years")(torch.randn(2, 8))
    assert set(outputs_to_task_probs(only)) == {"age"}


def test_tta_averages_years_before_grouping():
    a = {"mask": torch.randn(4, 3), AGE_YEARS: torch.tensor([[20.0, 2.0], [40.0, 3.0], [58.0, 2.0], [70.0, 5.0]])}
    b = {"mask": torch.randn(4, 3), AGE_YEARS: torch.tensor([[24.0, 4.0], [44.0, 3.0], [62.0, 2.0], [66.0, 3.0]])}
    got = split_class_probs(average_view_probs([a, b], (29.5, 59.5)))
    mean_years = (a[AGE_YEARS] + b[AGE_YEARS]) / 2
    torch.testing.assert_close(got["age"], group_probs(mean_years[:, 0], mean_years[:, 1], (29.5, 59.5)))
    torch.testing.assert_close(got["mask"], (a["mask"].softmax(1) + b["mask"].softmax(1)) / 2)


def test_age_nll_skips_unknown_ages_and_fits_a_normal():
    loss = AgeNLL()
    pred = torch.tensor([[40.0, 5.0], [30.0, 2.0]], requires_grad=True)
    full = loss(pred, torch.tensor([40.0, 31.0]))
    half = loss(pred, torch.tensor([40.0, -1.0]))
    # Gaussian NLL without the constant: 0.5 * (log var + (y - mean)^2 / var).
    assert float(half.detach()) == pytest.approx(0.5 * np.log(25.0))
    assert float(full.detach()) == pytest.approx(0.25 * (np.log(25.0) + np.log(4.0) + 1 / 4))
    none = loss(pred, torch.tensor([-1.0, -1.0]))
    none.backward()  # no valid age: zero loss that still backpropagates
    assert float(none.detach()) == 0.0 and pred.grad is not None
    # The loss is what a regression head trains with, weighted by the age task weight.
    cfg = load_config(None, ["loss.task_weights={age: 0.5}"]).loss
    task_loss = build_loss(cfg, ["mask", "gender", AGE_YEARS])
    assert isinstance(task_loss.heads[AGE_YEARS], AgeNLL) and task_loss.head_weights[AGE_YEARS] == 0.5
    assert set(class_weights({"mask": np.array([0, 1, 2]), "gender": np.array([0, 1])},
                             ["mask", "gender", AGE_YEARS], "inverse")) == {"mask", "gender"}


def test_regression_config_is_checked():
    assert load_config(None, ["model.age_output=years"]).model.age_output == "years"
    with pytest.raises(ConfigError, match="age_output"):
        load_config(None, ["model.head=single", "model.age_output=years"])
    with pytest.raises(ConfigError, match="age_output"):
        load_config(None, ["model.tasks=[mask]", "model.age_output=years"])
    with pytest.raises(ConfigError, match="model.age_output"):
        load_config(None, ["model.age_output=decades"])


def test_oof_with_cuts_changes_only_the_age():
    probs = np.full((2, 18), 1 / 18)
    oof = pd.DataFrame(probs, columns=PROB_COLUMNS).assign(**{AGE_MEAN: [20.0, 70.0], AGE_SIGMA: [1.0, 1.0]})
    out = oof_with_cuts(oof, (29.5, 59.5))
    m = split_class_probs(out[PROB_COLUMNS].to_numpy())
    np.testing.assert_allclose(m["mask"], 1 / 3)
    np.testing.assert_allclose(m["gender"], 0.5)
    assert m["age"][0].argmax() == 0 and m["age"][1].argmax() == 2
    with pytest.raises(ValueError, match="age_mean"):
        oof_with_cuts(oof.drop(columns=AGE_MEAN), (29.5, 59.5), "x.csv")


@pytest.fixture(scope="module")
def years_run(demo_data, tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("age_years")
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={out}", *tiny_overrides,
                             "model.age_output=years", "train.epochs=2", "train.limit_train_batches=4",
                             "optimizer.lr=0.01"])
    return train(cfg)


def test_regression_run_writes_years_and_tunes_its_cuts(years_run, demo_data, tmp_path):
    run = RunDir(years_run.run_dir)
    oof = pd.read_csv(run.predictions / "oof.csv")
    assert {AGE_MEAN, AGE_SIGMA} <= set(oof.columns)
    assert np.isfinite(oof[[AGE_MEAN, AGE_SIGMA]].to_numpy()).all() and (oof[AGE_SIGMA] >= 1.0).all()
    # The stored probabilities are the years grouped at the scoring thresholds.
    again = oof_with_cuts(oof, (29.5, 59.5))
    np.testing.assert_allclose(again[PROB_COLUMNS].to_numpy(), oof[PROB_COLUMNS].to_numpy(), atol=2e-5)
    metrics = pd.read_csv(run.metrics)
    assert np.isfinite(metrics["val_f1"]).all() and np.isfinite(metrics["train_loss"]).all()

    result = tune_age_cuts(run.root, write=False)
    assert not (run.root / AGE_CUTS).exists()
    assert result["oof_f1_tuned"] >= result["oof_f1_default"]
    assert 0.0 <= result["oof_f1_cross_fitted"] <= 1.0
    assert result["images"] == len(oof)


def test_tuned_cuts_drive_predict_and_oof_readers(years_run, demo_data, tmp_path, capsys):
    import shutil

    # A copy, so the module's run keeps no cut file for other tests.
    root = tmp_path / "run"
    shutil.copytree(years_run.run_dir, root)
    assert cli_main(["tune-age", str(root)]) == 0
    assert "OOF macro F1" in capsys.readouterr().out
    assert read_cuts(root) is not None
    plain, _ = predict([years_run.run_dir], demo_data.eval_dir, tmp_path / "plain.csv", progress=False)
    # Absurd cuts (nearly everyone is 'old') make the effect unmistakable in every reader.
    write_cuts(root, {"cuts": [1.0, 2.0]})
    ages = split_class_probs(read_oof(root)[PROB_COLUMNS].to_numpy())["age"]
    assert np.mean(ages.argmax(axis=1) == 2) > 0.95
    _, metrics = ensemble_oof([root])
    assert metrics["age_acc"] == pytest.approx(np.mean(read_oof(root)["label"].to_numpy() % 3 == ages.argmax(axis=1)))
    sub, _ = predict([root], demo_data.eval_dir, tmp_path / "sub.csv", progress=False)
    old_share = np.mean(pd.read_csv(sub)["ans"] % 3 == 2)
    assert old_share > 0.95 and old_share > np.mean(pd.read_csv(plain)["ans"] % 3 == 2)
    # A run trained with age groups has nothing to tune.
    with pytest.raises(ValueError, match="age_output"):
        tune_age_cuts(_groups_run(demo_data, tmp_path))


def _groups_run(demo_data, tmp_path):
    root = tmp_path / "groups"
    root.mkdir()
    cfg = load_config(None, [f"data.root={demo_data.root}"])
    from maskstatus.config import save_config

    save_config(cfg, root / "config.yaml")
    return root
