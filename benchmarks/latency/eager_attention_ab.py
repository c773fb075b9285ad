"""The A/B behind the eager_attention default: stock transformers encoders (all-MiniLM-L6-v2 with its weights, the
shapes slimbert cuts from it at 2x and 4x, BERT_BASE), each exported with the default passes ("eager") and the same
passes without eager_attention ("sdpa": transformers' SDPA attention as torch.onnx exports it, which cleans every
layer's attention probabilities with IsNaN + Where), timed under ONNX Runtime fp32, dynamic and static int8
(quantised from that graph, as the export does) and OpenVINO fp32, in `--rounds` alternating runs, each in a fresh
process (batch 1 x seq 128, 2 threads). Cut shapes and BERT_BASE have random weights (speed does not depend on
them; parity is checked by the export). Run it alone.

    python benchmarks/latency/eager_attention_ab.py --out /tmp/eager    # about 10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtimes_latency.py, beside it

VARIANTS = (("ORT fp32", "ort", "model.onnx"), ("ORT dyn. int8", "ort", "dynamic.onnx"),
            ("ORT static int8", "ort", "static.onnx"), ("OpenVINO fp32", "openvino", "model.xml"))


def time_files(specs: list[tuple[str, str]], runs: int) -> list[float]:
    """p50 ms of each (runtime, file) in one alternating run (called in a fresh process)."""
    from slimbert.export import openvino as ovx
    from slimbert.export.runtime import OrtRunner, alternating_median_ms

    runners = [OrtRunner(Path(f), threads=2) if rt == "ort" else ovx.OvRunner(Path(f), "fp32") for rt, f in specs]
    return alternating_median_ms(runners, 1, 128, runs=runs, warmup=3)


def ab_arguments(doc: str, stem: str) -> argparse.Namespace:
    """The A/B scripts' command line: timed runs per variant, rounds (each in a fresh process), the output folder."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs, each in a fresh process")
    ap.add_argument("--out", type=Path, required=True, help=f"folder for {stem}.md / .json")
    return ap.parse_args()


def timed_rounds(folders: dict[tuple[str, str], Path], variants, a: argparse.Namespace, started: float) -> dict:
    """(model, side, variant) -> the p50 ms of the variant's file in the (model, side) folder, in each of
    `a.rounds` alternating runs of every file, each in a fresh process."""
    from slimbert.export.runtime import in_fresh_process

    keys = [(name, side, label) for (name, side) in folders for label, _, _ in variants]
    specs = [(rt, str(folders[name, side] / file)) for (name, side) in folders for _, rt, file in variants]
    rounds = []
    for r in range(a.rounds):
        print(f"[{time.time() - started:5.0f} s] timing round {r + 1}/{a.rounds} in a fresh process", flush=True)
        rounds.append(in_fresh_process(time_files, specs, a.runs))
    return {k: [rd[i] for rd in rounds] for i, k in enumerate(keys)}


def op_counts(path: Path, ops: tuple[str, ...]) -> dict[str, int]:
    """The graph's node count and how many of its nodes are each of `ops`."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    return {"nodes": len(g.node), **{op: sum(n.op_type == op for n in g.node) for op in ops}}


def ab_rows(ms: dict, models, variants, off: str, on: str) -> list[dict]:
    """One row per model and variant: both sides' p50s per round, the speed-up (off / on) per round, its median."""
    rows = []
    for name in models:
        for label, _, _ in variants:
            x, y = np.array(ms[name, off, label]), np.array(ms[name, on, label])
            rows.append({"model": name, "variant": label, f"{off}_ms": x.tolist(), f"{on}_ms": y.tolist(),
                         "speedup": (x / y).tolist(), "median_speedup": float(np.median(x / y))})
    return rows


def main() -> None:
    a = ab_arguments(__doc__, "eager_attention")
    import torch

    import runtimes_latency as RL
    from slimbert.export import openvino as ovx
    from slimbert.export.bench import cpu_line
    from slimbert.export.isa import cpu_info
    from slimbert.export.onnx import export, quantize_dynamic_int8, quantize_static_int8
    from slimbert.export.passes import DEFAULT_PASSES
    from slimbert.export.runtime import versions

    started = time.time()
    cpu = cpu_info()
    sides = {"sdpa": [p for p in DEFAULT_PASSES if p != "eager_attention"], "eager": list(DEFAULT_PASSES)}
    folders, nodes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models, tok = RL.stock_encoders(work)
        items = ovx.calibration_items(tok)
        for i, (name, path) in enumerate(models.items()):
            for side, passes in sides.items():
                out = work / f"m{i}-{side}"
                print(f"[{time.time() - started:5.0f} s] {name}: {side}", flush=True)
                export(path, out, task="feature-extraction", passes=passes, measure=False, log=lambda m: None)
                quantize_dynamic_int8(out / "model.onnx", out / "dynamic.onnx")
                quantize_static_int8(out / "model.onnx", out / "static.onnx", items)
                ovx.to_ir(out / "model.onnx", out / "model.xml")
                nodes[name, side] = op_counts(out / "model.onnx", ("IsNaN", "Where"))
                folders[name, side] = out
        ms = timed_rounds(folders, VARIANTS, a, started)
    rows = ab_rows(ms, models, VARIANTS, "sdpa", "eager")
    res = {"cpu": cpu.as_dict(), "versions": versions(), "torch": torch.__version__, "runs": a.runs,
           "rounds": a.rounds, "passes": sides, "nodes": {f"{k[0]} {k[1]}": v for k, v in nodes.items()},
           "rows": rows, "seconds": round(time.time() - started)}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "eager_attention.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["# eager_attention on and off: stock encoders exported with transformers' SDPA or eager attention",
             "",
             f"`python benchmarks/latency/eager_attention_ab.py {' '.join(sys.argv[1:])}` ({res['seconds']} s, alone "
             f"on the machine); batch 1 x seq 128, 2 threads, {a.runs} timed runs per variant in alternating blocks, "
             f"{a.rounds} rounds, each in a fresh process. {cpu_line(res['cpu'])}", "",
             f"sdpa: {', '.join(sides['sdpa'])}; eager: {', '.join(sides['eager'])}. int8: quantised from each graph "
             "as the export does (dynamic; static in the export's layout, calibrated on its built-in sentences).", "",
             "| model | nodes sdpa / eager (IsNaN + Where) | variant | sdpa ms | eager ms | speed-up per round | median |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ns, ne = nodes[r["model"], "sdpa"], nodes[r["model"], "eager"]
        cell = f"{ns['nodes']} ({ns['IsNaN'] + ns['Where']}) / {ne['nodes']} ({ne['IsNaN'] + ne['Where']})"
        lines.append(f"| {r['model']} | {cell} | {r['variant']} | {np.median(r['sdpa_ms']):.2f} | "
                     f"{np.median(r['eager_ms']):.2f} | {', '.join(f'{x:.2f}x' for x in r['speedup'])} | "
                     f"{r['median_speedup']:.2f}x |")
    text = "\n".join(lines) + "\n"
    (a.out / "eager_attention.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
