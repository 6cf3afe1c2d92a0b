"""Optimizers and per-epoch learning-rate schedules chosen by name from the config.

Optimizers come from timm's registry (``timm.optim.create_optimizer_v2``), fixed schedules
(cosine, step, constant) from ``timm.scheduler.create_scheduler_v2``. :class:`EpochScheduler`
gives them one calling convention: ``step(metric)`` once per epoch after validation, where
the metric (the validation score, maximised) matters only to ``plateau``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.scheduler.scheduler import Scheduler as TimmScheduler
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from .config import ConfigError, OptimizerConfig, SchedulerConfig

_logger = logging.getLogger(__name__)

ParamsLike = nn.Module | Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]

# create_optimizer_v2 arguments that would be silently ignored (they act on a model, and the
# optimizer is given ready-made groups) or that the config sets elsewhere.
_RESERVED_OPTIMIZER_KEYS = frozenset(
    {
        "params",
        "lr",
        "weight_decay",
        "opt",
        "model_or_params",
        "filter_bias_and_bn",
        "layer_decay",
        "layer_decay_min_scale",
        "layer_decay_no_opt_scale",
        "param_group_fn",
        "fallback_list",
        "fallback_no_weight_decay",
    }
)

# config name -> (timm name, {config param: (timm argument, default)}). The config keeps torch's
# parameter names rather than timm's: a resumed run re-reads the config saved in its folder, so
# renamed keys would make existing runs fail to resume.
_FIXED_SCHEDULES: dict[str, tuple[str, dict[str, tuple[str, Any]]]] = {
    "cosine": ("cosine", {"min_lr": ("min_lr", 0.0)}),
    "step": ("step", {"step_size": ("decay_epochs", 10), "gamma": ("decay_rate", 0.1)}),
    "none": ("constant", {}),
}
_PLATEAU_DEFAULTS: dict[str, Any] = {"factor": 0.1, "patience": 2, "min_lr": 0.0, "threshold": 1e-4, "cooldown": 0}
SCHEDULERS: tuple[str, ...] = tuple(sorted([*_FIXED_SCHEDULES, "plateau"]))


def param_groups(
    model_or_params: ParamsLike, weight_decay: float, lr: float | None = None, backbone_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Split parameters into a decayed group and a no-decay group (every 1-D parameter).

    Biases and normalisation scales/shifts get no weight decay: pulling BatchNorm/LayerNorm
    scales towards 0 fights the normalisation and hurts accuracy (timm's ``filter_bias_and_bn``).
    Explicit param-group dicts are passed through untouched.

    With ``backbone_lr_scale`` below 1 (a model with a ``backbone``), the backbone's parameters
    form two more groups at ``lr * backbone_lr_scale``, after the heads' two. Schedules scale
    each group from its own initial lr, so the ratio holds through the run.

    timm's own grouping (``param_groups_weight_decay``) is not used, for two concrete reasons:
    it drops parameters with ``requires_grad=False``, whereas the trainer wants frozen stages in
    the optimizer so that unfreezing needs no rebuild; and it orders the groups no-decay first
    and merges them into one at ``weight_decay=0``, so the optimizer state in existing
    checkpoints (decay group first, always two groups) would no longer load on ``--resume``.
    Its ``layer_decay`` scales every block differently; one backbone factor is simpler to tune.
    """
    if isinstance(model_or_params, nn.Module):
        params = list(model_or_params.parameters())
    else:
        items: list[Any] = list(model_or_params)
        if items and all(isinstance(p, dict) for p in items):
            return items
        params = items
    if not params:
        raise ValueError("no parameters to optimise")
    if backbone_lr_scale != 1.0:
        backbone = getattr(model_or_params, "backbone", None)
        if not isinstance(backbone, nn.Module) or lr is None:
            raise ConfigError("optimizer.backbone_lr_scale needs a model with a backbone (and the optimizer's lr)")
        in_backbone = {id(p) for p in backbone.parameters()}
        heads = [p for p in params if id(p) not in in_backbone]
        groups = _decay_groups(heads, weight_decay)
        for group in _decay_groups([p for p in params if id(p) in in_backbone], weight_decay):
            groups.append({**group, "lr": lr * backbone_lr_scale})
        return groups
    return _decay_groups(params, weight_decay)


