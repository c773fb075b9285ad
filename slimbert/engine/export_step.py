"""The recipe's export section, run after training: ONNX (with parity check), optional int8, the task's dev
metrics for each exported model, and the optional latency report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..export.bench import Entry, bench, bert_base_reference, teacher_reference, write_report
from ..export.onnx import ExportError, OrtTaskModel, export
from ..recipe.resolve import Resolved
from .checkpoint import TrainingError
from .finetune import make_task


def run_export(r: Resolved, out: Path, train: torch.Tensor, tokenizer, log,
               device: torch.device = torch.device("cpu")) -> None:
    """The recipe's export section; `device` computes the parity check's PyTorch reference."""
    e = r.recipe.export
    dest = out / "export"
    try:
        if not (dest / "model.onnx").is_file():  # done before a resume otherwise
            calibration = None
            if e.static_int8:
                import numpy as np

                ids = train[: e.calibration_sequences].numpy().astype(np.int64)  # packed: no padding
                calibration = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            export(out, dest, opset=e.opset, quantize=e.quantize, static_calibration=calibration, log=log,
                   device=device)
            if r.recipe.finetune is not None:
                task_accuracy(r, out, dest, tokenizer, log)
        if e.bench is not None:
            meta = json.loads((dest / "slimbert_export.json").read_text())
            entries = [Entry("student", dest / "model.onnx")]
            if e.quantize:
                entries.append(Entry("student-int8", dest / "model_int8.onnx"))
            for c in e.bench.compare:
                ref = (bert_base_reference(meta["task"], dest / "baselines" / f"bert_base-{meta['task']}", dest)
                       if c == "bert_base" else teacher_reference(dest, dest / "baselines" / "teacher"))
                entries.append(Entry(c, ref))
            report = bench(entries, e.bench.batch, e.bench.seq, e.bench.threads)
            write_report(report, dest / "bench")
            log((dest / "bench" / "report.md").read_text())
    except ExportError as err:
        raise TrainingError(f"export: {err}") from None


def task_accuracy(r: Resolved, out: Path, dest: Path, tokenizer, log) -> dict:
    """The fine-tuned task's dev metrics for PyTorch and for each exported model: what quantisation costs."""
    spec = r.recipe.finetune
    task = make_task(spec, r.file.parent, tokenizer)
    report = {"task": spec.task, "pytorch": json.loads((out / "finetune" / "metrics.json").read_text())["dev"]}
    for name in ("model.onnx", "model_int8.onnx", "model_int8_static.onnx"):
        if (dest / name).is_file():
            report[name] = task.evaluate(OrtTaskModel(dest / name))
    key = next(iter(report["pytorch"]))
    for name in [n for n in report if n.endswith(".onnx")]:
        report[name][f"{key}_delta_vs_pytorch"] = report[name][key] - report["pytorch"][key]
        log(f"{spec.task} dev {key}: {name} {report[name][key]:.4f} (PyTorch {report['pytorch'][key]:.4f})")
    (dest / "task_metrics.json").write_text(json.dumps(report, indent=2))
    return report
