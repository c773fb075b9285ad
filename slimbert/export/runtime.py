"""The runtimes an export runs on: ONNX Runtime sessions and latency timing (shared by the export's parity check,
its graph passes and the latency report), and ONNX Runtime and OpenVINO as two implementations of one small
interface: which file a precision runs from, and a runner called like a session without its first argument,
run(feed) -> outputs in order, that knows its input and output names. Reports, parity checks, task metrics and
the shape search take a (runtime, precision) pair and never need to know which library is behind it."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Protocol

import numpy as np

from . import openvino as ovx
from .isa import CpuInfo, why_not


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


# ---- one interface, two runtimes ------------------------------------------------------------------------------

class Runner(Protocol):
    input_names: set[str]
    output_names: list[str]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Runtime:
    name: str
    files: dict[str, str]                                           # precision -> file in an export folder
    load: Callable[[Path, str, int | None], Runner]                 # (file, precision, threads) -> runner
    version: Callable[[], str]

    def file(self, folder: Path, precision: str) -> Path:
        return Path(folder) / self.files[precision]


class OrtRunner:
    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        self.session = session(path, threads=threads)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.input_names})


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


ORT = Runtime("ort", {"fp32": "model.onnx", "int8": "model_int8.onnx", "int8-static": "model_int8_static.onnx"},
              OrtRunner, _ort_version)
OPENVINO = Runtime("openvino", {p: f for p, (f, _) in ovx.PRECISIONS.items()}, ovx.OvRunner, ovx.version)
RUNTIMES = {"ort": ORT, "openvino": OPENVINO}


def load_for_timing(runtime_name: str, path: Path, precision: str, threads: int | None = None) -> Runner:
    """A runner for latency measurement at fixed shapes: each runtime at its best for a fixed batch x seq. OpenVINO
    compiles one model per timed shape (OvRunner's static_shapes); ONNX Runtime runs the file as it is."""
    if runtime_name == "openvino":
        return ovx.OvRunner(path, precision, threads, static_shapes=True)
    return get(runtime_name).load(path, precision, threads)


def get(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def unavailable(runtime: str, precision: str, cpu: CpuInfo) -> str | None:
    """Why this CPU or install cannot run (runtime, precision); None when it can."""
    rt = get(runtime)
    base = "int8" if precision.startswith("int8") else precision
    reason = why_not(runtime, base, cpu)
    if reason is None and precision == "int8-bf16":
        reason = why_not(runtime, "bf16", cpu)
    if reason is None and precision not in rt.files:
        reason = f"n/a: {runtime} has no {precision} variant (it has {', '.join(rt.files)})"
    return reason


def versions() -> dict[str, str | None]:
    out = {}
    for name, rt in RUNTIMES.items():
        try:
            out[name] = rt.version()
        except ImportError:
            out[name] = None
    return out


class TaskModel:
    """A runner called like a transformers task model (logits, or start/end logits), so an export on any runtime
    and precision is evaluated on a task's dev set by the code that evaluates PyTorch models."""

    def __init__(self, runner):
        self.runner = runner

    def eval(self):
        return self

    def __call__(self, **x):
        import torch

        feed = {k: v.cpu().numpy().astype(np.int64) for k, v in x.items() if k in self.runner.input_names}
        if "token_type_ids" in self.runner.input_names and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        out = self.runner.run(feed)
        return SimpleNamespace(**{n: torch.from_numpy(np.asarray(o)) for n, o in zip(self.runner.output_names, out)})


def exported_variants(folder: Path, cpu: CpuInfo) -> list[tuple[str, str]]:
    """The (runtime, precision) pairs an export folder has a file for and this machine can run."""
    return [(name, prec) for name, rt in RUNTIMES.items() for prec in rt.files
            if rt.file(folder, prec).is_file() and unavailable(name, prec, cpu) is None]


def task_model(folder: Path, runtime: str, precision: str, threads: int | None = None) -> TaskModel:
    rt = get(runtime)
    return TaskModel(rt.load(rt.file(folder, precision), precision, threads))

def _timing_feed(runner: Runner, batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    # random token ids below 1000, so any vocabulary takes them; no padding
    rng = np.random.default_rng(seed)
    feed = {"input_ids": rng.integers(100, 1000, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}
    return {k: v for k, v in feed.items() if k in runner.input_names}


def median_ms(runner: Runner, batch: int, seq: int, runs: int = 20, warmup: int = 3, seed: int = 0) -> float:
    """Median wall time of one call of any runtime's runner at batch x seq."""
    return alternating_median_ms([runner], batch, seq, runs, warmup, seed)[0]


def alternating_median_ms(runners: list[Runner], batch: int, seq: int, runs: int = 20, warmup: int = 3,
                          seed: int = 0, block: int = 5) -> list[float]:
    """Median ms of each runner at batch x seq, timed in alternating blocks of `block` calls (each block after one
    untimed call), so a change in the host's speed during the measurement moves them all alike and their ratios
    hold (the latency report's scheme, for the shape search's anchored timings)."""
    feeds = [_timing_feed(r, batch, seq, seed) for r in runners]
    for r, feed in zip(runners, feeds):
        for _ in range(warmup):
            r.run(feed)
    times: list[list[float]] = [[] for _ in runners]
    while min(len(t) for t in times) < runs:
        for r, feed, t in zip(runners, feeds, times):
            if len(t) >= runs:
                continue
            r.run(feed)   # untimed: the other model just evicted this one's caches
            for _ in range(min(block if len(runners) > 1 else runs, runs - len(t))):
                t0 = time.perf_counter()
                r.run(feed)
                t.append(time.perf_counter() - t0)
    return [float(np.median(t) * 1000) for t in times]


CHILD_ERROR = 3   # a child's exit status for an error it reports: its message is what it wrote to its out file


def run_in_child(target: str, job: dict, what: str, timeout_s: float | None = None,
                 reported: type[Exception] = RuntimeError):
    """`target` ("package.module.function") called as function(job_path, out_path) in a new Python process that
    has done nothing else. The job goes in as JSON with this process's sys.path (so the child imports as this one
    does: a source checkout, an editable install) and the function's result comes back as JSON: no pickles cross.
    A subprocess, not multiprocessing's spawn, which re-runs a caller's main script that lacks a __main__ guard.
    The function returning CHILD_ERROR raises `reported` (the caller's own error kind) with what it wrote; any other
    failure, or `timeout_s`, a RuntimeError naming `what`."""
    module, fn = target.rsplit(".", 1)
    code = (f"import json, sys; sys.path[:] = json.load(open(sys.argv[1]))['sys_path']; "
            f"from {module} import {fn}; sys.exit({fn}(sys.argv[1], sys.argv[2]))")
    with tempfile.TemporaryDirectory(prefix="slimbert-child-") as tmp:
        job_path, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps({**job, "sys_path": [str(p) for p in sys.path]}))
        try:
            proc = subprocess.run([sys.executable, "-c", code, str(job_path), str(out)], capture_output=True,
                                  text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{what} did not finish within {timeout_s} s") from None
        if proc.returncode == CHILD_ERROR:
            raise reported(out.read_text())
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


def ort_median_ms_fresh(paths: list[Path], threads: int | None = None, batch: int = 1, seq: int = 128,
                        runs: int = 20, warmup: int = 3, timeout_s: float = 1800) -> list[float]:
    """alternating_median_ms of ONNX Runtime sessions of `paths`, timed in a new Python process that has done
    nothing else (run_in_child): timed in the process that had just exported them (torch, NNCF, other sessions) the
    int8 pick's two candidates read unevenly slower (static 32.8 against dynamic 23.2 ms there, within 3 % of each
    other timed apart; AMD EPYC AVX512, 2026-12-08), so the pick could keep the slower one."""
    job = {"paths": [str(p) for p in paths], "threads": threads, "batch": batch, "seq": seq, "runs": runs,
           "warmup": warmup}
    return [float(x) for x in run_in_child("slimbert.export.runtime._ort_timing_child", job, "the timing process",
                                           timeout_s)]


def _ort_timing_child(job_path: str, out_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    runners = [OrtRunner(Path(p), threads=job["threads"]) for p in job["paths"]]
    p50 = alternating_median_ms(runners, job["batch"], job["seq"], runs=job["runs"], warmup=job["warmup"])
    Path(out_path).write_text(json.dumps(p50))


def in_fresh_process(fn: Callable, *args, **kwargs):
    """fn(*args, **kwargs) in a spawned process that has done nothing else (fn and its arguments picklable). For
    timings: in the process that had just exported a model (NNCF, OpenVINO, torch), the MobileBERT preset's ORT int8
    beside 14 other ORT sessions read 44 ms, and 22 ms in a fresh one (AMD EPYC AVX512;
    benchmarks/results/latency_ceiling_amd_avx512.md)."""
    # concurrent.futures, not multiprocessing.Pool: a Pool replaces a worker that dies (a segfault, the OOM killer)
    # and its caller waits forever; the executor raises.
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except BrokenProcessPool:
            raise RuntimeError(f"the fresh process running {getattr(fn, '__name__', fn)} died before it returned "
                               "(it exited abruptly: killed, crashed in native code, or could not start; see its "
                               "stderr)") from None
