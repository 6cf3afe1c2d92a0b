"""Cumulative-logit (ordinal) age head, and what it shares with the distribution head: years, TTA, export."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.age import (
    AGE_BIN_COUNT,
    AGE_BINS,
    AGE_MEAN,
    AGE_RANKS,
    AGE_SIGMA,
    AGE_YEARS,
    age_rank_targets,
    bins_to_years,
    group_probs,
    ranks_to_years,
)
from maskstatus.config import ConfigError, load_config
from maskstatus.infer.export import export
from maskstatus.infer.onnx_model import OnnxModel, onnx_path
from maskstatus.infer.pipeline import load_run
from maskstatus.infer.predict import predict
from maskstatus.train.trainer import train
from maskstatus.infer.tta import average_view_probs
from maskstatus.labels import PROB_COLUMNS, split_class_probs
from maskstatus.losses import AgeDistributionLoss, AgeOrdinalLoss, build_loss, class_weights
from maskstatus.models.heads import CumulativeLogitLinear, MultiTaskHead, outputs_to_task_probs
from maskstatus.runs import RunDir

RANKS = AGE_BIN_COUNT - 1


def _exceedance_logits(p_exceed: list[float]) -> torch.Tensor:
    p = torch.tensor([p_exceed], dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    return torch.log(p) - torch.log1p(-p)


def test_ranks_to_years_is_the_mean_and_spread_of_the_implied_distribution():
    # P(age > 0) = 1, P(age > 1) = 0.5, P(age > 2) = 0: half the mass on 1 year, half on 2.
    years = ranks_to_years(_exceedance_logits([1.0, 0.5, 0.0]))
    torch.testing.assert_close(years, torch.tensor([[1.5, 0.5]]))
    # All mass on 3 (the top year): mean 3, spread floored at 0.5.
    torch.testing.assert_close(ranks_to_years(_exceedance_logits([1.0, 1.0, 1.0])), torch.tensor([[3.0, 0.5]]))
    # Half on 0, half on 3: mean 1.5, spread 1.5.
    torch.testing.assert_close(ranks_to_years(_exceedance_logits([0.5, 0.5, 0.5])), torch.tensor([[1.5, 1.5]]))


def test_rank_targets_say_whether_the_age_exceeds_each_year():
    t = age_rank_targets(torch.tensor([30.0, 0.0]), RANKS)
    assert t.shape == (2, RANKS)
    assert t[0, :30].eq(1).all() and t[0, 30:].eq(0).all()  # 30 > k for k = 0..29 only
    assert t[1].eq(0).all()


def test_cumulative_logit_layer_keeps_its_thresholds_in_order():
    layer = CumulativeLogitLinear(8, RANKS)
    torch.testing.assert_close(layer.thresholds(), torch.arange(RANKS) + 0.5)  # k + 0.5 years at the start
    with torch.no_grad():  # even steps pushed far negative stay positive after softplus
        layer.steps.copy_(torch.randn(RANKS - 1) * 20.0)
    p = layer(torch.randn(16, 8)).sigmoid()
    assert p.shape == (16, RANKS)
    assert (p[:, 1:] <= p[:, :-1] + 1e-7).all()  # P(age > k) never rises with k
    # At initialisation (zero weights) the implied mean age sits at the centre of adult ages.
    fresh = CumulativeLogitLinear(8, RANKS)
    torch.nn.init.zeros_(fresh.location_scale.fc.weight)
    torch.nn.init.zeros_(fresh.location_scale.fc.bias)
    mean = ranks_to_years(fresh(torch.randn(2, 8)))[:, 0]
    torch.testing.assert_close(mean, torch.full((2,), 40.0), atol=0.1, rtol=0)


def test_ordinal_head_learns_an_age_as_fast_as_the_regression_head():
    # A face's age is a linear function of its features: 400 steps bring both heads within 1.5 years.
    from maskstatus.losses import AgeNLL

    torch.manual_seed(0)
    x = torch.randn(4000, 16)
    w = torch.randn(16)
    age = (40 + 12 * (x @ w) / w.norm()).clamp(18, 80).round()
    mae = {}
    for output, loss, key in (("ordinal", AgeOrdinalLoss(), AGE_RANKS), ("years", AgeNLL(), AGE_YEARS)):
        torch.manual_seed(1)
        head = MultiTaskHead(16, tasks=["age"], age_output=output)
        opt = torch.optim.AdamW(head.parameters(), lr=2e-3)
        for _ in range(400):
            i = torch.randint(0, len(x), (64,))
            opt.zero_grad()
            loss(head(x[i])[key], age[i]).backward()
            opt.step()
        with torch.no_grad():
            mae[output] = float((head(x)[AGE_YEARS][:, 0] - age).abs().mean())
    assert mae["ordinal"] < 1.5 and mae["years"] < 1.5, mae


def test_ordinal_loss_prefers_the_true_age():
    loss = AgeOrdinalLoss()
    target = torch.tensor([40.0, 25.0])
    ks = torch.arange(RANKS, dtype=torch.float32)

    def sure_of(years: torch.Tensor) -> torch.Tensor:  # confident exceedance logits for these ages
        return 20.0 * (years[:, None] - 0.5 - ks[None, :])

    assert float(loss(sure_of(target), target)) == pytest.approx(0.0, abs=1e-6)
    # Ten years too old: the 10 thresholds between are wrong by logits 20 * (0.5, 1.5, ..., 9.5),
    # 1,000 nats in all, averaged over the 100 thresholds.
    assert float(loss(sure_of(target + 10), target)) == pytest.approx(1000.0 / RANKS, rel=1e-3)


@pytest.mark.parametrize("loss, width", [(AgeOrdinalLoss(), RANKS), (AgeDistributionLoss(), AGE_BIN_COUNT)])
def test_year_losses_leave_out_rows_without_an_age(loss, width):
    wrong = torch.randn(2, width, generator=torch.Generator().manual_seed(0))
    half = loss(wrong, torch.tensor([40.0, -1.0]))  # the second row has no age in years: left out
    assert float(half) == pytest.approx(float(loss(wrong[:1], torch.tensor([40.0]))))
    logits = torch.zeros(2, width, requires_grad=True)
    none = loss(logits, torch.tensor([-1.0, -1.0]))
    none.backward()  # no row left: zero, with the graph kept (DDP syncs every parameter's gradient)
    assert float(none.detach()) == 0.0 and logits.grad is not None


@pytest.mark.parametrize("age_output, key, size, to_years", [
    ("ordinal", AGE_RANKS, RANKS, ranks_to_years),
    ("distribution", AGE_BINS, AGE_BIN_COUNT, bins_to_years),
])
def test_year_heads_output_years_and_group_probabilities(age_output, key, size, to_years):
    head = MultiTaskHead(8, age_output=age_output)
    assert head.output_sizes == {"mask": 3, "gender": 2, key: size}
    out = head(torch.randn(4, 8))
    assert out[key].shape == (4, size) and out[AGE_YEARS].shape == (4, 2)
    torch.testing.assert_close(out[AGE_YEARS], to_years(out[key]))
    years = out[AGE_YEARS]
    expected = group_probs(years[:, 0], years[:, 1], (29.5, 59.5))
    torch.testing.assert_close(outputs_to_task_probs(out)["age"], expected)
    # TTA averages the derived years, as for a regression head; the head's own logits are not a task.
    got = split_class_probs(average_view_probs([out, out], (29.5, 59.5)))
    torch.testing.assert_close(got["age"], expected)
    only = MultiTaskHead(8, tasks=["age"], age_output=age_output)(torch.randn(2, 8))
    assert set(outputs_to_task_probs(only)) == {"age"}
    assert set(split_class_probs(average_view_probs([only, only]))) == {"mask", "gender", "age"}


@pytest.mark.parametrize("age_output, key, size, loss_type", [
    ("ordinal", AGE_RANKS, RANKS, AgeOrdinalLoss),
    ("distribution", AGE_BINS, AGE_BIN_COUNT, AgeDistributionLoss),
])
def test_year_head_config_and_loss_wiring(age_output, key, size, loss_type):
    cfg = load_config(None, [f"model.age_output={age_output}", "loss.task_weights={age: 0.5}"])
    task_loss = build_loss(cfg.loss, {"mask": 3, "gender": 2, key: size})
    assert isinstance(task_loss.heads[key], loss_type) and task_loss.head_weights[key] == 0.5
    # The head's target is the age in years.
    outputs = {"mask": torch.randn(2, 3), key: torch.randn(2, size)}
    total, parts = task_loss(outputs, {"mask": torch.tensor([0, 1]), AGE_YEARS: torch.tensor([30.0, 50.0])})
    assert set(parts) == {"mask", key} and torch.isfinite(total)
    assert set(class_weights({"mask": np.array([0, 1, 2])}, ["mask", key], "inverse")) == {"mask"}
    with pytest.raises(ConfigError, match="age_output"):
        load_config(None, ["model.head=single", f"model.age_output={age_output}"])


@pytest.mark.slow
@pytest.mark.parametrize("age_output", ["ordinal", "distribution"])
def test_year_heads_predict_and_export_their_years(demo_data, tmp_path, tiny_overrides, age_output):
    cfg = load_config(None, [f"data.root={demo_data.root}", f"output_dir={tmp_path}", *tiny_overrides,
                             f"model.age_output={age_output}", "train.epochs=1", "train.limit_train_batches=4"])
    run = RunDir(train(cfg).run_dir)
    oof = pd.read_csv(run.predictions / "oof.csv")
    assert np.isfinite(oof[[AGE_MEAN, AGE_SIGMA]].to_numpy()).all() and (oof[AGE_SIGMA] >= 0.5).all()
    # The export serves the years, not the head's own 100-odd logits, and answers as PyTorch does.
    export(run.root)
    onnx_model = OnnxModel(onnx_path(run.root))
    assert onnx_model.output_keys == ["mask", "gender", AGE_YEARS]
    x = torch.randn(3, 3, 48, 36, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_run(run.root).model(x)
    torch.testing.assert_close(onnx_model(x)[AGE_YEARS], expected[AGE_YEARS], atol=1e-4, rtol=1e-4)
    probs = {}
    for backend in ("torch", "onnx"):
        _, path = predict([run.root], demo_data.eval_dir, tmp_path / f"{backend}.csv", progress=False, backend=backend)
        probs[backend] = pd.read_csv(path)[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs["onnx"], probs["torch"], atol=1e-4)
