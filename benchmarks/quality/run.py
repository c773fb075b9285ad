"""Compression-quality benchmark: what the recipe keeps of the source, and which recipe wins at a budget.

The MobileBERT paper's comparison at CPU scale, with a real pretrained source (all-MiniLM-L6-v2, a sentence-
embedding model without an MLM head) and real GLUE tasks (SST-2, MRPC, RTE from ../shared/data). Each experiment
writes one JSON result under <workspace>/results/ (finished results are skipped, so `all` resumes); `report`
turns them into quality.{md,json} and three PNGs (quality, cookbook, the frontier).

  python benchmarks/quality/run.py all                  # the CPU benchmark on a QUIET 2-core machine: about 8 h
                                                        #   of jobs with every lever (quality.md); resumable
  python benchmarks/quality/run.py all --scale gpu --budget-s 420   # full sets, 3 seeds, ~100x transfer tokens
  python benchmarks/quality/run.py all --round 3        # round 3 alone: the students cut from the source (below)
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
The arms are one table, arms.ARMS (recipe change, student, init, fine-tuning LR, pooling, latency shape, family).

Round 3 (`all` runs it after round 2; `all --round 3` alone, with the source runs that teach it): students cut
from the source (student.init: prune_from_source, widths by activation importance, then the least-squares refit)
at 2x (cut_2x: 6 layers, FFN 376, 5.29M encoder parameters) and 4x (cut_4x: 6 layers, width 256, 8 heads, FFN 320,
2.57M) fewer encoder parameters, distilled by arms.CUT_STAGES (embedding_distill with the tokens term); fine-tuned on SST-2 and MRPC with task KD, 3 seeds,
beside task_cut_2x / task_cut_4x (the source fine-tuned on the task, i.e. the task teacher, cut to the same shapes on
the task's sentences, arms.TASK_CUT_STAGES, then task KD with hidden states: one slimbert.compress run each) and
random_cut_4x (the 4x shape from random init); then latency times every architecture and the bare
embedding models on ONNX Runtime and OpenVINO, fp32 and int8, with each variant's quality (the frontier).
Estimated wall time of `all --round 3` on a quiet 2-core machine (from round 2's measured rates: the source
fine-tunes at ~1.4 s per step of 32 SST-2 sentences; a 3-layer student at about half that, the 4x shape at about
a quarter): ~135 min with round 2's source runs in the workspace (the two cut transfers with their refit ~40 min:
3600 steps at 2x, 1200 at 4x,
similarity ~3, SST-2 fine-tunes 3 x (7 + 4 + 4) = 45, MRPC 3 x (4 + 2 + 2) = 24, latency export, evaluation and
timing of ~9 models x 4 variants ~20), plus ~30 min for the two source runs in a fresh workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

import arms as A  # benchmarks/quality/arms.py: the arm table, scales and workspace (WORK, RESULTS: read as A.*)
from arms import (ARMS, DATA, FINETUNE, ROOT, S, STUDENT_DROPOUT, TASK_FILES, TASKS, TRANSFER_ARMS,  # noqa: F401
                  configure, corpus_file, machine, seeds_for, source_path, teacher_seed, transfer_recipe)

# Fine-tuning (train() runs where the model is) on the GPU when there is one: the gpu scale's full training sets
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BUSY_LOAD_PER_CORE = 0.5                      # 1-min load average per core above which the run refuses to start


# ---- corpus ------------------------------------------------------------------------------------------------

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

def transfer(arm: str) -> Path:
    """Run the arm's recipe through slimbert (resuming an interrupted run); the student lands in its student/."""
    import slimbert

    out = A.WORK / f"transfer-{arm}"
    done = A.RESULTS / f"transfer-{arm}.json"
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

def task_spec(task: str, arm: str):
    """The arm's fine-tuning on the task, as its row in the arm table says."""
    from slimbert.recipe.schema import Finetune

    t = TASKS[task]
    spec = ARMS[arm]
    source = arm == "source"
    epochs = S["source"]["max_epochs"][task] if source else S["student_epochs"][task] * spec.epochs_x
    copies, multiple = spec.augment or ({}, 1)
    copies = copies.get(task, 0)
    return Finetune(task=task, train=t["train"], dev=t["dev"], text_fields=t["text_fields"],
                    label_field=t["label_field"], regression=t.get("regression", False),
                    max_examples=t["max_examples" if source else "student_max_examples"], seq_len=t["seq_len"],
                    lr=A.student_lr(arm), distill=spec.task_kd, epochs=epochs * multiple / (1 + copies),
                    augment=copies, distill_hidden=spec.distill_hidden, pooling=spec.pooling, **FINETUNE)


