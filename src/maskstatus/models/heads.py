"""Classification heads on pooled backbone features, and the full model.

Every head returns a dict of logits: ``{"class": (N, 18)}`` for the single head,
``{"mask": (N, 3), "gender": (N, 2), "age": (N, 3)}`` for the multitask head. A
multitask head that regresses the exact age returns ``"age_years"`` (N, 2), the
predicted mean and spread in years, in place of the age logits; one that predicts a
distribution over whole years returns its logits ``"age_bins"`` and, derived from
them, ``"age_years"``; an ordinal one returns ``"age_ranks"``, the logits of
P(age > k) for every whole year k, and ``"age_years"``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..age import (
    AGE_BINS,
    AGE_HEAD_SIZES,
    AGE_RANKS,
    AGE_YEAR_HEADS,
    AGE_YEARS,
    Cuts,
    bins_to_years,
    group_probs,
    ranks_to_years,
    thresholds_cuts,
)
from ..labels import DEFAULT_AGE_THRESHOLDS, NUM_CLASSES, TASKS, combine_task_probs, split_class_probs
from ..registry import Registry

HEADS: Registry = Registry("head")

SINGLE_KEY = "class"

# The regression layer's raw outputs are O(1) at initialisation; these put them on the scale of
# adult ages in years (mean around 40, spread of a few years) so training starts sensibly.
AGE_CENTER, AGE_SCALE = 40.0, 20.0
MIN_SIGMA, SIGMA_SCALE = 1.0, 5.0
# The smallest logistic scale (years) of an ordinal head: below it P(age > k) would jump from 0 to 1
# within a year, and one face's loss would hang on which side of a whole year its location fell.
ORDINAL_MIN_SCALE = 0.5
# What each age_output puts in place of the age logits (its width is AGE_HEAD_SIZES[key]).
AGE_OUTPUTS = {"years": AGE_YEARS, "distribution": AGE_BINS, "ordinal": AGE_RANKS}


class MultiSampleDropoutLinear(nn.Module):
    """Dropout + linear, with the logits averaged over several dropout masks while training.

    Averaging over masks lowers the variance of the training signal from dropout
    (multi-sample dropout, Inoue 2019). Because the layer is linear, the mean of the
    logits equals the logits of the mean dropped-out input, so only one matmul is
    needed. In eval mode dropout is the identity and one pass gives the same result.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.0, samples: int = 1) -> None:
        super().__init__()
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.samples = samples
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.samples == 1 or isinstance(self.drop, nn.Identity):
            return self.fc(self.drop(x))
        dropped = torch.stack([self.drop(x) for _ in range(self.samples)]).mean(dim=0)
        return self.fc(dropped)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"


class CumulativeLogitLinear(nn.Module):
    """Cumulative-logit ordinal layer: logit of P(y > k) = (mu(x) - theta_k) / s(x) for k = 0..ranks-1.

    A location ``mu`` and a scale ``s`` per face, in years and parametrised as the regression
    head's mean and spread (so the layer learns at the regression's pace), and thresholds
    ``theta_k`` in years, learnt and kept increasing by construction (the first plus a running
    sum of positive steps, starting at k + 0.5). P(y > k) therefore never rises with k and the
    implied distribution over whole years is always valid: a location-scale cumulative-logit
    model, whose learnt thresholds let the years be spaced unevenly where the data ask for it.
    """

    def __init__(self, in_features: int, ranks: int, dropout: float = 0.0, samples: int = 1) -> None:
        super().__init__()
        if ranks < 1:
            raise ValueError(f"ordinal layer needs ranks >= 1, got {ranks}")
        self.location_scale = MultiSampleDropoutLinear(in_features, 2, dropout, samples)
        self.first = nn.Parameter(torch.tensor(0.5))
        one = torch.log(torch.expm1(torch.tensor(1.0)))  # inverse softplus of 1 year
        self.steps = nn.Parameter(one.repeat(ranks - 1))

    def thresholds(self) -> torch.Tensor:
        rest = self.first + torch.cumsum(F.softplus(self.steps), dim=0)
        return torch.cat([self.first[None], rest])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.location_scale(x).float()
        mu = AGE_CENTER + AGE_SCALE * raw[:, :1]
        scale = ORDINAL_MIN_SCALE + SIGMA_SCALE * F.softplus(raw[:, 1:])
        return (mu - self.thresholds()[None, :]) / scale


@HEADS.register("single")
class SingleHead(nn.Module):
    """One softmax over all 18 classes."""

    output_sizes: ClassVar[dict[str, int]] = {SINGLE_KEY: NUM_CLASSES}

    def __init__(self, in_features: int, dropout: float = 0.0, samples: int = 1) -> None:
        super().__init__()
        self.fc = MultiSampleDropoutLinear(in_features, NUM_CLASSES, dropout, samples)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {SINGLE_KEY: self.fc(features)}


