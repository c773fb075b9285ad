"""Speed and fidelity of students cut from all-MiniLM-L6-v2 against the source itself, each at its best runtime and
precision (issue 29's speed goals: >= 1.8x faster at 2x fewer encoder parameters, >= 3x at 4x, best vs best).

Every model (the source, and each `--model NAME=DIR`: a stock BertModel with its tokenizer, e.g. what
`cut_curve.py --save` writes) is exported by slimbert's export to ONNX Runtime and OpenVINO, fp32 and int8 (and
bf16 where the CPU has it); every variant's similarity Spearman against the source (PyTorch, fp32) is measured on
every MRPC and RTE dev pair, then all variants are timed side by side (batch 1 x seq 128, alternating blocks).
A model's best is its fastest variant whose Spearman stays within --max-drop of its own ONNX Runtime fp32 figure
on both tasks, so a quantisation that costs fidelity does not buy its speed. Run it alone on the machine.

    python benchmarks/quality/cut_latency.py --model cut_2x=/tmp/cut2x --model cut_4x=/tmp/cut4x
        -> benchmarks/results/cut_latency.md, cut_latency.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import arms as R  # noqa: E402 - the quality benchmark's data and source paths

from slimbert.data.pairs import read_pairs  # noqa: E402
from slimbert.engine.sentence import hf_encoder, runner_encoder, similarity_fidelity  # noqa: E402
from slimbert.export import runtime  # noqa: E402
from slimbert.export.bench import bench, cpu_line, variants  # noqa: E402
from slimbert.export.isa import cpu_info  # noqa: E402
from slimbert.export.onnx import export  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"


def encoder_params(path: str) -> int:
    from transformers import AutoModel

    m = AutoModel.from_pretrained(path, use_safetensors=True)
    return sum(p.numel() for p in m.encoder.parameters())


def encoder_gflops(path: str, seq: int = 128) -> float:
    """Multiply-adds x 2 of one sequence through the encoder's matrix products (Q, K, V, output, FFN, and the
    attention core: scores and the weighted sum), from the stock BertConfig: what fp32 speed scales with when every
    other op is free, so the ratio of two models' figures is the fp32 speed-up a cut can hope for."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    d, f = c.hidden_size, c.intermediate_size
    per_token = 4 * d * d + 2 * seq * d + 2 * d * f
    return 2 * c.num_hidden_layers * seq * per_token / 1e9


GOALS = ((4.0, 0.90, 3.0), (2.0, 0.95, 1.8))  # issue 29: (fewer encoder params, Spearman on both, x faster)


def best_of(rows: list[dict], fid: dict, max_drop: float) -> dict:
    """The fastest variant of one model whose Spearman (both tasks) stays within max_drop of its ORT fp32's."""
    ref = fid[f"{rows[0]['group']} ort fp32"]
    ok = [r for r in rows if all(fid[r["model"]][t] >= ref[t] - max_drop for t in ref)]
    return min(ok, key=lambda r: r["latency"]["p50"])