def student_for(arm: str, seed: int):
    """The arm's student before fine-tuning (a SlimBertForMaskedLM): random init of its transfer arm's
    architecture, or that run's student (a stock model of the source's type for a student cut from the source,
    read into slimbert's plain block, which fine-tunes like every other student)."""
    import transformers

    from slimbert.export.onnx import load_model
    from slimbert.models import SlimBertForMaskedLM
    from slimbert.models.encoders import ENCODER_TYPES, from_encoder
    from slimbert.recipe import load_recipe

    if ARMS[arm].random_init:
        make_corpus()
        config = load_recipe(transfer_recipe(A.transfer_arm(arm))).student_config
        torch.manual_seed(seed)
        return SlimBertForMaskedLM(config)
    student = transfer(A.transfer_arm(arm)) / "student"
    if transformers.AutoConfig.from_pretrained(str(student)).model_type in ENCODER_TYPES:
        return from_encoder(transformers.AutoModel.from_pretrained(str(student)), with_mlm=True)
    return load_model(student, "fill-mask")[0]


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

    done = A.RESULTS / f"{task}-{arm}-{seed}.json"
    if done.is_file():
        return json.loads(done.read_text())
    if ARMS[arm].task_cut:
        return task_cut(task, arm, seed)
    source_dir = source_path()
    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    spec = task_spec(task, arm)
    distill = spec.distill
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
        model = task_.source_model(source_dir).to(DEVICE)
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


def make_task_corpus(task: str) -> Path:
    """The task's unlabelled training sentences (every text field of every row), one a line, shuffled: what a
    task cut's importance, refit and distillation read."""
    from slimbert.data.tasks import read_task

    out = A.task_corpus_file(task)
    if out.is_file():
        return out
    t = TASKS[task]
    lines = [x for row in read_task(DATA / t["train"], t["text_fields"], t["label_field"], False).texts for x in row]
    random.Random(0).shuffle(lines)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    return out


def task_cut(task: str, arm: str, seed: int) -> dict:
    """A task_cut arm (arms.TASK_CUT_STAGES): the source fine-tuned on the task, cut, refitted and distilled on the
    task's sentences, then task KD, through slimbert.compress in one run directory; the row reads its finetune
    result and the saved stock model."""
    import shutil

    import slimbert
    from transformers import AutoModelForSequenceClassification

    teacher = finetuned_dir(task, "source", teacher_seed(task, seed))
    if not (teacher / "config.json").is_file():
        finetune(task, "source", teacher_seed(task, seed))
    make_task_corpus(task)
    t = TASKS[task]
    spec = {**task_spec(task, arm).model_dump(exclude_defaults=True), "train": str(DATA / t["train"]),
            "dev": str(DATA / t["dev"]), "distill": True}
    recipe = A.task_cut_recipe(task, arm, seed, teacher, spec)
    out = A.WORK / "taskcut" / f"{task}-{arm}-{seed}"
    t0 = time.perf_counter()
    slimbert.compress(recipe, out=out, resume=(out / "recipe.resolved.yaml").is_file())
    seconds = time.perf_counter() - t0
    metrics = json.loads((out / "finetune" / "metrics.json").read_text())
    saved = finetuned_dir(task, arm, seed)
    shutil.rmtree(saved, ignore_errors=True)
    shutil.copytree(out / "finetune" / "model", saved)  # where latency and the teacher lookups read models
    model = AutoModelForSequenceClassification.from_pretrained(str(saved), use_safetensors=True).eval()
    result = {"task": task, "arm": arm, "seed": seed, "dev": metrics["dev"], "teacher_dev": metrics["teacher_dev"],
              "distill": True, "seconds": round(seconds, 1), "train_examples": metrics["train_examples"],
              "augmented_examples": metrics["augmented_examples"], "dev_examples": metrics["dev_examples"],
              "final_loss": metrics["history"][-1]["loss"], **sizes(model), "spec": spec,
              "run_dir": _shown(out), "student_init": _read_json(out / "student_init.json"),
              "stage_losses": stage_losses(out)}
    write(A.RESULTS / f"{task}-{arm}-{seed}.json", result)
    print(f"{task} {arm} seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["dev"].items())
          + f" ({seconds:.0f} s)", flush=True)
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
    path = A.WORK / "teacher_outputs" / f"{task}-{seed}-t{teacher_seed(task, seed)}-{task_.n_train}{copies}.safetensors"
    if path.is_file():
        return TeacherOutputs.from_outputs(load_file(str(path)))
    cached = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(cached.outputs, str(path))
    return cached


