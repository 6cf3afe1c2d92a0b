"""Partial fine-tuning: freeze the stem and the first N stages of a timm backbone, BatchNorm included.

Not ``timm.utils.freeze``: it freezes BatchNorm by swapping the modules for
``FrozenBatchNorm2d``, which turns their parameters into buffers and drops
``num_batches_tracked``. A checkpoint saved while frozen then no longer loads
into the model ``predict`` builds, the EMA copy and the optimizer keep the old
parameter objects after ``unfreeze``, and a resumed run's optimizer state no
longer matches its parameters. Holding the frozen stages' BatchNorm layers in
eval mode freezes the same statistics and leaves the module tree as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch.nn as nn
from timm.models import group_parameters

from ..errors import ConfigError


@dataclass
class FrozenStages:
    """The parameters and BatchNorm layers of the frozen stages, and whether they are frozen now."""

    params: list[nn.Parameter] = field(default_factory=list)
    norms: list[nn.modules.batchnorm._BatchNorm] = field(default_factory=list)
    frozen: bool = False

    def __bool__(self) -> bool:
        return bool(self.params)

    def set_frozen(self, frozen: bool) -> None:
        """Stop (or restart) the gradients of the frozen stages; their BatchNorm follows at `hold_norms`."""
        self.frozen = frozen
        for p in self.params:
            p.requires_grad_(not frozen)

    def hold_norms(self) -> None:
        """Keep the frozen stages' BatchNorm statistics fixed: call after every ``model.train()``."""
        if self.frozen:
            for m in self.norms:
                m.eval()


def stage_parameters(backbone: nn.Module, stages: int) -> list[nn.Parameter]:
    """Parameters of the stem and the first `stages` stages, found by timm's own coarse grouping.

    timm's group_matcher puts the stem in group 0 and each stage in the next
    groups for every model family, so this needs no per-architecture names.
    """
    names = _stage_parameter_names(backbone, stages)
    return [p for n, p in backbone.named_parameters() if n in names]


def freeze_stages(backbone: nn.Module, stages: int) -> FrozenStages:
    """Freeze the stem and the first `stages` stages: no gradients, and BatchNorm statistics held."""
    names = _stage_parameter_names(backbone, stages)
    params = [p for n, p in backbone.named_parameters() if n in names]
    norms = [
        m
        for n, m in backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and any(f"{n}.{k}" in names for k in ("weight", "bias"))
    ]
    stages_ = FrozenStages(params, norms)
    if params:
        stages_.set_frozen(True)
    return stages_


def _stage_parameter_names(backbone: nn.Module, stages: int) -> set[str]:
    if stages <= 0:
        return set()
    # timm's models define group_matcher; nn.Module's attribute lookup does not know its type
    group_matcher = cast(Callable[..., Any], backbone.group_matcher)
    groups = group_parameters(backbone, group_matcher(coarse=True))
    ordered = [groups[k] for k in sorted(groups)]
    if stages >= len(ordered):
        raise ConfigError(
            f"train.freeze_stages={stages}, but this backbone has only {len(ordered) - 1} stages after its stem"
        )
    return {n for group in ordered[: stages + 1] for n in group}
