"""What each runtime and precision costs in accuracy (issue 18's condition on best-vs-best: every fastest variant
within 1 point of its fp32 PyTorch model on SST-2 dev where a fine-tuned model exists).

Takes fine-tuned SST-2 models (by default the quality benchmark's source and slimbert student, seed 0:
`python benchmarks/quality/run.py all` makes them), exports each as the latency benchmark does (slimbert's passes;
ONNX Runtime fp32, dynamic int8 and static per-channel int8; OpenVINO fp32 IR and NNCF int8; int8 calibrated on
SST-2 training sentences, never dev) and evaluates SST-2 dev on every variant this CPU runs, beside PyTorch fp32.

Writes benchmarks/results/runtime_accuracy.{md,json}. Accuracy does not depend on the machine's load, but the
export's parity checks time nothing; it can run beside other work.

    python benchmarks/latency/runtime_accuracy.py [--model NAME=DIR ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from slimbert.engine.finetune import make_task  # noqa: E402
from slimbert.export import openvino as ovx  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export.onnx import ExportError, export, load_model  # noqa: E402
from slimbert.export.runtime import exported_variants, task_model  # noqa: E402
from slimbert.recipe.schema import Finetune  # noqa: E402

DATA = REPO.parent / "shared" / "data"
QUALITY = REPO / "runs" / "quality" / "finetuned"
DEFAULT = {"source (all-MiniLM-L6-v2)": QUALITY / "sst2-source-0", "slimbert student": QUALITY / "sst2-slimbert-0"}
CALIBRATION = 64      # SST-2 training sentences that calibrate both int8 paths
TOLERANCE = 1.0       # points: the "within 1 point of its fp32 PyTorch model"


def sst2(tokenizer):
    spec = Finetune(task="sst2", train="SST-2/train.tsv", dev="SST-2/dev.tsv", text_fields=["sentence"],
                    label_field="label", seq_len=64, max_examples=CALIBRATION)
    return make_task(spec, DATA, tokenizer, seed=0)


def calibration_texts(n: int) -> list[str]:
    rows = (DATA / "SST-2" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:]
    step = max(1, len(rows) // n)  # spread over the file, which is not shuffled
    return [r.split("\t")[0] for r in rows[::step][:n]]


def measure(name: str, folder: Path, work: Path, log) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    task = sst2(tokenizer)
    model = load_model(folder, "text-classification")[0]
    row = {"dir": str(folder), "pytorch-fp32": task.evaluate(model)["accuracy"]}
    texts = calibration_texts(CALIBRATION)
    enc = tokenizer(texts[:16], padding=True, truncation=True, max_length=64, return_tensors="np")
    static = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
              "token_type_ids": enc.get("token_type_ids", 0 * enc["input_ids"])}
    out = work / name.split()[0]
    try:
        export(folder, out, quantize="int8", openvino=True, static_calibration=static, calibration_texts=texts,
               measure=False, log=log)
    except ExportError as e:  # a parity guard refused an int8: say so, and measure everything else
        row["refused"] = [str(e)]
        shutil.rmtree(out, ignore_errors=True)
        try:  # ONNX Runtime's int8s without OpenVINO's
            export(folder, out, quantize="int8", static_calibration=static, measure=False, log=log)
        except ExportError as e2:
            row["refused"].append(str(e2))
            shutil.rmtree(out, ignore_errors=True)
            export(folder, out, measure=False, log=log)
        ovx.to_ir(out / "model.onnx", out / ovx.IR)  # the fp32 IR passed its check before int8 was tried
    for rt, prec in exported_variants(out, cpu_info()):
        row[f"{rt}-{prec}"] = task.evaluate(task_model(out, rt, prec))["accuracy"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", default=[], help="NAME=DIR of a fine-tuned SST-2 model")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    args = ap.parse_args()
    models = dict(m.split("=", 1) for m in args.model) if args.model else DEFAULT
    missing = [f"{n}: {d}" for n, d in models.items() if not (Path(d) / "config.json").is_file()]
    if missing:
        print("no fine-tuned model at " + "; ".join(missing) + " (run `python benchmarks/quality/run.py all`, or "
              "pass --model NAME=DIR)", file=sys.stderr)
        raise SystemExit(2)
    t0, log = time.time(), []
    with tempfile.TemporaryDirectory() as tmp:
        rows = {n: measure(n, Path(d), Path(tmp), log.append) for n, d in models.items()}
    cpu = cpu_info()
    res = {"models": rows, "cpu": cpu.summary(),
           "seconds": round(time.time() - t0), "tolerance_points": TOLERANCE, "calibration_sentences": CALIBRATION}
    out = Path(args.out)
    (out / "runtime_accuracy.json").write_text(json.dumps(res, indent=2))
    variants = sorted({k for r in rows.values() for k in r if k not in ("dir", "refused", "pytorch-fp32")})
    lines = ["# What each runtime and precision costs in accuracy (SST-2 dev, fine-tuned models)", "",
             "Command: `python benchmarks/latency/runtime_accuracy.py` "
             f"({res['seconds']} s). Each model is exported as the latency benchmark exports it (slimbert's passes; "
             f"int8 calibrated on {CALIBRATION} SST-2 training sentences) and SST-2 dev (872 sentences) is evaluated "
             "on every variant this CPU runs. Points are accuracy minus the model's own PyTorch fp32 accuracy; the "
             f"issue's condition is within {TOLERANCE:g} point.", "", f"CPU: {res['cpu']}", "",
             "| model | PyTorch fp32 | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for n, r in rows.items():
        cells = []
        for v in variants:
            if v not in r:
                cells.append("n/a")
                continue
            d = 100 * (r[v] - r["pytorch-fp32"])
            cells.append(f"{100 * r[v]:.2f} ({d:+.2f}{'' if abs(d) <= TOLERANCE else ', over'})")
        lines.append(f"| {n} | {100 * r['pytorch-fp32']:.2f} | " + " | ".join(cells) + " |")
    for n, r in rows.items():
        for why in r.get("refused", []):
            lines += ["", f"{n}: refused by the export's parity guard (so not evaluated): {why}"]
    (out / "runtime_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
