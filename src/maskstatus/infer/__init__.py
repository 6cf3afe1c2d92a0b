"""Prediction: evaluation loops, TTA, predicting with runs and ensembles, grouping eval photos into people, ONNX export and runtime."""
