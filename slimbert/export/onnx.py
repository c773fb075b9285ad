"""Export a model to ONNX in optimum's ORTModel layout, check it against PyTorch, and quantise it.

Lifecycle: find the model (a run directory's fine-tuned or pre-trained student, or a model directory) ->
wrap it so it is called with keywords (transformers 5 breaks positional export) -> torch.onnx.export
(TorchScript exporter: measured 2-10x faster to export than dynamo, one file, and ORT fuses more of its
graphs) -> slimbert's graph passes -> parity on real tokenised text, fail loudly past tolerance ->
int8 for ONNX Runtime: dynamic and static (calibrated), each with its own parity report, the faster on this
machine kept (pick_int8) -> config.json and tokenizer files.
Everything is written to a temporary folder that replaces --out only when the whole export succeeded.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import models as M  # registers slimbert with the Auto classes
from ..models import SlimBertConfig, SlimBertPreTrainedModel, to_transformers, why_not_expressible
from ..models.remote import write_standalone_code
from . import openvino as ovx
from .isa import cpu_info, why_not
from .passes import (DEFAULT_PASSES, MODEL_PASSES, ONNX_PASSES, ORT_ONLY_PASSES, READS_MODEL, bypass_dequantize,
                     const_tensors, node_count)
from .runtime import OrtRunner, alternating_median_ms, latency_ms, ort_median_ms_fresh, session

TASKS = ("feature-extraction", "fill-mask", "text-classification", "question-answering")
OUTPUTS = {"feature-extraction": ["last_hidden_state"], "fill-mask": ["logits"], "text-classification": ["logits"],
           "question-answering": ["start_logits", "end_logits"]}
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

# Real text for the parity check when the caller gives none (sentences of different lengths, so the batch pads).
PARITY_TEXTS = [
    "The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure in Paris.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
    "Knowledge distillation trains a small student network to reproduce the outputs of a larger teacher.",
    "Short one.",
    "In 1905 the physicist published four papers that changed how people understood space, time and matter, "
    "and the last of them introduced the equivalence of mass and energy.",
    "Mobile devices need models that answer in milliseconds without a network connection.",
    "He said the foodservice pie business doesn't fit the company's long-term growth strategy.",
    "The results were consistent across three random seeds and two data sets.",
]


class ExportError(RuntimeError):
    """The export cannot be made: bad input (no model, no tokenizer, an unknown task, a busy --out...)."""


class ParityError(ExportError):
    """The export was made but does not match PyTorch (the CLI's exit 4, apart from bad input's 2)."""


@dataclass
class Parity:
    max_abs: float                       # max |onnx - torch fp32| over the outputs (real tokens only)
    max_rel: float                       # max_abs / max |torch fp32|
    cosine: float                        # of the flattened outputs, onnx vs torch fp32
    argmax_agreement: float | None       # heads: share of rows (or tokens) whose argmax agrees with torch fp32
    onnx_error: float                    # max |onnx - torch fp64|: how far ONNX is from the exact result
    torch_error: float                   # max |torch fp32 - torch fp64|: fp32's own rounding, the yardstick
    tokens: int

    def as_dict(self) -> dict:
        return {k: (round(float(v), 10) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    def ok(self, factor: float) -> bool:
        """ONNX may differ from PyTorch's fp32 by the rounding fp32 itself makes: its distance to the fp64
        result within `factor` x PyTorch fp32's (a relative test that scales with MobileBERT's large
        activations), and every argmax the same."""
        floor = 1e-6 * max(self.max_abs / max(self.max_rel, 1e-30), 1e-30)  # exact fp64 ties: 1e-6 of the scale
        return self.onnx_error <= factor * self.torch_error + floor and self.argmax_agreement in (None, 1.0)


@dataclass
class ExportResult:
    out: Path
    task: str
    files: list[str]
    parity: dict = field(default_factory=dict)      # "fp32" / "int8" -> Parity
    passes: list[dict] = field(default_factory=list)
    openvino_int8: dict | None = None               # how NNCF made the int8 IR (smooth_quant: whether it kept it)
    int8: dict | None = None                        # which ORT int8 model_int8.onnx is (dynamic or static) and why


# ---- find the model ---------------------------------------------------------------------------------------------

def find_model_dir(path: Path) -> Path:
    """A run directory's fine-tuned model, else its student; or the model directory itself."""
    path = Path(path)
    for candidate in (path / "finetune" / "model", path / "student", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise ExportError(f"{path}: no model here (expected config.json in it, or a run directory with student/ "
                      "or finetune/model/)")


def _last_line(e: Exception) -> str:
    """An exception's message in one line (huggingface_hub's strict-config errors put the field on the last)."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return " ".join(lines[-2:]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)


def task_of(config) -> str:
    archs = " ".join(config.architectures or [])
    if "ForSequenceClassification" in archs:
        return "text-classification"
    if "ForQuestionAnswering" in archs:
        return "question-answering"
    if "ForMaskedLM" in archs or "ForPreTraining" in archs:
        return "fill-mask"
    return "feature-extraction"


def load_model(model_dir: Path, task: str | None = None) -> tuple[nn.Module, str]:
    """The model in eval mode. Stock MobileBERT checkpoints become slimbert models (bit-identical, and the
    graph passes know slimbert's modules); other families (e.g. a BERT teacher or reference) load as they are."""
    import transformers


    if task is not None and task not in TASKS:
        raise ExportError(f"--task {task!r} is not one of {', '.join(TASKS)}")
    try:
        config = transformers.AutoConfig.from_pretrained(str(model_dir))
    except Exception as e:  # noqa: BLE001 - bad JSON, an unknown model_type, a wrongly typed field (strict configs)
        raise ExportError(f"{model_dir}: cannot read config.json: {_last_line(e)}") from None
    task = task or task_of(config)
    auto = {"feature-extraction": transformers.AutoModel, "fill-mask": transformers.AutoModelForMaskedLM,
            "text-classification": transformers.AutoModelForSequenceClassification,
            "question-answering": transformers.AutoModelForQuestionAnswering}[task]
    try:
        model = auto.from_pretrained(str(model_dir))
    except Exception as e:  # noqa: BLE001 - missing/truncated weights, shapes that do not fit: the folder's fault
        raise ExportError(f"{model_dir}: cannot load it for {task}: {_last_line(e)}") from None
    if config.model_type == "mobilebert" and task != "feature-extraction":
        model = M.from_transformers(model)
    return model.eval(), task


def to_save(model: nn.Module):
    """What config.json describes: stock MobileBERT when expressible, so optimum's ORTModel classes open it."""
    if isinstance(model, SlimBertPreTrainedModel) and why_not_expressible(model.config) is None:
        return to_transformers(model)
    return model


# ---- export -----------------------------------------------------------------------------------------------------

class KeywordCall(nn.Module):
    """Calls the model with keywords and returns a tuple of the task's outputs."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.names = model, OUTPUTS[task]

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(getattr(out, n) for n in self.names)


def export_onnx(model: nn.Module, task: str, path: Path, opset: int = 17) -> None:
    example = {"input_ids": torch.ones(2, 16, dtype=torch.long), "attention_mask": torch.ones(2, 16, dtype=torch.long),
               "token_type_ids": torch.zeros(2, 16, dtype=torch.long)}
    model = copy.deepcopy(model)  # tracing can leave state behind in transformers models (seen with BERT)
    axes = {name: {0: "batch_size", 1: "sequence_length"} for name in INPUTS + OUTPUTS[task]}
    if task == "text-classification":
        axes["logits"] = {0: "batch_size"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript tracer warnings about Python control flow on shapes
        torch.onnx.export(KeywordCall(model, task), tuple(example.values()), str(path), dynamo=False,
                          opset_version=opset, input_names=INPUTS, output_names=OUTPUTS[task],
                          dynamic_axes=axes, do_constant_folding=True)


# ---- parity -------------------------------------------------------------------------------------------------------

def parity_inputs(tokenizer, texts: list[str] | None = None, max_length: int = 128) -> dict[str, np.ndarray]:
    enc = tokenizer(texts or PARITY_TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="np")
    out = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}
    out["token_type_ids"] = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else \
        np.zeros_like(out["input_ids"])
    return out


def _outputs(model, task, inputs, dtype, device: str | torch.device = "cpu") -> list[np.ndarray]:
    """PyTorch's outputs in `dtype` on `device` (the run's device: the reference is computed where the model
    trained). On CUDA, TF32 is switched off for it: the reference must be true fp32 (or fp64)."""
    device = torch.device(device)
    m = model if dtype == torch.float32 and device.type == "cpu" else copy.deepcopy(model).to(device, dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            out = KeywordCall(m, task)(*(torch.from_numpy(inputs[k]).to(device) for k in INPUTS))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return [o.to("cpu", torch.float64).numpy() for o in out]


def check_parity(model: nn.Module, task: str, onnx_path: Path | None, inputs: dict[str, np.ndarray],
                 exact: list[np.ndarray] | None = None, device: str | torch.device = "cpu", *, runner=None) -> Parity:
    """ONNX Runtime (or `runner`, any runtime's runner) against PyTorch (on `device`) on the same (real, padded)
    inputs; outputs at padded positions are ignored."""
    ref = _outputs(model, task, inputs, torch.float32, device)
    exact = exact if exact is not None else _outputs(model, task, inputs, torch.float64, device)
    got = runner.run(inputs) if runner is not None else session(onnx_path).run(None, inputs)
    got = [np.asarray(g, np.float64) for g in got]
    mask = inputs["attention_mask"].astype(bool)

    def real(x, name):  # per-token outputs: real tokens only
        return x[mask] if x.ndim == 3 or (x.ndim == 2 and name != "logits") else x

    names = OUTPUTS[task]
    r = [real(x, n) for x, n in zip(ref, names)]
    e = [real(x, n) for x, n in zip(exact, names)]
    g = [real(x, n) for x, n in zip(got, names)]
    max_abs = max(float(np.abs(a - b).max()) for a, b in zip(r, g))
    scale = max(float(np.abs(a).max()) for a in r)
    flat_r, flat_g = np.concatenate([a.ravel() for a in r]), np.concatenate([b.ravel() for b in g])
    cosine = float(flat_r @ flat_g / max(np.linalg.norm(flat_r) * np.linalg.norm(flat_g), 1e-300))
    agree = None
    if task != "feature-extraction":
        agree = min(float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(r, g))
    return Parity(max_abs, max_abs / max(scale, 1e-30), cosine, agree,
                  max(float(np.abs(a - b).max()) for a, b in zip(e, g)),
                  max(float(np.abs(a - b).max()) for a, b in zip(e, r)), int(mask.sum()))


# ---- the whole export -------------------------------------------------------------------------------------------

def _stages(model: nn.Module, task: str, passes: list[str], tmp: Path, prefix: str, opset: int):
    """Export `model`, then apply each of `passes` in turn: yields (pass name, graph file, the pass's info) for the
    plain export ("torch.onnx.export") and after every pass. Each file is tmp/<prefix>-<i>.onnx."""
    stage = tmp / f"{prefix}-0.onnx"
    export_onnx(model, task, stage, opset)
    yield "torch.onnx.export", stage, {}
    current = model
    for i, name in enumerate(passes, 1):
        nxt = tmp / f"{prefix}-{i}.onnx"
        if name in MODEL_PASSES:
            before = current
            current, info = MODEL_PASSES[name](current)
            if current is before:   # the pass left the model as it was (eager_attention on slimbert's blocks)
                shutil.copyfile(stage, nxt)
            else:
                export_onnx(current, task, nxt, opset)
        else:
            info = ONNX_PASSES[name](stage, nxt, *([current] if name in READS_MODEL else [])) or {}
        stage = nxt
        yield name, stage, info


def _graph(model: nn.Module, task: str, passes: list[str], tmp: Path, opset: int, name: str) -> Path:
    """tmp/<name>.onnx: `model` exported with `passes` (no timing, no report), for the files made from another
    graph than model.onnx's (int8, OpenVINO)."""
    for _, stage, _ in _stages(model, task, passes, tmp, f"{name}-stage", opset):
        pass
    out = tmp / f"{name}.onnx"
    os.replace(stage, out)
    for leftover in tmp.glob(f"{name}-stage-*.onnx"):
        leftover.unlink()
    return out


def export(path: Path, out: Path, task: str | None = None, opset: int = 17, quantize: str | None = None,
           passes: list[str] | None = None, texts: list[str] | None = None, fp32_factor: float = 10.0,
           int8_min_cosine: float = 0.98, measure: bool = True, static_calibration: dict | None = None,
           openvino: bool = False, calibration_texts: list[str] | None = None,
           calibration: dict | None = None, log=print,
           device: str | torch.device = "cpu") -> ExportResult:
    """Export the model at `path` (a run directory or a model directory) to `out`. `passes`: names from
    passes.MODEL_PASSES / ONNX_PASSES in order (default: DEFAULT_PASSES; [] for a plain export).
    `quantize="int8"` writes model_int8.onnx, the faster of ONNX Runtime's dynamic and static int8 here (pick_int8).
    Every static int8 (ORT's, NNCF's) is calibrated on `calibration` (model inputs, e.g. corpus sequences) when
    given, else on `calibration_texts` or built-in real sentences. `static_calibration` (model inputs) also writes
    the static int8 as model_int8_static.onnx, calibrated on it. `openvino` also writes OpenVINO IRs (fp32, and
    NNCF int8 with `quantize`), each precision checked like the ONNX file. `device`: where PyTorch computes the
    parity reference (the graph is traced on the CPU, as ONNX Runtime runs it)."""
    from transformers import AutoTokenizer

    passes = list(DEFAULT_PASSES) if passes is None else list(passes)
    unknown = [p for p in passes if p not in MODEL_PASSES and p not in ONNX_PASSES]
    if unknown:
        raise ExportError(f"unknown pass {unknown[0]!r}; available: {', '.join([*MODEL_PASSES, *ONNX_PASSES])}")
    model_dir = find_model_dir(Path(path))
    model, task = load_model(model_dir, task)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise ExportError(f"{model_dir}: no tokenizer files ({str(e).splitlines()[0]}); the export folder must be "
                          "usable on its own") from None
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ExportError(f"{out} exists and is not empty; choose another --out")
    tmp = out.parent / f".tmp-{out.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        # Export, then each pass in turn; every stage's node count (and latency) goes into the report.
        result = ExportResult(out, task, [])
        timed = (lambda f: round(latency_ms(f), 2)) if measure else (lambda f: None)  # noqa: E731
        for name, stage, info in _stages(model, task, passes, tmp, "stage", opset):
            result.passes.append({"pass": name, "nodes": node_count(stage), "latency_ms": timed(stage), **info})
            if len(result.passes) > 1:
                before, after = result.passes[-2], result.passes[-1]
                log(f"pass {name}: {before['nodes']} -> {after['nodes']} nodes"
                    + (f", {before['latency_ms']} -> {after['latency_ms']} ms at batch 1 x 128 tokens" if measure
                       else ""))
        onnx_path = tmp / "model.onnx"
        os.replace(stage, onnx_path)
        for leftover in tmp.glob("stage-*.onnx"):
            leftover.unlink()
        need_int8 = quantize == "int8" or static_calibration is not None
        # ort_fusion's graph holds ONNX Runtime's contrib ops, carry_stream's a rescaled stream no quantiser should
        # read: OpenVINO and the quantisers start from the graph made without the ORT-only passes.
        ort_only = [p["pass"] for p in result.passes if p["pass"] in ORT_ONLY_PASSES and p.get("changed")]
        portable = [p for p in passes if p not in ort_only]
        portable_src = onnx_path
        users = [*(["int8"] if need_int8 and "residual_gemm" not in portable else []), *(["OpenVINO"] if openvino
                                                                                       else [])]
        if ort_only and users:
            portable_src = _graph(model, task, portable, tmp, opset, "portable")
            log(f"{' and '.join(users)}: made from the graph without {', '.join(ort_only)} (kept to ONNX Runtime's "
                "fp32 model.onnx: passes.ORT_ONLY_PASSES)")
        int8_src, int8_passes = portable_src, [p for p in portable if p != "residual_gemm"]
        if need_int8 and "residual_gemm" in portable:
            # residual_gemm's Gemms take the residual (an activation) as their C input, which ONNX Runtime's
            # quantisers leave in fp32 ("Bias of Gemm node is not constant"): static int8 then ran slower than fp32
            # and dynamic 3 % slower than without the pass (benchmarks/results/ort_int8.md). int8 starts from the
            # same passes without it.
            int8_src = _graph(model, task, int8_passes, tmp, opset, "int8-source")
            log("int8: quantised from the passes without residual_gemm (its activation-bias Gemms stay fp32 under "
                "ONNX Runtime's quantisers)")
        inputs = parity_inputs(tokenizer, texts)
        exact = _outputs(model, task, inputs, torch.float64, device)
        p = check_parity(model, task, onnx_path, inputs, exact, device)
        result.parity["fp32"] = p
        log(f"parity fp32: max |onnx - torch| {p.max_abs:.3g} ({p.max_rel:.2g} of the output scale), cosine "
            f"{p.cosine:.8f}; vs fp64: onnx {p.onnx_error:.3g}, torch fp32 {p.torch_error:.3g}"
            + (f"; argmax agreement {p.argmax_agreement:.4f}" if p.argmax_agreement is not None else ""))
        if not p.ok(fp32_factor):
            raise ParityError(f"the ONNX model does not match PyTorch: its distance to the exact (fp64) result is "
                              f"{p.onnx_error:.3g}, more than {fp32_factor:g}x PyTorch fp32's own {p.torch_error:.3g}"
                              f" (argmax agreement {p.argmax_agreement})")
        if quantize == "int8":
            items = ovx.calibration_items(tokenizer, calibration_texts, calibration)
            result.int8 = pick_int8(model, task, int8_src, tmp, items, inputs, exact, int8_min_cosine, device, log)
            dropped = [p for p in passes if p not in int8_passes]
            result.int8["graph"] = (f"the passes without {', '.join(dropped)}: " + ", ".join(int8_passes)
                                    if int8_src != onnx_path else "the fp32 model's")
            result.parity["int8"] = Parity(**result.int8["parity"][result.int8["picked"]])
        if static_calibration is not None:
            q_path = tmp / "model_int8_static.onnx"
            quantize_static_int8(int8_src, q_path, ovx.calibration_items(sequences=static_calibration))
            q = check_parity(model, task, q_path, inputs, exact, device)
            result.parity["int8_static"] = q
            log(f"parity static int8: cosine {q.cosine:.6f}, max |int8 - torch| {q.max_abs:.3g} ({q.max_rel:.2g} of "
                "the output scale)" + (f", argmax agreement {q.argmax_agreement:.4f}" if q.argmax_agreement is not None
                                       else ""))
        if openvino:
            items = (ovx.calibration_items(tokenizer, calibration_texts, calibration) if quantize == "int8"
                     else None)
            parities, result.openvino_int8 = write_openvino(model, task, portable_src, tmp, inputs, exact, items,
                                                            fp32_factor, int8_min_cosine, log)
            result.parity.update(parities)
        for made in {int8_src, portable_src} - {onnx_path}:
            made.unlink()
        config = to_save(model).config
        config.save_pretrained(tmp)
        if config.model_type == SlimBertConfig.model_type:
            write_standalone_code(tmp, config_only=True)  # AutoConfig reads the folder without slimbert
        tokenizer.save_pretrained(tmp)
        (tmp / "slimbert_export.json").write_text(json.dumps({
            "task": task, "opset": opset, "source": str(model_dir), "passes": result.passes,
            "parity": {k: v.as_dict() for k, v in result.parity.items()},
            **({"openvino_int8": result.openvino_int8} if result.openvino_int8 is not None else {}),
            **({"int8": result.int8} if result.int8 is not None else {})}, indent=2))
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        result.files = sorted(p.name for p in out.iterdir())
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- OpenVINO -------------------------------------------------------------------------------------------------------

def write_openvino(model: nn.Module, task: str, onnx_path: Path, folder: Path, inputs: dict[str, np.ndarray],
                   exact: list[np.ndarray], calibration: list[dict] | None, fp32_factor: float,
                   int8_min_cosine: float, log=print) -> tuple[dict[str, Parity], dict | None]:
    """IRs beside `onnx_path` (fp32; int8 by NNCF when `calibration` is given), every precision this CPU runs
    checked against PyTorch: fp32 by the same fp64 test as the ONNX file, int8 by the same cosine floor as ONNX
    Runtime's int8 (both raise; an int8 IR that fails it is made once more without SmoothQuant first), bf16
    reported only (it is a compile-time choice, not a file). Returns the parities and how the int8 IR was made."""
    if importlib.util.find_spec("openvino") is None:
        raise ExportError("--openvino needs the openvino extra: pip install 'slimbert[openvino]'")
    ovx.to_ir(onnx_path, folder / ovx.IR)
    made, checked = None, {}   # checked: a parity already measured on the IR as it stands (not measured twice)
    if calibration is not None:
        if importlib.util.find_spec("nncf") is None:
            raise ExportError("OpenVINO int8 needs nncf: pip install 'slimbert[openvino]'")
        ovx.quantize_int8(folder / ovx.IR, folder / ovx.IR_INT8, calibration)
        made = {"smooth_quant": True}
        first = check_parity(model, task, None, inputs, exact, runner=ovx.OvRunner(folder / ovx.IR_INT8, "int8"))
        if first.cosine >= int8_min_cosine:
            checked["int8"] = first
        else:
            # NNCF's SmoothQuant folds its scales into the op before each MatMul. In a NoNorm model that op (the
            # element-wise Mul + Add) also feeds the residual stream, which then shrinks uncompensated: a
            # fine-tuned student's logits came out 10x too small (cosine 0.93; with plain or slimbert exports
            # alike). Without SmoothQuant the same model keeps cosine 0.999.
            log(f"parity openvino int8: cosine {first.cosine:.4f} < {int8_min_cosine} with NNCF's SmoothQuant; "
                "quantising again without it")
            ovx.quantize_int8(folder / ovx.IR, folder / ovx.IR_INT8, calibration, smooth_quant=False)
            made = {"smooth_quant": False, "with_smooth_quant_cosine": round(first.cosine, 6)}
    cpu, out = cpu_info(), {}
    for precision, (file, _) in ovx.PRECISIONS.items():
        if not (folder / file).is_file():
            continue
        reason = why_not("openvino", "bf16", cpu) if precision.endswith("bf16") else None
        if reason:
            log(f"parity openvino {precision}: skipped ({reason})")
            continue
        p = checked.get(precision) or check_parity(model, task, None, inputs, exact,
                                                   runner=ovx.OvRunner(folder / file, precision))
        out[f"openvino-{precision}"] = p
        log(f"parity openvino {precision}: max |ov - torch| {p.max_abs:.3g} ({p.max_rel:.2g} of the output scale), "
            f"cosine {p.cosine:.8f}; vs fp64: ov {p.onnx_error:.3g}, torch fp32 {p.torch_error:.3g}"
            + (f"; argmax agreement {p.argmax_agreement:.4f}" if p.argmax_agreement is not None else ""))
        if precision == "fp32" and not p.ok(fp32_factor):
            raise ParityError(f"the OpenVINO IR does not match PyTorch: its distance to the exact (fp64) result is "
                              f"{p.onnx_error:.3g}, more than {fp32_factor:g}x PyTorch fp32's own {p.torch_error:.3g}"
                              f" (argmax agreement {p.argmax_agreement})")
        if precision == "int8" and p.cosine < int8_min_cosine:
            raise ParityError(f"the OpenVINO int8 model drifts too far from PyTorch: output cosine {p.cosine:.4f} < "
                              f"{int8_min_cosine}" + (" (with NNCF's SmoothQuant and without)"
                                                      if made and not made["smooth_quant"] else ""))
    return out, made


# ---- int8: dynamic or static, whichever this machine runs faster ----------------------------------------------

def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (onnxruntime.quantization): int8 weights, activations quantised per call."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": 1})  # FLOAT, for tensors shape inference misses


# The static layout ONNX Runtime fuses on x86 (benchmarks/results/ort_int8.md): QDQ around the dense layers only,
# uint8 activations (the U8S8 kernels; int8 activations fall back to slower paths) and per-channel int8 weights;
# their outputs stay float (no Q/DQ pair after every dense layer: the fastest layout there, 38.9 against 45.1 ms
# with quantised outputs on the preset); attention's activation-by-activation MatMuls, softmax and norms stay fp32
# (const_b_only: until 2026-12-07 the MatMuls were quantised, onnxruntime's flag reaching its QOperator path only).
# Readers of a quantised activation that are not quantised themselves (the residual Adds) read its fp32 values, not
# the QuantizeLinear -> DequantizeLinear pair the quantiser shares among all readers (passes.bypass_dequantize).
# (format: QDQ or QOperator; op_types None: every op ONNX Runtime can quantise; const_b_only: MatMuls with a constant
# weight only, not attention's activation-by-activation products; float_readers needs op_types.)
STATIC_LAYOUT = dict(format="QDQ", activation="QUInt8", per_channel=True, op_types=["MatMul", "Gemm"],
                     const_b_only=True, float_outputs=True, float_readers=True)


def quantize_static_int8(src: Path, dst: Path, items: list[dict[str, np.ndarray]], layout: dict | None = None) -> None:
    """Static int8 (activations calibrated by MinMax on `items`: model inputs, one sequence each, e.g. the
    recipe's corpus or real sentences) in STATIC_LAYOUT, with `layout`'s keys changed (benchmarks/latency/ort_int8.py
    times the others). Each activation's scale is fixed by the calibration, so the per-call quantisation of dynamic
    int8 is gone; the parity check says how far the fixed scales drift."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    unknown = set(layout or {}) - set(STATIC_LAYOUT)
    if unknown:
        raise ValueError(f"static int8 layout: unknown keys {sorted(unknown)}; known: {', '.join(STATIC_LAYOUT)}")
    lay = {**STATIC_LAYOUT, **(layout or {})}
    if lay["float_readers"] and not lay["op_types"]:
        raise ValueError("static int8 layout: float_readers needs op_types (the quantised ones keep the pair)")
    graph = onnx.load(str(src), load_external_data=False).graph
    names = {i.name for i in graph.input}
    feeds = [{k: v for k, v in item.items() if k in names} for item in items]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

    extra = {"DefaultTensorType": 1}   # FLOAT, for tensors shape inference misses
    exclude = []
    if lay["const_b_only"]:
        # onnxruntime's MatMulConstBOnly is read by its QOperator quantiser only; the QDQ one quantises attention's
        # activation-by-activation MatMuls regardless, so those are named as nodes to leave in fp32.
        extra["MatMulConstBOnly"] = True
        consts = const_tensors(graph)
        acts = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] not in consts]
        if any(not n.name for n in acts):
            raise ExportError(f"{src}: a MatMul without a node name; static int8 cannot leave it in fp32")
        exclude = [n.name for n in acts]
    if lay["float_outputs"]:
        extra["OpTypesToExcludeOutputQuantization"] = lay["op_types"]
    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, lay["format"]),
                    per_channel=lay["per_channel"], activation_type=getattr(QuantType, lay["activation"]),
                    weight_type=QuantType.QInt8, op_types_to_quantize=lay["op_types"], nodes_to_exclude=exclude,
                    extra_options=extra)
    if lay["float_readers"]:
        bypass_dequantize(dst, dst, tuple(lay["op_types"]))


def pick_int8(model: nn.Module, task: str, onnx_path: Path, folder: Path, items: list[dict], inputs: dict,
              exact: list[np.ndarray], min_cosine: float, device, log, threads: int | None = None) -> dict:
    """Make both ONNX Runtime int8s (dynamic; static, calibrated on `items`), check each against PyTorch, time
    those that pass side by side on this machine (batch 1 x 128 tokens, alternating, in a fresh process; in this
    one when that process cannot run) and keep the faster as model_int8.onnx. Which runs faster depends on the CPU
    (VNNI, AMX) and the model's shape, so it is measured, not assumed. Raises ParityError when neither passes.
    Returns what was picked, why, and every candidate's figures."""
    made, parity, refused = {}, {}, {}
    for kind in ("dynamic", "static"):
        path = folder / f"model_int8_{kind}.candidate.onnx"
        try:
            if kind == "dynamic":
                quantize_dynamic_int8(onnx_path, path)
            else:
                quantize_static_int8(onnx_path, path, items)
        except Exception as e:  # noqa: BLE001 - a quantiser failure on one kind leaves the other
            refused[kind] = f"not made: {_last_line(e)}"
            continue
        p = check_parity(model, task, path, inputs, exact, device)
        parity[kind] = p.as_dict()
        log(f"parity int8 ({kind}): cosine {p.cosine:.6f}, max |int8 - torch| {p.max_abs:.3g} ({p.max_rel:.2g} of "
            "the output scale)" + (f", argmax agreement {p.argmax_agreement:.4f}" if p.argmax_agreement is not None
                                   else ""))
        if p.cosine < min_cosine:
            refused[kind] = f"output cosine {p.cosine:.4f} < {min_cosine}"
            path.unlink()
            continue
        made[kind] = path
    if not made:
        raise ParityError("no int8 model passes the parity check: "
                          + "; ".join(f"{k}: {why}" for k, why in refused.items()))
    p50 = {}
    if len(made) > 1:   # timed in a fresh process: in this one (torch, the export's sessions) they read unevenly
        try:
            ms = ort_median_ms_fresh(list(made.values()), threads, runs=20)
        except RuntimeError as e:   # no usable child (an embedded interpreter...): time here rather than fail
            log(f"int8: timing in a fresh process failed ({_last_line(e)}); timing in this process")
            ms = alternating_median_ms([OrtRunner(p, threads=threads) for p in made.values()], 1, 128, runs=20,
                                       warmup=3)
        p50 = {k: round(t, 3) for k, t in zip(made, ms)}
    picked = min(made, key=lambda k: p50.get(k, 0.0))
    why = (f"{picked} int8 ran faster here: " + ", ".join(f"{k} {ms:.2f} ms" for k, ms in p50.items())
           + " at batch 1 x 128 tokens" if p50 else f"only {picked} int8 passed ({'; '.join(refused.values())})")
    log(f"int8: picked {picked} ({why})")
    os.replace(made[picked], folder / "model_int8.onnx")
    for path in made.values():
        path.unlink(missing_ok=True)
    return {"picked": picked, "why": why, "p50_ms": p50, "refused": refused, "parity": parity,
            "calibration_sequences": len(items)}
