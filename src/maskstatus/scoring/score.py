"""Score out-of-fold predictions with their uncertainty: metrics and person-bootstrap intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..age import read_cuts
from ..config import Config
from ..defaults import DEFAULT_SEED
from ..errors import UsageError
from ..labels import PROB_COLUMNS, TASKS
from .bootstrap import DEFAULT_BOOT, DEFAULT_LEVEL, Interval, model_bootstrap
from .oof import member_config, oof_path, read_oof


def scored_scope(cfg: Config | None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """What a folder's model is scored on: its tasks and mask codes (everything for a bare CSV, which says nothing).

    A per-task model has no 18-class metrics; a cascade expert is scored on its mask states only.
    """
    if cfg is None:
        return tuple(TASKS), (0, 1, 2)
    return tuple(cfg.model.tasks), tuple(cfg.data.mask_codes())


def folder_interval(
    path: Path | str, oof: pd.DataFrame, n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0
) -> Interval:
    """The scores of ``oof`` (read from ``path``) with their person-bootstrap intervals, as its folder's config
    says its model is scored: the one scoring ``score``, ``cv``, ``ensemble`` and ``report`` show."""
    path = Path(path)
    tasks, states = scored_scope(member_config(path) if path.is_dir() else None)
    return oof_interval(oof, tasks, states, n_boot, level, seed)


def oof_interval(
    oof: pd.DataFrame,
    tasks=tuple(TASKS),
    mask_states=(0, 1, 2),
    n_boot: int = DEFAULT_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
) -> Interval:
    """Person-bootstrap interval of an out-of-fold table (person_id, label, p0..p17), scored as its model is."""
    return model_bootstrap(
        oof[PROB_COLUMNS].to_numpy(),
        oof["label"].to_numpy(),
        oof["person_id"].astype(str).to_numpy(),
        tasks,
        mask_states,
        n_boot,
        level,
        seed,
    )


def score_oof(
    path: Path | str, n_boot: int = DEFAULT_BOOT, level: float = DEFAULT_LEVEL, seed: int = DEFAULT_SEED
) -> dict:
    """Metrics and person-bootstrap intervals of a run folder's, CV folder's or CSV's out-of-fold predictions.

    Read with ``oof.read_oof``, so a folder's tuned age cut points (age_cuts.json)
    apply as in prediction. A folder's config decides what is scored: a per-task model
    has no 18-class metrics (None), a cascade expert is scored on its mask states.
    Returns ``Interval.to_dict()`` plus the file read, the folds and the cut points.
    """
    # The command line hands these over as typed: a user's mistake, not a bug.
    if int(n_boot) < 1:
        raise UsageError(f"--boot must be at least 1, got {n_boot}")
    if not 0.0 < float(level) < 1.0:
        raise UsageError(f"--level: the interval level must lie strictly between 0 and 1, got {level}")
    path = Path(path)
    oof = read_oof(path)
    interval = folder_interval(path, oof, n_boot, level, seed)
    cuts = read_cuts(path) if path.is_dir() else None
    return {
        "source": str(oof_path(path) if path.is_dir() else path),
        "folds": sorted(int(f) for f in pd.unique(oof["fold"])),
        "age_cuts": list(cuts) if cuts is not None else None,
        "tasks": list(scored_scope(member_config(path) if path.is_dir() else None)[0]),
        **interval.to_dict(),
    }
