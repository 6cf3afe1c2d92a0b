"""Label-distribution age head (DLDL): distribution -> years, the loss, and a tiny run end to end."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.age import (
    AGE_BIN_COUNT,
    AGE_BINS,
    AGE_MEAN,
    AGE_SIGMA,
    age_distribution_targets,
    bins_to_years,
    oof_with_cuts,
)
from maskstatus.config import ConfigError, load_config
from maskstatus.scoring.age_cuts import tune_age_cuts
from maskstatus.train.trainer import train
from maskstatus.labels import PROB_COLUMNS
from maskstatus.losses import AgeDistributionLoss, build_loss
from maskstatus.runs import RunDir


def test_bins_to_years_is_the_mean_and_spread_of_the_softmax():
    logits = torch.full((2, 5), -1e4)
    logits[0, 2] = 0.0  # all mass on 2 years: spread floored
    logits[1, 1] = logits[1, 3] = 0.0  # half on 1, half on 3: mean 2, spread 1
    years = bins_to_years(logits)
    torch.testing.assert_close(years, torch.tensor([[2.0, 0.5], [2.0, 1.0]]))


def test_distribution_targets_are_normal_around_the_age():
    p = age_distribution_targets(torch.tensor([30.0, 61.5]), AGE_BIN_COUNT, sigma=2.0)
    assert p.shape == (2, AGE_BIN_COUNT)
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    assert int(p[0].argmax()) == 30 and float(p[0, 28]) == pytest.approx(float(p[0, 32]))
    ages = torch.arange(AGE_BIN_COUNT, dtype=torch.float32)
    assert float((p[1] * ages).sum()) == pytest.approx(61.5, abs=1e-3)


def test_distribution_loss_prefers_the_true_age():  # rows without an age: test_age_ordinal.py
    loss = AgeDistributionLoss(sigma=2.0, l1_weight=1.0)
    target = torch.tensor([40.0, 25.0])
    ages = torch.arange(AGE_BIN_COUNT, dtype=torch.float32)

    def normal_logits(years: torch.Tensor) -> torch.Tensor:  # log of the target distribution, up to a constant
        return -((ages[None, :] - years[:, None]) ** 2) / (2 * 2.0**2)

    right, wrong = normal_logits(target), normal_logits(target + 10)
    # At the target distribution the KL is 0 and the mean is the age: the loss is (numerically) 0.
    assert float(loss(right, target)) == pytest.approx(0.0, abs=1e-3)
    # Ten years off: the L1 term alone is 10.
    assert float(loss(wrong, target)) > 10.0
    with pytest.raises(ValueError, match="sigma"):
        AgeDistributionLoss(sigma=0.0)


def test_distribution_loss_settings():  # the wiring every year head shares: test_age_ordinal.py
    cfg = load_config(None, ["model.age_output=distribution", "loss.age_distribution.sigma=3"])
    task_loss = build_loss(cfg.loss, {"mask": 3, "gender": 2, AGE_BINS: AGE_BIN_COUNT})
    assert task_loss.heads[AGE_BINS].sigma == 3.0
    with pytest.raises(ConfigError, match="loss.age_distribution.sigma"):
        load_config(None, ["loss.age_distribution.sigma=0"])
    with pytest.raises(ConfigError, match="loss.age_distribution.width"):
        load_config(None, ["loss.age_distribution.width=2"])


@pytest.mark.slow
def test_distribution_run_writes_years_and_tunes_its_cuts(demo_data, tmp_path, tiny_overrides):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path}", *tiny_overrides,
                             "model.age_output=distribution", "train.epochs=1", "train.limit_train_batches=4"])
    run = RunDir(train(cfg).run_dir)
    oof = pd.read_csv(run.predictions / "oof.csv")
    assert np.isfinite(oof[[AGE_MEAN, AGE_SIGMA]].to_numpy()).all() and (oof[AGE_SIGMA] >= 0.5).all()
    again = oof_with_cuts(oof, (29.5, 59.5))
    np.testing.assert_allclose(again[PROB_COLUMNS].to_numpy(), oof[PROB_COLUMNS].to_numpy(), atol=2e-5)
    assert tune_age_cuts(run.root, write=False)["cuts"]
