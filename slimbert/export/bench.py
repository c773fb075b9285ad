"""Latency report for ONNX models: side by side, alternating runs in one fresh process, so ratios hold on a noisy
machine.

Latency fields follow optimum-benchmark's (count, total, mean, p50, p90, p95, p99, stdev, stdev_ in %,
unit s); throughput in samples/s and tokens/s. Each model also gets its parameters, FLOPs (from its
config.json, slimbert's counting convention: 2 x MACs of every matmul), file size, and the versions used.
Writes report.json, report.md and report.png.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Group
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..models import SlimBertConfig, count
from ..models.convert import from_transformers_config
from ..teacher.source import resolve_model_path
from . import runtime

# A variant whose task dev metric falls more than this below its PyTorch model's (0.01 = one accuracy point) cannot
# be a model's "fastest" in best vs best: the fairness rule, and what a user would accept deploying.
MAX_ACCURACY_DROP = 0.01
from .isa import FEATURES, CpuInfo, cpu_info
from .onnx import ExportError, export
from .passes import DEFAULT_PASSES, REFERENCE_PASSES
from .terminal import Fitted


@dataclass
class Entry:
    name: str
    path: Path
    runtime: str = "ort"
    precision: str = "fp32"
    group: str | None = None          # the model this is a variant of (best-vs-best compares groups); default name
    unavailable: str | None = None    # "n/a: ..." when this CPU or install cannot run it: reported, not timed
    accuracy: dict | None = None      # task dev metrics of this variant, when the model has a fine-tuned head

    @property
    def model(self) -> str:
        return self.group or self.name


def _session(e: Entry, threads: int):
    try:
        return runtime.load_for_timing(e.runtime, e.path, e.precision, threads)
    except Exception as err:  # noqa: BLE001 - each runtime raises its own types for a file it cannot run
        raise ExportError(f"{e.path}: {e.runtime} cannot load it: {_first_line(err)}") from None


def _inputs(sess, batch: int, seq: int, rng) -> dict:
    names = sess.input_names
    x = {"input_ids": rng.integers(1000, 2000, (batch, seq)).astype(np.int64),
         "attention_mask": np.ones((batch, seq), np.int64), "token_type_ids": np.zeros((batch, seq), np.int64)}
    return {k: v for k, v in x.items() if k in names}


def variants(name: str, folder: Path, runtimes: list[str], precisions: list[str], cpu: CpuInfo) -> list[Entry]:
    """One entry per (runtime, precision) of the export in `folder`: n/a (with the reason) when this CPU or install
    cannot run it or the export has no such file; with its task accuracy when task_metrics.json has it."""
    metrics_file = Path(folder) / "task_metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    out = []
    for rt in runtimes:
        for prec in precisions:
            reason = runtime.unavailable(rt, prec, cpu)
            path = runtime.get(rt).file(folder, prec) if reason is None else Path(folder)
            if reason is None and not path.is_file():
                reason = (f"not exported: no {path.name} (slimbert export --onnx"
                          + (" --openvino" if rt == "openvino" else "") + (" --quantize int8)" if "int8" in prec
                                                                            else ")"))
            out.append(Entry(f"{name} {rt} {prec}", path, rt, prec, name, reason, metrics.get(f"{rt}-{prec}")))
    return out


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def check_onnx(path: Path) -> None:
    """`path` is a readable ONNX model (a truncated or foreign file is bad input, named, not a traceback)."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, onnx's ValidationError, OSError...
        raise ExportError(f"{path}: not a readable ONNX model (truncated, or not ONNX?): {_first_line(e)}") from None


def export_meta(export_dir: Path) -> dict | None:
    """slimbert_export.json beside a model exported by `slimbert export`, or None for any other ONNX file."""
    meta = export_dir / "slimbert_export.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{meta} is unreadable: {_first_line(e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("task"), str) or not isinstance(data.get("source"), str):
        raise ExportError(f"{meta} is not slimbert export's (expected task and source fields)")
    return data


def export_task(onnx_path: Path) -> str:
    meta = export_meta(onnx_path.parent)
    return meta["task"] if meta else "feature-extraction"


