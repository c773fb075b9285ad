"""ONNX Runtime: inference sessions and latency timing, shared by the export (parity), its graph passes
(per-pass timings) and the latency report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def session(path: Path, threads: int | None = None, optimize: bool = True):
    """A CPU session; `threads` pins intra-op threads (and one inter-op thread) for stable timings."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def dummy_inputs(sess, batch: int, seq: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """The inputs the session takes, at (batch, seq): random token ids from `rng`, else all 1000."""
    ids = rng.integers(1000, 2000, (batch, seq)).astype(np.int64) if rng is not None else \
        np.full((batch, seq), 1000, np.int64)
    x = {"input_ids": ids, "attention_mask": np.ones((batch, seq), np.int64),
         "token_type_ids": np.zeros((batch, seq), np.int64)}
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in x.items() if k in names}


def latency_ms(path: Path, runs: int = 20, seq: int = 128, threads: int = 2) -> float:
    """Median latency of batch 1 at `seq` tokens (for per-pass reports; the full report is in bench.py)."""
    s = session(path, threads=threads)
    x = dummy_inputs(s, 1, seq)
    for _ in range(3):
        s.run(None, x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
