"""The A/B behind the ort_fusion pass: stock transformers encoders (all-MiniLM-L6-v2 with its weights, the shapes
slimbert cuts from it at 2x and 4x, BERT_BASE) and the MobileBERT preset, each exported with the default passes
("off"; eager_attention among them since 2026-12-08: results/ort_fusion.md was made before, when "off" was the
SDPA export and "on" added eager_attention too) and with ort_fusion after them ("on"), timed under ONNX Runtime
fp32 in one alternating run (batch 1 x seq 128, 2 threads). Also dynamic int8 quantised from each graph: the
export quantises from the "off" graph (its int8 and OpenVINO files do not change); "on" shows what int8 from the
fused graph (QAttention) would give. Cut shapes and BERT_BASE have random weights (speed does not depend on them; parity is checked by the
export). Run it alone.

    python benchmarks/latency/ort_fusion_ab.py --out benchmarks/results/ort_fusion.md     # about 5 minutes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtimes_latency.py, beside it


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    a = ap.parse_args()
    import runtimes_latency as RL
    from slimbert.export.bench import bench, cpu_line, variants
    from slimbert.export.isa import cpu_info
    from slimbert.export.onnx import export, quantize_dynamic_int8
    from slimbert.export.passes import FUSED_PASSES, ORT_ONLY_PASSES

    started = time.time()
    cpu = cpu_info()
    on = list(FUSED_PASSES)
    off = [p for p in on if p not in ORT_ONLY_PASSES]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models, tok = RL.stock_encoders(work)
        models["MobileBERT preset"] = RL.save(RL.student("mobilebert"), tok, work / "mb")
        entries, fused = [], {}
        for i, (name, path) in enumerate(models.items()):
            for side, passes in (("off", off), ("on", on)):
                out = work / f"m{i}-{side}"
                task = "feature-extraction" if i < 4 else None
                r = export(path, out, task=task, passes=passes, measure=False, log=lambda m: None)
                if side == "on":
                    fused[name] = next(p for p in r.passes if p["pass"] == "ort_fusion")
                quantize_dynamic_int8(out / "model.onnx", out / "model_int8.onnx")
                entries += variants(f"{name}|{side}", out, ["ort"], ["fp32", "int8"], cpu)
        report = bench(entries, [1], [128], threads=2, runs=a.runs, cpu=cpu)
    p50 = {r["model"]: r["latency"]["p50"] * 1e3 for r in report["results"]}
    lines = ["# ONNX Runtime's transformer fusion (ort_fusion) on and off", "",
             f"`python benchmarks/latency/ort_fusion_ab.py {' '.join(sys.argv[1:])}` ({time.time() - started:.0f} s, "
             f"alone on the machine); batch 1 x seq 128, 2 threads, {a.runs} timed runs per variant in alternating "
             f"blocks. {cpu_line(report['cpu'])}", "",
             f"off: {', '.join(off)}; on: {', '.join(on)}. fp32 is model.onnx as the export writes it. int8: "
             "dynamic int8 quantised from that graph (the export quantises from the off graph in both cases).", "",
             "| model | fused ops | ORT fp32 off ms | on ms | on/off speed-up | dyn. int8 off ms | on ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for name in models:
        f = fused[name].get("fused") or {}
        ops = ", ".join(f"{k} {v}" for k, v in f.items()) or "none (graph left as it was)"
        row = [p50.get(f"{name}|{s} ort {prec}") for prec in ("fp32", "int8") for s in ("off", "on")]
        cells = [f"{row[0]:.2f}", f"{row[1]:.2f}", f"{row[0] / row[1]:.2f}x", f"{row[2]:.2f}", f"{row[3]:.2f}",
                 f"{row[2] / row[3]:.2f}x"]
        lines.append(f"| {name} | {ops} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)


if __name__ == "__main__":
    main()
