"""The tracking backends by name: each opens one of Lightning's loggers for a run, and says before training whether it can.

TensorBoard is Fabric's own logger (a core dependency). W&B and MLflow are pytorch-lightning's ``WandbLogger`` and
``MLFlowLogger`` (the ``track`` extra): they subclass ``lightning_fabric.loggers.Logger``, and both come from one
maintained package, which is why they are preferred here to wandb's copy of the Fabric logger. Their modules are
imported only when a backend is opened, so training imports without the extra.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from lightning_fabric.loggers import Logger, TensorBoardLogger

from ..config import Config, ConfigError, TrackingConfig
from ..extras import MissingExtraError, require
from ..runs import MLRUNS, RunDir

if TYPE_CHECKING:
    from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

logger = logging.getLogger(__name__)

# Seconds to wait for a tracking server's port: the libraries themselves retry for minutes before they give up.
CONNECT_TIMEOUT_S = 5.0
WANDB_DEFAULT_URL = "https://api.wandb.ai"
# The MLflow tag naming the CV a parent run stands for (its folder name), so that every fold finds the same parent.
CV_TAG = "maskstatus.cv"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under the run it names


@dataclass(frozen=True)
class RunInfo:
    """Where and as what a run is logged: its folder, display name, the CV it belongs to, ids of a resumed run."""

    root: Path
    name: str
    output_dir: Path
    group: str | None = None
    job: str = "train"  # train, fold (a run of a CV) or cv (the CV's pooled scores)
    run_id: str | None = None  # the backend's id of this run when it is resumed


class Backend:
    """One tracking backend: the modules it needs, the server it must reach, and how it logs a run."""

    name: str = ""
    modules: tuple[str, ...] = ()  # of the track extra
    key: str = ""  # the config key of its server, named when it cannot be reached

    def server(self, tracking: TrackingConfig, output_dir: Path) -> str | None:
        """The http(s) URL of the server it logs to, or None when it writes local files only."""
        return None

    def open(self, tracking: TrackingConfig, run: RunInfo) -> Logger:
        """A started Lightning logger for the run (its run created now, so a failure comes before the first epoch)."""
        raise NotImplementedError

    def run_id(self, lg: Logger) -> str | None:
        """The id that continues this run on a resume (None: the backend continues by its folder)."""
        return None

    def log_files(self, lg: Logger, files: Sequence[tuple[Path, str]]) -> None:
        """Attach (file, folder in the run) pairs to the run; TensorBoard's files already lie in the run folder."""

    def has_params(self, lg: Logger) -> bool:
        """Whether the run has its parameters already (a resumed run, a CV parent pooled again)."""
        return False

    def finish(self, lg: Logger, status: str) -> None:
        lg.finalize(status)


class TensorBoardBackend(Backend):
    name = "tensorboard"

    def open(self, tracking: TrackingConfig, run: RunInfo) -> Logger:
        # name + empty version: the event files go straight into <run>/tensorboard/, as they always have.
        tb = RunDir(run.root).tensorboard
        return TensorBoardLogger(root_dir=tb.parent, name=tb.name, version="", default_hp_metric=False)


class WandbBackend(Backend):
    name = "wandb"
    modules = ("wandb", "pytorch_lightning")
    key = "tracking.wandb.mode"

    def server(self, tracking: TrackingConfig, output_dir: Path) -> str | None:
        if tracking.wandb.mode == "offline":
            return None
        return os.environ.get("WANDB_BASE_URL", WANDB_DEFAULT_URL)

    def open(self, tracking: TrackingConfig, run: RunInfo) -> Logger:
        import wandb
        from pytorch_lightning.loggers import WandbLogger

        wb = WandbLogger(
            name=run.name,
            save_dir=str(run.root),  # wandb makes <run>/wandb/ under it
            id=run.run_id,
            project=tracking.wandb.project,
            entity=tracking.wandb.entity,
            offline=tracking.wandb.mode == "offline",
            group=run.group,
            job_type=run.job,
            resume="allow" if run.run_id else None,
            settings=wandb.Settings(quiet=True),
        )
        _ = wb.experiment  # creates the run
        return wb

    def run_id(self, lg: Logger) -> str | None:
        return str(cast("WandbLogger", lg).experiment.id)

    def log_files(self, lg: Logger, files: Sequence[tuple[Path, str]]) -> None:
        import wandb

        run = cast("WandbLogger", lg).experiment
        artifact = wandb.Artifact(f"files-{run.id}", type="run-files")
        for path, folder in files:
            artifact.add_file(str(path), name=f"{folder}/{path.name}" if folder else path.name)
        run.log_artifact(artifact)

    def finish(self, lg: Logger, status: str) -> None:
        lg.finalize(status)  # PL's W&B logger leaves the run open: finish it, or the next fold's run joins it
        cast("WandbLogger", lg).experiment.finish(exit_code=0 if status == "success" else 1)


