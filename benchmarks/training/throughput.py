"""Tokens/s and MFU of every stage of a recipe on this machine, from the run's own metrics.jsonl.

Runs the recipe (with overrides) into a temporary run directory, then reports per stage the median of the
logged tokens/s, TFLOP/s and MFU over its logged windows (the first window, with warm-up, left out when there
are others), and `slimbert plan`'s estimate for the same stages. Writes benchmarks/results/throughput.md (the
GPU figures of the paper's shape come from benchmarks/training/gpu_check.sh, in benchmarks/results/gpu.md).

    python benchmarks/training/throughput.py --recipe quickstart --device cpu \
        --set transfer.0.steps=20 --set transfer.1.steps_per_layer=10 --set transfer.2.steps=40
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="quickstart")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/throughput.md"))
    args = ap.parse_args()
    sets = [x for s in args.sets for x in ("--set", s)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", args.recipe, *sets, "--device",
                               args.device, "--out", f"{tmp}/run"], cwd=REPO, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode:
            sys.exit(done.stderr[-3000:])
        rows = [json.loads(l) for l in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines() if l.strip()]
        plan = subprocess.run([sys.executable, "-m", "slimbert.cli", "plan", args.recipe, *sets, "--device",
                               args.device, "--json"], cwd=REPO, capture_output=True, text=True)
        stages = json.loads(plan.stdout)["stages"] if plan.returncode == 0 else []
    import transformers

    command = " ".join(["python benchmarks/training/throughput.py --recipe", args.recipe, "--device", args.device,
                        *[f"--set {s}" for s in args.sets]])
    lines = ["# Throughput: tokens/s and MFU per stage", "", f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
             f"transformers {transformers.__version__}; device {rows[0].get('device', args.device)}. "
             f"Whole run {wall:.0f} s wall (start-up, IB-teacher build and fidelity included).", "",
             "| stage | kind | precision | tokens/s | TFLOP/s | MFU | logged windows | plan's estimate |",
             "|---|---|---|---|---|---|---|---|"]
    for k in sorted({r["stage"] for r in rows}):
        mine = [r for r in rows if r["stage"] == k]
        steady = mine[1:] if len(mine) > 1 else mine

        def med(key):
            values = [r[key] for r in steady if r.get(key) is not None]
            return statistics.median(values) if values else None

        mfu = med("mfu")
        est = stages[k].get("estimate") if k < len(stages) else None
        lines.append(f"| {k} | {mine[0]['kind']} | {mine[0].get('precision', '?')} | {med('tokens_per_s'):,.0f} | "
                     f"{med('tflops') or 0:.3f} | {'n/a' if mfu is None else f'{100 * mfu:.2f}%'} | {len(mine)} | "
                     + (f"{est['seconds']:.0f} s ({est['step_seconds'] * 1000:.0f} ms/step)" if est else "-") + " |")
    lines += ["", f"MFU against {rows[0].get('peak', 'the device peak')}. On a CPU the peak is a measured fp32 "
              "matmul rate, so MFU says how much of what this CPU's matmuls reach the step gets; the machine "
              "here is shared by several jobs, so figures move by tens of percent between runs.", "",
              "GPU figures (the paper's shape on one GPU, and the quickstart there): `benchmarks/results/gpu.md`, "
              "written by `bash benchmarks/training/gpu_check.sh` on a GPU machine.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