def latency_fields(values: list[float]) -> dict:
    v = np.asarray(values)
    mean = float(v.mean())
    return {"unit": "s", "values": [round(x, 6) for x in values], "count": len(values), "total": float(v.sum()),
            "mean": mean, "p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p95": float(np.percentile(v, 95)), "p99": float(np.percentile(v, 99)), "stdev": float(v.std()),
            "stdev_": float(v.std() / mean * 100) if mean else 0.0}


def model_facts(path: Path, seq: int) -> dict:
    """Parameters (ONNX initializers), FLOPs per sequence (from config.json when slimbert can count it), size."""
    import onnx


    if path.suffix == ".xml":  # an OpenVINO IR: the ONNX file it was converted from tells the rest
        onnx_file = path.parent / "model.onnx"
        facts = model_facts(onnx_file, seq) if onnx_file.is_file() else {"initializer_params": None,
                                                                           "flops_per_sequence": None}
        return {**facts, "file_mb": round(path.with_suffix(".bin").stat().st_size / 2 ** 20, 2), "onnx_nodes": None}
    m = onnx.load(str(path), load_external_data=False)
    params = int(sum(int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) > 0))
    facts = {"file_mb": round(path.stat().st_size / 2 ** 20, 2), "onnx_nodes": len(m.graph.node),
             "initializer_params": params, "flops_per_sequence": None}
    cfg_path = path.parent / "config.json"
    if cfg_path.is_file():
        try:
            config = family_config(json.loads(cfg_path.read_text()))
            facts["flops_per_sequence"] = count(config, seq_len=seq).total_flops
        except Exception:  # noqa: BLE001 - FLOPs are informative; a config slimbert cannot count leaves them out
            pass
    return facts


