"""A CV on the tracking backends: its fold runs grouped, and the pooled out-of-fold scores on the group.

W&B: every fold run is in the group named after the CV folder, and the pooled scores are a run of their
own in that group (job type ``cv``). MLflow: a parent run named after the CV folder, its fold runs nested
under it (``mlflow.parentRunId``), the pooled scores logged on the parent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Config, TrackingConfig
from ..runs import TRACKING, atomic_write_text
from .backends import BACKENDS, RunInfo, cv_parent_run, mlflow_uri
from .run import flat_params, score_metrics

logger = logging.getLogger(__name__)


def fold_tracking(cfg: Config, cv_dir: Path) -> TrackingConfig:
    """A fold run's tracking: the CV folder's name as its group, and the MLflow store of the CV's output folder."""
    tracking = cfg.tracking
    update: dict[str, Any] = {"group": Path(cv_dir).name}
    if "mlflow" in tracking.backends and tracking.mlflow.tracking_uri is None:
        # The fold's output_dir is the CV folder: pin the store to the CV's own output folder, beside other runs.
        uri = mlflow_uri(tracking, cfg.output_dir)
        update["mlflow"] = tracking.mlflow.model_copy(update={"tracking_uri": uri})
    return tracking.model_copy(update=update)


def log_cv(cfg: Config, cv_dir: Path, metrics: Mapping[str, Any], ci: Mapping[str, Any]) -> None:
    """Log the pooled OOF scores (and intervals) of ``cv_dir`` on its W&B group and MLflow parent run.

    A backend that fails is named in a warning: the CV's folds are trained and pooled by then, and stay so.
    """
    pooled = score_metrics("oof", metrics, ci)
    if isinstance(ci.get("level"), (int, float)):
        pooled["oof/level"] = float(ci["level"])
    tracking = fold_tracking(cfg, cv_dir)
    ids_file = Path(cv_dir) / TRACKING
    ids = json.loads(ids_file.read_text(encoding="utf-8")) if ids_file.is_file() else {}
    for name in tracking.backends:
        if name == "tensorboard":
            continue  # each fold's own event files are the TensorBoard view of a CV
        try:
            ids[name] = _log_pooled(name, cfg, tracking, Path(cv_dir), pooled, ids.get(name))
        except Exception as exc:  # a backend's client error: the pooled files are written already
            logger.warning("tracking: %s could not log the pooled scores of %s (%s)", name, cv_dir, exc)
    if ids:
        atomic_write_text(ids_file, json.dumps(ids, indent=2) + "\n")


def _log_pooled(
    name: str, cfg: Config, tracking: TrackingConfig, cv_dir: Path, pooled: dict[str, float], run_id: str | None
) -> str | None:
    backend = BACKENDS[name]
    group = cv_dir.name
    if name == "mlflow":
        assert tracking.mlflow.tracking_uri is not None  # fold_tracking resolved it
        run_id = cv_parent_run(tracking.mlflow.tracking_uri, tracking.mlflow.experiment, group)
    lg = backend.open(tracking, RunInfo(cv_dir, f"{group}-pooled", cfg.output_dir, group, "cv", run_id))
    if not backend.has_params(lg):  # MLflow refuses to change a parameter: a CV pooled again keeps the first ones
        lg.log_hyperparams(flat_params(cfg))
    lg.log_metrics(pooled, 0)
    new_id = backend.run_id(lg)
    backend.finish(lg, "success")
    return new_id
