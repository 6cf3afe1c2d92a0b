"""One trial of a sweep: the base config with the trial's values, trained as a normal run folder, scored.

The value a trial returns is the held-out fold's best validation score (``val_score``, the macro F1 of
what the model predicts) over its epochs: the score ``best.pt`` is chosen by, so it is the model the run
folder hands to ``predict``, and the same number the pruner saw epoch by epoch. With ``--cv`` it is the
pooled out-of-fold F1 of every fold, as ``maskstatus cv`` reports it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from ..config import Config, load_config
from ..runs import METRICS, SweepDir
from .space import SearchSpace

logger = logging.getLogger(__name__)

# A trial's user attributes, read back by the summary and the page.
RUN_ATTR = "run_dir"  # the trial's run (or CV) folder, relative to the sweep folder
EPOCHS_ATTR = "epochs_run"
WALL_ATTR = "wall_s"
ERROR_ATTR = "error"  # why a trial failed
WORKER_ATTR = "worker"  # the worker that ran it: host:pid
ABANDONED_ATTR = "abandoned"  # why it failed when its worker died
OVER_BUDGET_ATTR = "over_budget"  # a trial asked for beyond --trials, not trained
PARAM_OVERRIDES_ATTR = "param_overrides"  # the trial's values as key=value overrides of the base config


# What a trial's value is (sweep.json, the page): the held-out fold's best epoch, or a short CV's pooled OOF.
OBJECTIVE_FOLD = "best validation macro F1 of the held-out fold (val_score)"
OBJECTIVE_CV = "pooled out-of-fold macro F1 of a CV (score)"


class OverBudget(Exception):
    """The study already had --trials trials when this one was created (two workers asked at the same moment)."""


class Objective:
    """Optuna's objective: train the trial's config and return its score; prune on the per-epoch score."""

    def __init__(
        self,
        space: SearchSpace,
        config: Path | str | None,
        overrides: Sequence[str],
        n_trials: int,
        sweep: SweepDir,
        cv: bool,
        worker: str,
    ) -> None:
        self.space, self.config, self.overrides = space, config, list(overrides)
        self.n_trials, self.sweep, self.cv, self.worker = n_trials, sweep, cv, worker
        self.ran = 0
        self.over_budget = False

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, self.worker)
        # Trial numbers are handed out one by one by the storage, so the first n_trials numbers are the budget
        # whichever worker asked: a trial beyond it (a race of two workers) stops its worker untrained.
        if trial.number >= self.n_trials:
            self.over_budget = True
            trial.set_user_attr(OVER_BUDGET_ATTR, True)
            raise OverBudget(f"trial {trial.number} is beyond the study's {self.n_trials} trials: not trained")
        values = {key: param.suggest(trial, key) for key, param in self.space.params.items()}
        name = trial_name(trial.number)
        own = self.space.overrides(values)
        trial.set_user_attr(PARAM_OVERRIDES_ATTR, own)
        cfg = load_config(self.config, [*self.overrides, *own, f"output_dir={self.sweep.trials}", f"name={name}"])
        self.ran += 1
        logger.info("trial %d: %s", trial.number, " ".join(own))
        started = time.perf_counter()
        try:
            value = self._run_cv(cfg, trial) if self.cv else self._run(cfg, trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # Optuna records the trial FAILED; sweep.json says why
            trial.set_user_attr(ERROR_ATTR, f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            self._record(trial, name, time.perf_counter() - started)
        if not math.isfinite(value):
            raise ValueError(f"trial {trial.number} scored {value}: no finite validation score")
        return value

    def _run(self, cfg: Config, trial: optuna.Trial) -> float:
        from ..train.trainer import train

        def report(epoch: int, row: dict[str, Any]) -> None:
            score = row.get("val_score")
            if score is None or not math.isfinite(score):
                return
            trial.report(float(score), epoch)
            # Never after the last epoch: stopping there saves nothing and would throw the finished run's score away.
            if epoch + 1 < cfg.train.epochs and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation F1 {score:.4f}")

        result = train(cfg, on_epoch=report)
        return float(result.best_f1)

    def _run_cv(self, cfg: Config, trial: optuna.Trial) -> float:
        """A short CV trained fold by fold in one CV folder; pruned between folds on the pooled OOF F1 so far."""
        from ..train.cv import run_cv

        cv_dir = None
        score = float("nan")
        for k in range(cfg.split.folds):
            result = run_cv(cfg, folds=[k], resume=cv_dir)
            cv_dir = result.cv_dir
            score = float(result.metrics["score"])
            trial.report(score, k)
            if k + 1 < cfg.split.folds and trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {k}: pooled OOF F1 {score:.4f}")
        return score

    def _record(self, trial: optuna.Trial, name: str, wall: float) -> None:
        """The trial's run folder and epochs, whatever became of it (finished, pruned or failed)."""
        trial.set_user_attr(WALL_ATTR, round(wall, 1))
        folder = trial_folder(self.sweep, name)
        if folder is None:
            return
        trial.set_user_attr(RUN_ATTR, str(folder.relative_to(self.sweep.root)))
        trial.set_user_attr(EPOCHS_ATTR, epochs_run(folder))


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


def trial_folder(sweep: SweepDir, name: str) -> Path | None:
    """The run (or CV) folder a trial made: its name is unique in the study, so one folder matches."""
    found = sorted(sweep.trials.glob(f"{name}-*"))
    return found[-1] if found else None


def epochs_run(folder: Path) -> int:
    """Epochs trained in a run folder, or in all fold runs of a CV folder (their metrics.csv rows)."""
    total = 0
    for csv in folder.rglob(METRICS):
        try:
            total += len(pd.read_csv(csv))
        except (OSError, pd.errors.EmptyDataError):
            continue
    return total