def goal_row(name: str, fewer: float, gflop_ratio: float, rows: list[dict], fid: dict, best: dict, src: float) -> str:
    """One model's row of the goals table: the largest goal its parameter cut reaches (a shape a hair short of 2x,
    e.g. 1.999x, is shown with no goal and its best variant), and the fastest of its variants at that goal's
    fidelity on both tasks, as a speed-up over the source's best p50 `src`."""
    goal = next((g for g in GOALS if fewer >= g[0]), None)
    head = f"| {name} | {fewer:.3f}x | "
    if goal is None:
        return (head + f"none: under {GOALS[-1][0]:g}x fewer | its best: {best['runtime']} {best['precision']} "
                f"({fid[best['model']]['MRPC']:.3f} / {fid[best['model']]['RTE']:.3f}) | "
                f"{src / best['latency']['p50']:.2f}x | {gflop_ratio:.2f}x |")
    meets = [r for r in rows if all(v >= goal[1] for v in fid[r["model"]].values())]
    fast = min(meets, key=lambda r: r["latency"]["p50"]) if meets else None
    if fast is not None:
        found = (f"{fast['runtime']} {fast['precision']} ({fid[fast['model']]['MRPC']:.3f} / "
                 f"{fid[fast['model']]['RTE']:.3f}) | {src / fast['latency']['p50']:.2f}x")
    else:
        found = (f"none: best fidelity {max(fid[r['model']]['MRPC'] for r in rows):.3f} / "
                 f"{max(fid[r['model']]['RTE'] for r in rows):.3f} | -")
    return head + f">= {goal[1]} on both, >= {goal[2]}x | {found} | {gflop_ratio:.2f}x |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", default=[], metavar="NAME=DIR", help="a cut student to time")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--max-drop", type=float, default=0.01, help="Spearman a variant may lose against its fp32")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cut_latency"))
    ap.add_argument("--out", type=Path, default=RESULTS / "cut_latency.md")
    a = ap.parse_args()
    from transformers import AutoModel, AutoTokenizer

    models = {"source": R.source_path()}
    for spec in a.model:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_dir():
            print(f"--model {spec!r}: expected NAME=DIR with a saved model in DIR", file=sys.stderr)
            raise SystemExit(2)
        models[name] = path
    threads = torch.get_num_threads()
    cpu = cpu_info()
    tokenizer = AutoTokenizer.from_pretrained(models["source"])
    source = AutoModel.from_pretrained(models["source"], use_safetensors=True).eval()
    pairs = {t: read_pairs(R.DATA / t / "dev.tsv") for t in ("MRPC", "RTE")}
    entries, fid, params, gflops = [], {}, {}, {}
    for name, path in models.items():
        params[name] = encoder_params(path)
        gflops[name] = encoder_gflops(path)
        out = a.work / name
        shutil.rmtree(out, ignore_errors=True)
        # No int8 guard: the similarity Spearman of each variant, measured below, is the quality that counts.
        export(Path(path), out, task="feature-extraction", quantize="int8", openvino=True, measure=False,
               int8_min_cosine=-1.0, log=lambda *_: None)
        for rt, prec in R.RUNTIMES:
            for e in variants(name, out, [rt], [prec], cpu):
                entries.append(e)
                if e.unavailable is None:
                    r = runtime.get(rt).load(e.path, prec, threads)
                    fid[e.name] = {t: round(similarity_fidelity(hf_encoder(source), runner_encoder(r), tokenizer, p,
                                                                "mean", 128, torch.device("cpu"))["spearman"], 4)
                                   for t, p in pairs.items()}
                    print(f"{e.name}: Spearman {fid[e.name]}", flush=True)
    # bench times in a fresh process, away from this one, which exported them (every row read slower here, unevenly)
    report = bench(entries, [1], [128], threads=threads, runs=a.runs, cpu=cpu, max_accuracy_drop=None)
    rows = report["results"]
    best = {name: best_of([r for r in rows if r["group"] == name], fid, a.max_drop) for name in models}
    src = best["source"]["latency"]["p50"]
    lines = ["# Students cut from all-MiniLM-L6-v2 against the source, best vs best (issue 29)", "",
             "`python benchmarks/quality/cut_latency.py " + " ".join(sys.argv[1:]) + "`, alone "
             f"on the machine; batch 1 x seq 128, {threads} threads, {a.runs} timed runs per variant in alternating "
             f"blocks. {cpu_line(report['cpu'])}", "",
             f"Fidelity: Spearman of pair cosines against the source (PyTorch fp32) on every MRPC / RTE dev pair. "
             f"A model's best is its fastest variant within {a.max_drop} of its own ONNX Runtime fp32 fidelity on "
             "both tasks.", "",
             "| model | encoder params | encoder GFLOP | variant | p50 ms | MRPC | RTE | best of the model | "
             "source best / this |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(models).index(r["group"]), r["latency"]["p50"])):
        g = r["group"]
        is_best = r["model"] == best[g]["model"]
        lines.append(f"| {g} | {params[g]:,} | {gflops[g]:.2f} | {r['runtime']} {r['precision']} | {r['latency']['p50'] * 1e3:.2f} | "
                     f"{fid[r['model']]['MRPC']:.3f} | {fid[r['model']]['RTE']:.3f} | {'**best**' if is_best else ''}"
                     f" | {src / r['latency']['p50']:.2f}x |")
    for u in report["unavailable"]:
        lines.append(f"| {u['group']} | | | {u['runtime']} {u['precision']} | {u['reason']} | | | | |")
    lines += ["", "Best vs best. The source quantised is a point a user weighs too: beside the source's own best, "
              "each student is compared with the source's fastest variant that is at least as faithful as the "
              "student on both tasks (every source variant, int8 included, usually is).", ""]
    source_rows = [r for r in rows if r["group"] == "source"]
    for name in models:
        b = best[name]
        mine = fid[b["model"]]
        rival = min((r for r in source_rows if all(fid[r["model"]][t] >= mine[t] for t in mine)),
                    key=lambda r: r["latency"]["p50"])
        lines.append(f"- {name}: {params['source'] / params[name]:.2f}x fewer encoder parameters, best "
                     f"{b['runtime']} {b['precision']} at {b['latency']['p50'] * 1e3:.2f} ms, fidelity "
                     f"{mine['MRPC']:.3f} / {mine['RTE']:.3f}: {src / b['latency']['p50']:.2f}x the source's best "
                     f"({best['source']['runtime']} {best['source']['precision']}), "
                     f"{rival['latency']['p50'] / b['latency']['p50']:.2f}x the source's fastest variant at least as "
                     f"faithful ({rival['runtime']} {rival['precision']}, {rival['latency']['p50'] * 1e3:.2f} ms)")
    lines += ["", "Against issue 29's goals. The fp32 ceiling is the source's encoder GFLOP over the student's: the speed-up "
              "if every op other than the matrix products cost nothing.", "",
              "| model | fewer params | goal | fastest variant meeting the fidelity goal | its speed-up vs the source's "
              "best | fp32 ceiling (GFLOP ratio) |", "|---|---|---|---|---|---|"]
    for name in [m for m in models if m != "source"]:
        lines.append(goal_row(name, params["source"] / params[name], gflops["source"] / gflops[name],
                              [r for r in rows if r["group"] == name], fid, best[name], src))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    a.out.with_suffix(".json").write_text(json.dumps({"report": report, "fidelity": fid, "encoder_params": params, "encoder_gflops": gflops,
                                                      "best": {k: v["model"] for k, v in best.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
