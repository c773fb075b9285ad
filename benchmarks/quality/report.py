"""Turn <workspace>/results/*.json into quality.{md,json} and two charts in the scale's report folder
(benchmarks/results for the CPU run, benchmarks/results/gpu for --scale gpu).

  python benchmarks/quality/run.py report [--scale gpu]
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import run as R  # benchmarks/quality/run.py, configured for the scale by its main()

ARM_TITLES = {
    "source": "1. source (all-MiniLM-L6-v2), fine-tuned to a dev plateau: the ceiling",
    "slimbert": "2. slimbert: IB teacher + progressive transfer + PD (alpha 1), task KD",
    "embed": "2e. slimbert with embedding_distill (one text per input) instead of PD (equal steps), task KD",
    "embed_long": "5g. lever: more transfer tokens, 2e's embedding stage 10x longer",
    "random_init": "3. same student, random init, task KD",
    "pruned_init": "4. same student pruned from the teacher (torch-pruning), same transfer, task KD",
    "joint": "5a. lever: joint instead of progressive (equal steps)",
    "auxiliary": "5b. lever: auxiliary instead of progressive (equal steps)",
    "pd_share": "5c. lever: half the layer-wise steps moved to PD (equal steps)",
    "slimbert_no_kd": "5d. lever: slimbert student fine-tuned without task KD",
    "slimbert_lr_low": "5e. lever: fine-tuning LR 1e-4 (default 3e-4)",
    "slimbert_lr_high": "5f. lever: fine-tuning LR 1e-3",
    "random_init_lr_high": "5i. control for 5f: random init, fine-tuning LR 1e-3",
    "slimbert_lr_higher": "5j. lever: fine-tuning LR 2e-3 (past 5f's 1e-3: where the rate stops paying)",
    "slimbert_augment": "5k. lever: teacher-labelled augmented task data (TinyBERT's, embedding-table word swaps) "
                        "at 5f's LR, equal steps",
    "slimbert_augment_x3": "5l. lever: 5k with more copies and 3x the fine-tuning steps",
    "pruned_source_block": "5m. lever: pruned from a full-width teacher into the source's own block (LayerNorm, GELU, "
                           "one FFN, 4 whole heads, 384 residual; 2.38M), at 5f's LR",
    "random_source_block": "5n. control for 5m: the same student, random init, at 5f's LR",
    "slimbert_mean": "5o. lever: 5f with the task head on the masked mean of the last hidden states (the source's "
                     "pooling) instead of h[CLS]",
    "random_init_mean": "5p. control for 5o: random init, mean-pooled head, at 5f's LR",
    "pruned_source_block_mean": "5q. 5m with the mean-pooled head",
    "random_source_block_mean": "5r. 5n with the mean-pooled head",
    "slimbert_x10": "5s. lever: 10x the transfer tokens (every student stage of 2 ten times longer), at 5f's LR",
    "slimbert_hidden_kd": "5h. lever: intermediate-layer task KD (finetune.distill_hidden 1) beside the logit KD",
    "distilbert_style": "6a. cookbook distilbert-style: 3 x 384 pruned from the teacher, auxiliary",
    "tinybert_style": "6b. cookbook tinybert-style: 4 x 192, source teacher, hidden + attention",
    "minilm_style": "6c. cookbook minilm-style: 6 x 192, attention only",
}
METRICS = {"sst2": ["accuracy"], "mrpc": ["accuracy", "f1"], "rte": ["accuracy"]}


def _load() -> dict[str, dict]:
    out = {}
    for p in sorted(R.RESULTS.glob("*.json")):
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
    for task in R.TASKS:
        for arm in R.arms_for(task):
            runs = [results[k] for k in (f"{task}-{arm}-{s}" for s in R.seeds_for(task, arm)) if k in results]
            if not runs:
                continue
            row: dict = {"seeds": [r["seed"] for r in runs]}
            for m in METRICS[task]:
                s = summary([r["dev"][m] for r in runs])
                row[m], row[f"{m}_std"], row[f"{m}_se"] = s["mean"], s["std"], s["se"]
                row[f"{m}_per_seed"] = [r["dev"][m] for r in runs]
            for k in ("params", "encoder_params", "gflops"):
                row[k] = runs[0][k]
            row["finetune_seconds"] = statistics.fmean(r["seconds"] for r in runs)
            t = results.get(f"transfer-{R.ARM_TRANSFER.get(arm, '')}")
            row["transfer_seconds"] = t["seconds"] if t else 0.0
            name = R.latency_name(arm)
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
    for arm, recipe in R.COOKBOOK_ARMS.items():
        rows = {t: tasks.get(t, {}).get(arm) for t in R.TASKS}
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
    sessions = results.get("machine") or []
    elapsed = sum(s["seconds"] for s in sessions)
    goals["total_wall_hours"] = {"measured": elapsed / 3600, "target": 2.0 if R.S["scale"] == "cpu" else 8 / 60}
    # the whole benchmark's time only counts once some invocation has finished every job
    goals["total_wall_hours"]["finished"] = any(s.get("finished") for s in sessions)
    for k, g in goals.items():
        g["reached"] = (g["measured"] <= g["target"] and g["finished"] if k == "total_wall_hours"
                        else g["measured"] >= g["target"])
    transfer = {k.removeprefix("transfer-"): {"seconds": v["seconds"], "stage_losses": v["stage_losses"],
                                               "fidelity": v.get("fidelity"), "similarity": v.get("similarity"),
                                               "recipe": v["recipe"]}
                for k, v in results.items() if k.startswith("transfer-")}
    return {"scale": R.S["scale"], "tasks": tasks, "cookbook": cookbook, "embedding": embedding, "goals": goals,
            "transfer": transfer, "elapsed_seconds": elapsed, "sessions": sessions,
            "latency": results.get("latency"),
            "finetune": {**R.FINETUNE, "lr": R.LR, "student_lr": R.STUDENT_LR, "student_dropout": R.STUDENT_DROPOUT,
                         "tasks": R.TASKS, "source": R.S["source"], "student_epochs": R.S["student_epochs"]},
            "machine": R.machine()}


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
    lines += ["## Goals", "", "| goal | measured | target | reached |", "|---|---|---|---|"]
    for k, g in q["goals"].items():
        extra = f" (best arm: {g['best_arm']}, {g['best']:.1%})" if "best_arm" in g else ""
        extra = f" ({g['arm']})" if "arm" in g else extra
        if g.get("finished") is False:
            extra = " (so far: not every job has run)"
        lines.append(f"| {k} | {g['measured']:.3f}{extra} | {g['target']:.3g} | {'yes' if g['reached'] else 'no'} |")
    if q["cookbook"]:
        lines += ["", "## Which recipe wins at this budget", "",
                  "Same source, corpus, student token budget (steps x batch x length), fine-tuning and seeds; dev "
                  "accuracy (mean over seeds), encoder parameters, FLOPs per 128-token sequence, ONNX fp32 p50 "
                  "latency (batch 1, seq 128), similarity Spearman vs the source on MRPC pairs (no fine-tuning).", "",
                  "| arm | recipe | " + " | ".join(t.upper() for t in R.TASKS)
                  + " | encoder params | GFLOPs | p50 ms | similarity |", "|---|---|" + "---|" * (len(R.TASKS) + 4)]
        for arm, c in q["cookbook"].items():
            accs = " | ".join("-" if c[f"{t}_accuracy"] is None else f"{100 * c[f'{t}_accuracy']:.2f}"
                              for t in R.TASKS)
            lat = "-" if c["latency_p50_ms_fp32"] is None else f"{c['latency_p50_ms_fp32']:.1f}"
            sim = "-" if not c["similarity_spearman"] else f"{c['similarity_spearman']['mrpc']:.3f}"
            lines.append(f"| {arm} | {c['recipe']} | {accs} | {c['encoder_params'] / 1e6:.2f}M | {c['gflops']:.2f} | "
                         f"{lat} | {sim} |")
    if q["embedding"]:
        lines += ["", "## Embeddings (no fine-tuning)", "",
                  "Spearman between the source's and the student's cosine similarities of the same dev pairs "
                  "(the source's mean pooling); MRPC retention from the fine-tuned table below.", "",
                  "| arm | MRPC pairs | RTE pairs | MRPC accuracy kept |", "|---|---|---|---|"]
        mrpc = q["tasks"].get("mrpc", {})
        for arm, sp in q["embedding"].items():
            kept = mrpc.get(arm, {}).get("kept_fraction")
            lines.append(f"| {arm} | {sp['mrpc']:.3f} | {sp['rte']:.3f} | "
                         f"{'-' if kept is None else f'{kept:.1%}'} |")
    for task, arms in q["tasks"].items():
        ms = METRICS[task]
        any_row = next(iter(arms.values()))
        lines += ["", f"## {task.upper()} (dev, {any_row['dev_examples']} examples; train {any_row['train_examples']} "
                      "examples for the source)", "",
                  "| arm | seeds | " + " | ".join(f"{x} % (mean ± std, SE)" for x in ms)
                  + " | kept | vs source (points ± SE) | encoder params | GFLOPs @128 | p50 ms fp32 / int8 | "
                    "transfer s | fine-tune s |", "|---|---|" + "---|" * (len(ms) + 7)]
        for arm, r in arms.items():
            lat = " / ".join("-" if r[f"latency_p50_ms_{k}"] is None else f"{r[f'latency_p50_ms_{k}']:.1f}"
                             for k in ("fp32", "int8"))
            kept = f"{r['kept_fraction']:.1%}" if "kept_fraction" in r else "-"
            diff = ("-" if "diff_points" not in r else f"{r['diff_points']:+.2f}" if r["diff_se_points"] == 0
                    else f"{r['diff_points']:+.2f} ± {r['diff_se_points']:.2f}")
            lines.append(f"| {ARM_TITLES.get(arm, arm)} | {len(r['seeds'])} | "
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
    findings = Path(__file__).with_name("findings.md")  # the reading of these figures, written by hand
    if findings.is_file() and q["scale"] == "cpu":
        lines += ["", findings.read_text().strip()]
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


def report(out: Path) -> None:
    q = collect(_load())
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(q, indent=2, default=str) + "\n")
    (out / "quality.md").write_text(markdown(q))
    charts(q, out)
    print((out / "quality.md").read_text())
