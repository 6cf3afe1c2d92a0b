"""The configurable training parts: sampler, class weights, age thresholds, mixing, freezing, EMA, accumulation."""

import numpy as np
import pandas as pd
import pytest
import torch

from maskstatus.config import LossConfig, LossTerm, MixConfig
from maskstatus.data.dataset import table_targets
from maskstatus.data.mix import mix_batch, mixed_loss
from maskstatus.data.sampling import WeightedEpochSampler, inverse_density_weights, inverse_frequency_weights
from maskstatus.train.trainer import train
from maskstatus.labels import AgeThresholds
from maskstatus.losses import build_loss, class_weights, with_class_weights
from maskstatus.models.freeze import freeze_stages, stage_parameters
from maskstatus.runs import RunDir, load_checkpoint


def test_weighted_sampler_draws_classes_near_uniformly():
    labels = np.array([0] * 500 + [1] * 100 + [2] * 100 + [3] * 20)
    sampler = WeightedEpochSampler(inverse_frequency_weights(labels), seed=1)
    drawn = np.bincount(labels[list(sampler)], minlength=4) / len(labels)
    assert np.abs(drawn - 0.25).max() < 0.05
    sampler.set_epoch(0)
    first = list(sampler)
    assert first == list(sampler)  # same epoch, same draws (resume replays them)
    sampler.set_epoch(1)
    assert first != list(sampler)


def test_weighted_sampler_shares_one_draw_across_ranks():
    w = inverse_frequency_weights(np.arange(100) % 3)
    ranks = [list(WeightedEpochSampler(w, seed=4, rank=r, world_size=2)) for r in (0, 1)]
    single = list(WeightedEpochSampler(w, seed=4))
    assert len(ranks[0]) == len(ranks[1]) == 50
    assert sorted(ranks[0] + ranks[1]) == sorted(single)


def test_inverse_density_weights_favour_rare_ages_smoothly():
    years = np.array([25.0] * 60 + [26.0] * 40 + [70.0] * 4 + [-1.0] * 2)
    w = inverse_density_weights(years, bandwidth=2.0, power=0.5)
    assert w.mean() == pytest.approx(1.0)
    assert w[100] > w[60] > 0 and w[60] == pytest.approx(w[0], rel=0.2)  # 25 and 26 share one smoothed density
    assert w[100] / w[0] > 3                                              # 4 people at 70 against 100 near 25
    assert w[104] == w[105] == pytest.approx(np.median(w[:104]))          # no years: the median weight
    assert np.allclose(inverse_density_weights(years, power=0.0), 1.0)    # power 0: no reweighting
    # Drawn by the sampler, the 70-year-olds make up far more than their 4 % of the epoch.
    drawn = years[np.array(list(WeightedEpochSampler(np.tile(w, 50), seed=0))) % len(years)]
    assert (drawn == 70).mean() > 0.1


@pytest.mark.parametrize("years, kw, message", [
    ([], {}, "non-empty"), ([-1.0, -1.0], {}, "no sample has an age"), ([30.0], {"bandwidth": 0}, "bandwidth"),
])
def test_inverse_density_weights_refuse_bad_input(years, kw, message):
    with pytest.raises(ValueError, match=message):
        inverse_density_weights(np.array(years), **kw)


def test_training_draws_by_the_density_of_years(tiny_config, monkeypatch):
    import maskstatus.train.trainer as engine_train

    seen = []

    def spy(years):
        seen.append(np.asarray(years).copy())
        return inverse_density_weights(years)

    monkeypatch.setattr(engine_train, "inverse_density_weights", spy)
    cfg = tiny_config("train.sampler.name=weighted", "train.sampler.by=years", "train.epochs=1",
                      "train.limit_train_batches=1")
    result = train(cfg)
    assert len(seen) == 1 and (seen[0] >= 15).all()  # the training rows' ages in years, not codes
    folds = pd.read_csv(result.run_dir / "folds.csv", dtype={"person_id": str})
    assert len(seen[0]) == 7 * int((folds["fold"] != cfg.split.fold).sum())


def test_class_weights_and_injection():
    targets = {"mask": np.array([0] * 50 + [1] * 10 + [2] * 10 + [0] * 10)}
    w = class_weights(targets, ["mask"], "inverse")["mask"]
    assert np.mean(w) == pytest.approx(1.0, rel=1e-5)
    assert w[1] == pytest.approx(w[2]) and w[1] == pytest.approx(6 * w[0], rel=1e-4)
    sq = class_weights(targets, ["mask"], "sqrt_inverse")["mask"]
    assert sq[1] / sq[0] == pytest.approx(6 ** 0.5, rel=1e-4)
    cfg = LossConfig(terms=[LossTerm(name="ce"), LossTerm(name="soft_f1"), LossTerm(name="focal", params={"weight": [1, 1, 1]})])
    out = with_class_weights(cfg, {"mask": w})
    assert out.terms[0].params["weight"] == {"mask": w}
    assert "weight" not in out.terms[1].params and out.terms[2].params["weight"] == [1, 1, 1]
    build_loss(out, ["mask"])  # the weighted config builds


