"""The cut student's curve: similarity Spearman (every MRPC and RTE dev pair, against the source) of
all-MiniLM-L6-v2 cut to a shape (`student.init: prune_from_source`'s code: layers by importance, widths by activation
importance), before training and every `--eval` steps of distillation. The loss is embedding_distill's with the
tokens term: 10 x the MSE of every real token's last hidden state (on the kept channels) plus 1 - the cosine of
the mean-pooled embeddings (with --hidden, the hidden term too: each lower layer's output against its source
layer's), AdamW at a constant LR (or decaying linearly to 0 with --decay), the embedding tables frozen. It chose
round 3's cut shapes and stages (arms.py CUT_SHAPES / CUT_STAGES) and the embedding-cut preset's (docs/cut.md);
run it alone.

    python benchmarks/quality/cut_curve.py --layers 6 --ffn 376 --steps 3600 --eval 1200 --lr 4e-4 --decay \
        --hidden 10 --refit 1024 --save /tmp/cut2x                            # 2x fewer encoder params: the preset
    python benchmarks/quality/cut_curve.py --layers 6 --width 256 --heads 8 --ffn 320 --steps 1200 --eval 300 \
        --lr 2e-4 --decay --refit 1024 --save /tmp/cut4x                                      # 4x
    python benchmarks/quality/cut_curve.py --layers 3 --steps 300 --data wiki                 # half the depth

--data task reads the MRPC and RTE training files' sentences (no labels: text like the pairs scored), wiki the
WikiText-2 sentences.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import arms as R  # noqa: E402 - the quality benchmark's data paths

from slimbert.data.pairs import read_pairs  # noqa: E402
from slimbert.engine.sentence import hf_encoder, similarity_fidelity  # noqa: E402
from slimbert.models import SlimBertForMaskedLM  # noqa: E402
from slimbert.models.encoders import from_encoder_config, to_encoder  # noqa: E402
from slimbert.models.modeling import pool  # noqa: E402
from slimbert.transfer.losses import similarity_matrix_loss  # noqa: E402
from slimbert.transfer.source_init import attach_pooler, init_from_source  # noqa: E402


def sentences(kind: str) -> list[str]:
    if kind == "task":
        out = []
        for name, cols in (("MRPC/train.tsv", ("#1 String", "#2 String")), ("RTE/train.tsv", ("sentence1", "sentence2"))):
            with open(R.DATA / name, encoding="utf-8-sig", newline="") as f:
                for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                    out += [row[c] for c in cols if row.get(c)]
        return out
    text = (R.DATA / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("=")]
    return [s for l in lines for s in re.split(r"(?<=[.!?]) ", l) if len(s) >= 40]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--data", choices=["task", "wiki"], default="task")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decay", action="store_true", help="LR decays linearly to 0 over --steps (default constant)")
    ap.add_argument("--sim", type=float, default=0.0, help="weight of the in-batch similarity-matrix term")
    ap.add_argument("--cos", type=float, default=1.0, help="weight of the pooled cosine term")
    ap.add_argument("--hidden", type=float, default=0.0,
                    help="weight of the MSE of every kept layer's output (but the last, which the tokens term "
                         "covers) against its source layer's, on the kept channels, averaged over those layers")
    ap.add_argument("--refit", type=int, default=0, help="corpus rows of 64 tokens for the least-squares refit "
                                                         "(student.refit_tokens / 64; 0: none)")
    ap.add_argument("--save", type=Path, default=None, help="save the distilled student here (a stock BertModel "
                                                            "and the tokenizer: cut_latency.py times it)")
    a = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(a.seed)
    random.seed(a.seed)
    path = R.source_path()
    tok = AutoTokenizer.from_pretrained(path)
    source = AutoModel.from_pretrained(path).eval()
    pairs = {name: read_pairs(R.DATA / name / "dev.tsv") for name in ("MRPC", "RTE")}
    # Calibration rows for the cut: packed WikiText, as a run's corpus rows (the pairs are never seen).
    ids = tok((R.DATA / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")[:800_000],
              return_tensors="pt")["input_ids"][0]
    rows = ids[: len(ids) // 64 * 64].view(-1, 64)
    config = from_encoder_config(source.config, num_hidden_layers=a.layers, hidden_size=a.width,
                                 embedding_size=a.width, intra_bottleneck_size=a.width, num_attention_heads=a.heads,
                                 intermediate_size=a.ffn)
    cut = SlimBertForMaskedLM(config)
    attach_pooler(cut, config)
    report = init_from_source(cut, source, None if a.layers < source.config.num_hidden_layers else
                              list(range(a.layers)), rows[:32], rows[100:132], "mean",
                              rows[200:200 + a.refit] if a.refit else None)
    student = to_encoder(cut.slimbert, "bert")
    kept = report.kept.hidden
    print(f"cut: layers {[j + 1 for j in report.kept.layers]}, encoder params "
          f"{sum(p.numel() for p in student.encoder.parameters()):,}", flush=True)

    def score(step: int) -> None:
        student.eval()
        m = {k: similarity_fidelity(hf_encoder(source), hf_encoder(student), tok, p, "mean", 128,
                                    torch.device("cpu"))["spearman"] for k, p in pairs.items()}
        print(f"step {step}: Spearman MRPC {m['MRPC']:.4f}, RTE {m['RTE']:.4f}", flush=True)
        student.train()

    score(0)
    texts = sentences(a.data)
    random.shuffle(texts)
    student.embeddings.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=a.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / a.steps if a.decay else 1.0)
    started = time.perf_counter()
    for step in range(1, a.steps + 1):
        batch = [texts[(step * a.batch + i) % len(texts)] for i in range(a.batch)]
        enc = tok(batch, truncation=True, max_length=a.seq, padding=True, return_tensors="pt")
        mask = enc["attention_mask"]
        with torch.no_grad():
            out_s = source(**enc, output_hidden_states=bool(a.hidden))
            target = out_s.last_hidden_state[..., kept]
        out = student(**enc, output_hidden_states=bool(a.hidden))
        mine = out.last_hidden_state
        real = mask.unsqueeze(-1).float()

        def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ((x - y).pow(2) * real).sum() / real.sum() / x.shape[-1]

        tokens = mse(mine, target)
        # Student layer i (1-based) sits where source layer kept[i-1]+1 did: its output maps to that one's.
        inner = [mse(out.hidden_states[i], out_s.hidden_states[j + 1][..., kept])
                 for i, j in enumerate(report.kept.layers[:-1], start=1)] if a.hidden else []
        hidden = torch.stack(inner).mean() if inner else None
        ps, pt = pool(mine, mask, "mean"), pool(target, mask, "mean")
        cosine = (1 - F.cosine_similarity(ps, pt)).mean()
        loss = 10 * tokens + a.cos * cosine
        if hidden is not None:
            loss = loss + a.hidden * hidden
        if a.sim:
            loss = loss + a.sim * similarity_matrix_loss(pt, ps)
        if step == 1 or step % a.eval == 0:
            print(f"  loss terms: tokens {tokens.item():.4f}"
                  + (f", hidden {hidden.item():.4f}" if hidden is not None else ""), flush=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % a.eval == 0:
            print(f"  {time.perf_counter() - started:.0f} s", flush=True)
            score(step)
    if a.save is not None:
        student.eval().save_pretrained(a.save)
        tok.save_pretrained(a.save)
        print(f"saved to {a.save}", flush=True)


if __name__ == "__main__":
    main()
