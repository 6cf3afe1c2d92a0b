import math

import pytest
import torch
import torch.nn as nn

from maskstatus.config import ConfigError, OptimizerConfig, SchedulerConfig
from maskstatus.optim import SCHEDULERS, EpochScheduler, build_optimizer, build_scheduler


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2), nn.LayerNorm(2))


def _optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return build_optimizer(_model(), OptimizerConfig(name="sgd", lr=lr, weight_decay=0.01))


def _run(sched: EpochScheduler, metrics) -> list[float]:
    """lr used in each epoch, stepping after each one as the trainer does."""
    lrs = []
    for m in metrics:
        lrs.append(sched.lr)
        sched.optimizer.step()  # keeps torch from warning about step order
        sched.step(m)
    return lrs


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_no_weight_decay_on_1d_params(name):
    model = _model()
    opt = build_optimizer(model, OptimizerConfig(name=name, lr=1e-3, weight_decay=0.05))
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay_of) == len(list(model.parameters()))
    for pname, p in model.named_parameters():
        assert decay_of[id(p)] == (0.0 if p.ndim == 1 else 0.05), pname
    # Biases, BatchNorm and LayerNorm weights are 1-D; conv and linear weights are not.
    assert sum(1 for p in model.parameters() if p.ndim > 1) == 2


def test_frozen_params_kept_so_unfreezing_needs_no_rebuild():
    model = _model()
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, OptimizerConfig(name="adamw"))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    assert any(p is model[0].weight for g in opt.param_groups for p in g["params"])


def test_group_layout_of_existing_checkpoints():
    # Decay group first and two groups even without weight decay: optimizer states saved before
    # the switch to timm must still load on --resume.
    for wd in (0.05, 0.0):
        opt = build_optimizer(_model(), OptimizerConfig(name="adam", weight_decay=wd))
        assert [len(g["params"]) for g in opt.param_groups] == [2, 6]
        assert [g["weight_decay"] for g in opt.param_groups] == [wd, 0.0]


def test_sgd_options():
    # "sgd" stays classical momentum (timm's "sgd" default is Nesterov).
    opt = build_optimizer(_model(), OptimizerConfig(name="sgd"))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is False
    opt = build_optimizer(_model(), OptimizerConfig(name="sgd", params={"nesterov": True}))
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    opt = build_optimizer(_model(), OptimizerConfig(name="adam", params={"betas": [0.8, 0.99]}))
    assert opt.defaults["betas"] == (0.8, 0.99)


def test_unknown_optimizer_and_param():
    with pytest.raises(ConfigError, match=r"optimizer\.name.*'adamx'.*adam, adamw, sgd"):
        build_optimizer(_model(), OptimizerConfig(name="adamx"))
    with pytest.raises(ConfigError, match=r"optimizer\.params.*'momentun'"):
        build_optimizer(_model(), OptimizerConfig(name="sgd", params={"momentun": 0.8}))
    with pytest.raises(ConfigError, match="optimizer.params"):
        build_optimizer(_model(), OptimizerConfig(name="sgd", params={"lr": 0.8}))
    with pytest.raises(ConfigError, match=r"optimizer\.params.*layer_decay"):
        build_optimizer(_model(), OptimizerConfig(name="adamw", params={"layer_decay": 0.7}))


@pytest.mark.parametrize("name", ["lamb", "lookahead_adamw", "nadamw"])
def test_timm_optimizers_by_name(name):
    opt = build_optimizer(_model(), OptimizerConfig(name=name, lr=0.01, weight_decay=0.05))
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["weight_decay"] == 0.05


def test_cosine_with_warmup():
    lr, min_lr, epochs, warmup = 0.1, 1e-4, 10, 3
    sched = build_scheduler(_optimizer(lr), SchedulerConfig(name="cosine", warmup_epochs=warmup, params={"min_lr": min_lr}), epochs)
    lrs = _run(sched, [None] * epochs)
    # Warm-up: non-zero start, rising, full lr on the first epoch after it.
    assert lrs[0] == pytest.approx(lr / (warmup + 1))
    assert all(a < b for a, b in zip(lrs[: warmup + 1], lrs[1 : warmup + 1]))
    assert lrs[warmup] == pytest.approx(lr)
    # Then decreasing along the cosine towards min_lr, which the step after the last epoch would reach:
    # every epoch, the last included, still trains.
    tail = lrs[warmup:]
    assert all(a > b for a, b in zip(tail, tail[1:]))
    assert lrs[-1] > min_lr
    t_max = epochs - warmup
    for k, value in enumerate(tail):
        assert value == pytest.approx(min_lr + (lr - min_lr) * (1 + math.cos(math.pi * k / t_max)) / 2)