def test_training_age_thresholds_move_the_boundary():
    table = pd.DataFrame({"mask": [0, 0, 0], "gender": [0, 1, 0], "age": [57, 58, 60], "age_group": [1, 1, 2],
                          "label": [1, 4, 2]})
    scored = table_targets(table)
    moved = table_targets(table, AgeThresholds(30, 58))
    assert scored["age"].tolist() == [1, 1, 2]
    assert moved["age"].tolist() == [1, 2, 2] and moved["class"].tolist() == [1, 5, 2]


def _mix_cfg(**kw):
    return MixConfig(**kw)


def test_cutmix_pastes_a_box_and_lam_matches_its_area():
    a = torch.zeros(4, 3, 20, 16)
    a[1], a[2], a[3] = 1.0, 2.0, 3.0
    rng = np.random.default_rng(0)
    for vertical in (False, True):
        for _ in range(10):
            m = mix_batch(a, _mix_cfg(cutmix=1.0, vertical=vertical), rng)
            for i in range(4):
                from_partner = (m.images[i, 0] == a[m.perm[i], 0, 0, 0]).float().mean().item()
                if m.perm[i] != i:
                    assert from_partner == pytest.approx(1 - m.lam, abs=1e-6)
            assert 0.0 <= m.lam <= 1.0
            if vertical:
                changed = (m.images[m.perm != torch.arange(4)][:, 0] != a[m.perm != torch.arange(4)][:, 0])
                if changed.any():
                    assert changed.any(dim=2).all(dim=1).all()  # every row touched: the band spans the full height


def test_mixup_and_mixed_loss_weights_sum_to_one():
    torch.manual_seed(0)
    a = torch.randn(6, 3, 8, 8)
    m = mix_batch(a, _mix_cfg(mixup=1.0), np.random.default_rng(1))
    assert torch.allclose(m.images, m.lam * a + (1 - m.lam) * a[m.perm])
    loss_fn = build_loss(LossConfig(), ["mask", "gender", "age"])
    outputs = {"mask": torch.randn(6, 3), "gender": torch.randn(6, 2), "age": torch.randn(6, 3)}
    targets = {"mask": torch.randint(0, 3, (6,)), "gender": torch.randint(0, 2, (6,)), "age": torch.randint(0, 3, (6,))}
    mixed, _ = mixed_loss(loss_fn, outputs, targets, m)
    la, _ = loss_fn(outputs, targets)
    lb, _ = loss_fn(outputs, {k: v[m.perm] for k, v in targets.items()})
    assert mixed.item() == pytest.approx(m.lam * la.item() + (1 - m.lam) * lb.item(), rel=1e-6)
    assert mix_batch(a, _mix_cfg(), np.random.default_rng(1)) is None
    with pytest.raises(ValueError):
        MixConfig(cutmix=0.7, mixup=0.5)


def test_stage_parameters_cover_stem_and_first_stages():
    import timm

    m = timm.create_model("test_efficientnet", num_classes=0)
    names = {id(p): n for n, p in m.named_parameters()}
    one = {names[id(p)] for p in stage_parameters(m, 1)}
    assert any(n.startswith("conv_stem") for n in one) and any(n.startswith("blocks.0.") for n in one)
    assert not any(n.startswith("blocks.1.") for n in one)
    assert stage_parameters(m, 0) == []
    with pytest.raises(ValueError, match="freeze_stages"):
        stage_parameters(m, 99)
    frozen = freeze_stages(m, 1)
    assert all(not p.requires_grad for p in stage_parameters(m, 1))
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith("blocks.1."))
    frozen.set_frozen(False)
    assert all(p.requires_grad for p in m.parameters())


