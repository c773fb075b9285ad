"""Wall-time estimates for `slimbert plan`: time a few real steps of each stage on the run's device, multiply by
its steps; and, on paper, the same stage on N GPUs."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from ..data.corpus import Batches
from ..recipe.resolve import Resolved
from ..transfer.strategies import strategy
from . import device as dev
from . import throughput as tp
from .runner import build_context

TIMED_STEPS = 2
# On paper from a CPU: N of these GPUs at this share of their peak (an assumption, said so in the output;
# large transformer runs usually reach 30-50 % on datacentre GPUs).
PAPER_GPU, PAPER_PEAK, PAPER_MFU = "H100 SXM", 989e12, 0.35


def estimate_stages(r: Resolved, plan: dict, device: str | None = None, gpus: int = 8) -> None:
    """Adds `estimate` ({step_seconds, seconds, tokens_per_s, mfu, gpus, seconds_on_gpus, gpus_basis}) to each
    stage row of `plan`, or a note why not. A device this machine lacks is a RecipeError (exit 2)."""
    where = dev.select(device or r.recipe.device, "--device" if device else "device",
                       [st.precision for st in r.recipe.transfer])
    try:
        ctx = build_context(r, Path("."), Console(stderr=True), quick=True, device=where)
    except Exception as e:  # noqa: BLE001 - an estimate is optional; say why it is missing
        plan["estimate_note"] = f"not measured: {str(e).splitlines()[0]}"
        return
    plan["estimate_device"] = dev.describe(where)
    ctx.student.eval()
    for k, (st, row) in enumerate(zip(r.recipe.transfer, plan["stages"])):
        batches = Batches(ctx.rows(st), st.batch_size, r.recipe.seed, k)
        kind, x = strategy(st), ctx.inputs()
        total = kind.total_steps(st, r.student_config.num_hidden_layers)
        probe = kind.typical_step(st, total)
        precision = dev.precision(st.precision, where)
        with dev.autocast(where, precision):
            sum(kind.terms(st, x, probe, batches).values()).backward()  # warm-up
            dev.synchronize(where)
            t0 = time.perf_counter()
            for i in range(TIMED_STEPS):
                sum(kind.terms(st, x, probe + i, batches).values()).backward()
            dev.synchronize(where)
        per = (time.perf_counter() - t0) / TIMED_STEPS
        ctx.student.zero_grad(set_to_none=True)
        if ctx.ib is not None:
            ctx.ib.zero_grad(set_to_none=True)
        flops = tp.recipe_step_flops(r, st, kind.log_fields(st, probe).get("layer"))
        rate = tp.rates(flops, st.batch_size * r.recipe.data.seq_len, per, tp.device_peak(where, precision))
        seconds = per * total
        if where.type == "cuda":  # the measured step, its batch shared by N such GPUs (linear scaling)
            on_gpus, basis = seconds / gpus, f"{gpus} x {torch.cuda.get_device_name(where)}, linear scaling"
        else:
            on_gpus = flops * total / (gpus * PAPER_PEAK * PAPER_MFU)
            basis = f"{gpus} x {PAPER_GPU} at {PAPER_MFU:.0%} MFU (assumed), from counted FLOPs"
        row["estimate"] = {"step_seconds": round(per, 4), "seconds": round(seconds, 1),
                           "tokens_per_s": round(rate["tokens_per_s"], 1),
                           "mfu": None if rate["mfu"] is None else round(rate["mfu"], 4),
                           "gpus": gpus, "seconds_on_gpus": round(on_gpus, 1), "gpus_basis": basis}
