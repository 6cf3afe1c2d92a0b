"""An Optuna study over config keys: its storage, sampler and pruner, the trial budget and the workers.

Several workers (processes on one machine, or on several) join one study by naming the same storage and
study name; each asks Optuna for a trial, trains it (:mod:`.objective`) and reports back. Nothing here is
hand-written that Optuna does: the storages (SQLite/PostgreSQL/MySQL through RDBStorage, a journal file for
a shared filesystem), TPE, the median and Hyperband pruners, ``catch`` for failed trials and RDB heartbeats
for workers that die. Two things Optuna leaves to the caller are done here: a trial budget that two workers
cannot overshoot, and failing the trials a killed worker of this machine left RUNNING in a journal file (the
journal has no heartbeat).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..choices import PRUNERS
from ..config import Config
from ..defaults import (
    SWEEP_GRACE_S,
    SWEEP_HEARTBEAT_S,
    SWEEP_MAX_FAILS_IN_A_ROW,
    SWEEP_PRUNE_STARTUP,
    SWEEP_PRUNE_WARMUP,
    SWEEP_PRUNER,
    SWEEP_SAMPLER_STARTUP,
    SWEEP_SQLITE_TIMEOUT_S,
    SWEEP_STORAGE_RETRY_S,
)
from ..errors import RunError, UsageError
from ..runs import SweepDir
from .objective import (
    ABANDONED_ATTR,
    ERROR_ATTR,
    OBJECTIVE_CV,
    OBJECTIVE_FOLD,
    WORKER_ATTR,
    Objective,
    OverBudget,
)
from .page import write_page
from .results import record_base, write_results
from .space import SearchSpace, base_values, check_space, read_space

logger = logging.getLogger(__name__)

# The trials --trials counts: every one started, whatever became of it; not those enqueued and waiting.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def open_storage(storage: str | None, sweep: SweepDir) -> optuna.storages.BaseStorage:
    """The study's storage: by default a SQLite file in the sweep folder.

    ``journal:PATH`` or a path ending in .log/.jsonl is an Optuna journal file (any shared filesystem, NFS
    included: it locks with open(O_EXCL), not symlinks); an ``sqlite://``, ``postgresql://`` or ``mysql://``
    URL is an RDB storage with heartbeats, so a worker that dies has its trial failed by the others.
    """
    if storage is None:
        sweep.root.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{sweep.database.resolve()}"
    journal = storage.removeprefix("journal:") if storage.startswith("journal:") else None
    if journal is None and storage.endswith((".log", ".jsonl")) and "://" not in storage:
        journal = storage
    if journal is not None:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        path = Path(journal)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if not storage.startswith(("sqlite://", "postgresql", "mysql")):
        raise UsageError(
            f"--storage {storage!r}: expected journal:PATH (or a path ending in .log or .jsonl), "
            "sqlite:///FILE, postgresql://... or mysql://..."
        )
    for plain in ("postgresql://", "postgres://"):
        if storage.startswith(plain):
            # The driver the sweep extra installs: SQLAlchemy 2.1's default for a plain URL is psycopg 3.
            storage = "postgresql+psycopg2://" + storage.removeprefix(plain)
    engine: dict[str, Any] = {}
    if storage.startswith("sqlite://"):
        # Two workers on one SQLite file wait for each other's writes instead of failing at once.
        engine = {"connect_args": {"timeout": SWEEP_SQLITE_TIMEOUT_S}}
    # Workers started at once on a new database would each create its tables (and SQLite refuses the second
    # writer): on SQLite they take turns through a lock file beside the database; on a server the loser of the
    # race tries once more, when the tables exist.
    with _sqlite_lock(storage):
        for attempt in (1, 2):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna: a warning per worker
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        storage, engine_kwargs=engine, heartbeat_interval=SWEEP_HEARTBEAT_S, grace_period=SWEEP_GRACE_S
                    )
            except Exception as exc:  # SQLAlchemy's OperationalError, a missing driver...: the user's URL or server
                if attempt == 2 or isinstance(exc, ImportError):
                    raise UsageError(
                        f"--storage {_hide_password(storage)}: cannot open the study storage: {exc}"
                    ) from None
                time.sleep(SWEEP_STORAGE_RETRY_S)
    raise AssertionError("unreachable")  # the loop returns or raises


def _sqlite_lock(storage: str) -> AbstractContextManager[Any]:
    """A file lock beside a SQLite database (``sqlite:///PATH``); nothing to lock for a server."""
    path = storage.removeprefix("sqlite:///") if storage.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        return nullcontext()
    from filelock import FileLock

    return FileLock(f"{path}.lock")


def _hide_password(url: str) -> str:
    head, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{head}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


def make_pruner(name: str, startup_trials: int, warmup_epochs: int, max_steps: int) -> optuna.pruners.BasePruner:
    """Median (prune below the median of earlier trials at the same epoch), Hyperband, or none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup_epochs + 1), max_resource=max(max_steps, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UsageError(f"--pruner {name!r}: expected one of {', '.join(PRUNERS)}")


@dataclass
class SweepSettings:
    """What a worker needs beyond the space: where, how many trials, how to sample and prune."""

    out: Path
    study: str
    n_trials: int
    storage: str | None = None
    timeout: float | None = None
    cv: bool = False
    pruner: str = SWEEP_PRUNER
    prune_startup: int = SWEEP_PRUNE_STARTUP
    prune_warmup: int = SWEEP_PRUNE_WARMUP
    sampler_startup: int = SWEEP_SAMPLER_STARTUP
    seed: int | None = None
    enqueue: list[dict[str, Any]] = field(default_factory=list)  # params by config key, run first (once a study)


@dataclass
class SweepResult:
    sweep_dir: Path
    study: optuna.Study
    ran: int  # trials this worker ran


def open_study(settings: SweepSettings, max_steps: int) -> optuna.Study:
    """Create the study, or join it if another worker (or an earlier run of this command) made it."""
    sweep = SweepDir(settings.out)
    sweep.root.mkdir(parents=True, exist_ok=True)
    storage = open_storage(settings.storage, sweep)
    sampler = optuna.samplers.TPESampler(
        n_startup_trials=settings.sampler_startup,
        seed=settings.seed,
        # Parallel workers: a running trial counts as a poor result, so two workers do not draw the same point.
        constant_liar=True,
    )
    pruner = make_pruner(settings.pruner, settings.prune_startup, settings.prune_warmup, max_steps)
    return optuna.create_study(
        storage=storage,
        study_name=settings.study,
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
        load_if_exists=True,
    )


def run_sweep(
    space: SearchSpace,
    base: Config,
    config: Path | str | None,
    overrides: Sequence[str],
    settings: SweepSettings,
) -> SweepResult:
    """Run trials of the study until it holds ``settings.n_trials`` (counting those of every worker).

    ``base`` is the validated base config (``space.check_space``), ``config`` and ``overrides`` what it was
    loaded from: each trial loads them again with its own values, so a trial's config.yaml is what
    ``maskstatus train --config ... key=value`` would have saved.
    """
    if settings.n_trials < 1:
        raise UsageError(f"--trials must be at least 1, got {settings.n_trials}")
    if str(base.train.devices) != "1":
        # Every rank would report to the pruner and could disagree on stopping: one GPU per worker instead.
        raise UsageError(
            f"train.devices={base.train.devices}: a sweep trains each trial in one process; run one worker per "
            "device instead (CUDA_VISIBLE_DEVICES=k maskstatus sweep ... --storage ... --study ...)"
        )
    if not settings.cv and not base.split.holdout:
        raise UsageError("split.holdout=false leaves no held-out fold to score a trial on: sweep with holdout")
    # The pruner's steps: epochs, or with --cv the folds (a CV trial reports between folds).
    max_steps = base.split.folds if settings.cv else base.train.epochs
    study = open_study(settings, max_steps)
    record_base(study, base, max_steps, OBJECTIVE_CV if settings.cv else OBJECTIVE_FOLD)
    fail_abandoned_trials(study)
    for values in settings.enqueue:
        # skip_if_exists: a second worker, or a rerun, does not enqueue the same baseline again.
        study.enqueue_trial(space.optuna_params(values), skip_if_exists=True)
    sweep = SweepDir(settings.out)
    objective = Objective(space, config, overrides, settings.n_trials, sweep, settings.cv, worker_id())
    failures = FailuresInARow(SWEEP_MAX_FAILS_IN_A_ROW)

    def write_after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        write_outputs(study, sweep)  # sweep.json and the page follow the study as it goes

    # One trial per optimize call, the budget counted right before each: Optuna's MaxTrialsCallback counts after a
    # trial and its callbacks (seconds of page writing), a window in which another worker's count misses the
    # trial this one is about to ask for, and both start one. Here the window is one storage read; a trial that
    # still lands beyond the budget stops its worker untrained (Objective).
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    while failures.stopped is None and not objective.over_budget:
        started = len(study.get_trials(deepcopy=False, states=COUNTED))
        if started >= settings.n_trials or (deadline is not None and time.monotonic() >= deadline):
            logger.info(
                "study %s holds %d of its %d trials: this worker stops", settings.study, started, settings.n_trials
            )
            break
        try:
            study.optimize(
                objective,
                n_trials=1,
                # A failing trial (diverged, out of memory, a refused combination) is recorded FAILED; the sweep
                # goes on.
                catch=(Exception,),
                callbacks=[write_after_trial, failures],
                gc_after_trial=True,
            )
        except KeyboardInterrupt as exc:  # Optuna has recorded the trial FAILED; its run folder keeps its epochs
            write_outputs(study, sweep)
            raise SweepInterrupted(
                f"the trial running is recorded FAILED; {sweep.summary} holds the rest. Run the same command "
                "again to go on"
            ) from exc
    write_outputs(study, sweep)
    if failures.stopped is not None:
        raise RunError(
            f"this worker stopped after {failures.limit} failed trials in a row (trials "
            f"{', '.join(map(str, failures.numbers))}); the last failed with {failures.stopped}. "
            f"Fix the cause (see {sweep.summary}) and run the same command again to go on"
        )
    return SweepResult(sweep.root, study, objective.ran)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl+C during a sweep; ``hint`` says what was kept and how to go on (the command line prints it)."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


class FailuresInARow:
    """Stop the worker when ``limit`` of its trials in a row fail: a broken base config or data fails every
    trial, and a sweep left overnight should say so at once rather than fail its whole budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.numbers: list[int] = []
        self.stopped: str | None = None  # the last error, once the worker stopped

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state != TrialState.FAIL or trial.user_attrs.get(ERROR_ATTR) is None:
            self.numbers = []  # only failures of training count: not an over-budget or abandoned trial
            return
        self.numbers.append(trial.number)
        if len(self.numbers) >= self.limit:
            self.stopped = trial.user_attrs[ERROR_ATTR]
            study.stop()


def sweep(
    space_path: Path | str,
    config: Path | str | None,
    overrides: Sequence[str],
    settings: SweepSettings,
    enqueue_base: bool = False,
) -> SweepResult:
    """Read and check the space against the config, then run this worker's share of the study.

    ``enqueue_base``: the base config's own values of the space's keys are the study's first trial (the
    baseline at the sweep's budget), unless the study already has them.
    """
    space = read_space(space_path)
    base = check_space(space, config, overrides)
    if enqueue_base:
        settings.enqueue = [base_values(space, base), *settings.enqueue]
    return run_sweep(space, base, config, overrides, settings)


def write_outputs(study: optuna.Study, sweep: SweepDir) -> dict[str, Any]:
    """sweep.json, best.yaml and the page, from the study as it is now."""
    data = write_results(study, sweep)
    write_page(data, sweep)
    return data


def load_study(sweep_dir: Path | str, storage: str | None = None, study: str | None = None) -> optuna.Study:
    """An existing study: by default the one in the sweep folder's study.db (the only one there)."""
    sweep = SweepDir(Path(sweep_dir))
    if storage is None and not sweep.database.is_file():
        raise UsageError(f"{sweep.root} has no {sweep.database.name}: name the study's --storage")
    opened = open_storage(storage, sweep)
    names = [s.study_name for s in optuna.get_all_study_summaries(opened, include_best_trial=False)]
    if study is None:
        if len(names) != 1:
            raise UsageError(
                f"the storage holds {len(names)} studies ({', '.join(names) or 'none'}): name one with --study"
            )
        study = names[0]
    if study not in names:
        raise UsageError(f"no study {study!r} in the storage (it holds: {', '.join(names) or 'none'})")
    return optuna.load_study(study_name=study, storage=opened)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_abandoned_trials(study: optuna.Study) -> list[int]:
    """Mark FAILED the RUNNING trials whose worker, a process of this machine, no longer exists.

    A killed worker (SIGKILL, a closed terminal) leaves its trial RUNNING. RDB storages find it by its
    missing heartbeat after a grace period; the journal file has no heartbeat, so a rerun of the sweep on
    the same machine fails it here at once. A RUNNING trial of another machine is left to its own worker.
    Returns the numbers of the trials failed.
    """
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
        name, _, pid = worker.rpartition(":")
        if name != host or not pid.isdigit() or _alive(int(pid)):
            continue
        storage = study._storage  # the storage's own API: optuna.Study offers no way to fail another trial
        try:
            storage.set_trial_user_attr(trial._trial_id, ABANDONED_ATTR, f"its worker {worker} ended without it")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except RuntimeError:  # another worker finished or failed it first
            continue
        logger.warning("trial %d: its worker %s is gone; marked FAILED", trial.number, worker)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


__all__ = [
    "PRUNERS",
    "OverBudget",
    "SweepResult",
    "SweepSettings",
    "fail_abandoned_trials",
    "load_study",
    "open_storage",
    "run_sweep",
    "sweep",
    "write_outputs",
]
