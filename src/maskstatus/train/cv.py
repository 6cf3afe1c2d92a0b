"""K-fold cross-validation: one fold assignment, one run per fold, pooled out-of-fold scores.

`run_cv` makes the person -> fold assignment once, trains every fold with
`train()` on that same assignment, then pools the fold runs' held-out
predictions into one out-of-fold (OOF) table covering every training image
once and scores it. The CV folder:

    <output_dir>/<name>-cv-<timestamp>/
      cv_config.yaml            the resolved config the folds were trained from
      folds.csv                 person_id -> fold, shared by every fold run
      fold0-<timestamp>/        an ordinary run folder (config.yaml, checkpoints/, predictions/oof.csv, ...)
      fold1-<timestamp>/
      ...
      oof.csv                   every fold run's predictions/oof.csv, stacked (person_id, stem, image_path,
                                label, fold, p0..p17)
      cv_metrics.json           pooled OOF macro F1/accuracy overall and per task with their 90 % person-bootstrap
                                intervals (oof_ci), per-fold best F1/epoch

The config is saved as `cv_config.yaml`, not `config.yaml`, on purpose: a
folder holding `config.yaml` is a single run, while the CV folder is a group
of runs, so `maskstatus predict --run CV_DIR` can expand it into its fold runs
and soft-vote them.

`run_cv(cfg, resume=CV_DIR)` continues a CV folder: folds whose run finished
are skipped, an interrupted fold run continues from its last checkpoint, and
a fold whose run never finished an epoch (no checkpoint, nothing to continue)
is trained again in a new run folder (the old one stays, without weights, and
is ignored). The pooled OOF covers every fold finished in the folder, so
folds may also be trained in separate calls (`folds=[0]`, then `folds=[1]`
with `resume`), at once too: pooling holds the folder's lock (`runs.pool_lock`).
Folds trained in separate CV folders (other machines) are joined by
`cv_merge.merge_cvs`; `parallel.run_cv_parallel` trains one fold per device.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from lightning_fabric import Fabric
from lightning_fabric.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from ..choices import check_accelerator_available
from ..config import Config, ConfigError, load_config, save_config
from ..data.folds import attach_folds, make_folds, read_folds
from ..data.tables import load_train_table
from ..errors import DataError, RunError, RunNotFoundError, UsageError
from ..labels import PROB_COLUMNS
from ..runs import (
    CV_CONFIG,
    CV_METRICS,
    FOLDS,
    OOF,
    RunDir,
    atomic_write_csv,
    atomic_write_text,
    load_checkpoint,
    new_run_dir,
    pool_lock,
)
from ..scoring.metrics import model_metrics
from ..scoring.score import oof_interval, scored_scope
from ..tracking import check_backends, fold_tracking, log_cv
from .trainer import TrainingInterrupted, check_train_outputs, log_removed_temp_files, make_fabric, train

logger = logging.getLogger(__name__)


@dataclass
class CVResult:
    cv_dir: Path
    fold_runs: list[Path]
    metrics: dict[str, float]
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True  # every fold of split.folds is in the pooled OOF
    # Person-bootstrap intervals of the pooled OOF metrics: level, n_boot, seed, people and {metric: [lo, hi] or None}.
    ci: dict[str, Any] = field(default_factory=dict)
    is_global_zero: bool = True  # under DDP only rank 0 pooled (and prints); the others get its result


def run_cv(cfg: Config, folds: Sequence[int] | None = None, resume: Path | str | None = None) -> CVResult:
    """Train the given folds (default: all of range(cfg.split.folds)) on one shared fold assignment.

    With `resume`, continue that CV folder: its saved config is used with the caller's `train`
    section (e.g. more epochs), its folds.csv is kept, and finished folds are not trained again.
    """
    # Before the processes join: an accelerator this machine lacks gets the config's message, not Fabric's.
    check_accelerator_available(cfg.train.accelerator, "train.accelerator", ConfigError)
    ranks = _join_launched_processes(cfg)
    opened = _on_rank_zero(ranks, lambda: open_cv(cfg, folds, resume))
    cfg, cv_dir, todo = opened.cfg, opened.cv_dir, opened.todo
    try:
        _train_folds(cfg, cv_dir, todo)
    except KeyboardInterrupt as exc:
        raise TrainingInterrupted(f"during cross-validation; continue with: {opened.resume_command(folds)}") from exc
    result = _on_rank_zero(ranks, lambda: _pool_and_log(cfg, cv_dir))
    return result if ranks is None or ranks.is_global_zero else replace(result, is_global_zero=False)


@dataclass
class OpenedCV:
    """A CV folder ready to train folds in: its config, the folds to train and the epochs its config saved."""

    cfg: Config
    cv_dir: Path
    todo: list[int]
    saved_epochs: int

    def resume_command(self, folds: Sequence[int] | None) -> str:
        """The command that continues this CV (the folds asked for, and more epochs than it saved)."""
        again = [f"--folds {','.join(map(str, self.todo))}"] if folds is not None else []
        if self.cfg.train.epochs != self.saved_epochs:
            again.append(f"train.epochs={self.cfg.train.epochs}")  # cv_config.yaml keeps the CV's first epoch count
        return " ".join(["maskstatus cv --resume", str(self.cv_dir), *again])


def open_cv(cfg: Config, folds: Sequence[int] | None = None, resume: Path | str | None = None) -> OpenedCV:
    """Make a new CV folder (config, folds.csv) for ``cfg``, or check the one ``resume`` names; train nothing.

    Other processes may be training folds of a resumed folder at once (``cv --parallel-folds``, a second
    ``cv --resume --folds``): only the temp files of the folds asked for are cleaned up here.
    """
    if resume is not None:
        cv_dir = Path(resume)
        # Data, split and model must stay as they were, or the folds would not belong together.
        saved = load_cv_config(cv_dir)
        cfg = saved.model_copy(update={"train": cfg.train})
        todo = fold_list(cfg, folds)
        _check_resume_epochs(cv_dir, cfg)
        for k in todo:
            run = fold_run(cv_dir, k)
            if run is not None:
                log_removed_temp_files(run)
        check_train_outputs(cfg, cv_dir)
        cfg = check_backends(cfg)
        return OpenedCV(cfg, cv_dir, todo, saved.train.epochs)
    if not cfg.split.holdout:
        raise ConfigError(
            "split.holdout=false trains on every person, so a CV has no folds to hold out: "
            "use maskstatus train for that final model"
        )
    todo = fold_list(cfg, folds)
    # Each fold's train() checks it too, but only after this folder exists.
    check_accelerator_available(cfg.train.accelerator, "train.accelerator", ConfigError)
    check_train_outputs(cfg)
    cfg = check_backends(cfg)  # before the folder exists: a backend out of reach leaves nothing behind
    fold_table = make_cv_folds(cfg)  # before the folder exists, so a bad split leaves nothing behind
    cv_dir = _new_cv_dir(cfg)
    save_config(cfg, cv_dir / CV_CONFIG)
    atomic_write_csv(fold_table, cv_dir / FOLDS)
    return OpenedCV(cfg, cv_dir, todo, cfg.train.epochs)


def _pool_and_log(cfg: Config, cv_dir: Path) -> CVResult:
    result = pool_folds(cfg, cv_dir)
    log_cv(cfg, cv_dir, result.metrics, result.ci)
    return result


def _join_launched_processes(cfg: Config) -> Fabric | None:
    """Under torchrun or Fabric's own launcher, the process group of every process; None in a single process.

    Those launchers run this same command in every process from its start, so without this each would make a
    CV folder of its own (its name holds the time), the folds would train into rank 0's and the other ranks
    would pool an empty one. Joined here, rank 0 alone makes the folder and pools, and every fold's train()
    reuses the group. A spawning strategy (ddp_spawn) starts its processes inside each train() instead, so
    this process is then the only one that runs the CV.
    """
    fabric = make_fabric(cfg)
    # Fabric has no public test for "every process runs the script": its script launcher is what marks it.
    if fabric.world_size == 1 or not isinstance(fabric.strategy.launcher, _SubprocessScriptLauncher):
        return None
    fabric.launch()
    return fabric


T = TypeVar("T")


def _on_rank_zero(ranks: Fabric | None, work: Callable[[], T]) -> T:
    """``work`` done by rank 0 alone, its result (or its error) sent to every process.

    An error is sent too, so every process stops with rank 0's message instead of waiting for a result.
    """
    if ranks is None:
        return work()
    outcome: tuple[T | None, BaseException | None] = (None, None)
    if ranks.is_global_zero:
        try:
            outcome = (work(), None)
        except Exception as exc:
            outcome = (None, exc if _picklable(exc) else RunError(f"{type(exc).__name__}: {exc}"))
    value, error = ranks.broadcast(outcome)
    if error is not None:
        raise error
    return value  # type: ignore[return-value]  # rank 0's result, not None when no error came


def _picklable(exc: BaseException) -> bool:
    try:
        pickle.dumps(exc)
    except Exception:
        return False
    return True


def _train_folds(cfg: Config, cv_dir: Path, todo: Sequence[int]) -> None:
    """Train (or continue) each fold of ``todo`` in the CV folder; finished folds are skipped."""
    for k in todo:
        existing = fold_run(cv_dir, k)
        fold_cfg = _fold_config(cfg, k, cv_dir)
        if existing is not None and finished_state(existing, cfg) is not None:
            logger.info("fold %d: already finished in %s, skipped", k, existing.name)
            continue
        if existing is not None and RunDir(existing).last.is_file():
            logger.info("fold %d: continuing %s", k, existing.name)
            result = train(fold_cfg, resume=existing)
        else:
            # A run left without last.pt never finished an epoch: nothing to continue. It is left in
            # place; the new run is preferred because it will hold weights (and predict skips the old one).
            logger.info("fold %d of %d: training", k, cfg.split.folds)
            result = train(fold_cfg)
        logger.info(
            "fold %d: best val macro F1 %.4f at epoch %d (%s)", k, result.best_f1, result.best_epoch, result.run_dir
        )


def _check_resume_epochs(cv_dir: Path, cfg: Config) -> None:
    """Refuse a resume with fewer epochs than a fold run has trained (it would pool them as if finished)."""
    ahead: dict[str, int] = {}
    for k in range(cfg.split.folds):
        run = fold_run(cv_dir, k)
        if run is not None and RunDir(run).last.is_file():
            trained = int(load_checkpoint(RunDir(run).last)["epoch"]) + 1
            if trained > cfg.train.epochs:
                ahead[run.name] = trained
    if ahead:
        raise ConfigError(
            f"train.epochs={cfg.train.epochs} is fewer than the epochs fold runs of {cv_dir} have already trained "
            f"({', '.join(f'{name}: {n}' for name, n in ahead.items())}); --resume only extends a CV: give "
            f"train.epochs={max(ahead.values())} or more, or start a new CV "
            f"with --config {cv_dir / CV_CONFIG} train.epochs={cfg.train.epochs}"
        )


def fold_list(cfg: Config, folds: Sequence[int] | None) -> list[int]:
    if folds is None:
        return list(range(cfg.split.folds))
    todo = [int(k) for k in folds]
    bad = [k for k in todo if not 0 <= k < cfg.split.folds]
    if bad:
        raise UsageError(f"fold(s) {bad} outside 0..{cfg.split.folds - 1} (split.folds={cfg.split.folds})")
    if len(set(todo)) != len(todo):
        raise UsageError(f"fold list {todo} names a fold twice")
    if not todo:
        raise UsageError("the fold list is empty")
    return sorted(todo)


def _new_cv_dir(cfg: Config) -> Path:
    run = new_run_dir(cfg.output_dir, f"{cfg.name}-cv")
    # new_run_dir lays out a single run; the CV folder holds runs instead, so drop the (empty) extras.
    for sub in run.folders()[1:]:
        sub.rmdir()
    return run.root


def make_cv_folds(cfg: Config) -> pd.DataFrame:
    """The person -> fold table a new CV of ``cfg`` trains on: ``split.folds_file`` if given, else a new split."""
    if cfg.split.folds_file is not None:
        folds = read_folds(cfg.split.folds_file)
        bad = sorted(set(folds["fold"].astype(int)) - set(range(cfg.split.folds)))
        if bad:
            raise DataError.one(
                cfg.split.folds_file, f"fold numbers {bad} outside 0..{cfg.split.folds - 1} (split.folds)"
            )
        return folds
    # Every image decoded once here, before the CV folder is made; the folds' own runs then leave it to their cache.
    table = load_train_table(cfg, check_images=cfg.data.check_images)
    folds = make_folds(table, cfg.split.folds, cfg.split.seed)
    attach_folds(table, folds, cfg.split.folds)  # fails here, before any training, if a person is left out
    return folds


def _fold_config(cfg: Config, k: int, cv_dir: Path) -> Config:
    split = cfg.split.model_copy(update={"fold": k, "folds_file": cv_dir / FOLDS})
    return cfg.model_copy(
        update={"split": split, "output_dir": cv_dir, "name": f"fold{k}", "tracking": fold_tracking(cfg, cv_dir)}
    )


def fold_run(cv_dir: Path, k: int) -> Path | None:
    """The run folder of fold k in the CV folder, or None; should there be several, the newest with weights."""
    # Names end in a timestamp (plus -N on a clash), so name order is age order.
    runs = sorted((p for p in cv_dir.glob(f"fold{k}-*") if RunDir(p).config.is_file()), key=lambda p: p.name)
    with_weights = [p for p in runs if RunDir(p).last.is_file()]
    if with_weights:
        return with_weights[-1]
    return runs[-1] if runs else None


def finished_state(run: Path, cfg: Config) -> dict[str, Any] | None:
    """The run's last checkpoint if it trained all cfg.train.epochs or stopped early, else None.

    Judged on last.pt because it is the last file an epoch writes: metrics.csv or oof.csv can be
    an epoch ahead of it after a crash.
    """
    last = RunDir(run).last
    if not last.is_file():
        return None
    state = load_checkpoint(last)
    if state["epoch"] + 1 >= cfg.train.epochs:
        return state
    patience = cfg.train.early_stopping_patience
    return state if patience and state["epoch"] - state["best_epoch"] >= patience else None


def pool_folds(cfg: Config, cv_dir: Path) -> CVResult:
    """Stack the finished fold runs' OOF predictions, score them, write oof.csv and cv_metrics.json.

    Under the CV folder's pool lock: processes training folds of one CV folder at once pool one after
    another, so the last pool reads every fold finished before it and no pool overwrites a newer one.
    """
    with pool_lock(cv_dir):
        # Only a pool writes these files, and only under the lock: a temp file of theirs now is a kill's.
        for stale in [p for name in (OOF, CV_METRICS) for p in cv_dir.glob(f".{name}.*.tmp")]:
            logger.warning("removed the temp file of an interrupted save: %s", stale)
            stale.unlink(missing_ok=True)
        return _pool_locked(cfg, cv_dir)


def _pool_locked(cfg: Config, cv_dir: Path) -> CVResult:
    shared = sorted_folds(cv_dir / FOLDS)
    fold_runs: list[Path] = []
    per_fold, parts = [], []
    for k in range(cfg.split.folds):
        run = fold_run(cv_dir, k)
        state = finished_state(run, cfg) if run is not None else None
        if run is None or state is None:
            continue
        if not sorted_folds(RunDir(run).folds).equals(shared):
            raise RunError(f"{run} was trained on other folds than {cv_dir / FOLDS}")
        oof_path = RunDir(run).oof
        if not oof_path.is_file():
            raise FileNotFoundError(f"fold {k} run has no out-of-fold predictions: {oof_path}")
        oof = pd.read_csv(oof_path, dtype={"person_id": str, "stem": str})
        fold_runs.append(run)
        parts.append(oof)
        per_fold.append(
            {
                "fold": k,
                "run": run.name,
                "best_f1": float(state["best_f1"]),
                "best_epoch": int(state["best_epoch"]),
                "epochs_run": int(state["epoch"]) + 1,
                "images": len(oof),
            }
        )
    if not parts:
        raise RunError(f"no finished fold run in {cv_dir}")

    oof = pd.concat(parts, ignore_index=True)
    if oof["image_path"].duplicated().any():
        dup = oof.loc[oof["image_path"].duplicated(), "image_path"].tolist()[:5]
        raise RunError(f"{cv_dir}: images predicted by more than one fold run, e.g. {dup}")
    # Scored as the fold runs were: a per-task model on its tasks, a cascade expert on its mask states.
    metrics = model_metrics(
        oof[list(PROB_COLUMNS)].to_numpy(), oof["label"].to_numpy(), cfg.model.tasks, cfg.data.mask_codes()
    )
    interval = oof_interval(oof, *scored_scope(cfg)).to_dict()
    ci = {k: interval[k] for k in ("level", "n_boot", "seed", "people")} | interval["ci"]
    complete = len(per_fold) == cfg.split.folds
    atomic_write_csv(oof, cv_dir / OOF, float_format="%.6f")
    summary = {
        "name": cfg.name,
        "folds": cfg.split.folds,
        "folds_done": [f["fold"] for f in per_fold],
        "complete": complete,
        "images": len(oof),
        "oof": {k: (None if v != v else v) for k, v in metrics.items()},  # NaN (a task not predicted) -> null
        "oof_ci": ci,
        "per_fold": per_fold,
        "fold_runs": [r.name for r in fold_runs],
    }
    atomic_write_text(cv_dir / CV_METRICS, json.dumps(summary, indent=2) + "\n")
    if not complete:
        logger.warning("OOF covers folds %s of %d only", summary["folds_done"], cfg.split.folds)
    return CVResult(cv_dir, fold_runs, metrics, per_fold, complete, ci)


def load_cv_config(cv_dir: Path | str) -> Config:
    """The config a CV folder was trained from (its cv_config.yaml)."""
    path = Path(cv_dir) / CV_CONFIG
    if not path.is_file():
        raise RunNotFoundError(f"not a CV folder (no {CV_CONFIG}): {cv_dir}")
    return load_config(path)


def sorted_folds(path: Path) -> pd.DataFrame:
    """A folds file in a canonical row order, so two assignments compare with ``equals``."""
    folds = read_folds(path)
    folds["fold"] = folds["fold"].astype(int)
    # The first column is the key: person_id, or image_path for an image split.
    return folds.sort_values(folds.columns[0], kind="stable").reset_index(drop=True)