def _decay_groups(params: list[torch.nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model_or_params: ParamsLike, cfg: OptimizerConfig) -> Optimizer:
    """timm optimizer ``cfg.name`` with ``cfg.lr``, ``cfg.weight_decay`` (not on 1-D params) and ``cfg.params``.

    Every parameter is included, frozen ones too (a parameter without a gradient is skipped by
    the optimizer step).
    """
    known = [str(n) for n in list_optimizers()]  # names only (no descriptions asked for)
    # timm accepts "lookahead_<name>"; the part after the last "_" names the optimizer.
    base_name = cfg.name.lower().split("_")[-1]
    if base_name not in known:
        others = [n for n in known if n not in ("adam", "adamw", "sgd")]
        raise ConfigError(
            f"optimizer.name: unknown optimizer {cfg.name!r}; known: adam, adamw, sgd, {', '.join(others[:8])}, ... "
            "(timm.optim.list_optimizers())"
        )
    reserved = sorted(_RESERVED_OPTIMIZER_KEYS & set(cfg.params))
    if reserved:
        raise ConfigError(
            f"optimizer.params: {reserved} cannot be set there (lr and weight_decay are optimizer.<key>; "
            "the others act on a model and are not supported)"
        )
    kwargs = dict(cfg.params)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])  # YAML gives a list; torch keeps a tuple in its state
    if base_name == "sgd":
        # timm's "sgd" is Nesterov SGD; this project's "sgd" has always been torch's classical
        # momentum (timm's "momentum"), and the shipped configs and recorded results assume that.
        kwargs.setdefault("nesterov", False)
    groups = param_groups(model_or_params, cfg.weight_decay, cfg.lr, cfg.backbone_lr_scale)
    try:
        return create_optimizer_v2(groups, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer.params: {exc}") from None


def _warmup_factor(epoch: int, warmup_epochs: int) -> float:
    # Starts at lr / (warmup + 1), not 0: an epoch at lr 0 is a wasted epoch, and after
    # ``warmup_epochs`` steps the factor is exactly 1.
    return min(1.0, (epoch + 1) / (warmup_epochs + 1))


class EpochScheduler:
    """One learning-rate schedule stepped once per epoch, after validation.

    Its state is the number of epochs stepped (plus the plateau counters): a fixed schedule's lr
    is a function of that count, so the state of a run loaded into the schedule of a longer
    run (an extended run) continues along the longer schedule.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        schedule: TimmScheduler | None = None,
        plateau: ReduceLROnPlateau | None = None,
        warmup_epochs: int = 0,
    ) -> None:
        if (schedule is None) == (plateau is None):
            raise ValueError("give exactly one of a timm schedule or a plateau scheduler")
        self.optimizer = optimizer
        self.schedule = schedule
        self.plateau = plateau
        # Only plateau warms up here: timm's schedules carry their own warm-up.
        self.warmup_epochs = warmup_epochs if plateau is not None else 0
        self.needs_metric = plateau is not None
        self.epoch = 0
        self._base_lrs = [float(g.setdefault("initial_lr", g["lr"])) for g in optimizer.param_groups]
        if plateau is not None and self.warmup_epochs:
            self._set_lrs([base * _warmup_factor(0, self.warmup_epochs) for base in self._base_lrs])

    def _set_lrs(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr

    def step(self, metric: float | None = None) -> None:
        """Advance one epoch; ``metric`` is the maximised validation metric (used by plateau only)."""
        if self.schedule is not None:  # exactly one of schedule and plateau is set
            self.epoch += 1
            self.schedule.step(self.epoch)  # timm: called at the end of an epoch with the next epoch's index
            return
        assert self.plateau is not None
        if self.epoch < self.warmup_epochs:  # metrics during warm-up are ignored
            self._set_lrs([base * _warmup_factor(self.epoch + 1, self.warmup_epochs) for base in self._base_lrs])
        else:
            if metric is None:
                raise ValueError("the plateau scheduler needs the validation metric: call step(metric)")
            self.plateau.step(float(metric))
        self.epoch += 1

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        # Plain ints, floats and lists only (plateau's state dict is too): checkpoints are
        # loaded with torch.load(weights_only=True). timm's own state dict is not saved: it holds
        # the run length, which an extended run must not restore.
        return {
            "epoch": self.epoch,
            "scheduler": None if self.plateau is None else self.plateau.state_dict(),
            # Plateau's lr is its state (it multiplies the optimizer's current lr), so it is saved:
            # resuming is then exact even if the optimizer state is not restored, or restored after this.
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state of :meth:`state_dict`, also of the torch-based schedulers that preceded this class.

        Those saved the same ``epoch``/``scheduler``/``lrs`` keys (``scheduler`` being the
        plateau state for plateau), so checkpoints written before the switch to timm resume.
        """
        self.epoch = int(state["epoch"])
        if self.schedule is not None:
            self.schedule.step(self.epoch)
            return
        assert self.plateau is not None
        self.plateau.load_state_dict(state["scheduler"])
        lrs = state["lrs"]
        if len(lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(lrs)} param groups, optimizer has {len(self.optimizer.param_groups)}"
            )
        self._set_lrs([float(lr) for lr in lrs])

    def __repr__(self) -> str:
        kind = type(self.schedule or self.plateau).__name__
        return f"EpochScheduler({kind}, epoch={self.epoch}, lr={self.lr:.3g})"