def test_frozen_stages_keep_their_batchnorm_statistics():
    import timm

    m = timm.create_model("test_efficientnet", num_classes=0)
    frozen = freeze_stages(m, 1)
    assert frozen.norms and all(isinstance(n, torch.nn.BatchNorm2d) for n in frozen.norms)
    before = {k: v.clone() for k, v in m.state_dict().items() if "running_mean" in k}
    m.train()
    frozen.hold_norms()
    m(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = m.state_dict()
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])  # the stem's BatchNorm
    assert any(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.0."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.0."))
    assert not any(torch.equal(before[k], after[k]) for k in before if k.startswith("blocks.1."))
    frozen.set_frozen(False)  # unfrozen, the same layers learn their statistics again
    m.train()
    frozen.hold_norms()
    m(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(before["bn1.running_mean"], m.state_dict()["bn1.running_mean"])


def _weights(run, which="last", key="model"):
    return load_checkpoint(getattr(RunDir(run), which))[key]


def test_freezing_then_unfreezing_in_training(tiny_config, tmp_path):
    import timm

    # Start every run from known backbone weights, so "unchanged" can be checked exactly.
    init = timm.create_model("test_efficientnet", num_classes=0).state_dict()
    torch.save(init, tmp_path / "init.pt")
    start = [f"model.pretrained_path={tmp_path / 'init.pt'}", "train.limit_train_batches=2", "train.freeze_stages=1",
             "scheduler.name=none"]
    frozen = train(tiny_config("train.epochs=1", *start))
    thawed = train(tiny_config("train.epochs=2", "train.unfreeze_epoch=1", *start))
    wf, wt = _weights(frozen.run_dir), _weights(thawed.run_dir)
    stem, late = "conv_stem.weight", "blocks.2.0.conv_pwl.weight"
    assert late in init
    assert torch.equal(init[stem], wf["backbone." + stem]) and not torch.equal(init[late], wf["backbone." + late])
    assert torch.equal(init["bn1.running_mean"], wf["backbone.bn1.running_mean"])  # BatchNorm frozen too
    assert not torch.equal(init[stem], wt["backbone." + stem])


def test_ema_weights_are_validated_and_kept_as_best(tiny_config):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=3", "train.ema_decay=0.5")).run_dir
    best, last = _weights(run, "best"), load_checkpoint(RunDir(run).last)
    for k in best:
        assert torch.equal(best[k], last["ema"][k])
    assert any(not torch.equal(last["ema"][k], last["model"][k]) for k in best if best[k].is_floating_point())


def test_ema_warmup_follows_the_trained_weights_and_counts_optimizer_steps(tiny_config, monkeypatch):
    # Same seed, same trained weights: with warmup the average follows them; without, it stays near the first step's.
    three = ("train.epochs=1", "train.limit_train_batches=3", "train.ema_decay=0.999", "scheduler.name=none")
    warm = load_checkpoint(RunDir(train(tiny_config(*three)).run_dir).last)
    cold = load_checkpoint(RunDir(train(tiny_config(*three, "train.ema_warmup=false")).run_dir).last)
    floats = [k for k, v in warm["model"].items() if v.is_floating_point()]
    assert all(torch.equal(warm["model"][k], cold["model"][k]) for k in floats)

    def gap(state: dict) -> float:
        return sum(float((state["ema"][k] - state["model"][k]).norm()) for k in floats)

    assert gap(warm) < 0.7 * gap(cold)

    from timm.utils import ModelEmaV3

    steps, update = [], ModelEmaV3.update
    monkeypatch.setattr(ModelEmaV3, "update", lambda self, model, step=None: (steps.append(step), update(self, model, step)))
    train(tiny_config("train.epochs=2", "train.limit_train_batches=3", "train.accumulate=2", "train.ema_decay=0.9"))
    assert steps == [1, 2, 3, 4]  # two optimizer steps per epoch (batches 2 and 3), numbered across epochs


def test_accumulation_steps_every_n_batches(tiny_config):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=5", "train.accumulate=2")).run_dir
    opt = load_checkpoint(RunDir(run).last)["optimizer"]
    assert {int(s["step"]) for s in opt["state"].values()} == {3}  # batches 2, 4 and the last one


def test_drop_bands_and_weighted_sampler_in_a_run(tiny_config):
    base = train(tiny_config("train.epochs=1", "train.batch_size=4"))
    banded = train(tiny_config("train.epochs=1", "train.batch_size=4", "data.age.drop_bands=[[18, 45]]",
                               "train.sampler.name=weighted", "train.sampler.by=age", "loss.class_weights=inverse",
                               "train.mix.cutmix=0.5", "train.mix.mixup=0.5"))
    n_base = pd.read_csv(RunDir(base.run_dir).metrics)["train_images"].iloc[0]
    n_banded = pd.read_csv(RunDir(banded.run_dir).metrics)["train_images"].iloc[0]
    assert n_banded < n_base
    with pytest.raises(ValueError, match="leave no training images"):
        train(tiny_config("train.epochs=1", "data.age.drop_bands=[[0, 200]]"))


def test_bf16_mixed_precision_runs_on_cpu(tiny_config):
    run = train(tiny_config("train.epochs=1", "train.limit_train_batches=1", "train.precision=bf16-mixed")).run_dir
    metrics = pd.read_csv(RunDir(run).metrics)
    assert np.isfinite(metrics[["train_loss", "val_loss", "val_f1"]].to_numpy()).all()
