"""Losses chosen by name from the config, and the per-head loss the trainer calls.

Every loss here maps ``(logits (N, C), target (N,) long) -> scalar`` and works for
any number of classes, so the same term can serve the 18-way head and each task
head. ``build_loss`` turns a :class:`~maskstatus.config.LossConfig` into a
:class:`TaskLoss` that sums the configured terms over the heads a model outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, overload

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .age import (
    AGE_BINS,
    AGE_HEAD_SIZES,
    AGE_RANKS,
    AGE_YEAR_HEADS,
    AGE_YEARS,
    age_distribution_targets,
    age_rank_targets,
)
from .config import ConfigError, LossConfig
from .labels import NUM_CLASSES, TASKS, split_class_probs
from .models.heads import SINGLE_KEY
from .registry import Registry

_logger = logging.getLogger(__name__)

LOSSES: Registry = Registry("loss")

WeightArg = Sequence[float] | None


@overload
def _on(t: None, ref: torch.Tensor) -> None: ...
@overload
def _on(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor: ...
def _on(t: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor | None:
    # The trainer may build the loss before the model moves to its device and
    # never move the loss, so buffers follow the logits here (no-op if already there).
    return None if t is None else t.to(ref.device)


def _weight_tensor(weight: WeightArg) -> torch.Tensor | None:
    if weight is None:
        return None
    w = torch.as_tensor(list(weight), dtype=torch.float32)
    if w.ndim != 1 or torch.any(w < 0):
        raise ValueError(f"per-class weight must be a flat list of non-negative floats, got {list(weight)}")
    return w


class CrossEntropy(nn.Module):
    """Cross entropy with optional per-class weight and label smoothing."""

    weight: torch.Tensor | None  # a buffer

    def __init__(self, weight: WeightArg = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), target, weight=_on(self.weight, logits), label_smoothing=self.label_smoothing
        )

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}, weighted={self.weight is not None}"


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): ``-alpha_y * (1 - p_y)^gamma * log p_y``.

    ``alpha`` is either one float for all classes or a per-class list. With a
    per-class ``weight`` the mean is weighted the way ``F.cross_entropy`` does it
    (sum(w_i * l_i) / sum(w_i)), so ``gamma=0`` reproduces cross entropy exactly.
    """

    alpha: torch.Tensor | None  # buffers
    weight: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        weight: WeightArg = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        if alpha is None or isinstance(alpha, (int, float)):
            self.alpha_scalar: float | None = None if alpha is None else float(alpha)
            self.register_buffer("alpha", None, persistent=False)
        else:
            self.alpha_scalar = None
            self.register_buffer("alpha", _weight_tensor(alpha), persistent=False)
        self.register_buffer("weight", _weight_tensor(weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 because (1 - p)^gamma and log p underflow in half precision.
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()).clamp_min(0.0) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * _on(self.alpha, loss)[target]
        elif self.alpha_scalar is not None:
            loss = loss * self.alpha_scalar
        if self.weight is None:
            return loss.mean()
        w = _on(self.weight, loss)[target]
        return (loss * w).sum() / w.sum()

    def extra_repr(self) -> str:
        alpha = self.alpha_scalar if self.alpha is None else "per-class"
        return f"gamma={self.gamma}, alpha={alpha}, weighted={self.weight is not None}"


class SoftF1Loss(nn.Module):
    """``1 - macro soft-F1`` with softmax probabilities standing in for hard predictions.

    The average runs over the classes present in the batch's targets. A class
    with no targets has tp == 0, so its soft F1 is 0 whatever the model does: it
    adds a constant and no gradient, and with 18 classes and ordinary batch sizes
    most batches miss a few rare classes, which would keep the loss far from 0
    even for a perfect model. Probability put on such a class is still penalised,
    because it is taken away from the true class's tp.
    """

    def __init__(self, epsilon: float = 1e-7) -> None:
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"soft_f1 epsilon must be > 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(logits.float(), dim=1)
        onehot = F.one_hot(target, num_classes=logits.shape[1]).to(probs.dtype)
        tp = (probs * onehot).sum(dim=0)
        fp = (probs * (1.0 - onehot)).sum(dim=0)
        fn = ((1.0 - probs) * onehot).sum(dim=0)
        f1 = 2.0 * tp / (2.0 * tp + fp + fn + self.epsilon)
        present = onehot.sum(dim=0) > 0
        return 1.0 - f1[present].mean()

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class AgeNLL(nn.Module):
    """Gaussian negative log-likelihood of the true age in years under the predicted (mean, spread).

    Learning the spread lets the head say how sure it is, which sets how much
    probability each age group gets near a cut point. Rows without an age in
    years (target < 0: pseudo labels carry only a group) are left out.
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target >= 0
        if not bool(valid.any()):
            return pred.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
        mean, sigma = pred[valid, 0].float(), pred[valid, 1].float()
        return F.gaussian_nll_loss(mean, target[valid].float(), sigma**2)


class AgeDistributionLoss(nn.Module):
    """Label-distribution loss for an age head over whole years (DLDL-v2, Gao et al. 2018).

    KL divergence from a normal label distribution around the true age (spread ``sigma``
    years) to the predicted softmax, plus ``l1_weight`` times the absolute error of the
    predicted mean age: the KL term shapes the distribution, the L1 term aligns its mean,
    which is what the age groups are cut from. Rows without an age in years (target < 0)
    are left out, as in :class:`AgeNLL`.
    """

    def __init__(self, sigma: float = 2.0, l1_weight: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0 or l1_weight < 0:
            raise ValueError(f"age distribution loss needs sigma > 0 and l1_weight >= 0, got {sigma}, {l1_weight}")
        self.sigma, self.l1_weight = float(sigma), float(l1_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target >= 0
        if not bool(valid.any()):
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
        logits, years = logits[valid].float(), target[valid].float()
        log_q = F.log_softmax(logits, dim=-1)
        p = age_distribution_targets(years, logits.shape[-1], self.sigma)
        kl = F.kl_div(log_q, p, reduction="batchmean")
        ages = torch.arange(logits.shape[-1], dtype=log_q.dtype, device=log_q.device)
        mean = (log_q.exp() * ages).sum(dim=-1)
        return kl + self.l1_weight * (mean - years).abs().mean()

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, l1_weight={self.l1_weight}"


class AgeOrdinalLoss(nn.Module):
    """Ordinal-regression loss for a cumulative-logit age head (Niu et al. 2016; Cao et al. 2020).

    Binary cross-entropy of every threshold's P(age > k) against whether the true age exceeds
    k, averaged over thresholds: each face says something about every year boundary, and an
    answer n years off gets about n thresholds wrong, so the loss grows with the error in
    years as a regression's does. Rows without an age in years (target < 0) are left out.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target >= 0
        if not bool(valid.any()):
            return logits.sum() * 0.0  # keeps the graph (and DDP's gradient sync) intact
        logits = logits[valid].float()
        return F.binary_cross_entropy_with_logits(logits, age_rank_targets(target[valid], logits.shape[-1]))


class WeightedSum(nn.Module):
    """``sum_i weight_i * term_i(logits, target)``."""

    def __init__(self, terms: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(terms) != len(weights):
            raise ValueError(f"{len(terms)} loss terms but {len(weights)} weights")
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        self.terms = nn.ModuleList(terms)
        self.weights = [float(w) for w in weights]

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = self.weights[0] * self.terms[0](logits, target)
        for w, term in zip(self.weights[1:], self.terms[1:], strict=True):
            total = total + w * term(logits, target)
        return total

    def extra_repr(self) -> str:
        return f"weights={self.weights}"


@LOSSES.register("ce")
def ce(weight: WeightArg = None, label_smoothing: float = 0.0) -> nn.Module:
    return CrossEntropy(weight=weight, label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(gamma: float = 2.0, alpha: float | Sequence[float] | None = None, weight: WeightArg = None) -> nn.Module:
    return FocalLoss(gamma=gamma, alpha=alpha, weight=weight)


@LOSSES.register("label_smoothing")
def label_smoothing(smoothing: float = 0.1, weight: WeightArg = None) -> nn.Module:
    # The default is deliberately non-zero: choosing this loss by name and getting
    # plain cross entropy (smoothing 0) would be a silent no-op.
    return CrossEntropy(weight=weight, label_smoothing=smoothing)


@LOSSES.register("soft_f1")
def soft_f1(epsilon: float = 1e-7) -> nn.Module:
    return SoftF1Loss(epsilon=epsilon)


class TaskLoss(nn.Module):
    """Sum of per-head losses; the module the trainer calls.

    ``forward(outputs, targets)`` computes, for every head key in ``outputs`` that
    this loss knows ("class" for the single 18-way head; "mask", "gender", "age"
    for multitask), the head's weighted sum of terms against ``targets[key]``,
    scaled by the head weight (the config's task weight; 1 for "class").
    Returns ``(total, parts)`` where ``parts[key]`` is the head's loss before the
    head weight, detached, for logging.
    """

    # Heads whose targets live under another key: an age distribution learns from the age in years.
    TARGET_KEYS: ClassVar[dict[str, str]] = {AGE_BINS: AGE_YEARS, AGE_RANKS: AGE_YEARS}

    def __init__(self, head_losses: Mapping[str, nn.Module], head_weights: Mapping[str, float]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(dict(head_losses))
        self.head_weights = {k: float(head_weights.get(k, 1.0)) for k in self.heads}

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        keys = [k for k in outputs if k in self.heads]
        if not keys:
            raise KeyError(f"no model output matches a loss head: outputs {sorted(outputs)}, heads {list(self.heads)}")
        total: torch.Tensor | None = None
        parts: dict[str, torch.Tensor] = {}
        for key in keys:
            target_key = self.TARGET_KEYS.get(key, key)
            if target_key not in targets:
                raise KeyError(f"targets have no {target_key!r} (have {sorted(targets)}) for the {key!r} output")
            loss = self.heads[key](outputs[key], targets[target_key])
            parts[key] = loss.detach()
            weighted = self.head_weights[key] * loss
            total = weighted if total is None else total + weighted
        assert total is not None
        return total, parts

    def extra_repr(self) -> str:
        return f"head_weights={self.head_weights}"


# Target keys of a teacher's soft targets (filled by train/teacher.py): its 18-class probabilities
# (N, 18) and mean years (N,), NaN on rows it does not cover.
TEACHER_PROBS, TEACHER_YEARS = "teacher_probs", "teacher_years"


class DistillLoss(nn.Module):
    """Knowledge distillation (Hinton et al. 2015) at temperature 1 on top of a :class:`TaskLoss`.

    ``(1 - weight) * task loss + weight * teacher loss``, where the teacher loss sums, with the
    same head weights, each head's cross entropy to the teacher's probabilities of that head (the
    18 classes, or the task's marginal of them) and, for an age head in years, the head's own age
    loss against the teacher's mean years. The temperature stays 1 because the teacher is given as
    probabilities (an OOF file), not logits. Rows the teacher does not cover (NaN) learn from their
    labels only; batches without teacher targets (validation) get the plain task loss.
    """

    def __init__(self, task_loss: TaskLoss, weight: float) -> None:
        super().__init__()
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"distillation weight must be in (0, 1], got {weight}")
        self.task_loss, self.weight = task_loss, float(weight)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hard, parts = self.task_loss(outputs, targets)
        if TEACHER_PROBS not in targets:
            return hard, parts
        soft = self._teacher_loss(outputs, targets[TEACHER_PROBS].float(), targets[TEACHER_YEARS].float())
        return (1.0 - self.weight) * hard + self.weight * soft, parts

    def _teacher_loss(
        self, outputs: Mapping[str, torch.Tensor], probs: torch.Tensor, years: torch.Tensor
    ) -> torch.Tensor:
        covered = torch.isfinite(probs).all(dim=1)
        marginals = split_class_probs(torch.nan_to_num(probs))
        total = next(iter(outputs.values())).sum() * 0.0  # keeps the graph when no row is covered
        for key, out in outputs.items():
            if key not in self.task_loss.heads:
                continue
            if key in AGE_YEAR_HEADS:
                # The age losses skip rows whose target is < 0.
                loss = self.task_loss.heads[key](out, torch.where(torch.isfinite(years), years, -1.0))
            elif bool(covered.any()):
                target = probs if key == SINGLE_KEY else marginals[key]
                log_q = F.log_softmax(out[covered].float(), dim=-1)
                loss = -(target[covered] * log_q).sum(dim=-1).mean()
            else:
                continue
            total = total + self.task_loss.head_weights[key] * loss
        return total

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def _head_sizes(heads: Sequence[str] | Mapping[str, int]) -> dict[str, int]:
    known = {SINGLE_KEY: NUM_CLASSES, **TASKS, **AGE_HEAD_SIZES}
    if isinstance(heads, Mapping):
        sizes = {str(k): int(v) for k, v in heads.items()}
    else:
        unknown = [h for h in heads if h not in known]
        if unknown:
            raise ValueError(f"unknown head(s) {unknown}; known heads are {list(known)}")
        sizes = {h: known[h] for h in heads}
    if not sizes:
        raise ValueError("build_loss needs at least one head")
    return sizes


def _term_params(params: dict[str, Any], head: str, where: str) -> dict[str, Any]:
    """Pick the per-head entry of a ``weight``/``alpha`` given as {head: list}."""
    out = dict(params)
    for key in ("weight", "alpha"):
        value = out.get(key)
        if isinstance(value, Mapping):
            # Terms are shared by all heads, but per-class lists depend on the head's
            # class count, so multitask configs give one list per head.
            unknown = sorted(set(value) - {SINGLE_KEY, *TASKS})
            if unknown:
                raise ConfigError(f"{where}.params.{key}: unknown head(s) {unknown}")
            out[key] = value.get(head)
    return out


def build_loss(cfg: LossConfig, heads: Sequence[str] | Mapping[str, int]) -> TaskLoss | DistillLoss:
    """Build the :class:`TaskLoss` for a model with the given output heads.

    ``heads`` is a list of head names ("class" or task names, sizes from
    ``labels``) or a mapping head -> number of classes. Per-class ``weight`` or
    ``alpha`` lists are checked against each head's size; for multitask they may
    be given as ``{head: list}`` (heads left out get none). The age regression
    head (``age_years``) always trains with :class:`AgeNLL` and the age distribution
    head (``age_bins``) with :class:`AgeDistributionLoss` (``loss.age_distribution``)
    and the ordinal head (``age_ranks``) with :class:`AgeOrdinalLoss`: the configured
    terms are classification losses. With ``loss.distill`` the
    :class:`TaskLoss` is wrapped in a :class:`DistillLoss`.
    """
    sizes = _head_sizes(heads)
    head_losses: dict[str, nn.Module] = {}
    for head, num_classes in sizes.items():
        if head == AGE_YEARS:
            head_losses[head] = AgeNLL()
            continue
        if head == AGE_BINS:
            head_losses[head] = AgeDistributionLoss(cfg.age_distribution.sigma, cfg.age_distribution.l1_weight)
            continue
        if head == AGE_RANKS:
            head_losses[head] = AgeOrdinalLoss()
            continue
        terms: list[nn.Module] = []
        for i, term in enumerate(cfg.terms):
            where = f"loss.terms[{i}]"
            if term.name not in LOSSES:
                raise ConfigError(f"{where}.name: unknown loss {term.name!r}; known: {', '.join(LOSSES.names())}")
            params = _term_params(term.params, head, where)
            for key in ("weight", "alpha"):
                value = params.get(key)
                if value is not None and not isinstance(value, (int, float)) and len(value) != num_classes:
                    raise ConfigError(
                        f"{where}.params.{key}: head {head!r} has {num_classes} classes but {len(value)} values"
                    )
            try:
                terms.append(LOSSES.build(term.name, **params))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{where}.params: {exc}") from None
        head_losses[head] = WeightedSum(terms, [t.weight for t in cfg.terms])
    head_weights = {
        h: cfg.task_weights.get("age" if h in AGE_YEAR_HEADS else h, 1.0) if h in (*TASKS, *AGE_YEAR_HEADS) else 1.0
        for h in sizes
    }
    _logger.debug("loss heads %s, head weights %s", sorted(sizes), head_weights)
    task_loss = TaskLoss(head_losses, head_weights)
    return DistillLoss(task_loss, cfg.distill.weight) if cfg.distill is not None else task_loss


# Terms whose factories take a per-class ``weight``.
_WEIGHTED_TERMS = ("ce", "focal", "label_smoothing")


def class_weights(targets: Mapping[str, np.ndarray], heads: Sequence[str], mode: str) -> dict[str, list[float]]:
    """Per-class loss weights per head from the training targets' frequencies, normalised to mean 1.

    ``inverse`` weights a class by 1/count, ``sqrt_inverse`` by 1/sqrt(count) (milder).
    A class absent from training gets weight 0 (nothing to learn from, nothing to up-weight).
    The age heads that learn from years (regression, distribution, ordinal) have no classes and get none.
    """
    if mode not in ("inverse", "sqrt_inverse"):
        raise ValueError(f"class weight mode must be inverse or sqrt_inverse, got {mode!r}")
    sizes = _head_sizes([h for h in heads if h not in AGE_YEAR_HEADS])
    out: dict[str, list[float]] = {}
    for head, k in sizes.items():
        counts = np.bincount(np.asarray(targets[head], dtype=np.int64), minlength=k).astype(np.float64)
        w = np.zeros(k)
        present = counts > 0
        w[present] = 1.0 / (counts[present] if mode == "inverse" else np.sqrt(counts[present]))
        w *= present.sum() / w.sum()
        out[head] = w.round(6).tolist()
    return out


def with_class_weights(cfg: LossConfig, weights: Mapping[str, list[float]]) -> LossConfig:
    """A copy of the loss config whose ce/focal/label_smoothing terms carry per-head class weights.

    A weight already given in a term's params wins: the config is explicit there.
    """
    terms = [
        t.model_copy(update={"params": {**t.params, "weight": dict(weights)}})
        if t.name in _WEIGHTED_TERMS and "weight" not in t.params
        else t
        for t in cfg.terms
    ]
    return cfg.model_copy(update={"terms": terms})
