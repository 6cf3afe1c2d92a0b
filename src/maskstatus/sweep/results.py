"""What a sweep leaves besides its trial folders, read back from the study alone: sweep.json and best.yaml.

Everything is rebuilt from the storage (the study's and its trials' attributes), so any worker, or
``maskstatus sweep --page`` on another machine, writes the same files.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections import Counter
from datetime import datetime
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from ..config import Config, ConfigError, apply_overrides, config_to_dict, flat_config
from ..errors import UsageError
from ..runs import SweepDir, atomic_write_text
from .objective import (
    ABANDONED_ATTR,
    EPOCHS_ATTR,
    ERROR_ATTR,
    OVER_BUDGET_ATTR,
    PARAM_OVERRIDES_ATTR,
    RUN_ATTR,
    WALL_ATTR,
    WORKER_ATTR,
)

logger = logging.getLogger(__name__)

# The study's user attributes, set by the first worker: what every trial starts from and is scored on.
BASE_ATTR = "base_config"
MAX_STEPS_ATTR = "max_steps"  # epochs a trial trains at most (folds with --cv): the pruner's last step
OBJECTIVE_ATTR = "objective"
# Keys that may differ between the workers of one study: where things are on each machine, how it trains.
MACHINE_KEYS = (
    "data.root",
    "output_dir",
    "cache.dir",
    "name",
    "train.devices",
    "train.accelerator",
    "train.num_workers",
    "train.progress",
    "train.strategy",
)


def record_base(study: optuna.Study, base: Config, max_steps: int, objective: str) -> None:
    """Store the base config in the study, or check that this worker's base is the study's."""
    mine = config_to_dict(base)
    theirs = study.user_attrs.get(BASE_ATTR)
    if theirs is None:
        study.set_user_attr(BASE_ATTR, mine)
        study.set_user_attr(MAX_STEPS_ATTR, max_steps)
        study.set_user_attr(OBJECTIVE_ATTR, objective)
        return
    flat_mine, flat_theirs = flat_config(mine), flat_config(theirs)
    differ = sorted(
        k
        for k in flat_mine.keys() | flat_theirs.keys()
        if k not in MACHINE_KEYS and flat_mine.get(k) != flat_theirs.get(k)
    )
    if differ:
        raise UsageError(
            f"study {study.study_name} was started from another base config (it differs in {', '.join(differ)}): "
            "give the same --config and overrides, or another --study"
        )
    if study.user_attrs.get(OBJECTIVE_ATTR) != objective:
        raise UsageError(
            f"study {study.study_name} scores trials by {study.user_attrs.get(OBJECTIVE_ATTR)!r}, "
            f"not {objective!r}: give the same --cv as its other workers, or another --study"
        )


def _number(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as sweep.json lists it."""
    intermediate = trial.intermediate_values
    wall = trial.user_attrs.get(WALL_ATTR)
    if wall is None and trial.datetime_start is not None and trial.datetime_complete is not None:
        wall = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "param_overrides": trial.user_attrs.get(PARAM_OVERRIDES_ATTR, []),
        "value": _number(trial.value) if trial.state == TrialState.COMPLETE else None,
        # A pruned trial's last reported score: how far it got.
        "last_reported": _number(intermediate[max(intermediate)]) if intermediate else None,
        "intermediate": {int(k): _number(v) for k, v in sorted(intermediate.items())},
        "run_dir": trial.user_attrs.get(RUN_ATTR),
        "epochs_run": trial.user_attrs.get(EPOCHS_ATTR, 0),
        "wall_s": wall,
        "started": trial.datetime_start.isoformat(timespec="seconds") if trial.datetime_start else None,
        "worker": trial.user_attrs.get(WORKER_ATTR),
        **({"error": trial.user_attrs[ERROR_ATTR]} if ERROR_ATTR in trial.user_attrs else {}),
        **({"note": trial.user_attrs[ABANDONED_ATTR]} if ABANDONED_ATTR in trial.user_attrs else {}),
        **({"note": "asked for beyond --trials; not trained"} if trial.user_attrs.get(OVER_BUDGET_ATTR) else {}),
    }


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's parameter importances (PED-ANOVA), or None with fewer than two finished trials to compare."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [k for k in {p for t in done for p in t.params} if len({repr(t.params.get(k)) for t in done}) > 1]
    if len(done) < 2 or not varied:
        return None
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, params=sorted(varied)).items()}
    except (RuntimeError, ValueError) as exc:  # too few trials for the evaluator's quantiles
        logger.info("no parameter importances: %s", exc)
        return None


def summary(study: optuna.Study) -> dict[str, Any]:
    """sweep.json: every trial, the counts, the best, what pruning saved and the parameter importances."""
    trials = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    counts = Counter(t["state"] for t in trials)
    max_steps = int(study.user_attrs.get(MAX_STEPS_ATTR, 0))
    finished = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED")]
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    best = best_trial(study)
    return {
        "study": study.study_name,
        "objective": study.user_attrs.get(OBJECTIVE_ATTR),
        "direction": "maximize",
        "written": datetime.now().isoformat(timespec="seconds"),
        "counts": {state.name: counts.get(state.name, 0) for state in TrialState},
        "best": None if best is None else trial_row(best),
        "epochs": {
            "per_trial_at_most": max_steps,
            "run": sum(int(t["epochs_run"] or 0) for t in trials),
            # The trials that finished or were pruned, had each trained to the end.
            "if_none_pruned": max_steps * len(finished),
            "run_by_finished_or_pruned": sum(int(t["epochs_run"] or 0) for t in finished),
            "saved_by_pruning": sum(max(0, max_steps - int(t["epochs_run"] or 0)) for t in pruned),
        },
        "importance": importances(study),
        "trials": trials,
    }


def best_config(study: optuna.Study) -> Config | None:
    """The base config with the best trial's values, or None before any trial finished."""
    best = best_trial(study)
    base = study.user_attrs.get(BASE_ATTR)
    if best is None or base is None:
        return None
    raw = apply_overrides(copy.deepcopy(base), best.user_attrs.get(PARAM_OVERRIDES_ATTR, []))
    try:
        return Config.model_validate(raw)
    except ValueError as exc:  # the trial trained with it, so this is a bug or an edited study
        raise ConfigError(f"best trial {best.number}'s values no longer make a valid config: {exc}") from None


def write_results(study: optuna.Study, sweep: SweepDir) -> dict[str, Any]:
    """Write sweep.json and best.yaml (when a trial finished) into the sweep folder; returns the summary."""
    data = summary(study)
    atomic_write_text(sweep.summary, json.dumps(data, indent=2) + "\n")
    cfg = best_config(study)
    if cfg is not None:
        best = data["best"]
        header = (
            f"# best trial {best['number']} of sweep {study.study_name}: {data['objective']} "
            f"{best['value']:.4f}; {' '.join(map(str, best['param_overrides']))}\n"
            f"# maskstatus cv --config {sweep.best}\n"
        )
        atomic_write_text(sweep.best, header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return data