def finetuned_dir(task: str, arm: str, seed: int) -> Path:
    return A.WORK / "finetuned" / f"{task}-{arm}-{seed}"


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
    done = A.RESULTS / f"similarity-{arm}.json"
    if done.is_file():
        return json.loads(done.read_text())
    from transformers import AutoTokenizer

    from slimbert.engine.sentence import similarity_report
    from slimbert.teacher.source import sentence_pooling

    source = Path(source_path())
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

def _export_variants(src: Path, out: Path, task: str | None) -> str | None:
    """Export `src` with slimbert's export: ONNX and OpenVINO, fp32 and int8. A task model's int8 stays behind the
    export's parity guard (output cosine); an embedding model's does not, because its similarity Spearman on real
    pairs, measured on each variant, is the quality that matters (the source's token-level cosine after ONNX
    Runtime's int8, 0.957 in the smoke run, is below the guard's 0.98, yet it is the point a user would weigh).
    Returns why an int8 was refused (then fp32 alone), or None."""
    import shutil

    from slimbert.export.onnx import ExportError, export

    guard = {} if task is None else {"int8_min_cosine": -1.0}
    shutil.rmtree(out, ignore_errors=True)
    try:
        export(src, out, task=task, quantize="int8", openvino=True, measure=False, **guard)
        return None
    except ExportError as e:  # the int8 parity guard refused it: time fp32 alone, say why
        shutil.rmtree(out, ignore_errors=True)
        export(src, out, task=task, openvino=True, measure=False)
        return str(e)


def latency() -> dict:
    """The frontier's speed and quality, on every runtime and precision slimbert exports (ONNX Runtime and
    OpenVINO, fp32, int8 and bf16 where the CPU has it), timed side by side by its bench (batch 1, seq 128, the run's threads, alternating
    blocks of runs): one SST-2 model per architecture (the first arm of each latency shape in the table, seed 0)
    with its SST-2 dev accuracy on each variant, and the bare embedding models (the source with no training, and
    each round-3 student cut from it) with their similarity Spearman vs the source on MRPC and RTE pairs."""
    from transformers import AutoModel, AutoTokenizer

    from slimbert.data.pairs import read_pairs
    from slimbert.engine.finetune import make_task
    from slimbert.engine.sentence import hf_encoder, runner_encoder, similarity_fidelity
    from slimbert.export import runtime
    from slimbert.export.bench import bench, variants
    from slimbert.export.isa import cpu_info
    from slimbert.export.onnx import ExportError

    seed = TASKS["sst2"]["seeds"][0]
    names: dict[str, str] = {}
    for arm, spec in ARMS.items():  # one arm per architecture
        if spec.latency and spec.latency not in names.values() and \
                (A.RESULTS / f"sst2-{arm}-{seed}.json").is_file():  # arms the budget left out are not timed (yet)
            names[arm] = spec.latency
    embedding = {"source": source_path()} | {  # the bare models whose embeddings are the product
        arm: str(A.WORK / f"transfer-{arm}" / "student") for arm in A.EMBEDDING_ARMS
        if (A.RESULTS / f"transfer-{arm}.json").is_file()}
    timed = sorted(names) + [A.embedding_name(a) for a in sorted(embedding)]
    done = A.RESULTS / "latency.json"
    before = _read_json(done)
    if before is not None and sorted(before.get("arms", [])) == timed:
        return before  # timed before, and no arm has been added since
    tokenizer = AutoTokenizer.from_pretrained(source_path())
    cpu = cpu_info()
    entries, refused, quality = [], {}, {}

    def add(name: str, out: Path, measure) -> None:
        for e in (e for rt, prec in A.RUNTIMES for e in variants(name, out, [rt], [prec], cpu)):
            e.name = A.variant_key(name, e.runtime, e.precision)
            entries.append(e)
            if e.unavailable is None:
                quality[e.name] = measure(runtime.get(e.runtime).load(e.path, e.precision, torch.get_num_threads()))

    task_ = make_task(task_spec("sst2", "source"), DATA, tokenizer, seed)  # SST-2 dev, as the arms' rows read it
    _cap_dev(task_)
    for arm, name in names.items():
        src = finetuned_dir("sst2", arm, seed)
        tokenizer.save_pretrained(src)
        out = A.WORK / "onnx" / name
        if why := _export_variants(src, out, None):
            refused[name] = why
        add(name, out, lambda r: task_.evaluate(runtime.TaskModel(r))["accuracy"])
    source = AutoModel.from_pretrained(source_path(), use_safetensors=True).eval()
    pairs = {t: read_pairs(DATA / TASK_FILES[t]["dev"], S.get("pairs_max", 1000), 0) for t in ("mrpc", "rte")}
    for arm, path in embedding.items():
        name = A.embedding_name(arm)
        out = A.WORK / "onnx" / name
        try:
            if why := _export_variants(Path(path), out, "feature-extraction"):
                refused[name] = why
        except ExportError as e:  # say why, time the rest
            refused[name] = f"not exported: {e}"
            continue
        add(name, out, lambda r: {t: similarity_fidelity(hf_encoder(source), runner_encoder(r), tokenizer, p, "mean",
                                                         128, torch.device("cpu"))["spearman"]
                                  for t, p in pairs.items()})
    report = bench(entries, [1], [128], threads=torch.get_num_threads(), runs=8 if S["scale"] == "smoke" else 40,
                   max_accuracy_drop=None)
    result = {"arms": timed, "int8_refused": refused,
              "p50_ms": {r["model"]: round(r["latency"]["p50"] * 1e3, 2) for r in report["results"]},
              "quality": quality, "unavailable": report["unavailable"],
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
    path = A.RESULTS / "machine.json"
    sessions = _read_json(path) or []
    sessions.append({**machine(), "load": monitor.stop(), "seconds": round(seconds, 1), "forced": forced,
                     "finished": finished, "scale": S["scale"], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime(time.time() - seconds))})
    write_any(path, sessions)


