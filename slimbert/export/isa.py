"""What this CPU can run fast: its model and the ISA features that decide how runtimes and precisions rank.

A latency report that does not say whether the CPU has VNNI, AMX or AVX512-BF16 cannot be compared with
another: the same ONNX file's ranking between ONNX Runtime and OpenVINO, and between fp32, bf16 and int8,
flips with them. Features come from /proc/cpuinfo's flags (Linux), and OpenVINO's own view
(`OPTIMIZATION_CAPABILITIES`) when it is installed.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path

# Report name -> /proc/cpuinfo flag.
FEATURES = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512-VNNI": "avx512_vnni", "AVX-VNNI": "avx_vnni",
            "AVX512-BF16": "avx512_bf16", "AMX-TILE": "amx_tile", "AMX-INT8": "amx_int8", "AMX-BF16": "amx_bf16"}

RUNTIMES = ("ort", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    features: dict[str, bool]
    logical_cpus: int
    openvino_capabilities: tuple[str, ...] | None = None  # None: OpenVINO not installed
    extra: dict = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        return {"model": self.model, "features": dict(self.features), "logical_cpus": self.logical_cpus,
                "openvino_capabilities": list(self.openvino_capabilities) if self.openvino_capabilities is not None
                else None}

    @classmethod
    def from_dict(cls, d: dict) -> "CpuInfo":
        """The inverse of as_dict (the latency report's timing process gets its CPU this way)."""
        caps = d.get("openvino_capabilities")
        return cls(d["model"], dict(d["features"]), d["logical_cpus"], tuple(caps) if caps is not None else None)

    def summary(self) -> str:
        have = [k for k, v in self.features.items() if v]
        return f"{self.model} ({self.logical_cpus} logical CPUs; {', '.join(have) or 'no AVX2'})"

    def key(self) -> str:
        """Identifies the machine for timing caches: model and every feature that changes kernels."""
        return self.model + "|" + ",".join(k for k, v in sorted(self.features.items()) if v)


def parse_cpuinfo(text: str) -> tuple[str, dict[str, bool], int]:
    """(model name, FEATURES present, logical CPUs) from the text of /proc/cpuinfo."""
    model, flags, cpus = "unknown CPU", set(), 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cpus += 1
        elif key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, {name: flag in flags for name, flag in FEATURES.items()}, cpus


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    try:
        model, features, cpus = parse_cpuinfo(cpuinfo.read_text())
    except OSError:  # not Linux: the model from platform, features unknown (all reported absent)
        model, features, cpus = platform.processor() or platform.machine(), {k: False for k in FEATURES}, 0
    return CpuInfo(model, features, cpus, openvino_capabilities())


def openvino_capabilities() -> tuple[str, ...] | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def why_not(runtime: str, precision: str, cpu: CpuInfo) -> str | None:
    """None when `runtime` can run `precision` here with native kernels; else the reason, for an "n/a" row."""
    if runtime == "ort":
        if precision == "bf16":
            return "n/a: onnxruntime's CPU provider has no bf16 kernels on x86"
        return None
    if runtime == "openvino":
        if cpu.openvino_capabilities is None:
            return "n/a: openvino is not installed (pip install 'slimbert[openvino]')"
        if precision == "bf16" and "BF16" not in cpu.openvino_capabilities:
            return "n/a: CPU lacks AMX/avx512_bf16"
        if precision == "int8" and "INT8" not in cpu.openvino_capabilities:
            return "n/a: OpenVINO reports no INT8 support on this CPU"
        return None
    raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")
