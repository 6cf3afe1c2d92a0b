"""Scoring: macro F1 and per-task metrics, person-bootstrap intervals, out-of-fold tables, age cut tuning, label errors."""
