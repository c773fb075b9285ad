"""Tokens per second and model FLOPs utilisation (MFU) of a transfer step.

MFU = counted model FLOPs of a step / step time / the devices' peak. The FLOPs come from models/counting.py
(the analytic count that reproduces the paper's 22.5B / 5.7B): the teacher's forward plus the student's forward
and backward (3x the forward), over the layers a step actually runs (a progressive step at layer l runs the
student up to l and the teacher up to the layer mapped to it) and the MLM head on the masked rows only, as the
engine computes it. Recomputation, softmax and norms are not counted (the usual MFU convention, PaLM app. B).

Peaks are the vendors' dense figures (no sparsity) per matmul precision. On a CPU there is no published
figure: the peak is a measured fp32 matmul rate, reported as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import torch

from ..models import SlimBertConfig
from ..models.counting import count_config
from ..transfer.strategies import StepShape, strategy

# Dense peak FLOP/s by device name (substring, first match wins: more specific names first).
# bf16: tensor cores; tf32: fp32 matmuls with TF32 allowed (the default here on CUDA); fp32: plain CUDA cores.
PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51e12}),
    ("H100 NVL", {"bf16": 835e12, "tf32": 418e12, "fp32": 60e12}),
    ("H200", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("H100", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),   # SXM
    ("H800", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("GH200", {"bf16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("B200", {"bf16": 2250e12, "tf32": 1125e12, "fp32": 80e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("A800", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L40", {"bf16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12}),
    ("L4", {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("A10G", {"bf16": 70e12, "tf32": 35e12, "fp32": 31.2e12}),
    ("A10", {"bf16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),
    ("RTX 4090", {"bf16": 165e12, "tf32": 82.6e12, "fp32": 82.6e12}),
    ("RTX 3090", {"bf16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12}),
    ("V100", {"fp32": 15.7e12}),   # no bf16, no TF32
    ("T4", {"fp32": 8.1e12}),
]


def matmul_precision(device_type: str, precision: str) -> str:
    """The precision the matmuls of a step run in: bf16 under autocast, TF32 for fp32 on CUDA, else fp32."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if device_type == "cuda" else "fp32"


def peak_for(name: str, precision: str) -> float | None:
    """The dense peak FLOP/s of a GPU by name for `precision` (bf16, tf32, fp32), or None when unknown."""
    for key, peaks in PEAKS:
        if key.lower() in name.lower():
            return peaks.get(precision) or (peaks.get("fp32") if precision == "tf32" else None)
    return None


@lru_cache(maxsize=None)
def measured_cpu_peak(size: int = 2048, repeats: int = 5) -> float:
    """The fastest fp32 matmul rate this CPU reaches with torch's threads (the CPU's practical peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


@dataclass(frozen=True)
class Peak:
    flops: float | None     # FLOP/s of one device; None: unknown (MFU shows n/a)
    source: str             # "table: <name> <precision>", "measured: fp32 matmul", or why unknown


def device_peak(device: torch.device, precision: str) -> Peak:
    p = matmul_precision(device.type, precision)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        value = peak_for(name, p)
        return Peak(value, f"table: {name} {p} dense" if value else f"n/a: {name} is not in the peak table")
    if device.type == "cpu" and p == "fp32":
        return Peak(measured_cpu_peak(), "measured: fp32 matmul on this CPU")
    return Peak(None, f"n/a: no peak for {device.type} {p}")


# ---- FLOPs of a step --------------------------------------------------------------------------------------------

def forward_flops(config: SlimBertConfig, seq_len: int, layers: int | None = None, head_rows: float = 0.0) -> float:
    """FLOPs of one sequence's forward through the embedding and the first `layers` blocks (all when None),
    plus the MLM head on `head_rows` of its seq_len positions."""
    c = count_config(config, seq_len, head="mlm")
    n = config.num_hidden_layers if layers is None else min(layers, config.num_hidden_layers)
    blocks = (c.flops["bottleneck"] + c.flops["attention"] + c.flops["ffn"]) * n / config.num_hidden_layers
    return c.flops["embedding"] + blocks + c.flops["head"] * head_rows / seq_len


def step_flops(shape: StepShape, student: SlimBertConfig, teacher: SlimBertConfig, seq_len: int, batch: int,
               source: SlimBertConfig | None = None) -> float:
    """Counted FLOPs of one optimizer step on `batch` sequences: trained models 3x their forward (forward and
    a backward of twice its cost), frozen ones 1x. For teacher adaptation `teacher` is the IB teacher being
    trained and `source` the frozen model it learns from."""
    if shape.teacher_trains:
        learner = forward_flops(teacher, seq_len, None, shape.teacher_head_rows)
        frozen = forward_flops(source or teacher, seq_len, None, shape.teacher_head_rows)
        return batch * (3 * learner + frozen)
    s = forward_flops(student, seq_len, shape.student_layers, shape.student_head_rows)
    t = 0.0 if shape.teacher_layers == 0 else forward_flops(teacher, seq_len, shape.teacher_layers,
                                                            shape.teacher_head_rows)
    return batch * (3 * s + t)


def rates(flops: float, tokens: int, seconds: float, peak: Peak, devices: int = 1) -> dict[str, float | None]:
    """tokens/s, achieved TFLOP/s and MFU (0-1, None when the peak is unknown) of `seconds` of work."""
    achieved = flops / seconds if seconds > 0 else 0.0
    mfu = achieved / (peak.flops * devices) if peak.flops and seconds > 0 else None
    return {"tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "tflops": achieved / 1e12, "mfu": mfu}


def fmt_mfu(mfu: float | None) -> str:
    return "MFU n/a" if mfu is None else f"MFU {100 * mfu:.1f}%"


def stage_shape(st, layer_map: list[int], mlm_probability: float, seq_len: int, layer: int | None = None,
                teacher_mlm: bool = True) -> StepShape:
    """What a step of stage `st` runs, as its kind's strategy says: `layer` is a progressive step's current student
    layer (1-based); `teacher_mlm`: the teacher has an MLM head (its distribution can be a target)."""
    return strategy(st).step_shape(st, layer_map, mlm_probability * seq_len, layer, teacher_mlm)


def model_configs(r) -> tuple[SlimBertConfig, SlimBertConfig | None, SlimBertConfig]:
    """(student, teacher, source) configs of a resolved recipe for counting; the teacher is None when a plugin or
    a passed-in teacher replaces the recipe's (its shape is not known: MFU shows n/a)."""
    source = r.source.as_config()
    teacher = r.teacher_config if r.teacher_config is not None else source
    return r.student_config, teacher, source


def recipe_step_flops(r, st, layer: int | None = None, teacher_known: bool = True) -> float | None:
    """Counted FLOPs of one optimizer step of stage `st` (at progressive `layer`), global batch."""
    if not teacher_known:
        return None
    student, teacher, source = model_configs(r)
    d = r.recipe.data
    shape = stage_shape(st, r.layer_map, d.mlm_probability, d.seq_len, layer=layer, teacher_mlm=r.source.has_mlm_head)
    return step_flops(shape, student, teacher, d.seq_len, st.batch_size, source=source)
