"""Optimizers and per-epoch learning-rate schedules chosen by name from the config.

Schedules are torch's own ``lr_scheduler`` classes; :class:`EpochScheduler` only
gives them one calling convention: ``step(metric)`` once per epoch after
validation, where the metric (macro F1, maximised) matters only to ``plateau``.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Union

import torch
import torch.nn as nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from .config import ConfigError, OptimizerConfig, SchedulerConfig
from .registry import Registry

_logger = logging.getLogger(__name__)

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULERS: Registry = Registry("scheduler")

ParamsLike = Union[nn.Module, Iterable[torch.nn.Parameter], Iterable[dict[str, Any]]]


def param_groups(model_or_params: ParamsLike, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a no-decay group.

    Biases and normalisation scales/shifts (every 1-D parameter) get no weight
    decay: they do not multiply activations in a way that overfits, and pulling
    BatchNorm/LayerNorm scales towards 0 fights the normalisation and hurts
    accuracy (the convention of timm, BERT and the "bag of tricks" paper).
    Explicit param-group dicts are passed through untouched.
    """
    if isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
        if params and all(isinstance(p, dict) for p in params):
            return params  # type: ignore[return-value]
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters to optimise")
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


@OPTIMIZERS.register("adam")
def adam(
    params: list[dict[str, Any]],
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("adamw")
def adamw(
    params: list[dict[str, Any]],
    lr: float,
    weight_decay: float = 1e-2,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)


@OPTIMIZERS.register("sgd")
def sgd(
    params: list[dict[str, Any]],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


def build_optimizer(model_or_params: ParamsLike, cfg: OptimizerConfig) -> Optimizer:
    """Optimizer ``cfg.name`` with ``cfg.lr``, ``cfg.weight_decay`` (not on 1-D params) and ``cfg.params``."""
    if cfg.name not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name: unknown optimizer {cfg.name!r}; known: {', '.join(OPTIMIZERS.names())}")
    reserved = sorted({"params", "lr", "weight_decay"} & set(cfg.params))
    if reserved:
        raise ConfigError(f"optimizer.params: set {reserved} as optimizer.<key>, not inside optimizer.params")
    groups = param_groups(model_or_params, cfg.weight_decay)
    try:
        return OPTIMIZERS.build(cfg.name, params=groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **cfg.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"optimizer.params: {exc}") from None


class EpochScheduler:
    """One learning-rate schedule stepped once per epoch, after validation.

    ``warmup`` is used only with ReduceLROnPlateau, which ``SequentialLR`` cannot
    chain: the first ``warmup_epochs`` steps go to the warm-up, the rest to the
    main schedule. Other schedules carry their warm-up inside ``SequentialLR``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        scheduler: Union[LRScheduler, ReduceLROnPlateau],
        warmup: Optional[LambdaLR] = None,
        warmup_epochs: int = 0,
    ) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.warmup = warmup
        self.warmup_epochs = warmup_epochs if warmup is not None else 0
        self.needs_metric = isinstance(scheduler, ReduceLROnPlateau)
        self.epoch = 0

    def step(self, metric: Optional[float] = None) -> None:
        """Advance one epoch; ``metric`` is the maximised validation metric (used by plateau only)."""
        if self.warmup is not None and self.epoch < self.warmup_epochs:
            self.warmup.step()
        elif self.needs_metric:
            if metric is None:
                raise ValueError("the plateau scheduler needs the validation metric: call step(metric)")
            self.scheduler.step(float(metric))
        else:
            self.scheduler.step()
        self.epoch += 1

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "scheduler": self.scheduler.state_dict(),
            "warmup": None if self.warmup is None else self.warmup.state_dict(),
            # Cosine's recursive formula and plateau read the optimizer's current lr,
            # so the lr is saved here too: resuming is then exact even if the
            # optimizer state is not restored (or is restored after this).
            "lrs": [float(g["lr"]) for g in self.optimizer.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])
        lrs = state["lrs"]
        if len(lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"scheduler state has {len(lrs)} param groups, optimizer has {len(self.optimizer.param_groups)}"
            )
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr

    def __repr__(self) -> str:
        return f"EpochScheduler({type(self.scheduler).__name__}, epoch={self.epoch}, lr={self.lr:.3g})"


def _warmup(optimizer: Optimizer, warmup_epochs: int) -> LambdaLR:
    # Starts at lr / (warmup + 1), not 0: an epoch at lr 0 is a wasted epoch, and
    # after ``warmup_epochs`` steps the factor is exactly 1.
    return LambdaLR(optimizer, lambda e: min(1.0, (e + 1) / (warmup_epochs + 1)))


def _with_warmup(optimizer: Optimizer, main: LRScheduler, warmup_epochs: int) -> LRScheduler:
    if warmup_epochs == 0:
        return main
    return SequentialLR(optimizer, [_warmup(optimizer, warmup_epochs), main], milestones=[warmup_epochs])


@SCHEDULERS.register("none")
def constant_schedule(optimizer: Optimizer, epochs: int, warmup_epochs: int = 0) -> EpochScheduler:
    constant = LambdaLR(optimizer, lambda e: 1.0)
    return EpochScheduler(optimizer, _with_warmup(optimizer, constant, warmup_epochs))


@SCHEDULERS.register("cosine")
def cosine_schedule(optimizer: Optimizer, epochs: int, warmup_epochs: int = 0, min_lr: float = 0.0) -> EpochScheduler:
    # The cosine spans epochs warmup .. epochs and would reach min_lr one step after the last epoch:
    # reaching it *on* the last epoch would train that epoch at lr=min_lr (0 by default), wasting it.
    t_max = max(1, epochs - warmup_epochs)
    main = CosineAnnealingLR(optimizer, T_max=t_max, eta_min=min_lr)
    return EpochScheduler(optimizer, _with_warmup(optimizer, main, warmup_epochs))


@SCHEDULERS.register("step")
def step_schedule(
    optimizer: Optimizer, epochs: int, warmup_epochs: int = 0, step_size: int = 10, gamma: float = 0.1
) -> EpochScheduler:
    main = StepLR(optimizer, step_size=step_size, gamma=gamma)
    return EpochScheduler(optimizer, _with_warmup(optimizer, main, warmup_epochs))


@SCHEDULERS.register("plateau")
def plateau_schedule(
    optimizer: Optimizer,
    epochs: int,
    warmup_epochs: int = 0,
    factor: float = 0.1,
    patience: int = 2,
    min_lr: float = 0.0,
    threshold: float = 1e-4,
    cooldown: int = 0,
) -> EpochScheduler:
    # mode="max": the metric is macro F1.
    main = ReduceLROnPlateau(
        optimizer, mode="max", factor=factor, patience=patience, min_lr=min_lr, threshold=threshold, cooldown=cooldown
    )
    warm = _warmup(optimizer, warmup_epochs) if warmup_epochs else None
    return EpochScheduler(optimizer, main, warmup=warm, warmup_epochs=warmup_epochs)


def build_scheduler(optimizer: Optimizer, cfg: SchedulerConfig, epochs: int) -> EpochScheduler:
    """Schedule ``cfg.name`` over ``epochs`` epochs with ``cfg.warmup_epochs`` of linear warm-up."""
    if cfg.name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: unknown scheduler {cfg.name!r}; known: {', '.join(SCHEDULERS.names())}")
    reserved = sorted({"optimizer", "epochs", "warmup_epochs"} & set(cfg.params))
    if reserved:
        raise ConfigError(f"scheduler.params: {reserved} are not scheduler params (use scheduler.warmup_epochs)")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if cfg.warmup_epochs >= epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs={cfg.warmup_epochs} must be smaller than the number of epochs ({epochs})"
        )
    try:
        sched = SCHEDULERS.build(cfg.name, optimizer=optimizer, epochs=epochs, warmup_epochs=cfg.warmup_epochs, **cfg.params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"scheduler.params: {exc}") from None
    _logger.debug("built %r", sched)
    return sched
