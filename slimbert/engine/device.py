"""The device a run computes on, its precision, and moving batches there.

The recipe's `device` (or `--device`) is checked against what torch sees before anything is written
(recipe/hardware.py holds the pure rules). On CUDA, TF32 matmuls are allowed (fp32 weights, ~10-bit mantissa
products, the usual trade for training) and bf16 autocast is the default where the GPU has bf16 units;
weights, gradients and optimizer state stay fp32. Batches are drawn on the CPU (a pure function of seed,
stage and step, so resume stays exact) and copied over asynchronously from pinned memory.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import torch

from ..recipe.errors import RecipeError
from ..recipe.hardware import Facts, device_problems, precision_problems, resolve_device, resolve_precision


def facts() -> Facts:
    """What this process's torch sees."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Facts(cuda_devices=n, bf16=bool(n) and torch.cuda.is_bf16_supported())


def local_rank() -> int | None:
    """torchrun and `accelerate launch` set LOCAL_RANK (this process's index on its node)."""
    value = os.environ.get("LOCAL_RANK")
    return int(value) if value is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def select(requested: str, key: str = "device", precisions: list[str] = (), f: Facts | None = None) -> torch.device:
    """The torch.device for `requested` (auto, cpu, cuda, cuda:N), or RecipeError naming `key` (exit 2) when
    this machine cannot give it; sets up the backend flags for it."""
    f = facts() if f is None else f
    problems = device_problems(requested, f, key)
    if not problems:
        name = resolve_device(requested, f, local_rank() if requested != "cpu" else None)
        problems = device_problems(name, f, key) if name != requested and name.startswith("cuda:") else []
        problems += precision_problems(list(precisions), name, f)
    if problems:
        raise RecipeError(problems)
    device = torch.device(name)
    configure(device)
    return device


def configure(device: torch.device) -> None:
    if os.environ.get("SLIMBERT_DETERMINISTIC"):
        # Bit-identical GPU runs (tests, debugging): deterministic kernels, at some speed; cuBLAS also needs
        # CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment before CUDA starts.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 for fp32 matmuls and convolutions: ~8x the fp32 rate on Ampere+ at a precision training tolerates.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextmanager
def exact_fp32():
    """Full fp32 matmuls (no TF32) for a reference computation, e.g. the export's parity check."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def precision(requested: str, device: torch.device) -> str:
    """A stage's precision (auto, fp32, bf16) as it runs on `device`: fp32 or bf16."""
    f = facts() if device.type == "cuda" else Facts()
    return resolve_precision(requested, str(device), f)


def autocast(device: torch.device, precision_name: str):
    """bf16 autocast on the device's type, or nothing (fp32)."""
    if precision_name == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`: pinned and copied without blocking the host on CUDA, unchanged on CPU."""
    if x.device == device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a step's wall time is the time the GPU took (timings, MFU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
