"""Hyperparameter sweeps with Optuna (``maskstatus sweep``): a search space over config keys, one run folder per
trial, pruning on the per-epoch validation F1, several workers on one study. Needs the ``sweep`` extra."""
