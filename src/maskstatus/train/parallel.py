"""Train the folds of one CV at once, one worker process per device, into one CV folder.

The CV folder (config, folds.csv) is made first, here; then each fold is trained by its own
``maskstatus cv --resume CV_DIR --folds K`` process, on GPU with ``CUDA_VISIBLE_DEVICES`` naming its one device, so
that a worker is an ordinary CV call (the same checks, the same resume) and a crash or a kill costs only its fold.
At most ``workers`` run at once; a device that finishes its fold takes the next. Each worker's output goes to
``CV_DIR/logs/fold<K>.log``. Workers pool as they finish (under the folder's lock, see ``cv.pool_folds``), and the
command pools once more at the end, so ``cv_metrics.json`` covers every fold that finished even when one failed.

Processes rather than threads: a fold's training holds the GPU, its memory and the interpreter; a separate process
releases all of them when it ends, and a failing fold cannot take the others down.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, ConfigError
from ..errors import RunError, UsageError
from ..runs import WORKER_LOGS
from .cv import CVResult, open_cv, pool_folds
from .trainer import TrainingInterrupted

logger = logging.getLogger(__name__)

_POLL_S = 0.5  # how often finished workers are looked for: negligible next to a fold's training


@dataclass
class _Worker:
    fold: int
    slot: int  # which of the ``workers`` slots (and devices) it holds
    process: subprocess.Popen[bytes]
    log: Path


def worker_devices(cfg: Config, workers: int) -> Sequence[str | None]:
    """The device each worker slot trains on: a CUDA device index, or None on CPU (the slots share the cores)."""
    import torch

    accelerator = cfg.train.accelerator
    on_gpu = accelerator in ("cuda", "gpu") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else []
    if not ids:
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if workers > len(ids):
        raise UsageError(f"--parallel-folds {workers}: only {len(ids)} GPU(s) are visible ({', '.join(ids) or 'none'})")
    return ids[:workers]


def worker_command(cv_dir: Path, fold: int, train_overrides: Sequence[str]) -> list[str]:
    """The command line of the worker training ``fold``: the CLI itself, continuing the CV folder."""
    return [
        sys.executable,
        "-m",
        "maskstatus.cli",
        "cv",
        "--resume",
        str(cv_dir),
        "--folds",
        str(fold),
        *train_overrides,
    ]


def run_cv_parallel(
    cfg: Config,
    workers: int,
    folds: Sequence[int] | None = None,
    resume: Path | str | None = None,
    train_overrides: Sequence[str] = (),
) -> CVResult:
    """Train the folds of ``cfg`` (or of the CV folder ``resume``) with ``workers`` processes at once, then pool.

    ``train_overrides`` (``train.*=value``) are passed on to every worker: a resume's changes to the train section,
    which cv_config.yaml does not keep. A failing worker fails the call with its fold and log named, after the
    others have finished and been pooled.
    """
    if workers < 1:
        raise UsageError(f"--parallel-folds {workers}: give 1 or more")
    if str(cfg.train.devices) != "1":
        raise ConfigError(
            f"train.devices={cfg.train.devices}: --parallel-folds trains each fold on one device; "
            "give train.devices=1 (or train one fold on several devices without --parallel-folds)"
        )
    devices = worker_devices(cfg, workers)
    opened = open_cv(cfg, folds, resume)
    cv_dir, todo = opened.cv_dir, list(opened.todo)
    (cv_dir / WORKER_LOGS).mkdir(exist_ok=True)
    logger.info("training folds %s in %s, %d at once", todo, cv_dir, workers)

    running: list[_Worker] = []
    failed: dict[int, tuple[int, Path]] = {}
    try:
        while todo or running:
            free = [i for i in range(workers) if i not in {w.slot for w in running}]
            while todo and free:
                running.append(_start(cv_dir, todo.pop(0), free.pop(0), devices, train_overrides))
            time.sleep(_POLL_S)
            for w in [w for w in running if w.process.poll() is not None]:
                running.remove(w)
                code = w.process.returncode
                if code == 0:
                    logger.info("fold %d finished (log: %s)", w.fold, w.log)
                else:
                    logger.error("fold %d failed with exit code %d; its log: %s", w.fold, code, w.log)
                    failed[w.fold] = (code, w.log)
    except KeyboardInterrupt as exc:
        # Ctrl+C reached the workers too (one process group): each saves what it can and stops.
        for w in running:
            w.process.wait()
        raise TrainingInterrupted(f"during cross-validation; continue with: {opened.resume_command(folds)}") from exc

    try:
        result = pool_folds(opened.cfg, cv_dir)
    except RunError:
        if not failed:
            raise
        result = None  # no fold finished: the failures below say why
    if failed:
        names = "; ".join(f"fold {k} (exit code {code}, log {log})" for k, (code, log) in sorted(failed.items()))
        again = f"maskstatus cv --resume {cv_dir} --folds {','.join(map(str, sorted(failed)))}"
        kept = f"; the folds that finished are pooled in {cv_dir}" if result is not None else ""
        raise RunError(f"{len(failed)} fold(s) failed: {names}{kept}; train them again with: {again}")
    assert result is not None
    return result


def _start(
    cv_dir: Path, fold: int, slot: int, devices: Sequence[str | None], train_overrides: Sequence[str]
) -> _Worker:
    device = devices[slot]
    env = dict(os.environ)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    log = cv_dir / WORKER_LOGS / f"fold{fold}.log"
    command = worker_command(cv_dir, fold, train_overrides)
    # Appended: a fold trained again keeps the earlier attempt's output above. The worker holds its own copy of
    # the file descriptor, so this one is closed at once.
    with open(log, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    logger.info("fold %d: started on %s (pid %d, log %s)", fold, f"GPU {device}" if device else "CPU", process.pid, log)
    return _Worker(fold, slot, process, log)