def test_cosine_without_warmup_and_step():
    sched = build_scheduler(_optimizer(0.1), SchedulerConfig(name="cosine"), 5)
    lrs = _run(sched, [None] * 5)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] > 0.0
    assert sched.lr == pytest.approx(0.0, abs=1e-12)  # min_lr is where the schedule ends, after the last epoch
    sched = build_scheduler(
        _optimizer(0.1), SchedulerConfig(name="step", warmup_epochs=1, params={"step_size": 2, "gamma": 0.5}), 6
    )
    assert _run(sched, [None] * 6) == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.05, 0.025])
    sched = build_scheduler(_optimizer(0.1), SchedulerConfig(name="none", warmup_epochs=1), 3)
    assert _run(sched, [None] * 3) == pytest.approx([0.05, 0.1, 0.1])


def _reference_lrs(name: str, lr: float, epochs: int, warmup: int, **p) -> list[float]:
    """The schedules' closed forms: lr of each epoch, then the lr after the last one."""
    out = []
    for k in range(epochs + 1):
        if k < warmup:
            out.append(lr * (k + 1) / (warmup + 1))
        elif name == "cosine":
            min_lr = p.get("min_lr", 0.0)
            out.append(min_lr + (lr - min_lr) * (1 + math.cos(math.pi * (k - warmup) / (epochs - warmup))) / 2)
        elif name == "step":
            out.append(lr * p["gamma"] ** ((k - warmup) // p["step_size"]))
        else:
            out.append(lr)
    return out


@pytest.mark.parametrize(
    "name, warmup, params",
    [
        ("cosine", 0, {}),
        ("cosine", 3, {}),
        ("cosine", 0, {"min_lr": 1e-4}),
        ("cosine", 4, {"min_lr": 1e-4}),
        ("step", 0, {"step_size": 3, "gamma": 0.5}),
        ("step", 2, {"step_size": 1, "gamma": 0.1}),
        ("none", 0, {}),
        ("none", 5, {}),
    ],
)
def test_lr_sequences_match_the_closed_forms(name, warmup, params):
    # Tight tolerance: results must not move when the implementation does (torch's recursive
    # schedulers before, timm's closed forms now, agreed to 2e-16).
    lr, epochs = 0.3, 12
    sched = build_scheduler(_optimizer(lr), SchedulerConfig(name=name, warmup_epochs=warmup, params=params), epochs)
    lrs = _run(sched, [None] * epochs) + [sched.lr]
    assert lrs == pytest.approx(_reference_lrs(name, lr, epochs, warmup, **params), rel=0, abs=1e-12)
    assert all(g["lr"] == sched.lr for g in sched.optimizer.param_groups)


def test_state_of_a_shorter_run_continues_on_the_longer_schedule():
    # An extended run: the state of a 4-epoch cosine, loaded into a 10-epoch one, gives the 10-epoch lr.
    cfg = SchedulerConfig(name="cosine", warmup_epochs=1)
    short = build_scheduler(_optimizer(), cfg, 4)
    _run(short, [None] * 4)
    longer = build_scheduler(_optimizer(), cfg, 10)
    longer.load_state_dict(short.state_dict())
    assert longer.lr == pytest.approx(_reference_lrs("cosine", 0.1, 10, 1)[4], rel=0, abs=1e-12)


def test_loads_a_state_saved_by_the_torch_based_scheduler():
    # Checkpoints written before the switch to timm: epoch count, torch scheduler state, lrs.
    old = {"epoch": 3, "scheduler": {"_milestones": [2], "last_epoch": 3}, "warmup": {"last_epoch": 2},
           "lrs": [0.0857, 0.0857]}
    sched = build_scheduler(_optimizer(), SchedulerConfig(name="cosine", warmup_epochs=2), 6)
    sched.load_state_dict(old)
    assert sched.epoch == 3 and sched.lr == pytest.approx(_reference_lrs("cosine", 0.1, 6, 2)[3], rel=0, abs=1e-12)


def test_plateau_lowers_lr_after_patience():
    cfg = SchedulerConfig(name="plateau", params={"factor": 0.5, "patience": 2, "min_lr": 0.02})
    sched = build_scheduler(_optimizer(0.1), cfg, 20)
    assert sched.needs_metric
    # Improves for 3 epochs, then 2 epochs without improvement are tolerated, the 3rd cuts the lr.
    metrics = [0.5, 0.6, 0.7, 0.7, 0.65, 0.69, 0.7, 0.69, 0.68, 0.1, 0.1, 0.1]
    lrs = _run(sched, metrics)
    assert lrs[:6] == pytest.approx([0.1] * 6)
    assert lrs[6] == pytest.approx(0.05)
    assert lrs[9] == pytest.approx(0.025)
    assert sched.lr == pytest.approx(0.02)  # floored at min_lr
    with pytest.raises(ValueError, match="metric"):
        sched.step(None)


def test_plateau_with_warmup():
    cfg = SchedulerConfig(name="plateau", warmup_epochs=2, params={"factor": 0.5, "patience": 0})
    sched = build_scheduler(_optimizer(0.3), cfg, 10)
    # Metrics during warm-up are ignored; then one epoch without gain halves the lr.
    lrs = _run(sched, [None, 0.9, 0.5, 0.4, 0.4])
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.15])


