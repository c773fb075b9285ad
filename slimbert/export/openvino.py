"""OpenVINO as a second runtime: the exported ONNX file converted to an IR, NNCF post-training int8, inference.

The IR is written beside the ONNX files in optimum-intel's layout (openvino_model.xml/.bin, and
openvino_model_int8.xml/.bin), so `OVModelForXxx.from_pretrained(folder)` opens the folder as it is. The IR is
fp32 (no fp16 weight compression: the CPU would decompress it again); the precision a model runs at is chosen
when it is compiled (`PRECISIONS`), and the export checks every one of them against PyTorch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from slimbert.data import builtin

IR = "openvino_model.xml"
IR_INT8 = "openvino_model_int8.xml"

# precision -> (IR file, INFERENCE_PRECISION_HINT for what is not quantised). OpenVINO's CPU plugin defaults to
# bf16 where the CPU has it; "fp32" pins f32 so it is what it says, "int8" keeps the rest of the graph in f32
# and "int8-bf16" lets it run in bf16 (usually the fastest on AMX / AVX512-BF16 CPUs).
PRECISIONS = {"fp32": (IR, "f32"), "bf16": (IR, "bf16"), "int8": (IR_INT8, "f32"), "int8-bf16": (IR_INT8, "bf16")}

# How many sentences of the package's built-in text calibrate int8 when no corpus and no --calibration file is
# given (a bare model folder). 16 hand-written sentences did it before, and were too few: all-MiniLM-L6-v2's NNCF int8
# kept a similarity Spearman (MRPC / RTE dev pairs, against PyTorch fp32) of 0.990 / 0.987 with them, 0.998 / 0.997
# with 128 of these sentences (its 5-layer cut: 0.957 / 0.943, then 0.962 / 0.949); SmoothQuant is what needs the
# statistics (without it the 16 gave 0.995 / 0.995). benchmarks/results/cut_latency_amd_avx512_cal128.md
CALIBRATION_SENTENCES = 128


def calibration_texts(n: int = CALIBRATION_SENTENCES) -> list[str]:
    """`n` real sentences for int8 calibration: the built-in Gutenberg pairs' sentences in a fixed shuffled order
    (two novels' prose, none of them among the parity texts, so the parity check does not grade its calibration)."""
    rows = [json.loads(line) for line in builtin.pairs_file("gutenberg").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    texts = list(dict.fromkeys(r[k] for r in rows for k in ("sentence1", "sentence2")))
    random.Random(0).shuffle(texts)
    return texts[:n]


class OvRunner:
    """A compiled OpenVINO model, called like an ONNX Runtime session: run(feed) -> outputs in order.

    `static_shapes`: compile one model per input shape (reshaped to that static batch x seq), as a deployment that
    pads to a fixed length runs it. OpenVINO's CPU plugin then skips shape inference and picks kernels for the
    shape: measured 1.29x faster for the MobileBERT preset in int8 (16.4 -> 12.7 ms) and 1.04x for BERT_BASE
    (34.5 -> 33.1 ms), batch 1 x seq 128, 2 threads, AMD EPYC. Latency measurements use it; parity checks and
    task evaluation (many lengths) keep the one dynamic model."""

    def __init__(self, xml: Path, precision: str = "fp32", threads: int | None = None, static_shapes: bool = False):
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[precision][1], "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.xml, self.config, self.static_shapes = Path(xml), config, static_shapes
        self.core = ov.Core()
        self._by_shape: dict[tuple, tuple] = {}
        if static_shapes:  # nothing compiled until a shape is seen: one executor per timed shape, no idle extra
            model = self.core.read_model(str(xml))
            self.compiled = self.request = None
            self.input_names = {i.get_any_name() for i in model.inputs}
            self.output_names = [o.get_any_name() for o in model.outputs]
            return
        self.compiled = self.core.compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_names = {i.get_any_name() for i in self.compiled.inputs}
        self.output_names = [o.get_any_name() for o in self.compiled.outputs]

    def _for_shape(self, feed: dict[str, np.ndarray]):
        """The (compiled model, request) specialised to this feed's static shapes, compiled on first use."""
        key = tuple(sorted((k, v.shape) for k, v in feed.items()))
        if key not in self._by_shape:
            model = self.core.read_model(str(self.xml))
            model.reshape({i.get_any_name(): list(feed[i.get_any_name()].shape) for i in model.inputs})
            compiled = self.core.compile_model(model, "CPU", self.config)
            self._by_shape[key] = (compiled, compiled.create_infer_request())
        return self._by_shape[key]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        feed = {k: v for k, v in feed.items() if k in self.input_names}
        compiled, request = self._for_shape(feed) if self.static_shapes else (self.compiled, self.request)
        out = request.infer(feed)
        return [np.asarray(out[o]) for o in compiled.outputs]


def to_ir(onnx_path: Path, xml: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)


def calibration_items(tokenizer=None, texts: list[str] | None = None, sequences: dict | None = None,
                      max_length: int = 128) -> list[dict[str, np.ndarray]]:
    """NNCF's calibration samples, one sequence each: rows of `sequences` (model inputs, e.g. the recipe's corpus)
    when given, else `texts` (default: `calibration_texts()`) tokenised without padding."""
    if sequences is not None:
        return [{k: np.asarray(v[i:i + 1], np.int64) for k, v in sequences.items()}
                for i in range(len(sequences["input_ids"]))]
    items = []
    for text in texts or calibration_texts():
        enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        item = {"input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64)}
        item["token_type_ids"] = (enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc
                                  else np.zeros_like(item["input_ids"]))
        items.append(item)
    return items


def quantize_int8(xml: Path, dst: Path, items: list[dict[str, np.ndarray]], for_timing: bool = False,
                  smooth_quant: bool = True) -> None:
    """NNCF post-training quantisation (transformer preset: int8 MatMuls, sensitive ops kept in float).
    `for_timing`: the same quantised graph without SmoothQuant and bias correction, which only change values
    (several times faster to make; for latency measurements of random-weight shapes, never for a real export).
    `smooth_quant=False`: without SmoothQuant only (the export's fallback when its int8 fails the parity check)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    model = ov.Core().read_model(str(xml))
    names = {i.get_any_name() for i in model.inputs}
    data = nncf.Dataset([{k: v for k, v in item.items() if k in names} for item in items])
    no_smoothing = AdvancedSmoothQuantParameters(matmul=-1)
    advanced = (AdvancedQuantizationParameters(disable_bias_correction=True, smooth_quant_alphas=no_smoothing)
                if for_timing else
                AdvancedQuantizationParameters(smooth_quant_alphas=no_smoothing) if not smooth_quant else None)
    quantized = nncf.quantize(model, data, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items),
                              advanced_parameters=advanced)
    ov.save_model(quantized, str(dst), compress_to_fp16=False)


def version() -> str:
    import openvino as ov

    return ov.__version__.split("-")[0]
