"""Prediction: evaluation loops, TTA, a run's prediction pipeline (shared by predict, serve and export), ensembles,
grouping eval photos into people, ONNX export and runtime."""
