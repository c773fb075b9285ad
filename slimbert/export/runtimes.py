"""The runtimes an export runs on, behind one small interface: which file a precision runs from, and a runner.

A runner is called like an ONNX Runtime session without its first argument: run(feed) -> outputs in order, and
knows its input names. Reports, parity checks and task metrics take a (runtime, precision) pair and never
need to know which library is behind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Protocol

import numpy as np

from . import openvino as ovx
from .isa import CpuInfo, why_not


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
        from .onnx import session

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
