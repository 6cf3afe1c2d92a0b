"""What a run logs, and to where: the one logger Fabric is given, fanning out to the configured backends.

Fabric takes its loggers when it is made, but a run's loggers need the run folder, which rank 0 makes only
after Fabric has launched the training processes. So Fabric gets a ``RunTracker``, itself a Fabric logger,
which opens Lightning's loggers (``backends.BACKENDS``) once the folder exists; ``fabric.log_dict`` then
reaches every backend, on rank 0 only.

A backend that fails while the run trains is dropped with a warning: tracking never stops a run that has
started. One that cannot start stops the run before its first epoch (``tracking.on_unavailable=stop``) or
is dropped, TensorBoard logging on.
"""

from __future__ import annotations

import json
import logging
import subprocess
from argparse import Namespace
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning_fabric.loggers import Logger
from lightning_fabric.utilities.rank_zero import rank_zero_only

from ..config import Config, TrackingBackend, TrackingConfig, config_to_dict, flat_config
from ..errors import RunError
from ..runs import RunDir, atomic_write_text
from ..scoring.oof import read_oof
from ..scoring.score import folder_interval
from .backends import BACKENDS, RunInfo, finite, unavailable

logger = logging.getLogger(__name__)

TENSORBOARD: TrackingBackend = "tensorboard"
NOT_CURVES = ("epoch", "train_start_time")  # of an epoch's history row: its step, and a clock reading


def check_backends(cfg: Config) -> Config:
    """Before training: stop with one line if a backend cannot log, or (``on_unavailable=tensorboard``) drop it.

    Returns ``cfg``, or a copy whose ``tracking.backends`` are those that can log, TensorBoard among them.
    """
    problems = unavailable(cfg)
    if not problems:
        return cfg
    if cfg.tracking.on_unavailable == "stop":
        first = next(iter(problems.values()))
        raise type(first)(f"{first}; or set tracking.on_unavailable=tensorboard to train logging to TensorBoard only")
    for exc in problems.values():
        logger.warning("%s: training logs to TensorBoard instead (tracking.on_unavailable=tensorboard)", exc)
    kept: list[TrackingBackend] = [b for b in cfg.tracking.backends if b not in problems]
    if TENSORBOARD not in kept:
        kept.insert(0, TENSORBOARD)
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"backends": kept})})


def flat_params(cfg: Config) -> dict[str, Any]:
    """The resolved config as dotted keys (``train.epochs``), lists and nulls as text, plus the code's commit."""
    # Lists, empty sections and nulls as JSON text: every backend takes a string.
    params = {
        k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
        for k, v in flat_config(config_to_dict(cfg)).items()
    }
    commit = git_commit()
    if commit is not None:
        params["git_commit"] = commit
    return params


def git_commit(where: Path | None = None) -> str | None:
    """The commit of the git checkout holding the package's code, or None (an installed package, no git)."""
    folder = where if where is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def score_metrics(prefix: str, point: Mapping[str, Any], ci: Mapping[str, Any]) -> dict[str, float]:
    """Scores and their interval ends as flat metrics: ``final/f1``, ``final/f1_lo``, ``final/f1_hi``..."""
    out = {f"{prefix}/{k}": v for k, v in finite(point).items()}
    for k, bounds in ci.items():
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
            out[f"{prefix}/{k}_lo"], out[f"{prefix}/{k}_hi"] = float(bounds[0]), float(bounds[1])
    return finite(out)


def run_files(root: Path) -> list[tuple[Path, str]]:
    """The pictures and pages a run shows (plots/*.png, a report's *.html), each with its folder in the run."""
    plots = RunDir(root).plots
    return [(p, plots.name) for p in sorted(plots.glob("*.png"))] + [(p, "") for p in sorted(root.glob("*.html"))]