@HEADS.register("multitask")
class MultiTaskHead(nn.Module):
    """One softmax per task (mask, gender, age); the 18-class joint is their product.

    With ``age_output="years"`` the age task is a regression of the exact age: a
    mean and a spread in years (``"age_years"``), turned into age-group
    probabilities at prediction time (see ``maskstatus.age``). With
    ``age_output="distribution"`` it is a softmax over whole years (``"age_bins"``,
    trained on label distributions) whose mean and spread are ``"age_years"``; with
    ``age_output="ordinal"`` a cumulative-logit layer (``"age_ranks"``) whose implied
    distribution's mean and spread are ``"age_years"``.
    """

    def __init__(
        self,
        in_features: int,
        dropout: float = 0.0,
        samples: int = 1,
        tasks: Sequence[str] = tuple(TASKS),
        age_output: str = "groups",
    ) -> None:
        super().__init__()
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ValueError(f"multitask head tasks must be a non-empty subset of {list(TASKS)}, got {list(tasks)}")
        if age_output != "groups" and age_output not in AGE_OUTPUTS:
            raise ValueError(f"age_output must be 'groups' or one of {list(AGE_OUTPUTS)}, got {age_output!r}")
        # A subset of tasks makes a per-task model; the missing tasks count as uniform when combined.
        self.output_sizes = {t: TASKS[t] for t in TASKS if t in tasks}
        if age_output != "groups" and "age" in self.output_sizes:
            key = AGE_OUTPUTS[age_output]
            size = AGE_HEAD_SIZES[key]
            self.output_sizes = {
                (key if t == "age" else t): (size if t == "age" else k) for t, k in self.output_sizes.items()
            }
        self.tasks = nn.ModuleDict(
            {
                key: (CumulativeLogitLinear if key == AGE_RANKS else MultiSampleDropoutLinear)(
                    in_features, k, dropout, samples
                )
                for key, k in self.output_sizes.items()
            }
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {key: layer(features) for key, layer in self.tasks.items()}
        if AGE_YEARS in out:
            raw = out[AGE_YEARS].float()
            mean = AGE_CENTER + AGE_SCALE * raw[:, 0]
            sigma = MIN_SIGMA + SIGMA_SCALE * F.softplus(raw[:, 1])
            out[AGE_YEARS] = torch.stack([mean, sigma], dim=1)
        if AGE_BINS in out:
            out[AGE_YEARS] = bins_to_years(out[AGE_BINS])
        if AGE_RANKS in out:
            out[AGE_YEARS] = ranks_to_years(out[AGE_RANKS])
        return out


class MaskStatusModel(nn.Module):
    """Backbone (pooled features) + head (dict of logits)."""

    def __init__(self, backbone: nn.Module, head: SingleHead | MultiTaskHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def output_keys(self) -> list[str]:
        """Names of the logits the head returns (what the loss is built for)."""
        return list(self.head.output_sizes)

    @property
    def prediction_keys(self) -> list[str]:
        """The outputs prediction reads: an age head's own logits give way to the years derived from them."""
        keys = [AGE_YEARS if k in AGE_YEAR_HEADS else k for k in self.output_keys]
        return list(dict.fromkeys(keys))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(x))


def _check_outputs(outputs: Mapping[str, torch.Tensor]) -> bool:
    """True for single-head outputs, False for (possibly per-task) multitask ones; anything else is an error."""
    if SINGLE_KEY in outputs:
        return True
    if not any(t in outputs for t in (*TASKS, AGE_YEARS)):
        raise ValueError(f"model outputs have keys {sorted(outputs)}; expected {SINGLE_KEY!r} or some of {list(TASKS)}")
    return False


def outputs_to_probs(outputs: Mapping[str, torch.Tensor], age_cuts: Cuts | None = None) -> torch.Tensor:
    """Logits dict -> 18-class probabilities (N, 18), float32 even under mixed precision.

    ``age_cuts`` split a regression head's predicted years into age groups (default: 29.5 and 59.5).
    """
    if _check_outputs(outputs):
        return outputs[SINGLE_KEY].float().softmax(dim=-1)
    return combine_task_probs(outputs_to_task_probs(outputs, age_cuts))


def outputs_to_task_probs(outputs: Mapping[str, torch.Tensor], age_cuts: Cuts | None = None) -> dict[str, torch.Tensor]:
    """Logits dict -> per-task probabilities ``{task: (N, k_task)}``."""
    if _check_outputs(outputs):
        return split_class_probs(outputs[SINGLE_KEY].float().softmax(dim=-1))
    probs = {t: outputs[t].float().softmax(dim=-1) for t in TASKS if t in outputs}
    if AGE_YEARS in outputs:
        years = outputs[AGE_YEARS].float()
        cuts = age_cuts if age_cuts is not None else thresholds_cuts(DEFAULT_AGE_THRESHOLDS)
        probs["age"] = group_probs(years[:, 0], years[:, 1], cuts)
    return {t: probs[t] for t in TASKS if t in probs}
