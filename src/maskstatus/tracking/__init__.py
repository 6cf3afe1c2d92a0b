"""Experiment tracking: each run's config, epochs, final score and pictures on TensorBoard, W&B or MLflow.

``run.RunTracker`` is the logger Fabric is given; ``backends`` holds the backends by name
(``tracking.backends`` in the config); ``cv`` groups a CV's fold runs and logs its pooled scores.
"""

from .cv import fold_tracking, log_cv
from .run import RunTracker, check_backends

__all__ = ["RunTracker", "check_backends", "fold_tracking", "log_cv"]
