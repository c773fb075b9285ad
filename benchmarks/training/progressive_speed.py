"""What does running only up to layer l buy in progressive transfer?

For each student layer l, time training steps of the quickstart's progressive stage two ways, alternating in
one process so the ratio holds on a noisy machine:
  truncated: the teacher (no_grad) and the student run only their first layers (slimbert's way);
  full:      both run every layer each step, as a naive implementation would.
Both compute the same loss. Writes benchmarks/results/progressive.md.

    python benchmarks/training/progressive_speed.py [--recipe quickstart] [--steps 6]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402

from slimbert.data.corpus import Batches  # noqa: E402
from slimbert.engine.runner import build_context  # noqa: E402
from slimbert.transfer.strategies import strategy  # noqa: E402
from slimbert.recipe import load_recipe  # noqa: E402


class FullDepth:
    """Wraps a teacher or the student's encoder so that num_layers is ignored: every layer runs."""

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, num_layers=None, **kw):
        out = self.inner(*args, **kw)
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per layer and mode")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/progressive.md"))
    args = ap.parse_args()
    r = load_recipe(args.recipe)
    stage_index, st = next((i, s) for i, s in enumerate(r.recipe.transfer) if s.kind == "progressive")
    ctx = build_context(r, Path("."), Console(stderr=True), quick=True)
    ctx.student.eval()
    if ctx.ib is not None:
        ctx.ib.requires_grad_(False)
    batches = Batches(ctx.train, st.batch_size, r.recipe.seed, stage_index)
    tokens = st.batch_size * r.recipe.data.seq_len
    truncated_teacher, truncated_encoder = ctx.teacher, ctx.student.slimbert.forward
    L = r.student_config.num_hidden_layers

    def step_time(layer: int, full: bool) -> float:
        ctx.teacher = FullDepth(truncated_teacher) if full else truncated_teacher
        ctx.student.slimbert.forward = (lambda *a, num_layers=None, **k: truncated_encoder(*a, **k)) if full \
            else truncated_encoder
        step = (layer - 1) * st.steps_per_layer
        t0 = time.perf_counter()
        loss = sum(strategy(st).terms(st, ctx.inputs(), step, batches).values())
        loss.backward()
        ctx.student.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    rows = []
    for layer in range(1, L + 1):
        step_time(layer, False), step_time(layer, True)  # warm-up
        a, b = [], []
        for _ in range(args.steps):  # alternate A/B
            a.append(step_time(layer, False))
            b.append(step_time(layer, True))
        rows.append((layer, statistics.median(a), statistics.median(b)))
        print(layer, rows[-1], flush=True)
    write(rows, r, st, tokens, args)


def write(rows, r, st, tokens, args) -> None:
    import transformers

    t_trunc = sum(a for _, a, _ in rows)
    t_full = sum(b for _, _, b in rows)
    lines = [
        "# Progressive transfer: running only up to the layer in training",
        "",
        f"Command: `python benchmarks/training/progressive_speed.py --recipe {args.recipe} "
        f"--steps {args.steps}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        f"Recipe: {r.recipe.name}; teacher {r.recipe.teacher.type} ({r.teacher_layers} layers), student "
        f"{r.student_config.num_hidden_layers} layers; batch {st.batch_size} x seq {r.recipe.data.seq_len} = "
        f"{tokens} tokens per step. Median of {args.steps} steps per layer and mode, the two modes alternating. "
        "A step is the forward passes (teacher under no_grad), the loss and the backward pass.",
        "",
        "| student layer | truncated tokens/s | full-depth tokens/s | speed-up |",
        "|---|---|---|---|",
    ]
    for layer, a, b in rows:
        lines.append(f"| {layer} | {tokens / a:,.0f} | {tokens / b:,.0f} | {b / a:.2f}x |")
    lines += ["", f"Whole stage at equal steps per layer: {tokens * len(rows) / t_trunc:,.0f} tokens/s truncated "
              f"vs {tokens * len(rows) / t_full:,.0f} full depth: **{t_full / t_trunc:.2f}x** faster.", ""]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
