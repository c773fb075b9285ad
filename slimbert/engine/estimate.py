"""Wall-time estimates for `slimbert plan`: time a few real steps of each stage, multiply by its steps."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..data.corpus import Batches
from ..recipe.resolve import Resolved
from ..transfer.strategies import strategy
from .runner import build_context

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
        kind, x = strategy(st), ctx.inputs()
        total = kind.total_steps(st, r.student_config.num_hidden_layers)
        probe = kind.typical_step(st, total)
        kind.terms(st, x, probe, batches)  # warm-up
        t0 = time.perf_counter()
        for i in range(TIMED_STEPS):
            loss = sum(kind.terms(st, x, probe + i, batches).values())
            loss.backward()
        per = (time.perf_counter() - t0) / TIMED_STEPS
        ctx.student.zero_grad(set_to_none=True)
        if ctx.ib is not None:
            ctx.ib.zero_grad(set_to_none=True)
        row["estimate"] = {"step_seconds": round(per, 4), "seconds": round(per * total, 1)}
