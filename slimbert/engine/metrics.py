"""Metric logging: one JSON row per logged step in the run directory's metrics.jsonl.

Only rank 0 writes. The file is opened for appending, so a resumed run adds to it; a line torn by a kill is
ended first, so the resumed rows parse. Each row also goes to the run's experiment trackers (tracking.py), so
that the runner only ever calls `log` and `close`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tracking import Trackers


# Row fields that are not loss terms: the loss curves and the model card's loss table show the others.
NOT_LOSSES = ("stage", "kind", "step", "lr", "tokens_per_s", "tflops", "mfu", "device", "precision", "processes",
              "peak", "layer")

class MetricLogger:
    def __init__(self, path: Path, main: bool = True, trackers: Trackers | None = None):
        self.path = path
        self.trackers = trackers  # every row also goes to the recipe's experiment trackers
        self._file = open(path, "a") if main else None
        if self._file is not None and self._file.tell() and not path.read_bytes().endswith(b"\n"):
            self._file.write("\n")  # end a line torn by a kill, so the resumed rows parse

    def log(self, row: dict) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()  # a killed run keeps every row it logged
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_rows(path: Path, stage: int) -> dict[int, dict]:
    """A stage's rows by step; a resumed run re-logs steps (the last wins) and torn lines are skipped."""
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill or a full disk; the resumed run logged the step again
        if row["stage"] == stage:
            rows[row["step"]] = row
    return rows