def _params(cfg: SchedulerConfig, allowed: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(cfg.params) - set(allowed))
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        raise ConfigError(f"scheduler.params: unknown key(s) {unknown} for {cfg.name!r}; it takes: {known}")
    return {**allowed, **cfg.params}


def build_scheduler(optimizer: Optimizer, cfg: SchedulerConfig, epochs: int) -> EpochScheduler:
    """Schedule ``cfg.name`` over ``epochs`` epochs with ``cfg.warmup_epochs`` of linear warm-up.

    ``cosine`` spans epochs ``warmup .. epochs`` and reaches ``min_lr`` one step after the last
    epoch; ``step`` counts its steps after the warm-up; ``plateau`` (mode max) watches the metric
    only after the warm-up; ``none`` is constant.
    """
    if cfg.name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: unknown scheduler {cfg.name!r}; known: {', '.join(SCHEDULERS)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    warmup = cfg.warmup_epochs
    if warmup >= epochs:
        raise ConfigError(f"scheduler.warmup_epochs={warmup} must be smaller than the number of epochs ({epochs})")
    if cfg.name == "plateau":
        # Not timm's PlateauLRScheduler: it is deprecated in timm 1.0 (FutureWarning on every
        # build) and its state dict keeps only the best metric, so a resumed run would restart
        # the patience and cooldown counts. torch's ReduceLROnPlateau saves all of its state.
        p = _params(cfg, _PLATEAU_DEFAULTS)
        try:
            plateau = ReduceLROnPlateau(optimizer, mode="max", **p)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scheduler.params: {exc}") from None
        sched = EpochScheduler(optimizer, plateau=plateau, warmup_epochs=warmup)
    else:
        timm_name, mapping = _FIXED_SCHEDULES[cfg.name]
        p = _params(cfg, {key: default for key, (_, default) in mapping.items()})
        if p.get("min_lr", 0.0) < 0:
            raise ConfigError(f"scheduler.params: min_lr must be >= 0, got {p['min_lr']}")
        if "step_size" in p and (not isinstance(p["step_size"], int) or p["step_size"] < 1):
            raise ConfigError(f"scheduler.params: step_size must be an integer >= 1, got {p['step_size']!r}")
        lrs = {float(g["lr"]) for g in optimizer.param_groups}
        if warmup and len(lrs) > 1:
            # timm warms every group up from one shared initial lr.
            raise ConfigError(
                f"scheduler.warmup_epochs needs one lr for all param groups, got {sorted(lrs)} "
                "(optimizer.backbone_lr_scale below 1 gives the backbone its own lr)"
            )
        schedule, _ = create_scheduler_v2(
            optimizer,
            sched=timm_name,
            # warmup_prefix: the schedule proper (the cosine) spans the epochs after the warm-up.
            num_epochs=epochs - warmup,
            warmup_epochs=warmup,
            warmup_prefix=True,
            # timm's warm-up is linear from warmup_lr: lr / (w + 1) makes epoch k train at
            # lr * (k + 1) / (w + 1), never at 0 (an epoch at lr 0 would be wasted).
            warmup_lr=min(lrs) / (warmup + 1),
            **{mapping[key][0]: value for key, value in p.items()},
        )
        sched = EpochScheduler(optimizer, schedule=schedule)
    _logger.debug("built %r", sched)
    return sched
