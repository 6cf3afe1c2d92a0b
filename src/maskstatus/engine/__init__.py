"""Training, prediction and the demo job."""
