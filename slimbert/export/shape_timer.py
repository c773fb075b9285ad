"""Time a model shape on this machine: random weights, exported the way slimbert exports a student, run on a
named runtime and precision. The latency-aware shape search (recipe/shape_search.py) is handed one of these.

Timings are cached per machine, in one JSON file per (CPU model + ISA features, runtime versions): the key of
each timing is the shape and the (runtime, precision, batch, seq, threads) it was timed at, so `slimbert plan`
answers at once the second time, and a different CPU or runtime version never reuses another's numbers.
Parity is not checked here (random weights; the real export of the trained student checks it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..models import SlimBertConfig, SlimBertModel, count
from . import openvino as ovx
from . import passes as P
from . import runtime
from .bench import family_config
from .isa import CpuInfo, cpu_info
from .onnx import export_onnx, quantize_dynamic_int8

CACHE_ENV = "SLIMBERT_LATENCY_CACHE"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slimbert" / "latency")


# What artefact() runs, part of every timing's cache key (timings made another way are not reused)
EXPORT_PASSES = {True: ("fold_nonorm", "eager_attention", "ort_basic"), False: P.REFERENCE_PASSES}


def artefact(model: nn.Module, runtime_name: str, precision: str, folder: Path, seq: int, slim: bool = True) -> Path:
    """`model` exported into `folder` as the file `runtime_name` runs `precision` from: slimbert's passes when `slim`
    (fold_nonorm, eager attention, then ONNX Runtime's basic level; EXPORT_PASSES), a reference's otherwise
    (passes.REFERENCE_PASSES: a stock encoder's eager attention, as the export runs it), dynamic int8 for ONNX
    Runtime, an IR (NNCF int8 calibrated on random tokens) for OpenVINO."""
    rt = runtime.get(runtime_name)
    onnx_path = folder / "model.onnx"
    stage = folder / "stage.onnx"
    passes = EXPORT_PASSES[slim]
    for name in passes:
        if name in P.MODEL_PASSES:   # eager_attention leaves slimbert's own blocks as they are
            model, _ = P.MODEL_PASSES[name](model)
    export_onnx(model, "feature-extraction", stage)
    if "ort_basic" in passes:
        P.ort_basic(stage, onnx_path)
        stage.unlink()
    else:
        os.replace(stage, onnx_path)
    target = rt.file(folder, precision)
    if runtime_name == "ort" and precision == "int8":
        quantize_dynamic_int8(onnx_path, target)
    elif runtime_name == "openvino":
        ovx.to_ir(onnx_path, folder / ovx.IR)
        if precision.startswith("int8"):
            rng = np.random.default_rng(0)
            items = [{"input_ids": rng.integers(100, 1000, (1, seq)).astype(np.int64),
                      "attention_mask": np.ones((1, seq), np.int64), "token_type_ids": np.zeros((1, seq), np.int64)}
                     for _ in range(2)]  # latency only: the int8 graph is the same whatever the statistics
            ovx.quantize_int8(folder / ovx.IR, folder / ovx.IR_INT8, items, for_timing=True)
    return target


@dataclass(frozen=True)
class Anchor:
    """A fixed model every candidate is timed beside, in alternating blocks: a candidate's timing is its median
    relative to the anchor's in the same measurement, times `ms`, the anchor's latency where the budget was set
    (e.g. BERT_BASE's p50 in the latency report's run). Timed alone, one shape after another over many minutes,
    candidates drift with the host's speed (a shared VM moved 20 % between two runs here); a ratio measured
    side by side does not, so "3.5x faster than BERT_BASE" is decided the way the report checks it. `name` keys
    the cache: it must identify the model, runtime and precision (and the anchor runs at the spec's batch x seq)."""
    name: str
    path: Path
    runtime: str
    precision: str
    ms: float


class ExportTimer:
    """A `Timer` for the shape search: (SlimBertConfig, LatencySpec) -> median ms, cached per machine; with an
    `anchor`, each candidate is timed beside it and scaled by it (see Anchor)."""

    def __init__(self, cache_dir: Path | None = None, runs: int = 20, log: Callable[[str], None] | None = None,
                 cpu: CpuInfo | None = None, anchor: Anchor | None = None):
        # Nothing is read until the first timing: recipes without a latency budget pay nothing for a timer.
        self.cache_dir, self.runs, self.log, self._cpu = cache_dir, runs, log or (lambda m: None), cpu
        self.anchor = anchor
        self._anchor_runners: dict = {}
        self._timings: dict[str, float] | None = None

    @property
    def cpu(self) -> CpuInfo:
        if self._cpu is None:
            self._cpu = cpu_info()
        return self._cpu

    @property
    def machine(self) -> dict:
        return {"cpu": self.cpu.key(), "runtimes": {k: v for k, v in runtime.versions().items() if v}}

    @property
    def file(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()[:16]
        return Path(self.cache_dir or default_cache_dir()) / f"{digest}.json"

    @property
    def timings(self) -> dict[str, float]:
        if self._timings is None:
            self._timings = {}
            if self.file.is_file():
                try:
                    self._timings = json.loads(self.file.read_text()).get("timings", {})
                except (OSError, ValueError):  # a damaged cache is re-measured, not trusted
                    pass
        return self._timings

    def _save(self) -> None:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"machine": self.machine, "timings": self.timings}, indent=1, sort_keys=True))
        os.replace(tmp, self.file)

    def unavailable(self, spec) -> str | None:
        return runtime.unavailable(spec.runtime, spec.precision, self.cpu)

    def time_model(self, key: str, label: str, build: Callable[[], nn.Module], spec, slim: bool = True) -> float:
        """Median ms of the model `build` makes, under `key` in the cache (`label` names it in the log)."""
        # OpenVINO is timed compiled for the shape (runtime.load_for_timing): not comparable with older entries
        mode = {"static_shapes": True} if spec.runtime == "openvino" else {}
        # anchored entries hold the ratio to the anchor, never a time: they survive the host's speed changing
        anchored = {"anchor": self.anchor.name} if self.anchor is not None else {}
        full = json.dumps({"model": key, "spec": spec.__dict__, **mode, **anchored,
                           "passes": list(EXPORT_PASSES[slim])}, sort_keys=True)
        if full in self.timings:
            return self.timings[full] * (self.anchor.ms if self.anchor is not None else 1.0)
        reason = self.unavailable(spec)
        if reason:
            raise ValueError(f"cannot time on {spec.runtime} {spec.precision}: {reason}")
        torch.manual_seed(0)
        model = build().eval()
        with tempfile.TemporaryDirectory(prefix="slimbert-timer-") as tmp:
            path = artefact(model, spec.runtime, spec.precision, Path(tmp), spec.seq, slim=slim)
            runner = runtime.load_for_timing(spec.runtime, path, spec.precision, spec.threads)
            if self.anchor is None:
                value = ms = runtime.median_ms(runner, spec.batch, spec.seq, self.runs)
                note = ""
            else:
                mine, theirs = runtime.alternating_median_ms([runner, self._anchor_runner(spec)], spec.batch,
                                                             spec.seq, self.runs)
                value = mine / theirs
                ms = value * self.anchor.ms
                note = (f" ({mine:.2f} ms beside {self.anchor.name} at {theirs:.2f} ms: {value:.3f} of it, scaled to "
                        f"its {self.anchor.ms:.2f} ms)")
            del runner
        self.timings[full] = value
        self._save()
        self.log(f"timed {label} on {spec.runtime} {spec.precision}, batch {spec.batch} x seq {spec.seq}: "
                 f"{ms:.2f} ms{note}")
        return ms

    def _anchor_runner(self, spec):
        a = self.anchor
        key = (spec.threads,)
        if key not in self._anchor_runners:
            self._anchor_runners[key] = runtime.load_for_timing(a.runtime, Path(a.path), a.precision, spec.threads)
        return self._anchor_runners[key]

    def __call__(self, config, spec) -> float:
        if not isinstance(config, SlimBertConfig):
            return self.encoder(config, spec)
        shape = {k: v for k, v in config.to_diff_dict().items() if k not in ("architectures", "transformers_version")}
        label = (f"L={config.num_hidden_layers} H={config.hidden_size} I={config.intra_bottleneck_size} "
                 f"heads={config.num_attention_heads} N={config.num_feedforward_networks} F={config.intermediate_size} "
                 f"qkv={config.qkv_source}")
        return self.time_model("slimbert:" + json.dumps(shape, sort_keys=True), label,
                               lambda: SlimBertModel(copy.deepcopy(config), add_pooling_layer=False), spec)

    def encoder(self, hf_config, spec) -> float:
        """A stock transformers encoder of this shape (a student cut from its source is saved as one, and exported
        from it), through the same passes as a student."""
        import transformers

        raw = {k: v for k, v in hf_config.to_diff_dict().items() if k != "transformers_version"}
        label = (f"{hf_config.model_type} L={hf_config.num_hidden_layers} H={hf_config.hidden_size} "
                 f"heads={hf_config.num_attention_heads} F={hf_config.intermediate_size}")
        return self.time_model("encoder:" + json.dumps(raw, sort_keys=True, default=str), label,
                               lambda: transformers.AutoModel.from_config(hf_config, add_pooling_layer=False), spec)

    def reference(self, name: str, hf_config, spec) -> float:
        """A transformers model (e.g. BERT_BASE, or the source) with random weights, exported at its best
        (passes.REFERENCE_PASSES)."""
        import transformers

        raw = {k: v for k, v in hf_config.to_diff_dict().items() if k != "transformers_version"}
        key = f"{name}:" + json.dumps(raw, sort_keys=True, default=str)
        return self.time_model(key, name, lambda: transformers.AutoModel.from_config(hf_config), spec, slim=False)



# Where BERT_BASE and the source are marked on the frontier: their fastest over every combination this CPU runs.
REFERENCE_VARIANTS = (("ort", "fp32"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
                      ("openvino", "int8"), ("openvino", "int8-bf16"))


def reference_marks(timer: ExportTimer, source_path: str | Path | None, spec) -> list[dict]:
    """BERT_BASE's and the source's best (fastest runtime and precision) at the search's batch, seq and threads."""
    import transformers

    models = [("BERT_BASE", transformers.BertConfig())]
    if source_path is not None:
        models.append(("source", transformers.AutoConfig.from_pretrained(str(source_path))))
    marks = []
    for name, cfg in models:
        times = {}
        for rt, prec in REFERENCE_VARIANTS:
            s = type(spec)(rt, prec, spec.batch, spec.seq, spec.threads)
            if timer.unavailable(s) is None:
                times[(rt, prec)] = timer.reference(name, cfg, s)
        try:
            params = count(family_config(cfg.to_dict()), seq_len=spec.seq).total_params
        except (ValueError, KeyError, TypeError):  # a family slimbert cannot count: plotted without parameters
            params = None
        (rt, prec), ms = min(times.items(), key=lambda kv: kv[1])
        marks.append({"name": name, "params": params, "ms": round(ms, 3), "runtime": rt, "precision": prec,
                      "all": {f"{r} {p}": round(v, 3) for (r, p), v in times.items()}})
    return marks


def frontier_chart(balance: dict, marks: list[dict], path: Path) -> Path:
    """Parameters against measured ms for every timed shape, the budget, the chosen shape, and the references."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    spec, rows = balance["spec"], balance["frontier"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fit = [r for r in rows if r["fits"]]
    miss = [r for r in rows if not r["fits"]]
    ax.scatter([r["ms"] for r in fit], [r["params"] / 1e6 for r in fit], c="tab:green", label="fits the budget")
    ax.scatter([r["ms"] for r in miss], [r["params"] / 1e6 for r in miss], c="tab:gray", label="too slow")
    chosen = next((r for r in rows if r["chosen"]), None)   # None: nothing fits, the timed shapes are still shown
    if chosen is not None:
        ax.scatter([chosen["ms"]], [chosen["params"] / 1e6], s=160, facecolors="none", edgecolors="tab:red",
                   linewidths=2, label=f"chosen: L={chosen['layers']} H={chosen['inter_size']} "
                                       + (f"F={chosen['ffn_size']}" if chosen.get("cut") else f"I={chosen['intra_size']}"))
    ax.axvline(balance["budget_ms"], color="tab:red", linestyle="--", linewidth=1,
               label=f"budget {balance['budget_ms']:.2f} ms")
    for m, marker in zip(marks, ("*", "D")):
        if m["params"] is not None:
            ax.scatter([m["ms"]], [m["params"] / 1e6], marker=marker, s=120,
                       label=f"{m['name']} best ({m['runtime']} {m['precision']})")
    ax.set_xlabel(f"measured ms ({spec['runtime']} {spec['precision']}, batch {spec['batch']} x seq {spec['seq']}, "
                  f"{spec['threads']} threads)")
    ax.set_ylabel("parameters (M)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.legend(fontsize=8)
    ax.set_title("Latency-aware shape search: the frontier on this machine")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
