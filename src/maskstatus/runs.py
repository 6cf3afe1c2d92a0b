"""The run folder: everything needed to reproduce a run and to predict with it.

    <run>/config.yaml            resolved config
    <run>/folds.csv              person -> fold assignment used
    <run>/checkpoints/best.pt    best macro-F1 weights (plain data, weights_only loadable)
    <run>/checkpoints/last.pt    last epoch, with optimiser/scheduler/RNG state for resume
    <run>/metrics.csv            one row per epoch
    <run>/tensorboard/           TensorBoard event files
    <run>/wandb/                 the W&B run's local files (tracking.backends: wandb; offline runs wait here for sync)
    <run>/tracking.json          the W&B and MLflow run ids, so that a resumed run logs to the same runs
    <run>/predictions/oof.csv    out-of-fold probabilities (the run's held-out fold)
    <run>/plots/                 curves, confusion matrix
    <run>/age_cuts.json          age cut points tuned out of fold (``maskstatus tune-age``), if tuned
    <run>/onnx/                  the ONNX export (``maskstatus export``) and its sidecar

A CV folder holds one run folder per fold, and at its top:

    <cv>/cv_config.yaml          the config the folds were trained from
    <cv>/folds.csv               person -> fold assignment shared by every fold run
    <cv>/oof.csv                 every fold run's oof.csv stacked
    <cv>/cv_metrics.json         its scores with person-bootstrap intervals, and each fold's best epoch
    <cv>/age_cuts.json           as for a run, tuned on the stacked oof.csv
    <cv>/logs/fold<k>.log        each fold's output, when folds were trained in parallel (cv --parallel-folds)
    <cv>/.pool.lock              taken while oof.csv and cv_metrics.json are rewritten
    <cv>/review/                 ``maskstatus review``: decisions.json (every decision, saved as made) and
                                 relabel.csv (the export, in the format data.relabel reads)
    <cv>/wandb/                  the W&B run of the pooled OOF scores (tracking.backends: wandb)

The default MLflow store (tracking.backends: mlflow) is ``<output_dir>/mlruns``, beside the runs.

A sweep folder (``maskstatus sweep``) holds one run (or CV) folder per trial:

    <sweep>/study.db             the Optuna study (the default storage)
    <sweep>/trials/              trial-0000-<timestamp>/, ... each an ordinary run or CV folder
    <sweep>/sweep.json           every trial: state, values, score, run folder, epochs, wall time
    <sweep>/index.html, plots/   the sweep page and its pictures
    <sweep>/best.yaml            the base config with the best trial's values (for ``maskstatus cv``)

Every file name of the layout is named here, and only here; this module imports no torch (the command line
reads run folders before it imports torch).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import RunError, RunNotFoundError
from .outputs import disk_error

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
FOLDS = "folds.csv"  # a run's and a CV folder's person -> fold table
CHECKPOINTS = "checkpoints"
BEST = "best.pt"
LAST = "last.pt"
METRICS = "metrics.csv"
PREDICTIONS = "predictions"
OOF = "oof.csv"  # <run>/predictions/oof.csv, <cv>/oof.csv
AGE_CUTS = "age_cuts.json"
ONNX = "onnx"  # <run>/onnx/<checkpoint>.onnx and its sidecar, written by maskstatus export
# A CV folder's saved config (train.cv), named here so the command line reads it before importing the trainer.
CV_CONFIG = "cv_config.yaml"
CV_METRICS = "cv_metrics.json"  # the pooled OOF scores of a CV folder
# Held while a CV folder's oof.csv and cv_metrics.json are rewritten, so that processes training folds of one CV
# folder at once pool one after another (train/cv.py).
POOL_LOCK = ".pool.lock"
WORKER_LOGS = "logs"  # <cv>/logs/fold<k>.log: the output of a fold trained by `maskstatus cv --parallel-folds`
REVIEW = "review"  # <cv>/review/: the label review page's folder (its default place)
REVIEW_DECISIONS = "decisions.json"
REVIEW_RELABEL = "relabel.csv"
TRACKING = "tracking.json"  # <run>/tracking.json: the tracking backends' run ids
MLRUNS = "mlruns"  # <output_dir>/mlruns: the default MLflow file store
# A sweep folder (maskstatus sweep): its study database, trial folders, summary, page and best config.
SWEEP_DATABASE = "study.db"
SWEEP_TRIALS = "trials"
SWEEP_SUMMARY = "sweep.json"
SWEEP_PAGE = "index.html"
SWEEP_BEST = "best.yaml"
SWEEP_PLOTS = "plots"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def folds(self) -> Path:
        return self.root / FOLDS

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING

    @property
    def predictions(self) -> Path:
        return self.root / PREDICTIONS

    @property
    def oof(self) -> Path:
        return self.predictions / OOF

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def folders(self) -> tuple[Path, ...]:
        """The folders ``make`` creates: the run folder and those its files go in."""
        return self.root, self.checkpoints, self.predictions, self.plots

    def make(self) -> RunDir:
        for p in self.folders():
            p.mkdir(parents=True, exist_ok=True)
        return self


@dataclass(frozen=True)
class SweepDir:
    """A sweep folder: ``study.db`` (the default storage), ``trials/`` (one run or CV folder per trial),
    ``sweep.json``, ``index.html`` with its ``plots/``, and ``best.yaml`` (the best trial's config)."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / SWEEP_DATABASE

    @property
    def trials(self) -> Path:
        return self.root / SWEEP_TRIALS

    @property
    def summary(self) -> Path:
        return self.root / SWEEP_SUMMARY

    @property
    def page(self) -> Path:
        return self.root / SWEEP_PAGE

    @property
    def best(self) -> Path:
        return self.root / SWEEP_BEST

    @property
    def plots(self) -> Path:
        return self.root / SWEEP_PLOTS


def new_run_dir(output_dir: Path, name: str) -> RunDir:
    """A fresh, uniquely named folder under output_dir (never reuses an existing one).

    The folder is claimed by ``mkdir`` itself, which fails if it exists: two processes started in the
    same second never get the same folder (checking ``exists()`` first would let both see it free).
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    base = output_dir / f"{name}-{stamp}"
    root, i = base, 1
    while True:
        try:
            root.mkdir()
            break
        except FileExistsError:
            root = base.with_name(f"{base.name}-{i}")
            i += 1
    return RunDir(root).make()


def pool_lock(cv_dir: Path) -> Any:
    """An exclusive lock on the CV folder's pooled files (a ``filelock.FileLock``, a context manager).

    ``filelock`` rather than a hand-written ``fcntl.flock``: torch already depends on it, and it locks on Windows
    too. The lock file stays (removing it while another process waits on it would let a third one in).
    """
    from filelock import FileLock

    return FileLock(Path(cv_dir) / POOL_LOCK)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete what interrupted saves left in ``folder`` and below: ``atomic_write``'s ``.<name>.<random>.tmp`` files.

    A save killed before its rename (SIGKILL, power loss) leaves its temp file behind; nothing reads it, and a
    checkpoint's can be as large as the model. Only for a folder no other process is writing to (a run being
    resumed), since a running save's temp file looks the same. Returns the files removed.
    """
    removed = []
    for path in sorted(Path(folder).rglob(".*.tmp")):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def open_run_dir(path: Path | str) -> RunDir:
    run = RunDir(Path(path))
    if not run.config.is_file():
        raise RunNotFoundError(f"not a run folder (no {RUN_CONFIG}): {run.root}")
    return run


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temp_path)`` for a temp file in the same folder, then rename it to ``path``.

    The rename is the commit: a crash never leaves half a file. Every file the project writes goes through here.
    A full, read-only or forbidden disk raises ``outputs.DiskWriteError`` naming ``path`` and the cause; the
    temp file is removed and the file already at ``path`` (a previous checkpoint) is kept as it was.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        os.close(fd)
        # mkstemp makes the file private (0600); give it the permissions an ordinary write would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        # Judged before the temp file goes: a writer that hides the OSError is judged by the space left.
        error = disk_error(exc, path, _resume_hint(path)) if isinstance(exc, Exception) else None
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if error is not None:
            raise error from exc
        raise


