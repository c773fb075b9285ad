"""Which device and precision a run gets: pure functions of the recipe's request and facts about the machine
(the engine asks torch for the facts; these functions never touch a device, so they are tested anywhere)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import Problem

DEVICE_PATTERN = r"^(auto|cpu|cuda|cuda:\d+)$"


@dataclass(frozen=True)
class Facts:
    """What the machine offers: CUDA devices visible to this process, and whether they compute in bf16."""
    cuda_devices: int = 0
    bf16: bool = False


def device_problems(requested: str, facts: Facts, key: str = "device") -> list[Problem]:
    """A CUDA device asked for on a machine without it (or an index past the last GPU), naming `key`."""
    if not re.match(DEVICE_PATTERN, requested):
        return [Problem(key, f"{requested!r} is not a device; expected auto, cpu, cuda or cuda:N")]
    if not requested.startswith("cuda"):
        return []
    if facts.cuda_devices == 0:
        return [Problem(key, f"{requested} was asked for but this machine has no CUDA device visible to torch "
                             "(no GPU, a CPU-only torch build, or CUDA_VISIBLE_DEVICES empty); use cpu or auto")]
    index = int(requested.split(":")[1]) if ":" in requested else 0
    if index >= facts.cuda_devices:
        return [Problem(key, f"{requested} was asked for but only {facts.cuda_devices} CUDA device(s) are visible "
                             f"(cuda:0 to cuda:{facts.cuda_devices - 1})")]
    return []


def resolve_device(requested: str, facts: Facts, local_rank: int | None = None) -> str:
    """The device string a process uses. auto: CUDA when present, else CPU. Under torchrun each process takes
    cuda:LOCAL_RANK (a fixed index in the recipe would put every rank on one GPU)."""
    if requested == "cpu" or (requested == "auto" and facts.cuda_devices == 0):
        return "cpu"
    if local_rank is not None:
        return f"cuda:{local_rank}"
    return "cuda:0" if requested in ("auto", "cuda") else requested


def resolve_precision(precision: str, device: str, facts: Facts) -> str:
    """A stage's compute precision on `device`. auto: bf16 autocast on a GPU with bf16 units, else fp32
    (CPU stays fp32 unless a recipe asks for bf16; an older GPU without bf16 keeps fp32)."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") and facts.bf16 else "fp32"
    return precision


def precision_problems(precisions: list[str], device: str, facts: Facts) -> list[Problem]:
    """bf16 asked for explicitly on a GPU that cannot compute it."""
    if device.startswith("cuda") and not facts.bf16:
        return [Problem(f"transfer.{i}.precision", "bf16 was asked for but this GPU has no bf16 support; use "
                                                   "auto or fp32") for i, p in enumerate(precisions) if p == "bf16"]
    return []