class MlflowBackend(Backend):
    name = "mlflow"
    modules = ("mlflow", "pytorch_lightning")
    key = "tracking.mlflow.tracking_uri"

    def server(self, tracking: TrackingConfig, output_dir: Path) -> str | None:
        uri = mlflow_uri(tracking, output_dir)
        return uri if urlsplit(uri).scheme in ("http", "https") else None

    def open(self, tracking: TrackingConfig, run: RunInfo) -> Logger:
        from pytorch_lightning.loggers import MLFlowLogger

        uri = mlflow_uri(tracking, run.output_dir)
        experiment_id(uri, tracking.mlflow.experiment)  # made here, not by the logger (with a warning that it did)
        tags = {"maskstatus.run_dir": str(run.root)}
        if run.job == "fold" and run.group is not None and run.run_id is None:
            tags[PARENT_TAG] = cv_parent_run(uri, tracking.mlflow.experiment, run.group)
        ml = MLFlowLogger(
            experiment_name=tracking.mlflow.experiment,
            run_name=run.name,
            tracking_uri=uri,
            tags=tags,
            run_id=run.run_id,
        )
        _ = ml.experiment  # creates the experiment and the run
        return ml

    def run_id(self, lg: Logger) -> str | None:
        return str(cast("MLFlowLogger", lg).run_id)

    def log_files(self, lg: Logger, files: Sequence[tuple[Path, str]]) -> None:
        ml = cast("MLFlowLogger", lg)
        for path, folder in files:
            ml.experiment.log_artifact(ml.run_id, str(path), folder or None)

    def has_params(self, lg: Logger) -> bool:
        ml = cast("MLFlowLogger", lg)
        return bool(ml.experiment.get_run(ml.run_id).data.params)

    def finish(self, lg: Logger, status: str) -> None:
        lg.finalize("success" if status == "success" else "failed")


BACKENDS: dict[str, Backend] = {b.name: b for b in (TensorBoardBackend(), WandbBackend(), MlflowBackend())}


def mlflow_uri(tracking: TrackingConfig, output_dir: Path) -> str:
    """The MLflow tracking URI: the configured one, or a file store in the output folder."""
    if tracking.mlflow.tracking_uri is not None:
        uri = tracking.mlflow.tracking_uri
    else:
        uri = (Path(output_dir) / MLRUNS).resolve().as_uri()
    if urlsplit(uri).scheme == "file":
        # MLflow 3 refuses its file store unless this is set; mlflow-skinny (the track extra) has no database driver,
        # so the file store is the local store it can write. Set for this process only, and only for a file store.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def experiment_id(uri: str, experiment: str) -> str:
    """The id of the MLflow experiment named ``experiment``, created if it does not exist yet."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return str(found.experiment_id if found is not None else client.create_experiment(experiment))


def cv_parent_run(uri: str, experiment: str, group: str) -> str:
    """The id of the MLflow run standing for the CV ``group``, created by the first fold (or the pooling) to ask."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = experiment_id(uri, experiment)
    # Folder names hold only letters, digits, '.', '_' and '-' (config.RUN_NAME), so the quoted value is safe.
    runs = client.search_runs([exp], filter_string=f"tags.`{CV_TAG}` = '{group}'", max_results=1)
    if runs:
        return str(runs[0].info.run_id)
    return str(client.create_run(exp, run_name=group, tags={CV_TAG: group}).info.run_id)


def unavailable(cfg: Config) -> dict[str, Exception]:
    """The configured backends that cannot log, with the one-line error saying why (package missing, server down)."""
    problems: dict[str, Exception] = {}
    for name in cfg.tracking.backends:
        backend = BACKENDS[name]
        try:
            if backend.modules:
                require("track", f"tracking.backends: {name}", backend.modules)
        except MissingExtraError as exc:
            problems[name] = exc
            continue
        url = backend.server(cfg.tracking, cfg.output_dir)
        if url is not None:
            reason = _unreachable(url)
            if reason is not None:
                problems[name] = ConfigError(f"{backend.key}: cannot reach the {name} server at {url} ({reason})")
    return problems


def _unreachable(url: str) -> str | None:
    """Why the server's port cannot be reached, or None when it can.

    Only the connection is tried, by hand: wandb and MLflow would retry for minutes before failing, and a
    run should learn within seconds that its server is down.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


def finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of ``metrics`` that are numbers (a task a model does not predict is NaN: left out)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            out[k] = float(v)
    return out