class RunTracker(Logger):
    """A Fabric logger standing for the run's backends; ``open`` starts them once the run folder exists."""

    def __init__(self, tracking: TrackingConfig) -> None:
        super().__init__()
        self.tracking = tracking
        self._open: dict[str, Logger] = {}

    @property
    def name(self) -> str:
        return "maskstatus"

    @property
    def version(self) -> str:
        return ""

    @property
    def backends(self) -> list[str]:
        """The backends logging now."""
        return list(self._open)

    def open(self, cfg: Config, run: RunDir, resumed: bool, is_global_zero: bool) -> None:
        """Start every backend on the run (rank 0 only), or stop before the first epoch if one cannot start."""
        if not is_global_zero:
            return
        ids = json.loads(run.tracking.read_text(encoding="utf-8")) if resumed and run.tracking.is_file() else {}
        job = "fold" if self.tracking.group else "train"
        failed = []
        for name in self.tracking.backends:
            info = RunInfo(run.root, run.root.name, cfg.output_dir, self.tracking.group, job, ids.get(name))
            try:
                self._open[name] = BACKENDS[name].open(self.tracking, info)
            except Exception as exc:  # whatever a backend's client raises: a network, login or store error
                if self.tracking.on_unavailable == "stop":
                    self.finalize("failed")
                    raise RunError(
                        f"tracking.backends: {name} could not start a run ({type(exc).__name__}: {exc}); "
                        f"set tracking.on_unavailable=tensorboard to train logging to TensorBoard only"
                    ) from exc
                logger.warning("tracking: %s could not start a run (%s); logging to TensorBoard instead", name, exc)
                failed.append(name)
        if failed and TENSORBOARD not in self._open:
            tb = RunInfo(run.root, run.root.name, cfg.output_dir)
            self._open[TENSORBOARD] = BACKENDS[TENSORBOARD].open(self.tracking, tb)
        kept = {name: BACKENDS[name].run_id(lg) for name, lg in self._open.items()}
        kept = {name: run_id for name, run_id in kept.items() if run_id is not None}
        if kept:
            atomic_write_text(run.tracking, json.dumps(kept, indent=2) + "\n")
        if not resumed:
            # A resume logs no parameters: MLflow refuses to change a logged one, and a resume changes train.*.
            self.log_hyperparams(flat_params(cfg))

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        self._each("log its parameters", lambda _, lg: lg.log_hyperparams(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = finite({k: v for k, v in metrics.items() if k not in NOT_CURVES})
        self._each("log metrics", lambda _, lg: lg.log_metrics(values, step))

    @rank_zero_only
    def log_final(self, run: RunDir, best_epoch: int, best_score: float, last_epoch: int) -> None:
        """The run's final score with its person-bootstrap interval (from its held-out predictions) and its pictures."""
        metrics = {"final/best_epoch": float(best_epoch)}
        if best_score >= 0:
            metrics["final/score"] = best_score
        if run.oof.is_file():
            try:
                interval = folder_interval(run.root, read_oof(run.root)).to_dict()
            except (OSError, ValueError) as exc:  # the run is trained and saved: its scores stay in its folder
                logger.warning("tracking: the final interval of %s could not be computed (%s)", run.root, exc)
            else:
                metrics |= score_metrics("final", interval["point"], interval["ci"])
                metrics["final/level"] = float(interval["level"])
        self._each("log the final score", lambda _, lg: lg.log_metrics(metrics, last_epoch))
        files = run_files(run.root)
        if files:
            self._each("log the run's files", lambda name, lg: BACKENDS[name].log_files(lg, files))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._each("finish", lambda name, lg: BACKENDS[name].finish(lg, status))
        self._open.clear()

    def _each(self, what: str, call: Callable[[str, Logger], Any]) -> None:
        """``call(name, logger)`` on every open backend; one that raises is dropped with a warning."""
        for name, lg in list(self._open.items()):
            try:
                call(name, lg)
            except Exception as exc:  # a backend's failure never stops the training it logs
                logger.warning("tracking: %s could not %s (%s); the run goes on without it", name, what, exc)
                self._open.pop(name, None)
