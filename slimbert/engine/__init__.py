"""The stage runner: run directory, checkpoints, resume, progress, metrics."""