def family_config(raw: dict):
    t = raw.get("model_type")
    if t == "slimbert":
        return SlimBertConfig(**{k: v for k, v in raw.items() if k not in ("model_type", "architectures")})
    if t == "mobilebert":
        from transformers import MobileBertConfig

        return from_transformers_config(MobileBertConfig(**{k: v for k, v in raw.items() if k != "model_type"}))
    if t in ("bert", "roberta", "electra"):
        return SlimBertConfig(vocab_size=raw["vocab_size"], embedding_size=raw.get("embedding_size", raw["hidden_size"]),
                              trigram_input=False, hidden_size=raw["hidden_size"], use_bottleneck=False,
                              intra_bottleneck_size=raw["hidden_size"], num_hidden_layers=raw["num_hidden_layers"],
                              num_attention_heads=raw["num_attention_heads"],
                              intermediate_size=raw["intermediate_size"], num_feedforward_networks=1,
                              normalization_type="layer_norm", max_position_embeddings=raw["max_position_embeddings"],
                              type_vocab_size=raw.get("type_vocab_size", 2), classifier_activation=True)
    raise ValueError(t)


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    return {"slimbert": __version__, "onnxruntime": onnxruntime.__version__,
            "openvino": runtime.versions()["openvino"], "onnx": onnx.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": f"{platform.machine()} {platform.processor()}".strip()}


def bench(entries: list[Entry], batches=(1,), seqs=(128,), threads: int = 2, runs: int = 30, warmup: int = 5,
          block: int = 5, seed: int = 0, cpu: CpuInfo | None = None,
          max_accuracy_drop: float | None = MAX_ACCURACY_DROP, fresh_process: bool = True) -> dict:
    """Time every runnable entry at every (batch, seq), alternating between them in blocks of `block` runs;
    entries this machine cannot run are reported with their reason. Best vs best skips a variant whose task dev
    metric falls more than `max_accuracy_drop` below its PyTorch model (None: every variant counts).

    With `fresh_process` (the default) the timing runs in a new Python process that has done nothing else: in
    the process that had just trained or exported (torch, NNCF, other sessions), rows read slower, unevenly, which
    moves the ratios this report exists for (up to 15 % on an Intel Xeon with AMX,
    benchmarks/results/bench_process_ab_xeon_amx.md; 2x for one ORT int8 session on an AMD EPYC)."""
    cpu = cpu or cpu_info()
    if fresh_process:
        return _bench_in_child(entries, cpu, {"batches": list(batches), "seqs": list(seqs), "threads": threads,
                                              "runs": runs, "warmup": warmup, "block": block, "seed": seed,
                                              "max_accuracy_drop": max_accuracy_drop})
    rng = np.random.default_rng(seed)
    timed = [e for e in entries if e.unavailable is None]
    sessions = {e.name: _session(e, threads) for e in timed}
    report = {"config": {"batch": list(batches), "seq": list(seqs), "threads": threads, "runs": runs,
                         "warmup": warmup, "alternating_blocks": block, "max_accuracy_drop": max_accuracy_drop},
              "versions": versions(), "cpu": cpu.as_dict(), "models": {}, "results": [], "unavailable": []}
    for e in entries:
        if e.unavailable is None:
            report["models"][e.name] = {"path": str(e.path), "runtime": e.runtime, "precision": e.precision,
                                        "group": e.model, **model_facts(e.path, max(seqs))}
        else:
            report["unavailable"].append({"model": e.name, "group": e.model, "runtime": e.runtime,
                                          "precision": e.precision, "reason": e.unavailable})
    meta = {e.name: e for e in timed}
    for b in batches:
        for s in seqs:
            feeds = {name: _inputs(sess, b, s, rng) for name, sess in sessions.items()}
            for name, sess in sessions.items():
                try:
                    sess.run(feeds[name])
                except Exception as e:  # noqa: BLE001 - e.g. --seq beyond the model's positions
                    raise ExportError(f"{name} cannot run at batch {b} x seq {s}: {_first_line(e)}") from None
                for _ in range(warmup - 1):
                    sess.run(feeds[name])
            # Alternate in blocks: each model runs `block` times in a row, the first run of a block untimed.
            # Strict one-by-one alternation would measure cold caches (a BERT_BASE run evicts everything),
            # not the latency a deployed model sees; blocks keep the comparison fair and still interleaved.
            times = {name: [] for name in sessions}
            while sessions and min(len(t) for t in times.values()) < runs:
                for name, sess in sessions.items():
                    sess.run(feeds[name])
                    for _ in range(min(block, runs - len(times[name]))):
                        t0 = time.perf_counter()
                        sess.run(feeds[name])
                        times[name].append(time.perf_counter() - t0)
            for name in sessions:
                lat = latency_fields(times[name])
                e = meta[name]
                report["results"].append({
                    "model": name, "group": e.model, "runtime": e.runtime, "precision": e.precision,
                    "accuracy": e.accuracy, "batch_size": b, "sequence_length": s, "latency": lat,
                    "throughput": {"unit": "samples/s", "value": b / lat["mean"]},
                    "tokens_per_s": b * s / lat["mean"]})
    if not timed:
        return report
    first = timed[0].name
    for row in report["results"]:
        base = next(r for r in report["results"] if r["model"] == first and r["batch_size"] == row["batch_size"]
                    and r["sequence_length"] == row["sequence_length"])
        row[f"p50_vs_{first}"] = row["latency"]["p50"] / base["latency"]["p50"]
    report["best"] = best_vs_best(report["results"], timed[0].model, max_accuracy_drop=max_accuracy_drop)
    return report


def _bench_in_child(entries: list[Entry], cpu: CpuInfo, kwargs: dict) -> dict:
    job = {"entries": [{**dataclasses.asdict(e), "path": str(e.path)} for e in entries], "cpu": cpu.as_dict(),
           "kwargs": kwargs}
    # an ExportError in the child (e.g. a sequence beyond a model's positions) is the caller's ExportError
    return runtime.run_in_child("slimbert.export.bench._bench_child", job, "the latency report's timing process",
                                reported=ExportError)


def _bench_child(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    entries = [Entry(**{**e, "path": Path(e["path"])}) for e in job["entries"]]
    try:
        report = bench(entries, cpu=CpuInfo.from_dict(job["cpu"]), fresh_process=False, **job["kwargs"])
    except ExportError as e:
        Path(out_path).write_text(str(e))
        return runtime.CHILD_ERROR
    Path(out_path).write_text(json.dumps(report))
    return 0


def accuracy_drop(acc: dict | None) -> float | None:
    """How far a variant's task dev metric falls below its PyTorch model's (positive: worse); None when unknown."""
    if not acc:
        return None
    delta = acc.get(f"{_metric_key(acc)}_delta_vs_pytorch")
    return None if delta is None else -float(delta)


def best_vs_best(results: list[dict], student: str, reference: str = "bert_base",
                 max_accuracy_drop: float | None = MAX_ACCURACY_DROP) -> list[dict]:
    """Per (batch, seq): each model's fastest variant (any runtime, any precision), and the headline ratio of the
    reference's fastest p50 to the student's fastest. A variant that loses more than `max_accuracy_drop` of its
    PyTorch model's dev metric is not a fair "fastest" (static int8 can halve accuracy yet pass the output-cosine
    parity check): it is listed under "excluded" instead. Variants without task metrics count."""
    out = []
    for b, s in sorted({(r["batch_size"], r["sequence_length"]) for r in results}):
        rows = [r for r in results if (r["batch_size"], r["sequence_length"]) == (b, s)]
        fastest, excluded = {}, []
        for r in rows:
            drop = accuracy_drop(r.get("accuracy"))
            if max_accuracy_drop is not None and drop is not None and drop > max_accuracy_drop + 1e-12:
                excluded.append({"model": r["model"], "group": r["group"], "accuracy_drop": drop})
                continue
            if r["group"] not in fastest or r["latency"]["p50"] < fastest[r["group"]]["latency"]["p50"]:
                fastest[r["group"]] = r
        entry = {"batch_size": b, "sequence_length": s,
                 "fastest": {g: {"model": r["model"], "runtime": r["runtime"], "precision": r["precision"],
                                 "p50": r["latency"]["p50"], "accuracy": r.get("accuracy")}
                             for g, r in fastest.items()}, "excluded": excluded}
        if student in fastest and reference in fastest:
            entry["headline"] = {"student": student, "reference": reference,
                                 "speedup": fastest[reference]["latency"]["p50"] / fastest[student]["latency"]["p50"]}
        out.append(entry)
    return out


def write_report(report: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    chart(report, out / "report.png")
    return [out / "report.json", out / "report.md", out / "report.png"]


def _metric_key(acc: dict) -> str:
    """The task's headline metric in a variant's task metrics (its first; the deltas follow the metrics)."""
    return next(k for k in acc if not k.endswith("_delta_vs_pytorch"))


def accuracy_text(acc: dict | None) -> str:
    if not acc:
        return ""
    key = _metric_key(acc)
    return f"{key} {acc[key]:.4f}"


def cpu_line(cpu: dict) -> str:
    have = [k for k in FEATURES if cpu["features"].get(k)]
    lacks = [k for k in FEATURES if not cpu["features"].get(k)]
    caps = cpu.get("openvino_capabilities")
    return (f"CPU: {cpu['model']}, {cpu['logical_cpus']} logical CPUs; has {', '.join(have) or 'none of them'}"
            + (f"; lacks {', '.join(lacks)}" if lacks else "")
            + (f"; OpenVINO OPTIMIZATION_CAPABILITIES {', '.join(caps)}" if caps is not None else "") + ".")


def markdown(report: dict) -> str:
    c, v = report["config"], report["versions"]
    first = next(iter(report["models"]), None)
    runtimes_used = sorted({m.get("runtime", "ort") for m in report["models"].values()})
    used = ", ".join(f"onnxruntime {v['onnxruntime']}" if r == "ort" else f"openvino {v.get('openvino')}"
                     for r in runtimes_used)
    lines = [f"Latency, {c['threads']} threads, {c['runs']} runs per model, alternating between models in blocks "
             f"of {c['alternating_blocks']} (each block after one untimed run), after {c['warmup']} warm-up runs "
             f"({used}, {v['machine']})."
             + (" OpenVINO runs a model compiled for each timed shape (static batch x seq, as a deployment that "
                "pads to a fixed length runs it)." if "openvino" in runtimes_used else "")]
    if report.get("cpu"):
        lines += ["", cpu_line(report["cpu"])]
    for best in report.get("best", []):
        if "headline" in best:
            h = best["headline"]
            st, ref = best["fastest"][h["student"]], best["fastest"][h["reference"]]
            lines += ["", f"**Student's fastest vs BERT_BASE's fastest (batch {best['batch_size']} x seq "
                          f"{best['sequence_length']}): {h['speedup']:.2f}x** ({st['model']} {st['p50'] * 1e3:.1f} ms"
                          + (f", {accuracy_text(st['accuracy'])}" if st["accuracy"] else "")
                          + f"; {ref['model']} {ref['p50'] * 1e3:.1f} ms"
                          + (f", {accuracy_text(ref['accuracy'])}" if ref["accuracy"] else "") + ")."]
        if best.get("excluded"):
            limit = c.get("max_accuracy_drop")
            lines += ["", f"Not counted as any model's fastest (dev metric more than {limit * 100:g} point"
                          f"{'' if limit == 0.01 else 's'} below its PyTorch model's): "
                          + ", ".join(f"{x['model']} ({-x['accuracy_drop'] * 100:+.2f})" for x in best["excluded"])
                          + "."]
    lines += ["", "| model | runtime | precision | batch | seq | mean ms | p50 ms | p90 ms | p99 ms | stdev % | "
              f"samples/s | p50 / {first} | dev accuracy |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lat = r["latency"]
        lines.append(f"| {r['model']} | {r.get('runtime', 'ort')} | {r.get('precision', 'fp32')} | {r['batch_size']} "
                     f"| {r['sequence_length']} | {lat['mean'] * 1e3:.1f} | {lat['p50'] * 1e3:.1f} | "
                     f"{lat['p90'] * 1e3:.1f} | {lat['p99'] * 1e3:.1f} | {lat['stdev_']:.1f} | "
                     f"{r['throughput']['value']:.1f} | {r[f'p50_vs_{first}']:.2f} | {accuracy_text(r.get('accuracy'))} |")
    for u in report.get("unavailable", []):
        lines.append(f"| {u['model']} | {u['runtime']} | {u['precision']} | | | | {u['reason']} | | | | | | |")
    lines += ["", "| model | parameters | GFLOPs / sequence | file MB | ONNX nodes |", "|---|---|---|---|---|"]
    for name, m in report["models"].items():
        fl = f"{m['flops_per_sequence'] / 1e9:.2f}" if m["flops_per_sequence"] else "n/a"
        params = f"{m['initializer_params']:,}" if m["initializer_params"] is not None else "n/a"
        lines.append(f"| {name} | {params} | {fl} | {m['file_mb']} | {m['onnx_nodes'] or ''} |")
    return "\n".join(lines) + "\n"


def terminal_view(report: dict) -> Group:
    """The report for a terminal of any width: report.md's prose, then its tables with the columns a terminal has
    room for (report.md and report.json keep the mean, p95, the spread and the raw runs)."""
    first = next(iter(report["models"]), None)
    lt = Table(title="latency")
    for col in ("model", "batch x seq", "p50 ms", "p90 ms", "p99 ms", "samples/s", f"p50 / {first}"):
        lt.add_column(col, justify="left" if col == "model" else "right")
    for r in report["results"]:
        lat, acc = r["latency"], accuracy_text(r.get("accuracy"))
        model = f"{r['model']} {r.get('runtime', 'ort')} {r.get('precision', 'fp32')}" + (f" ({acc})" if acc else "")
        lt.add_row(model, f"{r['batch_size']}x{r['sequence_length']}",
                   *(f"{lat[k] * 1e3:,.1f}" for k in ("p50", "p90", "p99")),
                   f"{r['throughput']['value']:,.1f}", f"{r[f'p50_vs_{first}']:.2f}")
    mt = Table(title="models")
    for col in ("model", "parameters", "GFLOPs / sequence", "file MB", "ONNX nodes"):
        mt.add_column(col, justify="left" if col == "model" else "right")
    for name, m in report["models"].items():
        mt.add_row(name, "n/a" if m["initializer_params"] is None else f"{m['initializer_params']:,}",
                   f"{m['flops_per_sequence'] / 1e9:.2f}" if m["flops_per_sequence"] else "n/a", str(m["file_mb"]),
                   str(m["onnx_nodes"] or ""))
    prose = "\n\n".join(b for b in markdown(report).split("\n\n") if not b.lstrip().startswith("|"))
    missing = [Text(f"not timed: {u['model']} {u['runtime']} {u['precision']}: {u['reason']}")
               for u in report.get("unavailable", [])]
    return Group(Markdown(prose), Fitted(lt), *missing, Fitted(mt))


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["batch_size"], r["sequence_length"]) for r in report["results"]})
    names = list(report["models"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(shapes) * len(names)), 4))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        ys = [next(r["latency"]["p50"] * 1e3 for r in report["results"] if r["model"] == name
                   and (r["batch_size"], r["sequence_length"]) == shp) for shp in shapes]
        ax.bar([k + i * width for k in range(len(shapes))], ys, width, label=name)
    ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(shapes))])
    ax.set_xticklabels([f"b{b} x s{s}" for b, s in shapes])
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"{report['config']['threads']} threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def median(xs):
    return statistics.median(xs)


