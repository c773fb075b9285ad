"""The recipe's export section, run after training: ONNX (with parity check), optional int8 and OpenVINO IRs,
the task's dev metrics for each exported model on each runtime and precision, and the optional latency report."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..export.bench import (MAX_ACCURACY_DROP, Entry, bench, bert_base_reference, teacher_reference, terminal_view,
                            variants, write_report)
from ..export.isa import cpu_info
from ..export.onnx import ExportError, export
from ..export.runtime import exported_variants, task_model
from ..recipe.resolve import Resolved
from .cards import write_card
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
            if e.static_int8 or e.quantize:  # every static int8 (ORT's candidate, NNCF's) calibrates on the corpus
                import numpy as np

                ids = train[: e.calibration_sequences].numpy().astype(np.int64)  # packed: no padding
                calibration = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                               "token_type_ids": np.zeros_like(ids)}
            export(out, dest, opset=e.opset, quantize=e.quantize, openvino=e.openvino, calibration=calibration,
                   static_calibration=calibration if e.static_int8 else None, log=log,
                   device=device)
            if r.recipe.finetune is not None:
                task_accuracy(r, out, dest, tokenizer, log)
        if e.bench is not None:
            meta = json.loads((dest / "slimbert_export.json").read_text())
            rts, precs, cpu = e.bench.runtimes, e.bench.precisions, cpu_info()
            entries = variants("student", dest, rts, precs, cpu) if rts else [Entry("student", dest / "model.onnx")]
            if e.quantize and not rts:
                entries.append(Entry("student-int8", dest / "model_int8.onnx"))
            # with runtimes, the baselines get the same variants as the student, for best vs best
            want = {"openvino": "openvino" in (rts or []),
                    "quantize": "int8" if rts and any("int8" in p for p in precs) else None}
            for c in e.bench.compare:
                ref = (bert_base_reference(meta["task"], dest / "baselines" / f"bert_base-{meta['task']}", dest, **want)
                       if c == "bert_base" else teacher_reference(dest, dest / "baselines" / "teacher", **want))
                entries += variants(c, ref.parent, rts, precs, cpu) if rts else [Entry(c, ref)]
            report = bench(entries, e.bench.batch, e.bench.seq, e.bench.threads, cpu=cpu,
                           max_accuracy_drop=e.bench.max_accuracy_drop)
            write_report(report, dest / "bench")
            log(terminal_view(report))  # report.md's tables are wider than a terminal
        write_card(out, dest, "export")   # after the latency report, which it includes
    except ExportError as err:
        raise TrainingError(f"export: {err}") from None


def task_accuracy(r: Resolved, out: Path, dest: Path, tokenizer, log) -> dict:
    """The fine-tuned task's dev metrics for PyTorch and for each exported model: what quantisation costs."""
    spec = r.recipe.finetune
    task = make_task(spec, r.base, tokenizer)
    report = {"task": spec.task, "pytorch": json.loads((out / "finetune" / "metrics.json").read_text())["dev"]}
    variants_here = [f"{rt}-{prec}" for rt, prec in exported_variants(dest, cpu_info())]
    for name in variants_here:  # e.g. ort-fp32, ort-int8, openvino-bf16: the keys the latency report reads
        rt, prec = name.split("-", 1)
        report[name] = task.evaluate(task_model(dest, rt, prec))
    key = next(iter(report["pytorch"]))
    limit = r.recipe.export.bench.max_accuracy_drop if r.recipe.export.bench is not None else MAX_ACCURACY_DROP
    for name in variants_here:
        delta = report[name][f"{key}_delta_vs_pytorch"] = report[name][key] - report["pytorch"][key]
        lossy = limit is not None and -delta > limit
        log(f"{spec.task} dev {key}: {name} {report[name][key]:.4f} (PyTorch {report['pytorch'][key]:.4f})"
            + (f": {-delta * 100:.2f} points lost, more than {limit * 100:g}; kept on disk but not counted as "
               "fastest in best vs best" if lossy else ""))
    (dest / "task_metrics.json").write_text(json.dumps(report, indent=2))
    return report
