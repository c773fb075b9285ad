"""What does running the MLM head on masked rows only buy in pre-training distillation?

Times training steps of the quickstart's pretrain_distill stage two ways, alternating in one process so the
ratio holds on a noisy machine:
  masked rows: the vocabulary-wide head runs on the masked positions only (slimbert's way; the loss reads
               nothing else);
  all rows:    the head runs on every position and the loss then picks the masked ones, as
               `model(inputs).logits` would.
Both give the same loss (checked each step). Writes benchmarks/results/pretrain_distill.md.

    python benchmarks/training/pretrain_distill_speed.py [--recipe quickstart] [--steps 10]
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


class AllRows(torch.nn.Module):
    """The MLM head applied to every position; the loss then indexes the masked rows out of the result. Stands in
    for the head module, which receives only the masked rows' hidden states in slimbert's way."""

    def __init__(self, head, hidden):
        super().__init__()
        self.head, self.hidden = head, hidden

    def forward(self, rows):
        return self.head(self.hidden["h"])[self.hidden["keep"]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/pretrain_distill.md"))
    args = ap.parse_args()
    r = load_recipe(args.recipe)
    stage_index, st = next((i, s) for i, s in enumerate(r.recipe.transfer) if s.kind == "pretrain_distill")
    ctx = build_context(r, Path("."), Console(stderr=True), quick=True)
    ctx.student.train()
    batches = Batches(ctx.train, st.batch_size, r.recipe.seed, stage_index)
    tokens = st.batch_size * r.recipe.data.seq_len
    head, encoder = ctx.student.cls, ctx.student.slimbert
    hidden: dict = {}

    def capture(module, inputs, output):  # the encoder's output and the masked positions, for AllRows
        hidden["h"] = output.last_hidden_state
        return output

    def masked_positions(step):
        from slimbert.data.corpus import mask_tokens

        d = r.recipe.data
        _, labels = mask_tokens(batches.batch(step), ctx.tokenizer, d.mlm_probability, batches.generator(step, 1),
                                d.whole_word_mask)
        return labels != -100

    encoder.register_forward_hook(capture)
    all_rows = AllRows(head, hidden)

    def step_time(step: int, full: bool) -> tuple[float, float]:
        hidden["keep"] = masked_positions(step)
        ctx.student.cls = all_rows if full else head
        t0 = time.perf_counter()
        loss = strategy(st).terms(st, ctx.inputs(), step, batches)["mlm"]
        loss.backward()
        ctx.student.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, loss.item()

    step_time(0, False), step_time(0, True)  # warm-up
    a, b = [], []
    for step in range(args.steps):  # alternate A/B on the same batch
        (ta, la), (tb, lb) = step_time(step, False), step_time(step, True)
        assert abs(la - lb) <= 1e-4 * abs(lb), (la, lb)
        a.append(ta)
        b.append(tb)
    write(statistics.median(a), statistics.median(b), r, st, tokens, args)


def write(a: float, b: float, r, st, tokens, args) -> None:
    import transformers

    lines = [
        "# Pre-training distillation: the MLM head on masked rows only",
        "",
        f"Command: `python benchmarks/training/pretrain_distill_speed.py --recipe {args.recipe} "
        f"--steps {args.steps}`",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"transformers {transformers.__version__}.",
        "",
        f"Recipe: {r.recipe.name}; student {r.student_config.num_hidden_layers} layers, inter width "
        f"{r.student_config.hidden_size}, vocabulary {r.student_config.vocab_size}; batch {st.batch_size} x seq "
        f"{r.recipe.data.seq_len} = {tokens} tokens per step, masking rate {r.recipe.data.mlm_probability}, "
        f"alpha {st.alpha}. Median of {args.steps} steps per mode, the two modes alternating on the same batches "
        "(equal losses checked). A step is the forward pass, the loss and the backward pass.",
        "",
        "| MLM head runs on | tokens/s | step ms |",
        "|---|---|---|",
        f"| masked rows only (slimbert) | {tokens / a:,.0f} | {a * 1e3:.0f} |",
        f"| every row | {tokens / b:,.0f} | {b * 1e3:.0f} |",
        "",
        f"Speed-up: **{b / a:.2f}x**.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