# ---- baselines: exported the same way as the student -------------------------------------------------------------

def _cached(dest: Path, openvino: bool, quantize: str | None, passes: tuple[str, ...] | None = None) -> bool:
    """Whether `dest` already holds an export with every file asked for (and, given `passes`, made with them); a
    partial or outdated one is removed."""
    import shutil

    want = ["model.onnx"] + (["model_int8.onnx"] if quantize else [])
    want += ["openvino_model.xml"] + (["openvino_model_int8.xml"] if quantize else []) if openvino else []
    made = None
    if passes is not None and (dest / "slimbert_export.json").is_file():
        try:
            made = [s["pass"] for s in json.loads((dest / "slimbert_export.json").read_text())["passes"][1:]]
        except (OSError, ValueError, KeyError, TypeError):
            made = None
    if all((dest / f).is_file() for f in want) and (passes is None or made == list(passes)):
        return True
    shutil.rmtree(dest, ignore_errors=True)
    return False


def bert_base_reference(task: str, dest: Path, tokenizer_dir: Path | None = None, openvino: bool = False,
                        quantize: str | None = None) -> Path:
    """BERT_BASE (BertConfig defaults, random weights: latency does not depend on them) with the same head,
    exported by the same exporter at its best (passes.REFERENCE_PASSES) into `dest` (reused when already there, made
    with those passes), with the same variants as the student
    (`quantize`: int8 for ONNX Runtime, and NNCF int8 too with `openvino`)."""
    import torch
    import transformers

    onnx_path = dest / "model.onnx"
    if _cached(dest, openvino, quantize, REFERENCE_PASSES):
        return onnx_path
    cls = {"feature-extraction": transformers.BertModel, "fill-mask": transformers.BertForMaskedLM,
           "text-classification": transformers.BertForSequenceClassification,
           "question-answering": transformers.BertForQuestionAnswering}[task]
    torch.manual_seed(0)
    model = cls(transformers.BertConfig()).eval()
    src = dest.parent / f".src-{dest.name}"
    model.save_pretrained(src)
    if tokenizer_dir is not None:
        try:
            transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir)).save_pretrained(src)
        except (OSError, ValueError) as e:
            import shutil

            shutil.rmtree(src, ignore_errors=True)
            raise ExportError(f"{tokenizer_dir}: no tokenizer beside the model, which the bert_base export needs "
                              f"({_first_line(e)})") from None
    try:
        export(src, dest, task=task, passes=list(REFERENCE_PASSES), measure=False, quantize=quantize,
               openvino=openvino, log=lambda m: None)
    finally:
        import shutil

        shutil.rmtree(src, ignore_errors=True)
    return onnx_path


