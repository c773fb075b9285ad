"""Wall-time estimates for `slimbert plan`: time a few real steps of each stage, multiply by its steps."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..recipe.resolve import Resolved
from .runner import build_context, compute, stage_steps
from ..data.corpus import Batches

TIMED_STEPS = 2


def estimate_stages(r: Resolved, plan: dict) -> None:
    """Adds `estimate` ({step_seconds, seconds}) to each stage row of `plan`, or a note why not."""
    try:
        ctx = build_context(r, Path("."), Console(stderr=True), quick=True)
    except Exception as e:  # noqa: BLE001 - an estimate is optional; say why it is missing
        plan["estimate_note"] = f"not measured: {str(e).splitlines()[0]}"
        return
    ctx.student.eval()
    for k, (st, row) in enumerate(zip(r.recipe.transfer, plan["stages"])):
        batches = Batches(ctx.train, st.batch_size, r.recipe.seed, k)
        total = stage_steps(st, r.student_config.num_hidden_layers)
        # Progressive stages get deeper as they go: time a step at the middle layer.
        probe = total // 2 if st.kind == "progressive" else 0
        compute(ctx, st, probe, batches)  # warm-up
        t0 = time.perf_counter()
        for i in range(TIMED_STEPS):
            loss = sum(compute(ctx, st, probe + i, batches).values())
            loss.backward()
        per = (time.perf_counter() - t0) / TIMED_STEPS
        ctx.student.zero_grad(set_to_none=True)
        if ctx.ib is not None:
            ctx.ib.zero_grad(set_to_none=True)
        row["estimate"] = {"step_seconds": round(per, 4), "seconds": round(per * total, 1)}
