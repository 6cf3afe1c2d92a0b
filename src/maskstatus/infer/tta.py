"""Test-time augmentation: extra views of a normalised batch, and how their predictions are averaged.

A view maps a batch ``(N, C, H, W)`` (already normalised, as the model sees it)
to a batch of the same shape. ``TTA`` maps a name to a factory returning that
name's views, so one name can stand for several (``shift`` is four). Views are
separate, not composed: ``["hflip", "shift"]`` is the plain view + 1 flip + 4
shifts = 6 forward passes per batch.

Probabilities are averaged after the softmax. A multi-task head is averaged per
task and the 18-class joint is rebuilt from the averaged marginals, so the joint
stays the product of the task probabilities the head was trained to predict. An
age regression head's years (mean and spread) are averaged before they become
age-group probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from ..age import AGE_YEAR_HEADS, AGE_YEARS, Cuts, mean_years
from ..choices import TTA_NAMES
from ..errors import UsageError
from ..labels import combine_task_probs
from ..models.heads import SINGLE_KEY, outputs_to_probs, outputs_to_task_probs
from ..registry import Registry

View = Callable[[torch.Tensor], torch.Tensor]

TTA: Registry = Registry("tta", declared=TTA_NAMES)

# Faces in the data are roughly centred but not exactly: a few percent of the size
# covers that jitter without pushing the chin or forehead (mask position!) out of frame.
SHIFT_FRACTION = 0.04


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def hflip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=(-1,))


def translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Move the image content by (dy, dx) pixels (positive: down/right), keeping the size.

    The uncovered border repeats the edge pixels ("replicate" padding). Zero
    padding would paint a band of the dataset-mean colour that never occurs in
    training images; reflection would mirror face parts into the frame.
    """
    h, w = x.shape[-2:]
    pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))  # left, right, top, bottom
    padded = F.pad(x, pad, mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top : top + h, left : left + w]


def shift(x: torch.Tensor, sy: int, sx: int, fraction: float = SHIFT_FRACTION) -> torch.Tensor:
    """Translate by ``fraction`` of the height/width (at least one pixel) in the direction (sy, sx)."""
    h, w = x.shape[-2:]
    dy = sy * max(1, round(fraction * h))
    dx = sx * max(1, round(fraction * w))
    return translate(x, dy, dx)


@TTA.register("hflip")
def hflip_views() -> list[View]:
    return [hflip]


@TTA.register("shift")
def shift_views(fraction: float = SHIFT_FRACTION) -> list[View]:
    """Four views: content moved right, left, down, up."""
    return [partial(shift, sy=sy, sx=sx, fraction=fraction) for sy, sx in ((0, 1), (0, -1), (1, 0), (-1, 0))]


def tta_views(names: Sequence[str]) -> list[View]:
    """The identity first, then the views of each named augmentation (a repeated name counts once)."""
    unknown = [name for name in names if name not in TTA]
    if unknown:
        raise UsageError(
            f"unknown test-time augmentation(s) {', '.join(map(repr, unknown))}; known: {', '.join(TTA.names())}"
        )
    views: list[View] = [identity]
    for name in dict.fromkeys(names):
        views.extend(TTA.build(name))
    return views


def average_view_probs(
    view_outputs: Sequence[Mapping[str, torch.Tensor]], age_cuts: Cuts | None = None
) -> torch.Tensor:
    """Logits dicts of the same batch under several views -> averaged 18-class probabilities (N, 18)."""
    if not view_outputs:
        raise ValueError("average_view_probs needs the outputs of at least one view")
    if len(view_outputs) == 1:
        return outputs_to_probs(view_outputs[0], age_cuts)
    if SINGLE_KEY in view_outputs[0]:
        return torch.stack([outputs_to_probs(o) for o in view_outputs]).mean(dim=0)
    years = mean_years(view_outputs)
    rest = [{k: v for k, v in o.items() if k not in AGE_YEAR_HEADS} for o in view_outputs]
    averaged = {}
    if rest[0]:  # empty for a model that only regresses the age
        per_view = [outputs_to_task_probs(o) for o in rest]
        averaged = {t: torch.stack([p[t] for p in per_view]).mean(dim=0) for t in per_view[0]}
    if years is not None:
        averaged["age"] = outputs_to_task_probs({AGE_YEARS: years}, age_cuts)["age"]
    return combine_task_probs(averaged)


def tta_probs(
    forward: Callable[[torch.Tensor], Mapping[str, torch.Tensor]],
    images: torch.Tensor,
    names: Sequence[str],
    age_cuts: Cuts | None = None,
) -> torch.Tensor:
    """18-class probabilities of ``forward`` (a model, or a wrapper adding autocast) averaged over the views."""
    return average_view_probs([forward(view(images)) for view in tta_views(names)], age_cuts)
