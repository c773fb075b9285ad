"""The embedding stage's curve: similarity Spearman (MRPC and RTE dev pairs, against the source) after every 250
steps of embedding distillation, continuing a quality-benchmark student, with one corpus text per input or with
packed spans. It chose the embed arms' inputs and LR (findings.md); run it alone, after `run.py transfer --arm ARM`.

    python benchmarks/quality/embedding_curve.py texts 1000 2e-3 [--start embed]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import arms as R  # noqa: E402 - the quality benchmark's workspace and data paths

from slimbert.data.pairs import read_pairs  # noqa: E402
from slimbert.engine.sentence import hf_encoder, similarity_fidelity  # noqa: E402
from slimbert.export.onnx import load_model  # noqa: E402
from slimbert.models.modeling import pool  # noqa: E402
from slimbert.transfer.losses import embedding_cosine_loss, embedding_mse_loss, similarity_matrix_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("inputs", choices=["texts", "packed"])
    ap.add_argument("steps", type=int)
    ap.add_argument("lr", type=float)
    ap.add_argument("--start", default="embed", help="the transfer arm whose student is continued")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--weights", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("MSE", "COSINE", "SIMILARITY"),
                    help="the stage's loss weights (mse, cosine, similarity)")
    a = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    src = R.source_path()
    tok = AutoTokenizer.from_pretrained(src)
    source = AutoModel.from_pretrained(src, use_safetensors=True).eval()
    student = load_model(R.WORK / f"transfer-{a.start}" / "student", "fill-mask")[0].slimbert
    lines = [t.strip() for t in R.corpus_file().read_text().splitlines() if len(t.split()) >= 3]
    random.Random(0).shuffle(lines)
    pairs = {t: read_pairs(R.DATA / R.TASK_FILES[t]["dev"], 1000, 0) for t in ("mrpc", "rte")}

    def spearman() -> dict:
        student.eval()
        out = {t: similarity_fidelity(hf_encoder(source), hf_encoder(student), tok, p, "mean", a.seq,
                                      torch.device("cpu"))["spearman"] for t, p in pairs.items()}
        student.train()
        return out

    opt = torch.optim.AdamW(student.parameters(), lr=a.lr, weight_decay=0.0)
    body, i = a.seq - 2, 0
    print(0, spearman(), flush=True)
    t0 = time.time()
    for step in range(1, a.steps + 1):
        if a.inputs == "texts":
            enc = tok(lines[i:i + a.batch], truncation=True, max_length=a.seq, padding=True, return_tensors="pt")
            i += a.batch
        else:  # consecutive lines concatenated and cut into [CLS] span [SEP] rows, as the packed corpus is
            ids: list[int] = []
            while len(ids) < a.batch * body and i < len(lines):
                ids += tok(lines[i], add_special_tokens=False)["input_ids"]
                i += 1
            if len(ids) < a.batch * body:
                print(f"out of unread text at step {step}")
                break
            rows = torch.tensor([[tok.cls_token_id, *ids[k * body:(k + 1) * body], tok.sep_token_id]
                                 for k in range(a.batch)])
            enc = {"input_ids": rows, "attention_mask": torch.ones_like(rows), "token_type_ids": torch.zeros_like(rows)}
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        with torch.no_grad():
            target = pool(source(**enc).last_hidden_state, enc["attention_mask"], "mean")
        mine = pool(student(**enc).last_hidden_state, enc["attention_mask"], "mean")
        for g in opt.param_groups:  # 50 warm-up steps, then linear decay, as the recipe's stage
            g["lr"] = a.lr * min(1.0, step / 50) * (1 - step / (a.steps + 1))
        w_mse, w_cos, w_sim = a.weights
        loss = (w_mse * embedding_mse_loss(target, mine) + w_cos * embedding_cosine_loss(target, mine)
                + w_sim * similarity_matrix_loss(target, mine))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == a.steps:
            print(step, round(loss.item(), 4), spearman(), f"{time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