def teacher_reference(export_dir: Path, dest: Path, openvino: bool = False, quantize: str | None = None) -> Path:
    """The teacher of the run the exported student came from (its IB teacher, or the source itself)."""
    import yaml

    onnx_path = dest / "model.onnx"
    if _cached(dest, openvino, quantize, DEFAULT_PASSES):
        return onnx_path
    meta = export_meta(export_dir)
    if meta is None:
        raise ExportError(f"{export_dir} was not made by `slimbert export` (no slimbert_export.json): --compare "
                          "teacher needs the export of a run directory, which names its teacher")
    run_dir = Path(meta["source"]).parent
    if run_dir.name == "finetune":
        run_dir = run_dir.parent
    resolved = run_dir / "recipe.resolved.yaml"
    if (run_dir / "teacher" / "model" / "config.json").is_file():
        model_dir = run_dir / "teacher" / "model"
    elif resolved.is_file():
        model_dir = resolve_model_path(yaml.safe_load(resolved.read_text())["source"]["model"], run_dir)
    else:
        raise ExportError(f"{export_dir} was not exported from a run directory: no teacher to compare with")
    tok = Path(meta["source"])
    import shutil
    import transformers

    src = dest.parent / f".src-{dest.name}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(model_dir, src)
    if not (src / "tokenizer_config.json").is_file():
        transformers.AutoTokenizer.from_pretrained(str(tok)).save_pretrained(src)
    try:
        export(src, dest, task="feature-extraction", passes=None, measure=False, quantize=quantize, openvino=openvino,
               log=lambda m: None)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    return onnx_path