@pytest.mark.parametrize(
    "cfg",
    [
        SchedulerConfig(name="cosine", warmup_epochs=2, params={"min_lr": 1e-3}),
        SchedulerConfig(name="cosine"),
        SchedulerConfig(name="step", warmup_epochs=1, params={"step_size": 2}),
        SchedulerConfig(name="plateau", warmup_epochs=1, params={"patience": 1, "factor": 0.5}),
        SchedulerConfig(name="none", warmup_epochs=2),
    ],
    ids=lambda c: f"{c.name}-w{c.warmup_epochs}",
)
def test_state_dict_round_trip(cfg):
    epochs = 10
    metrics = [0.1, 0.3, 0.2, 0.2, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2]
    reference = build_scheduler(_optimizer(), cfg, epochs)
    expected = _run(reference, metrics)

    first = build_scheduler(_optimizer(), cfg, epochs)
    _run(first, metrics[:3])
    state = first.state_dict()
    # A fresh optimizer too: resume must not depend on restoring the optimizer state.
    resumed = build_scheduler(_optimizer(), cfg, epochs)
    resumed.load_state_dict(state)
    assert resumed.lr == pytest.approx(expected[3])
    assert _run(resumed, metrics[3:]) == pytest.approx(expected[3:])


def test_state_dict_survives_torch_save(tmp_path):
    sched = build_scheduler(_optimizer(), SchedulerConfig(name="cosine", warmup_epochs=2), 6)
    _run(sched, [None] * 3)
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    fresh = build_scheduler(_optimizer(), SchedulerConfig(name="cosine", warmup_epochs=2), 6)
    fresh.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert fresh.lr == sched.lr and fresh.epoch == 3


def test_scheduler_errors():
    with pytest.raises(ConfigError, match=r"scheduler\.name.*'cosin'.*cosine, none, plateau, step"):
        build_scheduler(_optimizer(), SchedulerConfig(name="cosin"), 5)
    with pytest.raises(ConfigError, match=r"scheduler\.params.*'min_lrr'"):
        build_scheduler(_optimizer(), SchedulerConfig(name="cosine", params={"min_lrr": 0.0}), 5)
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_scheduler(_optimizer(), SchedulerConfig(name="cosine", warmup_epochs=5), 5)


def test_scheduler_names():
    assert SCHEDULERS == ("cosine", "none", "plateau", "step")


class _WithBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)


def test_backbone_lr_scale_gives_the_backbone_its_own_lr_through_the_schedule():
    model = _WithBackbone()
    cfg = OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.05, backbone_lr_scale=0.2)
    opt = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert all(lr_of[id(p)] == pytest.approx(0.002) for p in model.backbone.parameters())
    assert all(lr_of[id(p)] == pytest.approx(0.01) for p in model.head.parameters())
    assert decay_of[id(model.backbone[0].weight)] == 0.05 and decay_of[id(model.backbone[1].weight)] == 0.0
    assert decay_of[id(model.head.weight)] == 0.05 and decay_of[id(model.head.bias)] == 0.0
    assert len(lr_of) == len(list(model.parameters()))
    sched = build_scheduler(opt, SchedulerConfig(name="cosine"), 4)
    for epoch in range(4):
        head_lr, backbone_lr = opt.param_groups[0]["lr"], opt.param_groups[-1]["lr"]
        assert head_lr == pytest.approx(0.01 * (1 + math.cos(math.pi * epoch / 4)) / 2)
        assert backbone_lr == pytest.approx(0.2 * head_lr)
        assert sched.lr == head_lr  # the logged lr is the heads'
        opt.step()
        sched.step()
    # Scale 1 keeps the two groups that existing checkpoints hold.
    assert len(build_optimizer(model, OptimizerConfig(name="adamw", weight_decay=0.05)).param_groups) == 2


def test_backbone_lr_scale_needs_a_backbone_and_no_shared_warmup():
    cfg = OptimizerConfig(name="adamw", lr=0.01, backbone_lr_scale=0.5)
    with pytest.raises(ConfigError, match="backbone_lr_scale needs a model with a backbone"):
        build_optimizer(_model(), cfg)
    opt = build_optimizer(_WithBackbone(), cfg)
    with pytest.raises(ConfigError, match="scheduler.warmup_epochs .*backbone_lr_scale"):
        build_scheduler(opt, SchedulerConfig(name="cosine", warmup_epochs=1), 3)
    with pytest.raises(ConfigError, match="optimizer.backbone_lr_scale"):
        from maskstatus.config import load_config

        load_config(None, ["optimizer.backbone_lr_scale=0"])


def test_training_with_a_backbone_lr_scale_saves_both_lrs(tiny_config):
    from maskstatus.train.trainer import train
    from maskstatus.runs import RunDir, load_checkpoint

    result = train(tiny_config("train.epochs=1", "train.limit_train_batches=2", "optimizer.lr=0.004",
                               "optimizer.backbone_lr_scale=0.25"))
    groups = load_checkpoint(RunDir(result.run_dir).last)["optimizer"]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([0.004, 0.004, 0.001, 0.001])
