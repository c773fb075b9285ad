"""Run a resolved recipe stage by stage, leaving a run directory anyone can inspect.

Lifecycle: preflight (refuse what cannot run, before anything is written) -> run directory and lock ->
tokenizer and corpus -> teacher -> student -> stages (each: optimizer, steps, checkpoints, metrics,
loss curve) -> final student in transformers format.

Transfer stages keep the student in eval mode (no dropout, as the official run) and draw batches as a
pure function of (seed, stage, step), so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ..data.corpus import Batches, mask_tokens, pack, read_dataset, read_texts
from ..models import SlimBertForMaskedLM, to_transformers, why_not_expressible
from ..recipe.errors import Problem, RecipeError
from ..recipe.plan import build_plan
from ..recipe.resolve import Resolved
from ..teacher.adapters import HFEncoderTeacher, Teacher
from ..transfer import losses as L
from . import checkpoint as ckpt

LOG_EVERY = 5


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


# ---- preflight and run directory -------------------------------------------------------------------------------

def preflight(r: Resolved) -> None:
    """Refuse, before anything is written, what this version cannot run yet."""
    problems = []
    if r.teacher_config is not None:
        problems.append(Problem("teacher.type", "building an inverted-bottleneck teacher from a source is not "
                                                "available in this version yet; use teacher.type: source",
                                None, str(r.file)))
    for i, st in enumerate(r.recipe.transfer):
        if st.optimizer.name == "lamb":
            problems.append(Problem(f"transfer.{i}.optimizer.name", "lamb is not available in this version yet; "
                                    "use adamw", None, str(r.file)))
    if r.recipe.finetune is not None:
        problems.append(Problem("finetune", "task fine-tuning is not available in this version yet", None, str(r.file)))
    if r.recipe.export.onnx:
        problems.append(Problem("export.onnx", "ONNX export is not available in this version yet", None, str(r.file)))
    if problems:
        raise RecipeError(problems)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunDir:
    def __init__(self, path: Path):
        self.path = path
        self.lock = path / "lock"

    def acquire(self, warn) -> None:
        if self.lock.exists():
            try:
                pid = int(self.lock.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and _pid_alive(pid) and pid != os.getpid():
                raise RecipeError(Problem("--out", f"{self.path} is in use by another slimbert run (pid {pid})"))
            warn(f"removing a stale lock left by a dead run (pid {pid})")
        self.lock.write_text(str(os.getpid()))

    def release(self) -> None:
        if self.lock.exists() and self.lock.read_text().strip() == str(os.getpid()):
            self.lock.unlink()


def prepare_run_dir(r: Resolved, out: Path | None, resume: bool) -> Path:
    resolved = r.recipe.model_dump(mode="json")
    if out is None:
        out = Path("runs") / f"{r.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    saved = out / "recipe.resolved.yaml"
    if resume:
        if not saved.is_file():
            raise RecipeError(Problem("--resume", f"{out} is not a slimbert run directory (no recipe.resolved.yaml)"))
        before = yaml.safe_load(saved.read_text())
        if before != resolved:
            keys = sorted(_diff_keys(before, resolved))[:10]
            raise RecipeError(Problem("--resume", f"the recipe changed since the run started ({', '.join(keys)}); "
                                                  "resume with the same recipe and overrides"))
        return out
    if out.exists() and any(out.iterdir()):
        raise RecipeError(Problem("--out", f"{out} exists and is not empty; pass --resume to continue that run or "
                                           "choose another --out"))
    return out


def _diff_keys(a, b, prefix="") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b)):
            out |= _diff_keys(x, y, f"{prefix}{i}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


# ---- the pieces a stage works on ---------------------------------------------------------------------------------

@dataclass
class Context:
    r: Resolved
    out: Path
    tokenizer: object
    train: torch.Tensor
    eval: torch.Tensor
    teacher: Teacher
    student: SlimBertForMaskedLM
    projections: nn.ModuleList | None
    console: object

    def trainable(self) -> dict[str, nn.Parameter]:
        params = {f"student.{k}": p for k, p in self.student.named_parameters()}
        if self.projections is not None:
            params.update({f"projections.{k}": p for k, p in self.projections.named_parameters()})
        return params

    def tensors(self) -> dict[str, torch.Tensor]:
        t = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        if self.projections is not None:
            t.update({f"projections.{k}": v for k, v in self.projections.state_dict().items()})
        return t

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.student.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("student.")})
        if self.projections is not None:
            self.projections.load_state_dict({k[12:]: v for k, v in tensors.items() if k.startswith("projections.")})


def load_corpus(r: Resolved, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    d = r.recipe.data
    limit = (d.max_sequences or 10 ** 9) + d.eval_sequences
    if d.corpus.dataset:
        c = d.corpus
        try:
            texts = read_dataset(c.dataset, c.dataset_config, c.split, c.text_field, c.streaming, limit * 8)
        except Exception as e:  # noqa: BLE001 - any loader failure is a data problem to report
            raise RecipeError(Problem("data.corpus.dataset", f"cannot read dataset {c.dataset!r}: {e}")) from None
    else:
        texts = read_texts(r.corpus_files)
    seqs = pack(texts, tokenizer, d.seq_len, limit)
    if len(seqs) <= d.eval_sequences:
        raise RecipeError(Problem("data.corpus", f"the corpus gives {len(seqs)} sequences of {d.seq_len} tokens, not "
                                                 f"more than data.eval_sequences ({d.eval_sequences}); add text or "
                                                 "shorten data.seq_len"))
    return seqs[d.eval_sequences:], seqs[: d.eval_sequences]


def build_context(r: Resolved, out: Path, console, teacher: Teacher | None = None) -> Context:
    from transformers import AutoTokenizer

    torch.manual_seed(r.recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(r.tokenizer_path))
    train, held_out = load_corpus(r, tokenizer)
    if teacher is None:
        needs_mlm = any(getattr(st, "alpha", 1.0) < 1.0 for st in r.recipe.transfer) and r.source.has_mlm_head
        teacher = HFEncoderTeacher(r.source_path, with_mlm=needs_mlm)
    student = SlimBertForMaskedLM(r.student_config)
    projections = None
    if teacher.hidden_size != r.student_config.hidden_size:
        # TinyBERT-style: learned maps from the student's feature width to the teacher's, one per layer.
        projections = nn.ModuleList(nn.Linear(r.student_config.hidden_size, teacher.hidden_size)
                                    for _ in range(r.student_config.num_hidden_layers))
    if r.recipe.student.copy_embeddings:
        _copy_embeddings(teacher, student)
    return Context(r, out, tokenizer, train, held_out, teacher, student, projections, console)


def _copy_embeddings(teacher, student) -> None:
    src = getattr(teacher, "body", None)
    if src is None:
        return
    mine = student.slimbert.embeddings.state_dict()
    theirs = {k.split("embeddings.", 1)[1]: v for k, v in src.state_dict().items() if "embeddings." in k}
    with torch.no_grad():
        for k, v in theirs.items():
            if k in mine and mine[k].shape == v.shape:
                mine[k].copy_(v)


# ---- one stage -----------------------------------------------------------------------------------------------------

def stage_steps(st, num_layers: int) -> int:
    return st.steps_per_layer * num_layers if st.kind == "progressive" else st.steps


def lr_factor(st, step: int) -> float:
    """Warm-up then constant / linear / cosine decay; progressive stages restart it for every layer."""
    if st.kind == "progressive":
        step, total = step % st.steps_per_layer, st.steps_per_layer
    else:
        total = st.steps
    if step < st.warmup_steps:
        return (step + 1) / (st.warmup_steps + 1)
    if st.schedule == "constant":
        return 1.0
    frac = (step - st.warmup_steps) / max(1, total - st.warmup_steps)
    return 1.0 - frac if st.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))


def layer_of(name: str) -> int | None:
    """1-based student layer of a parameter (projections.k counts as layer k + 1)."""
    parts = name.split(".")
    if "layer" in parts:
        return int(parts[parts.index("layer") + 1]) + 1
    if parts[0] == "projections":
        return int(parts[1]) + 1
    return None


def multiplier(st, name: str, step: int) -> float:
    short = name.split(".", 1)[1]
    for prefix in st.freeze:
        if short.startswith(prefix) or name.startswith(prefix):
            return 0.0
    m = 1.0
    for prefix, value in st.lr_multipliers.items():
        if short.startswith(prefix) or name.startswith(prefix):
            m *= value
    if st.kind == "progressive":
        current = step // st.steps_per_layer + 1
        layer = layer_of(name)
        if layer is None:
            embeddings = ".embeddings." in f".{short}"
            m *= 1.0 if (embeddings and st.train_embeddings) else 0.0  # heads and (by default) embeddings frozen
        elif layer == current:
            m *= st.current_lr
        elif layer < current:
            m *= st.lower_lr
        else:
            m = 0.0
    elif st.kind in ("joint",) and ".cls." in f".{short}":
        m = 0.0  # the MLM head gets no gradient from layer-wise terms
    return m


def make_optimizer(st, params: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
    o = st.optimizer
    groups = [{"params": [p], "name": n, "weight_decay": o.weight_decay if p.dim() > 1 else 0.0}
              for n, p in params.items()]
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, betas=o.betas, eps=o.eps)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.betas[0])
    raise RecipeError(Problem("optimizer.name", f"optimizer {o.name!r} is not available"))


def layerwise_terms(ctx: Context, st, layers: list[int], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feature-map, statistics and attention terms for the given student layers (1-based), averaged."""
    deepest = max(layers)
    t_layers = [ctx.r.layer_map[l - 1] for l in layers]
    s = ctx.student.slimbert(batch, output_hidden_states=True, output_attention_scores=True, num_layers=deepest)
    t = ctx.teacher(batch, num_layers=max(t_layers))
    w = st.losses
    terms = {k: torch.zeros(()) for k in ("feature_map", "feature_mean", "feature_var", "attention")}
    for l, tl in zip(layers, t_layers):
        hs = s.hidden_states[l]
        if ctx.projections is not None:
            hs = ctx.projections[l - 1](hs)
        ht = t.hidden_states[tl]
        if w.feature_map:
            terms["feature_map"] = terms["feature_map"] + L.feature_map_loss(ht, hs, normalize=w.feature_norm)
        if w.feature_mean:
            terms["feature_mean"] = terms["feature_mean"] + L.feature_mean_loss(ht, hs)
        if w.feature_var:
            terms["feature_var"] = terms["feature_var"] + L.feature_var_loss(ht, hs)
        if w.attention:
            terms["attention"] = terms["attention"] + L.attention_loss(
                t.attentions[tl - 1], s.attention_scores[l - 1], teacher_is_probs=t.attentions_are_probs)
    n = len(layers)
    return {k: v / n for k, v in terms.items() if getattr(w, k)}


