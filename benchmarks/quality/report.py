"""Turn runs/quality/results/*.json into benchmarks/results/quality.{md,json,png}.

  python benchmarks/quality/run.py report
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from run import ARM_TRANSFER, FINETUNE, LR, RESULTS, ROOT, STUDENT_DROPOUT, TASKS, arms_for, machine

OUT = ROOT / "benchmarks" / "results"
ARM_TITLES = {
    "source": "1. source (all-MiniLM-L6-v2), fine-tuned: the ceiling",
    "slimbert": "2. slimbert: IB teacher + progressive transfer + PD, task KD",
    "random_init": "3. same student, random init, task KD",
    "pruned_init": "4. same student pruned from the teacher (torch-pruning), same transfer, task KD",
    "joint": "5a. ablation: joint instead of progressive (equal steps)",
    "auxiliary": "5b. ablation: auxiliary instead of progressive (equal steps)",
    "slimbert_no_kd": "2'. slimbert student fine-tuned without task KD",
}
METRICS = {"sst2": ["accuracy"], "mrpc": ["accuracy", "f1"], "rte": ["accuracy"]}


def _load() -> dict[str, dict]:
    out = {}
    for p in sorted(RESULTS.glob("*.json")):
        out[p.stem] = json.loads(p.read_text())
        out[p.stem]["finished_at"] = p.stat().st_mtime  # a result is written when its experiment ends
    return out


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def collect(results: dict[str, dict]) -> dict:
    latency = results.get("latency", {}).get("p50_ms", {})
    tasks: dict = {}
    for task, spec in TASKS.items():
        for arm in arms_for(task):
            runs = [results[k] for k in (f"{task}-{arm}-{s}" for s in spec["seeds"]) if k in results]
            if not runs:
                continue
            row: dict = {"seeds": [r["seed"] for r in runs]}
            for m in METRICS[task]:
                mean, std = _mean_std([r["dev"][m] for r in runs])
                row[m], row[f"{m}_std"] = mean, std
                row[f"{m}_per_seed"] = [r["dev"][m] for r in runs]
            for k in ("params", "encoder_params", "gflops"):
                row[k] = runs[0][k]
            row["finetune_seconds"] = statistics.fmean(r["seconds"] for r in runs)
            t = results.get(f"transfer-{ARM_TRANSFER.get(arm, '')}")
            row["transfer_seconds"] = t["seconds"] if t else 0.0
            kind = "source" if arm == "source" else "student"
            row["latency_p50_ms_fp32"] = latency.get(f"{kind}-fp32")
            row["latency_p50_ms_int8"] = latency.get(f"{kind}-int8")
            row["train_examples"], row["dev_examples"] = runs[0]["train_examples"], runs[0]["dev_examples"]
            tasks.setdefault(task, {})[arm] = row
    wall = sum(r["seconds"] for k, r in results.items() if "seconds" in r)
    timed = [r for r in results.values() if "seconds" in r]
    elapsed = (max(r["finished_at"] for r in timed) - min(r["finished_at"] - r["seconds"] for r in timed)) if timed else 0.0
    sst = tasks.get("sst2", {})
    goals = {}
    if "source" in sst and "slimbert" in sst:
        goals["sst2_kept_fraction"] = {"measured": sst["slimbert"]["accuracy"] / sst["source"]["accuracy"],
                                       "target": 0.97}
    if "slimbert" in sst and "random_init" in sst:
        goals["sst2_points_over_random_init"] = {
            "measured": 100 * (sst["slimbert"]["accuracy"] - sst["random_init"]["accuracy"]), "target": 5.0}
    goals["total_wall_hours"] = {"measured": elapsed / 3600, "target": 2.0}
    for g in goals.values():
        g["reached"] = g["measured"] <= g["target"] if g is goals["total_wall_hours"] else g["measured"] >= g["target"]
    transfer = {k.removeprefix("transfer-"): {"seconds": v["seconds"], "stage_losses": v["stage_losses"],
                                               "fidelity": v.get("fidelity"), "recipe": v["recipe"]}
                for k, v in results.items() if k.startswith("transfer-")}
    return {"tasks": tasks, "goals": goals, "transfer": transfer, "total_wall_seconds": wall,
            "elapsed_seconds": elapsed,
            "latency": results.get("latency"), "finetune": {**FINETUNE, "lr": LR, "student_dropout": STUDENT_DROPOUT,
                                                            "tasks": TASKS},
            "machine": machine()}


def markdown(q: dict) -> str:
    m = q["machine"]
    lines = ["# Compression quality: does the recipe keep the source's accuracy?", "",
             "Command: `python benchmarks/quality/run.py all && python benchmarks/quality/run.py report` "
             "(each experiment is one command too: see `benchmarks/quality/run.py`).", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
             f"transformers {m['transformers']}, slimbert at {m['git']}. "
             f"From the first experiment's start to the last one's end: {q['elapsed_seconds'] / 60:.0f} min, with "
             f"several experiments at a time; their own wall times add up to {q['total_wall_seconds'] / 60:.0f} min.",
             ""]
    lines += ["## Goals", "", "| goal | measured | target | reached |", "|---|---|---|---|"]
    names = {"sst2_kept_fraction": ("arm 2 keeps arm 1's SST-2 dev accuracy", "{:.1%}", "≥ {:.0%}"),
             "sst2_points_over_random_init": ("arm 2 over arm 3 on SST-2 (points)", "{:+.1f}", "≥ +{:.0f}"),
             "total_wall_hours": ("whole benchmark on 2 cores, first start to last end (hours)", "{:.2f}", "≤ {:.0f}")}
    for k, g in q["goals"].items():
        title, fmt, tfmt = names[k]
        lines.append(f"| {title} | {fmt.format(g['measured'])} | {tfmt.format(g['target'])} | "
                     f"{'yes' if g['reached'] else 'no'} |")
    for task, arms in q["tasks"].items():
        ms = METRICS[task]
        any_row = next(iter(arms.values()))
        lines += ["", f"## {task.upper()} (dev, {any_row['dev_examples']} examples; train {any_row['train_examples']} "
                      f"examples, seeds {any_row['seeds']})", "",
                  "| arm | " + " | ".join(f"{x} (mean ± std)" for x in ms)
                  + " | params | encoder params | GFLOPs @128 | p50 ms fp32 / int8 | transfer s | fine-tune s |",
                  "|---|" + "---|" * (len(ms) + 6)]
        for arm, r in arms.items():
            vals = " | ".join(f"{100 * r[x]:.2f} ± {100 * r[x + '_std']:.2f}" for x in ms)
            lat = " / ".join("-" if r[f"latency_p50_ms_{k}"] is None else f"{r[f'latency_p50_ms_{k}']:.1f}"
                             for k in ("fp32", "int8"))
            lines.append(f"| {ARM_TITLES[arm]} | {vals} | {r['params'] / 1e6:.2f}M | {r['encoder_params'] / 1e6:.2f}M | "
                         f"{r['gflops']:.2f} | {lat} | {r['transfer_seconds']:.0f} | {r['finetune_seconds']:.0f} |")
    lat = q.get("latency") or {}
    if lat:
        lines += ["", "Latency: `slimbert export` (passes, parity) and `slimbert bench` of the SST-2 models, batch 1 x seq "
                      "128, 2 threads, alternating runs; every student arm shares the slimbert arm's architecture. "
                  + "".join(f"{k}'s int8 was refused by the export's parity guard ({v}), so only its fp32 is timed. "
                            for k, v in lat.get("int8_refused", {}).items())]
    lines += ["", "## Transfer runs (task-agnostic, shared by every task)", "",
              "Stage 0 adapts the IB teacher; the first/last losses of a progressive stage are layer 1's first and "
              "layer 6's last.", "",
              "| run | wall s | stage: first → last logged loss |", "|---|---|---|"]
    for arm, t in q["transfer"].items():
        stages = "; ".join(f"{k}: {v['first']:.4g} → {v['last']:.4g}" for k, v in t["stage_losses"].items())
        lines.append(f"| {arm} | {t['seconds']:.0f} | {stages} |")
    findings = Path(__file__).with_name("findings.md")  # the reading of these figures, written by hand
    if findings.is_file():
        lines += ["", findings.read_text().strip()]
    return "\n".join(lines) + "\n"


def chart(q: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(q["tasks"]), figsize=(5 * len(q["tasks"]), 4), squeeze=False)
    for ax, (task, arms) in zip(axes[0], q["tasks"].items()):
        for arm, r in arms.items():
            ax.errorbar(r["encoder_params"] / 1e6, 100 * r["accuracy"], yerr=100 * r["accuracy_std"], fmt="o",
                        capsize=3, label=arm)
        ax.set_title(f"{task.upper()} dev")
        ax.set_xlabel("encoder parameters (M)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report() -> None:
    q = collect(_load())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps(q, indent=2, default=str) + "\n")
    (OUT / "quality.md").write_text(markdown(q))
    chart(q, OUT / "quality.png")
    print((OUT / "quality.md").read_text())