def _resume_hint(path: Path) -> str:
    """What to do after a failed write into a run or CV folder that can be resumed; '' elsewhere."""
    folder = path.parent
    for _ in range(4):  # <cv>/<fold run>/checkpoints/last.pt is the deepest file a resume needs
        if (folder / CV_CONFIG).is_file():
            return f"continue with maskstatus cv --resume {folder} (nothing already saved is lost)"
        folder = folder.parent
    run = RunDir(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
    if run.config.is_file() and run.last.is_file():
        return f"continue with maskstatus train --resume {run.root} (nothing already saved is lost)"
    return ""


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def atomic_save_torch(obj: Any, path: Path) -> None:
    import torch  # here, not at the top: the command line opens run folders before it imports torch

    # Through a Python file: torch then chains the OSError (ENOSPC...) to its own RuntimeError, which names no cause.
    def save(p: Path) -> None:
        with open(p, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, save)


def atomic_write_csv(df, path: Path, **kwargs: Any) -> None:
    atomic_write(path, lambda p: df.to_csv(p, index=False, **kwargs))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Checkpoints hold plain data only, so they load with weights_only=True.

    An empty, truncated or foreign file raises RunError naming it (torch's own errors name no file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises EOFError, RuntimeError, UnpicklingError... on a damaged file
        size = path.stat().st_size
        raise RunError(
            f"cannot read checkpoint {path} ({size} bytes; it is empty, truncated or not a checkpoint: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Copy it again from where "
            "the run was trained; for best.pt, predict --checkpoint last uses the last epoch's weights instead"
        ) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise RunError(f"{path} is not a maskstatus checkpoint (no 'model' entry)")
    return state


def oof_path(path: Path | str) -> Path:
    """A folder's out-of-fold predictions: ``DIR/oof.csv`` (a CV folder) if present, else ``DIR/predictions/oof.csv``
    (a run folder); FileNotFoundError when neither is there."""
    path = Path(path)
    for candidate in (path / OOF, RunDir(path).oof):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no out-of-fold predictions in {path} (looked for {OOF} and {PREDICTIONS}/{OOF})")


def is_run(path: Path) -> bool:
    return RunDir(Path(path)).config.is_file()


def _fold_runs(path: Path) -> list[Path]:
    if not path.is_dir():
        return []
    runs = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        if not is_run(sub):
            continue
        if RunDir(sub).best.is_file():
            runs.append(sub)
        else:
            logger.warning("%s has a %s but no %s/%s; left out of %s", sub, RUN_CONFIG, CHECKPOINTS, BEST, path)
    return runs


def expand_runs(paths: Sequence[Path | str]) -> list[Path]:
    """Run folders and CV folders -> run folders.

    A folder with config.yaml is one run (unless it has no checkpoints/ but holds
    fold runs: a CV folder that saved its config at the top). A folder without
    one, whose subfolders are runs (config.yaml + checkpoints/best.pt), stands
    for those runs, sorted by name.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if is_run(p) and RunDir(p).checkpoints.is_dir():
            out.append(p)
            continue
        folds = _fold_runs(p)
        if folds:
            out.extend(folds)
        elif is_run(p):
            out.append(p)  # a run without checkpoints: loading it names the missing file
        else:
            raise FileNotFoundError(
                f"not a run folder (no config.yaml) nor a folder of runs (no subfolder with config.yaml and "
                f"checkpoints/best.pt): {p}"
            )
    return out
