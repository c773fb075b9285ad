"""Turn <workspace>/results/*.json into quality.{md,json} and two charts in the scale's report folder
(benchmarks/results for the CPU run, benchmarks/results/gpu for --scale gpu).

  python benchmarks/quality/run.py report [--scale gpu]
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import arms as A  # benchmarks/quality/arms.py, configured for the scale by run.py's main()

METRICS = {"sst2": ["accuracy"], "mrpc": ["accuracy", "f1"], "rte": ["accuracy"]}
COOKBOOK = {a: spec.cookbook for a, spec in A.ARMS.items() if spec.cookbook}  # arm -> the cookbook recipe it follows
STUDENT_LR = {a: spec.lr for a, spec in A.ARMS.items() if spec.lr is not None}  # quality.json's finetune.student_lr


def _load() -> dict[str, dict]:
    out = {}
    for p in sorted(A.RESULTS.glob("*.json")):
        data = json.loads(p.read_text())
        if isinstance(data, dict):
            data["finished_at"] = p.stat().st_mtime  # a result is written when its experiment ends
        out[p.stem] = data
    return out


def summary(xs: list[float]) -> dict:
    """mean, sample std and standard error of the mean (0 with one seed: unresolved)."""
    std = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return {"mean": statistics.fmean(xs), "std": std, "se": std / math.sqrt(len(xs)), "n": len(xs)}


def collect(results: dict[str, dict]) -> dict:
    latency = (results.get("latency") or {}).get("p50_ms", {})
    tasks: dict = {}
    for task in A.TASKS:
        for arm in A.arms_for(task):
            runs = [results[k] for k in (f"{task}-{arm}-{s}" for s in A.seeds_for(task, arm)) if k in results]
            if not runs:
                continue
            row: dict = {"seeds": [r["seed"] for r in runs], "family": A.ARMS[arm].family,
                         "round": A.ARMS[arm].round}
            for m in METRICS[task]:
                s = summary([r["dev"][m] for r in runs])
                row[m], row[f"{m}_std"], row[f"{m}_se"] = s["mean"], s["std"], s["se"]
                row[f"{m}_per_seed"] = [r["dev"][m] for r in runs]
            for k in ("params", "encoder_params", "gflops"):
                row[k] = runs[0][k]
            row["finetune_seconds"] = statistics.fmean(r["seconds"] for r in runs)
            t = results.get(f"transfer-{A.transfer_arm(arm)}")
            row["transfer_seconds"] = t["seconds"] if t else 0.0
            name = A.latency_name(arm)
            row["latency_p50_ms_fp32"] = latency.get(f"{name}-fp32") if name else None
            row["latency_p50_ms_int8"] = latency.get(f"{name}-int8") if name else None
            row["train_examples"], row["dev_examples"] = runs[0]["train_examples"], runs[0]["dev_examples"]
            if "curve" in runs[0]:
                row["curves"] = {r["seed"]: r["curve"] for r in runs}
            tasks.setdefault(task, {})[arm] = row
    for arms in tasks.values():  # retention: the arm's mean over the converged source's
        src = arms.get("source")
        for row in arms.values():
            if src:
                row["kept_fraction"] = row["accuracy"] / src["accuracy"]
                # the difference to the source and its standard error (independent seeds)
                row["diff_points"] = 100 * (row["accuracy"] - src["accuracy"])
                row["diff_se_points"] = 100 * math.hypot(row["accuracy_se"], src["accuracy_se"])
    embedding = {k.removeprefix("similarity-"): v["spearman"] for k, v in results.items()
                 if k.startswith("similarity-")}
    cookbook = {}
    for arm, recipe in COOKBOOK.items():
        rows = {t: tasks.get(t, {}).get(arm) for t in A.TASKS}
        if not any(rows.values()):
            continue
        any_row = next(r for r in rows.values() if r)
        cookbook[arm] = {"recipe": recipe, **{f"{t}_accuracy": r["accuracy"] if r else None for t, r in rows.items()},
                         "encoder_params": any_row["encoder_params"], "gflops": any_row["gflops"],
                         "latency_p50_ms_fp32": any_row["latency_p50_ms_fp32"],
                         "similarity_spearman": embedding.get(arm)}
    goals = {}
    for task, arms in tasks.items():
        if "source" in arms and "slimbert" in arms:
            best = max((a for a in arms if a != "source"), key=lambda a: arms[a]["accuracy"])
            goals[f"{task}_kept_fraction"] = {"measured": arms["slimbert"]["kept_fraction"], "target": 0.97,
                                              "best_arm": best, "best": arms[best]["kept_fraction"]}
    sst = tasks.get("sst2", {})
    if "slimbert" in sst and "random_init" in sst:
        goals["sst2_points_over_random_init"] = {
            "measured": 100 * (sst["slimbert"]["accuracy"] - sst["random_init"]["accuracy"]), "target": 5.0}
    embed_arms = [a for a in embedding if a.startswith("embed")]
    if embed_arms:
        best = max(embed_arms, key=lambda a: embedding[a]["mrpc"])
        goals["embed_similarity_spearman_mrpc"] = {"measured": embedding[best]["mrpc"], "target": 0.9,
                                                   "arm": best}
    frontier_ = frontier(results.get("latency") or {}, tasks, embedding)
    goals.update(round3_goals(tasks, embedding, frontier_))
    sessions = results.get("machine") or []
    elapsed = sum(s["seconds"] for s in sessions)
    goals["total_wall_hours"] = {"measured": elapsed / 3600, "target": 2.0 if A.S["scale"] == "cpu" else 8 / 60}
    # the whole benchmark's time only counts once some invocation has finished every job
    goals["total_wall_hours"]["finished"] = any(s.get("finished") for s in sessions)
    for k, g in goals.items():
        g["reached"] = (g["measured"] <= g["target"] and g["finished"] if k == "total_wall_hours"
                        else g["measured"] >= g["target"])
    transfer = {k.removeprefix("transfer-"): {"seconds": v["seconds"], "stage_losses": v["stage_losses"],
                                               "fidelity": v.get("fidelity"), "similarity": v.get("similarity"),
                                               "recipe": v["recipe"]}
                for k, v in results.items() if k.startswith("transfer-")}
    return {"scale": A.S["scale"], "tasks": tasks, "frontier": frontier_, "cookbook": cookbook, "embedding": embedding,
            "goals": goals,
            "transfer": transfer, "elapsed_seconds": elapsed, "sessions": sessions,
            "latency": results.get("latency"),
            "finetune": {**A.FINETUNE, "lr": A.LR, "student_lr": STUDENT_LR, "student_dropout": A.STUDENT_DROPOUT,
                         "tasks": A.TASKS, "source": A.S["source"], "student_epochs": A.S["student_epochs"]},
            "machine": A.machine()}


# ---- the frontier: quality against measured p50 latency ------------------------------------------------------

MAX_DROP = 0.01   # a variant more than this below its fp32 quality is not the arm's best (bench's fairness rule)


def _best_variant(name: str, p50: dict, quality: dict, score) -> tuple[str, str] | None:
    """(runtime label, key) of the fastest timed variant of `name` whose quality stays within MAX_DROP of its fp32
    (a variant without a measured quality cannot show it does); None when nothing of it was timed."""
    timed = [(f"{rt} {prec}", A.variant_key(name, rt, prec)) for rt, prec in A.RUNTIMES
             if A.variant_key(name, rt, prec) in p50]
    ref = quality.get(A.variant_key(name, "ort", "fp32"))
    fair = [v for v in timed if ref is None or (v[1] in quality and score(quality[v[1]]) >= score(ref) - MAX_DROP)]
    return min(fair or timed, key=lambda v: p50[v[1]], default=None)


def frontier(latency: dict, tasks: dict, embedding: dict) -> dict:
    """One point per arm at its best runtime and precision (the fastest within a point of its fp32 quality), plus
    the source quantised with no training as points of its own: SST-2 dev accuracy for the task models, the mean
    of MRPC and RTE similarity Spearman vs the source for the embedding models. Each arm's quality is its row's
    mean plus the change its architecture's timed model (seed 0) showed on that runtime and precision. Points
    that cannot be placed yet are listed with the reason."""
    p50, quality = latency.get("p50_ms", {}), latency.get("quality", {})
    mean_sim = lambda v: statistics.fmean(v.values()) if isinstance(v, dict) else v  # noqa: E731
    points, missing = [], []

    def place(kind: str, point: str, family: str, name: str, value: float, score, metric: str) -> bool:
        best = _best_variant(name, p50, quality, score)
        if best is None:
            return False
        label, key = best
        ref, got = quality.get(A.variant_key(name, "ort", "fp32")), quality.get(key)
        delta = score(got) - score(ref) if ref is not None and got is not None else 0.0
        points.append({"kind": kind, "point": point, "family": family, "runtime": label, "p50_ms": p50[key],
                       "quality": value + delta, "metric": metric})
        return True

    def source_quantised(kind: str, name: str, base: float, score, metric: str) -> None:
        for rt in ("ort", "openvino"):
            key = A.variant_key(name, rt, "int8")
            ref = quality.get(A.variant_key(name, "ort", "fp32"))
            if key in p50 and key in quality:
                value = score(quality[key]) if kind == "embedding" else base + score(quality[key]) - score(ref or 0)
                points.append({"kind": kind, "point": f"source, {rt} int8, no training", "family": "source quantised",
                               "runtime": f"{rt} int8", "p50_ms": p50[key], "quality": value, "metric": metric})
            else:
                missing.append(f"{kind}: source, {rt} int8: not timed or not exported (latency)")

    for arm, row in tasks.get("sst2", {}).items():
        name = A.latency_name(arm) if arm in A.ARMS else None
        if name is None:
            missing.append(f"task: {arm}: its architecture is not timed")
        elif not place("task", arm, A.ARMS[arm].family, name, row["accuracy"], float, "SST-2 dev accuracy"):
            missing.append(f"task: {arm}: not timed yet (latency)")
        elif arm == "source":
            source_quantised("task", name, row["accuracy"], float, "SST-2 dev accuracy")
    metric = "similarity Spearman vs the source (MRPC, RTE mean)"
    if place("embedding", "source", "source", A.embedding_name("source"), 1.0, mean_sim, metric):
        source_quantised("embedding", A.embedding_name("source"), 1.0, mean_sim, metric)
    else:
        missing.append("embedding: source: not timed yet (latency)")
    for arm in A.EMBEDDING_ARMS:
        if arm not in embedding:
            missing.append(f"embedding: {arm}: no similarity result yet")
        elif not place("embedding", arm, A.ARMS[arm].family, A.embedding_name(arm), mean_sim(embedding[arm]),
                       mean_sim, metric):
            missing.append(f"embedding: {arm}: not timed yet (latency)")
    return {"points": points, "missing": missing, "max_drop": MAX_DROP}


# Issue 29's goals for the students cut from the source: similarity (the lower of MRPC and RTE), the embedding
# model's speed-up best vs best, and the share of the source's dev metric kept after task KD.
CUT_GOALS = {"cut_2x": {"similarity": 0.95, "speedup": 1.8, "kept": 0.99},
             "cut_4x": {"similarity": 0.90, "speedup": 3.0, "kept": 0.97}}


def round3_goals(tasks: dict, embedding: dict, f: dict) -> dict:
    """The round-3 goals that the results so far can answer (the others appear once their results exist)."""
    goals = {}
    best = {(p["kind"], p["point"]): p for p in f["points"]}
    source = best.get(("embedding", "source"))
    for arm, g in CUT_GOALS.items():
        if arm in embedding:
            goals[f"{arm}_similarity_min_mrpc_rte"] = {"measured": min(embedding[arm].values()),
                                                       "target": g["similarity"]}
        mine = best.get(("embedding", arm))
        if source and mine:
            goals[f"{arm}_embedding_speedup_best_vs_best"] = {"measured": source["p50_ms"] / mine["p50_ms"],
                                                              "target": g["speedup"]}
    # the task goals, for every arm cut to a goal's shape (from the embedding source, or from the task teacher)
    cut_arms = [a for a in A.round3_arms() if A.ARMS[a].family == A.CUT and A.ARMS[a].latency in CUT_GOALS]
    for arm in cut_arms:
        for task in ("sst2", "mrpc"):
            row = tasks.get(task, {}).get(arm)
            if row and "kept_fraction" in row:
                goals[f"{task}_{arm}_kept_fraction"] = {"measured": row["kept_fraction"],
                                                        "target": CUT_GOALS[A.ARMS[arm].latency]["kept"]}
    sst = tasks.get("sst2", {})
    for arm in (a for a in cut_arms if A.ARMS[a].latency == "cut_4x"):
        if arm in sst and "random_cut_4x" in sst:
            goals[f"sst2_{arm}_points_over_random_init"] = {
                "measured": 100 * (sst[arm]["accuracy"] - sst["random_cut_4x"]["accuracy"]), "target": 3.0}
    return goals


def frontier_markdown(f: dict) -> list[str]:
    lines = ["", "## The frontier: quality against measured p50 latency", "",
             "Each arm at its best runtime and precision (ONNX Runtime or OpenVINO, fp32 or int8: the fastest within "
             f"{f['max_drop']:g} of its fp32 quality; batch 1 x 128 tokens, the run's threads), and the source "
             "quantised with no training as points of its own. Task points: SST-2 dev accuracy (the arm's mean, "
             "plus the change its architecture's timed model showed on that variant); embedding points: the mean "
             "similarity Spearman vs the source on MRPC and RTE dev pairs. Chart: quality_frontier.png.", ""]
    for kind in ("embedding", "task"):
        rows = sorted((p for p in f["points"] if p["kind"] == kind), key=lambda p: p["p50_ms"])
        if not rows:
            continue
        lines += [f"| {kind} point | family | best runtime | p50 ms | {rows[0]['metric']} |", "|---|---|---|---|---|"]
        lines += [f"| {p['point']} | {p['family']} | {p['runtime']} | {p['p50_ms']:.2f} | "
                  + (f"{p['quality']:.3f} |" if kind == "embedding" else f"{100 * p['quality']:.2f} |") for p in rows]
        lines.append("")
    if f["missing"]:
        lines += ["Not on the frontier (yet): " + "; ".join(f["missing"]) + "."]
    return lines


def frontier_chart(f: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("embedding", "task") if any(p["kind"] == k for p in f["points"])] or ["task"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    markers = {"source": "*", "source quantised": "X", A.IB: "o", A.CUT: "s", A.CUT_CONTROL: "v"}
    for ax, kind in zip(axes[0], kinds):
        rows = [p for p in f["points"] if p["kind"] == kind]
        scale = 1 if kind == "embedding" else 100
        for fam in dict.fromkeys(p["family"] for p in rows):
            mine = [p for p in rows if p["family"] == fam]
            ax.scatter([p["p50_ms"] for p in mine], [scale * p["quality"] for p in mine], label=fam,
                       marker=markers.get(fam, "o"), s=60)
        for p in rows:
            ax.annotate(f"{p['point']} ({p['runtime']})", (p["p50_ms"], scale * p["quality"]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("p50 latency, batch 1 x 128 tokens (ms), best runtime and precision")
        ax.set_ylabel(rows[0]["metric"] if rows else "quality")
        ax.set_title(f"{kind} frontier")
        ax.grid(alpha=0.3)
        if rows:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality_frontier.png", dpi=110)
    plt.close(fig)


def _pct(row: dict, m: str) -> str:
    if len(row["seeds"]) == 1:  # one seed: no spread to report, not a spread of zero
        return f"{100 * row[m]:.2f} (one seed)"
    return f"{100 * row[m]:.2f} ± {100 * row[m + '_std']:.2f} (SE {100 * row[m + '_se']:.2f})"


def markdown(q: dict) -> str:
    m = q["machine"]
    flag = {"cpu": "", "gpu": " --scale gpu", "smoke": " --smoke --force"}[q["scale"]]
    lines = [f"# Compression quality ({q['scale']} scale): what the recipe keeps, and which recipe wins", "",
             f"Command: `python benchmarks/quality/run.py all{flag}` (resumable; `jobs` lists the experiments, "
             "each also one command).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f", torch {m['torch']}, transformers "
             f"{m['transformers']}, slimbert at {m['git']}. Wall time over {len(q['sessions'])} invocation(s): "
             f"{q['elapsed_seconds'] / 60:.0f} min.", ""]
    if q["sessions"]:
        lines += ["| invocation | load avg before (1/5/15 min) | 1-min load during: mean / max | forced | finished |",
                  "|---|---|---|---|---|"]
        for i, s in enumerate(q["sessions"]):
            lo = s["load"]
            lines.append(f"| {i + 1} ({s['started']}, {s['seconds'] / 60:.0f} min) | "
                         f"{' / '.join(f'{x:.2f}' for x in lo['before'])} | {lo['during_1min_mean']:.2f} / "
                         f"{lo['during_1min_max']:.2f} | {s['forced']} | {s['finished']} |")
        lines.append("")
    if c := q.get("carried"):
        m0 = c["from"].get("machine") or {}
        lines += [f"Carried over as measured by an earlier run ({m0.get('cpu', '?')}, slimbert at "
                  f"{m0.get('git', '?')}, "
                  f"{(c['from'].get('elapsed_seconds') or 0) / 3600:.1f} h over {c['from'].get('invocations', '?')} "
                  "invocation(s)): the rows marked *earlier run* and the goals marked *(earlier run)*. Their kept "
                  "fraction and latency are against that run's source and timing; the frontier holds only this "
                  f"run's timings. Arms: {', '.join(c['arms'])}.", ""]
    lines += ["## Goals", ""]
    findings = Path(__file__).with_name("findings.md")  # the reading of these figures, written by hand
    findings = findings.read_text().strip() if findings.is_file() and q["scale"] == "cpu" else ""
    if "## Where each of" in findings:
        # the hand-run parts after this run moved some goals: the reader is sent to where they stand now
        lines += ["What this run measured. Goals measured by hand since (the findings' later parts) stand goal by "
                  "goal in \"Where each of issue 29's goals stands\" at the end of the findings below.", ""]
    lines += ["| goal | measured | target | reached |", "|---|---|---|---|"]
    for k, g in q["goals"].items():
        extra = f" (best arm: {g['best_arm']}, {g['best']:.1%})" if "best_arm" in g else ""
        extra = f" ({g['arm']})" if "arm" in g else extra
        if g.get("finished") is False:
            extra = " (so far: not every job has run)"
        if g.get("carried"):
            extra += " (earlier run)"
        lines.append(f"| {k} | {g['measured']:.3f}{extra} | {g['target']:.3g} | {'yes' if g['reached'] else 'no'} |")
    if q["cookbook"]:
        lines += ["", "## Which recipe wins at this budget", "",
                  "Same source, corpus, student token budget (steps x batch x length), fine-tuning and seeds; dev "
                  "accuracy (mean over seeds), encoder parameters, FLOPs per 128-token sequence, ONNX fp32 p50 "
                  "latency (batch 1, seq 128), similarity Spearman vs the source on MRPC pairs (no fine-tuning).", "",
                  "| arm | recipe | " + " | ".join(t.upper() for t in A.TASKS)
                  + " | encoder params | GFLOPs | p50 ms | similarity |", "|---|---|" + "---|" * (len(A.TASKS) + 4)]
        for arm, c in q["cookbook"].items():
            accs = " | ".join("-" if c[f"{t}_accuracy"] is None else f"{100 * c[f'{t}_accuracy']:.2f}"
                              for t in A.TASKS)
            lat = "-" if c["latency_p50_ms_fp32"] is None else f"{c['latency_p50_ms_fp32']:.1f}"
            sim = "-" if not c["similarity_spearman"] else f"{c['similarity_spearman']['mrpc']:.3f}"
            lines.append(f"| {arm} | {c['recipe']} | {accs} | {c['encoder_params'] / 1e6:.2f}M | {c['gflops']:.2f} | "
                         f"{lat} | {sim} |")
    lines += frontier_markdown(q["frontier"])
    if q["embedding"]:
        lines += ["", "## Embeddings (no fine-tuning)", "",
                  "Spearman between the source's and the student's cosine similarities of the same dev pairs "
                  "(the source's mean pooling); MRPC retention from the fine-tuned table below.", "",
                  "| arm | family | MRPC pairs | RTE pairs | MRPC accuracy kept |", "|---|---|---|---|---|"]
        mrpc = q["tasks"].get("mrpc", {})
        for arm, sp in q["embedding"].items():
            kept = mrpc.get(arm, {}).get("kept_fraction")
            family = A.ARMS[arm].family if arm in A.ARMS else "-"
            lines.append(f"| {arm} | {family} | {sp['mrpc']:.3f} | {sp['rte']:.3f} | "
                         f"{'-' if kept is None else f'{kept:.1%}'} |")
    for task, arms in q["tasks"].items():
        ms = METRICS[task]
        any_row = next(iter(arms.values()))
        lines += ["", f"## {task.upper()} (dev, {any_row['dev_examples']} examples; train {any_row['train_examples']} "
                      "examples for the source)", "",
                  "| arm | family | seeds | " + " | ".join(f"{x} % (mean ± std, SE)" for x in ms)
                  + " | kept | vs source (points ± SE) | encoder params | GFLOPs @128 | p50 ms fp32 / int8 | "
                    "transfer s | fine-tune s |", "|---|---|---|" + "---|" * (len(ms) + 7)]
        for arm, r in arms.items():
            lat = " / ".join("-" if r[f"latency_p50_ms_{k}"] is None else f"{r[f'latency_p50_ms_{k}']:.1f}"
                             for k in ("fp32", "int8"))
            kept = f"{r['kept_fraction']:.1%}" if "kept_fraction" in r else "-"
            diff = ("-" if "diff_points" not in r else f"{r['diff_points']:+.2f}" if r["diff_se_points"] == 0
                    else f"{r['diff_points']:+.2f} ± {r['diff_se_points']:.2f}")
            family = f"{r.get('family', '-')}, *earlier run*" if r.get("carried") else r.get("family", "-")
            lines.append(f"| {A.ARMS[arm].title if arm in A.ARMS else arm} | {family} | "
                         f"{len(r['seeds'])} | "
                         + " | ".join(_pct(r, x) for x in ms)
                         + f" | {kept} | {diff} | {r['encoder_params'] / 1e6:.2f}M | {r['gflops']:.2f} | {lat} | "
                           f"{r['transfer_seconds']:.0f} | {r['finetune_seconds']:.0f} |")
        src = arms.get("source", {})
        if len(src.get("seeds", [])) == 1:
            lines += ["", f"The source was fine-tuned once (seed {src['seeds'][0]}): it is every student seed's task "
                          "teacher, its std and SE read 0, and the SE of a difference to it counts the students' "
                          "seeds only."]
        for seed, curve in (src.get("curves") or {}).items():
            key = "accuracy"
            lines.append("")
            lines.append(f"Source curve, seed {seed} (epoch: dev {key}): "
                         + ", ".join(f"{c['epoch']:.2f}: {100 * c[key]:.2f}" for c in curve))
    lines += ["", "## Transfer runs (task-agnostic, shared by every task)", "",
              "| run | wall s | stage: first → last logged loss |", "|---|---|---|"]
    for arm, t in q["transfer"].items():
        stages = "; ".join(f"{k}: {v['first']:.4g} → {v['last']:.4g}" for k, v in t["stage_losses"].items())
        lines.append(f"| {arm} | {t['seconds']:.0f} | {stages} |")
    if findings:
        lines += ["", findings]
    return "\n".join(lines) + "\n"


def charts(q: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(q["tasks"])), figsize=(5 * max(1, len(q["tasks"])), 4), squeeze=False)
    for ax, (task, arms) in zip(axes[0], q["tasks"].items()):
        for arm, r in arms.items():
            ax.errorbar(r["encoder_params"] / 1e6, 100 * r["accuracy"], yerr=100 * r["accuracy_std"], fmt="o",
                        capsize=3, label=arm)
        ax.set_title(f"{task.upper()} dev")
        ax.set_xlabel("encoder parameters (M)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=110)
    plt.close(fig)
    # which recipe wins: accuracy against measured latency, one point per recipe (and the source)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sst = q["tasks"].get("sst2", {})
    for arm in ["source", *q["cookbook"]]:
        r = sst.get(arm)
        if r and r["latency_p50_ms_fp32"] is not None:
            ax.errorbar(r["latency_p50_ms_fp32"], 100 * r["accuracy"], yerr=100 * r["accuracy_std"], fmt="o",
                        capsize=3)
            ax.annotate(arm, (r["latency_p50_ms_fp32"], 100 * r["accuracy"]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("ONNX fp32 p50 latency, batch 1 x 128 tokens (ms)")
    ax.set_ylabel("SST-2 dev accuracy (%)")
    ax.set_title("Which recipe wins at this budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "quality_cookbook.png", dpi=110)
    plt.close(fig)
    frontier_chart(q["frontier"], out)


def carry_over(q: dict, before: dict | None) -> dict:
    """Keep what an earlier run of this scale measured and this workspace has not (round 2's rows when
    `all --round 3` runs in a fresh workspace): its task rows, similarity, transfer and cookbook entries and the
    goals only it answers, as they were measured. Carried task rows keep their own kept fraction and latency (against
    that run's source and timing) and say so; nothing carried is mixed into this run's frontier, whose latencies
    come from one alternating run. Rows this workspace measured replace the earlier ones."""
    if not before or before.get("scale") != q["scale"]:
        return q
    carried: set[str] = set()
    for task, rows in before.get("tasks", {}).items():
        now = q["tasks"].setdefault(task, {})
        for arm, row in rows.items():
            if arm not in now:
                now[arm] = {**row, "carried": True}
                carried.add(arm)
        order = [*A.ARMS, *(a for a in now if a not in A.ARMS)]  # the arm table's order, as a fresh report has it
        q["tasks"][task] = {a: now[a] for a in order if a in now}
    for key in ("embedding", "transfer", "cookbook"):
        for arm, value in before.get(key, {}).items():
            if arm not in q[key]:
                q[key][arm] = value
                carried.add(arm)
    for k, g in before.get("goals", {}).items():
        if k not in q["goals"] and k != "total_wall_hours":
            q["goals"][k] = {**g, "carried": True}
    if carried:
        # where the carried rows come from: the run that measured them, not a report that carried them before
        origin = (before.get("carried") or {}).get("from") or {
            "machine": before.get("machine"), "elapsed_seconds": before.get("elapsed_seconds"),
            "invocations": len(before.get("sessions") or [])}
        q["carried"] = {"arms": sorted(carried | set((before.get("carried") or {}).get("arms", []))),
                        "from": origin}
    return q


def report(out: Path) -> None:
    before = out / "quality.json"
    q = carry_over(collect(_load()), json.loads(before.read_text()) if before.is_file() else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(q, indent=2, default=str) + "\n")
    (out / "quality.md").write_text(markdown(q))
    charts(q, out)
    print((out / "quality.md").read_text())
