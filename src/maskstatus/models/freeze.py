"""Partial fine-tuning: freeze the stem and the first N stages of a timm backbone."""

from __future__ import annotations

import torch.nn as nn
from timm.models import group_parameters

from ..errors import ConfigError


def stage_parameters(backbone: nn.Module, stages: int) -> list[nn.Parameter]:
    """Parameters of the stem and the first `stages` stages, found by timm's own coarse grouping.

    timm's group_matcher puts the stem in group 0 and each stage in the next
    groups for every model family, so this needs no per-architecture names.
    """
    if stages <= 0:
        return []
    groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    if stages >= len(ordered):
        raise ConfigError(f"train.freeze_stages={stages}, but this backbone has only {len(ordered) - 1} stages after its stem")
    names = {n for group in ordered[: stages + 1] for n in group}
    return [p for n, p in backbone.named_parameters() if n in names]


def set_trainable(params: list[nn.Parameter], trainable: bool) -> None:
    for p in params:
        p.requires_grad_(trainable)