def distill_terms(ctx: Context, st, step: int, batches: Batches, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    d = ctx.r.recipe.data
    inputs, labels = mask_tokens(batch, ctx.tokenizer, d.mlm_probability, batches.generator(step, 1),
                                 d.whole_word_mask)
    logits = ctx.student(inputs).logits
    teacher_logits = None
    if st.alpha < 1.0:
        teacher_logits = ctx.teacher(inputs, want_mlm=True).mlm_logits
    return {"mlm": L.pretrain_distill_loss(logits, labels, teacher_logits, st.alpha, st.temperature)}


def compute(ctx: Context, st, step: int, batches: Batches) -> dict[str, torch.Tensor]:
    batch = batches.batch(step)
    Ls = ctx.r.student_config.num_hidden_layers
    if st.kind == "progressive":
        terms = layerwise_terms(ctx, st, [step // st.steps_per_layer + 1], batch)
        return {k: getattr(st.losses, k) * v for k, v in terms.items()}
    if st.kind == "joint":
        terms = layerwise_terms(ctx, st, list(range(1, Ls + 1)), batch)
        return {k: getattr(st.losses, k) * v for k, v in terms.items()}
    if st.kind == "auxiliary":
        terms = layerwise_terms(ctx, st, list(range(1, Ls + 1)), batch)
        out = {k: getattr(st.losses, k) * v for k, v in terms.items()}
        out.update(distill_terms(ctx, st, step, batches, batch))
        return out
    if st.kind == "pretrain_distill":
        return distill_terms(ctx, st, step, batches, batch)
    raise RecipeError(Problem("transfer", f"stage kind {st.kind!r} is not available in this version yet"))


def run_stage(ctx: Context, k: int, st, start: int, opt_state: dict | None, progress) -> None:
    name = st.name or f"{k}-{st.kind}"
    stage_dir = ctx.out / "stages" / f"{k}-{st.kind}"
    total = stage_steps(st, ctx.r.student_config.num_hidden_layers)
    batches = Batches(ctx.train, st.batch_size, ctx.r.recipe.seed, k)
    params = ctx.trainable()
    opt = make_optimizer(st, params)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    ctx.student.eval()  # transfer runs without dropout (official code: is_training=False with a teacher)
    tokens = st.batch_size * ctx.r.recipe.data.seq_len
    task = progress.add_task(name, total=total, completed=start, info="")
    every = st.checkpoint_every or total
    metrics = open(ctx.out / "metrics.jsonl", "a")
    t0, seen = time.perf_counter(), 0
    try:
        for step in range(start, total):
            base = st.optimizer.lr * lr_factor(st, step)
            for g in opt.param_groups:
                g["lr"] = base * multiplier(st, g["name"], step)
            terms = compute(ctx, st, step, batches)
            loss = sum(terms.values())
            for term, value in {**terms, "total": loss}.items():
                if not torch.isfinite(value):
                    raise TrainingError(f"stage {k} ({name}), step {step}: loss term {term!r} is {value.item()}; "
                                        f"stopped. The last good checkpoint is kept in {stage_dir}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for g in opt.param_groups:
                if g["lr"] == 0.0:
                    for p in g["params"]:
                        p.grad = None  # frozen this step: no update, no moment change
            if st.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], st.grad_clip)
            opt.step()
            seen += 1
            rate = seen * tokens / (time.perf_counter() - t0)
            if step % LOG_EVERY == 0 or step == total - 1:
                row = {"stage": k, "kind": st.kind, "step": step, "lr": base, "loss": loss.item(),
                       "tokens_per_s": round(rate, 1), **{t: v.item() for t, v in terms.items()}}
                if st.kind == "progressive":
                    row["layer"] = step // st.steps_per_layer + 1
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            progress.update(task, advance=1, info=f"loss {loss.item():.4g}  {rate:,.0f} tok/s")
            if (step + 1) % every == 0 or step + 1 == total:
                ckpt.save(stage_dir, step + 1, ctx.tensors(), opt.state_dict(),
                          {"stage": k, "kind": st.kind, "total": total})
    finally:
        metrics.close()
    plot_stage(ctx.out, k, name)


def plot_stage(out: Path, k: int, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["stage"] == k:
            rows[row["step"]] = row  # a resumed run re-logs steps; keep the last
    if not rows:
        return
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [key for key in rows[steps[0]] if key not in ("stage", "kind", "step", "lr", "tokens_per_s", "layer")]
    for key in keys:
        ax.plot(steps, [rows[s].get(key, float("nan")) for s in steps], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "stages" / f"{k}-{rows[steps[0]]['kind']}" / "loss.png", dpi=90)
    plt.close(fig)


# ---- resume and the whole run -------------------------------------------------------------------------------------

def find_resume_point(ctx: Context, warn) -> tuple[int, int, dict | None]:
    """(stage index, step, optimizer state) to continue from; loads the weights into ctx."""
    stages = ctx.r.recipe.transfer
    for k in range(len(stages) - 1, -1, -1):
        stage_dir = ctx.out / "stages" / f"{k}-{stages[k].kind}"
        good = ckpt.latest_good(stage_dir, warn) if stage_dir.is_dir() else None
        if good is None:
            continue
        state, tensors, opt = ckpt.load(good)
        ctx.load_tensors(tensors)
        if state["step"] >= state["total"]:
            return k + 1, 0, None
        return k, state["step"], opt
    return 0, 0, None


def save_student(ctx: Context) -> Path:
    final, tmp = ctx.out / "student", ctx.out / ".tmp-student"
    shutil.rmtree(tmp, ignore_errors=True)
    model = ctx.student
    reason = why_not_expressible(model.config)
    (to_transformers(model) if reason is None else model).save_pretrained(tmp)
    ctx.tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def run(r: Resolved, out: Path | None = None, resume: bool = False, console=None, teacher: Teacher | None = None) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False)  # noqa: E731
    if teacher is None:
        preflight(r)
    out = prepare_run_dir(r, out, resume)
    out.mkdir(parents=True, exist_ok=True)
    run_dir = RunDir(out)
    run_dir.acquire(warn)
    try:
        if not resume:
            (out / "recipe.resolved.yaml").write_text(yaml.safe_dump(r.recipe.model_dump(mode="json"), sort_keys=False))
            (out / "plan.json").write_text(json.dumps(build_plan(r), indent=2, default=str))
        ctx = build_context(r, out, console, teacher)
        start_stage, start_step, opt_state = find_resume_point(ctx, warn) if resume else (0, 0, None)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            for k, st in enumerate(r.recipe.transfer):
                if k < start_stage:
                    continue
                run_stage(ctx, k, st, start_step if k == start_stage else 0,
                          opt_state if k == start_stage else None, progress)
        path = save_student(ctx)
        console.print(f"[green]done[/]: student in {path}", highlight=False)
        return out
    finally:
        run_dir.release()