# ---- helpers -----------------------------------------------------------------------------------------------

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


def jobs(round_: int | None = None) -> list[tuple]:
    """Every experiment in priority order, so that a budget cut keeps the rows that matter most. Round 2: the
    ceilings, seed 0 of every main arm on every task, latency, the main arms' other seeds, the cookbook, the levers,
    latency again (with the arms added since). Then round 3 (the students cut from the source): their transfers and
    similarity, seed 0 of each on its tasks, the other seeds, latency with them. `round_` 2 or 3: that round alone
    (round 3 with the source runs that teach it)."""
    out: list[tuple] = [("corpus",)]
    if round_ == 3:
        for task in (t for t in TASKS if t in A.ROUND3_TASKS):
            out += [("finetune", task, "source", s) for s in seeds_for(task, "source")]
    else:
        out += _round2_jobs()
    if round_ == 2:
        return out
    r3 = A.group("round3")
    for arm in r3:
        if arm in TRANSFER_ARMS:
            out += [("transfer", arm), ("similarity", arm)]
    out += [("similarity", arm) for arm in r3 if ARMS[arm].random_init]
    for first in (True, False):  # seed 0 of every arm, then the other seeds
        for task in TASKS:
            out += [("finetune", task, arm, s) for arm in r3 if arm in A.arms_for(task)
                    for s in (seeds_for(task, arm)[:1] if first else seeds_for(task, arm)[1:])]
    out.append(("latency",))
    return out


def _round2_jobs() -> list[tuple]:
    out: list[tuple] = []
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
    for arms in (A.COOKBOOK_ONLY, A.group("lever")):
        for arm in arms:
            if arm in TRANSFER_ARMS and ("transfer", arm) not in out:
                out += [("transfer", arm), ("similarity", arm)]
            for task in (t for t in TASKS if arm in A.arms_for(t)):
                out += [("finetune", task, arm, s) for s in seeds_for(task, arm)]
    for task in TASKS:  # the confirmed levers: every task, every seed
        out += [job for arm in A.group("confirmed") for s in seeds_for(task, arm)
                if (job := ("finetune", task, arm, s)) not in out]
    out.append(("latency",))
    return out


def run_job(job: tuple) -> None:
    kind, *args = job
    {"corpus": make_corpus, "transfer": transfer, "finetune": finetune, "similarity": similarity,
     "latency": latency}[kind](*args)


def run_all(budget_s: float | None, round_: int | None = None) -> bool:
    """Every job not yet done, in priority order; stops before a job once budget_s is spent. True when all ran."""
    t0 = time.perf_counter()
    todo = jobs(round_)
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
        tar.add(A.RESULTS, arcname="results")
    for name in ("quality.md", "quality.json", "quality.png", "quality_cookbook.png", "quality_frontier.png"):
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
    p.add_argument("--round", type=int, choices=[2, 3], default=None,
                   help="all/jobs: that round's arms alone (3: the students cut from the source)")
    a = p.parse_args(argv)
    if a.arm is not None and a.arm not in ARMS:
        A.unknown_arm(a.arm, list(ARMS))
    configure("smoke" if a.smoke else a.scale, a.work)
    if a.threads:
        torch.set_num_threads(a.threads)
    report_dir = ROOT / S["results"]
    if a.command == "jobs":
        for job in jobs(a.round):
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
            finished = run_all(a.budget_s, a.round)
    finally:
        record_session(monitor, time.perf_counter() - t0, a.force, finished)
        copy_to_out(report_dir)
    if a.command == "all":  # after the session is recorded, so that the report shows its load
        from report import report

        report(report_dir)
        copy_to_out(report_dir)


if __name__ == "__main__":
    main()
