"""Training: one run (trainer), person-grouped cross-validation, distillation teachers, pseudo labels, the demo job."""
