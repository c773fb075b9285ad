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
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ..data.corpus import Batches, mask_tokens, pack, read_dataset, read_texts
from ..models import SlimBertForMaskedLM, to_transformers, why_not_expressible
from ..recipe.errors import Problem, RecipeError
from ..recipe.plan import build_plan
from ..recipe.resolve import Resolved, with_teacher
from ..teacher.adapters import HFEncoderTeacher, IBTeacherAdapter, Teacher, as_teacher
from ..teacher.build import IBTeacher, build_ib_teacher, fidelity
from ..transfer import losses as L
from . import checkpoint as ckpt
from .distributed import World, world_from_env

LOG_EVERY = 5


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


# ---- preflight and run directory -------------------------------------------------------------------------------

def preflight(r: Resolved) -> None:
    """Refuse, before anything is written, what this machine cannot run (recipe checks live in load_recipe)."""
    problems = []
    need = _memory_needed(r)
    have = _physical_memory()
    if have and need > have:
        problems.append(Problem("student", f"the student and teacher need about {need / 2**30:.1f} GiB (fp32 weights, "
                                           f"gradients and Adam moments) but this machine has {have / 2**30:.1f} GiB; "
                                           "shrink the student (num_layers, inter_size, ffn) or use a bigger machine",
                                None, str(r.file)))
    if problems:
        raise RecipeError(problems)


def _memory_needed(r: Resolved) -> int:
    from ..models import count

    student = count(r.student_config).total_params
    teacher = count(r.teacher_config if r.teacher_config is not None else r.source.as_config()).total_params
    return 16 * student + 4 * teacher


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    """A process's start time (Linux), so a lock naming a pid that a new process has since reused is stale."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RunDir:
    """The run directory's lock: created with O_EXCL (two runs cannot both take it), naming the owner's pid, start
    time and host. A lock whose process is gone, or whose pid now belongs to another process, is stale."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = path / "lock"
        self.held = False

    def _owner(self) -> dict:
        try:
            text = self.lock.read_text().strip()
        except FileNotFoundError:
            return {}
        try:
            owner = json.loads(text)
            return owner if isinstance(owner, dict) else {"pid": int(owner)}
        except (ValueError, TypeError):
            return {"pid": 0}  # unreadable (e.g. torn by a crash): nobody can hold it

    def acquire(self, warn) -> None:
        me = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid = owner.get("pid") or 0
                if owner.get("host", me["host"]) != me["host"]:
                    raise RecipeError(Problem("--out", f"{self.path} is locked by a run on host {owner['host']} "
                                                       f"(pid {pid}); delete {self.lock} if that run is gone"))
                alive = bool(pid) and _pid_alive(pid) and (owner.get("start") in (None, _start_time(pid)))
                if alive and pid != os.getpid():
                    raise RecipeError(Problem("--out", f"{self.path} is in use by another slimbert run (pid {pid})"))
                warn(f"removing a stale lock left by a dead run (pid {pid})")
                self.lock.unlink(missing_ok=True)
                continue
            except OSError as e:  # read-only, full or forbidden: say so before anything else is written
                raise RecipeError(Problem("--out", f"cannot write to {self.path}: {e.strerror or e}")) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return
        raise RecipeError(Problem("--out", f"could not take the lock {self.lock}: another run keeps taking it"))

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)
        self.held = False


def _nothing_started(out: Path) -> bool:
    """No run directory yet, or one a run was killed in before it wrote its recipe (a lock, unfinished writes)."""
    return not out.exists() or all(p.name == "lock" or p.name.startswith(".tmp") for p in out.iterdir())


def prepare_run_dir(r: Resolved, out: Path | None, resume: bool) -> tuple[Path, bool]:
    """The run directory, and whether there is a run in it to resume."""
    resolved = r.recipe.model_dump(mode="json")
    if out is None:
        out = Path("runs") / f"{r.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RecipeError(Problem("--out", f"{out} is a file; --out names a run directory"))
    saved = out / "recipe.resolved.yaml"
    if resume:
        if not saved.is_file():
            if _nothing_started(out):  # killed during start-up: a retry loop passing --resume just starts it
                return out, False
            raise RecipeError(Problem("--resume", f"{out} is not a slimbert run directory (no recipe.resolved.yaml)"))
        before = yaml.safe_load(saved.read_text())
        if before != resolved:
            keys = sorted(_diff_keys(before, resolved))[:10]
            raise RecipeError(Problem("--resume", f"the recipe changed since the run started ({', '.join(keys)}); "
                                                  "resume with the same recipe and overrides"))
        return out, True
    if out.exists() and any(out.iterdir()):
        raise RecipeError(Problem("--out", f"{out} exists and is not empty; pass --resume to continue that run or "
                                           "choose another --out"))
    return out, False


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
    ib: IBTeacher | None = None                   # the IB teacher being built (teacher.type: inverted_bottleneck)
    source: HFEncoderTeacher | None = None        # its source, the reference while adapting
    world: World = field(default_factory=World)   # this process's rank among torchrun's processes

    def trainable(self, kind: str) -> dict[str, nn.Parameter]:
        if kind == "teacher_adaptation":
            return {f"teacher.{k}": p for k, p in self.ib.named_parameters() if p.requires_grad}
        params = {f"student.{k}": p for k, p in self.student.named_parameters()}
        if self.projections is not None:
            params.update({f"projections.{k}": p for k, p in self.projections.named_parameters()})
        return params

    def tensors(self, kind: str) -> dict[str, torch.Tensor]:
        if kind == "teacher_adaptation":
            return {f"teacher.{k}": v for k, v in self.ib.weights().items()}
        t = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        if self.projections is not None:
            t.update({f"projections.{k}": v for k, v in self.projections.state_dict().items()})
        return t

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        if part("teacher."):
            self.ib.load_state_dict(part("teacher."), strict=False)
        if part("student."):
            self.student.load_state_dict(part("student."))
        if self.projections is not None and part("projections."):
            self.projections.load_state_dict(part("projections."))


def load_corpus(r: Resolved, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    d = r.recipe.data
    limit = (d.max_sequences or 10 ** 9) + d.eval_sequences
    if d.corpus.dataset:
        c = d.corpus
        try:
            local = Path(c.dataset).expanduser()
            local = local if local.is_absolute() else r.file.parent / local  # relative to the recipe, as files
            texts = read_dataset(str(local) if local.exists() else c.dataset, c.dataset_config, c.split,
                                 c.text_field, c.streaming, limit * 8)
        except Exception as e:  # noqa: BLE001 - any loader failure is a data problem to report
            raise RecipeError(Problem("data.corpus.dataset", f"cannot read dataset {c.dataset!r}: {e}")) from None
    else:
        texts = read_texts(r.corpus_files)
    seqs = pack(texts, tokenizer, d.seq_len, limit)
    if len(seqs) <= d.eval_sequences:
        raise RecipeError(Problem("data.corpus", f"the corpus gives {len(seqs)} sequences of {d.seq_len} tokens, not "
                                                 f"more than data.eval_sequences ({d.eval_sequences}); add text or "
                                                 "shorten data.seq_len", None, str(r.file)))
    return seqs[d.eval_sequences:], seqs[: d.eval_sequences]


def build_context(r: Resolved, out: Path, console, teacher=None, quick: bool = False) -> Context:
    """Tokenizer, corpus, teacher and student. `teacher` (any object slimbert.as_teacher accepts) replaces
    the recipe's; `quick` (for plan's timings) builds an IB teacher without its PCA."""
    from transformers import AutoTokenizer

    torch.manual_seed(r.recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(r.tokenizer_path))
    train, held_out = load_corpus(r, tokenizer)
    ib = source = None
    if teacher is not None:
        teacher = as_teacher(teacher)
    elif r.teacher_config is not None:
        source = HFEncoderTeacher(r.source_path, with_mlm=r.source.has_mlm_head)
        t = r.recipe.teacher
        ids = train[: 8 if quick else t.init_sequences]
        started = time.perf_counter()
        ib = build_ib_teacher(source.model, ids, config=r.teacher_config, init="random" if quick else t.init,
                              seed=r.recipe.seed)
        if not quick:
            console.print(f"IB teacher built from {r.source.path} ({t.init} init on {len(ids)} sequences) in "
                          f"{time.perf_counter() - started:.1f} s", highlight=False)
        teacher = IBTeacherAdapter(ib)
    else:
        needs_mlm = any(getattr(st, "alpha", 1.0) < 1.0 for st in r.recipe.transfer) and r.source.has_mlm_head
        teacher = HFEncoderTeacher(r.source_path, with_mlm=needs_mlm)
    student = SlimBertForMaskedLM(r.student_config)
    projections = None
    if teacher.hidden_size != r.student_config.hidden_size:
        # TinyBERT-style: learned maps from the student's feature width to the teacher's, one per layer.
        projections = nn.ModuleList(nn.Linear(r.student_config.hidden_size, teacher.hidden_size)
                                    for _ in range(r.student_config.num_hidden_layers))
    return Context(r, out, tokenizer, train, held_out, teacher, student, projections, console, ib, source)


def teacher_has_attention(teacher) -> bool:
    out = teacher(torch.ones(1, 4, dtype=torch.long), num_layers=1)
    return bool(out.attentions)


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
    if o.name == "lamb":  # layer-wise trust ratio (You et al.), from pytorch-optimizer; decay as AdamW's
        from pytorch_optimizer import Lamb

        return Lamb(groups, lr=o.lr, betas=o.betas, eps=o.eps, weight_decouple=True)
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
        hs, ht = hs.float(), t.hidden_states[tl].float()  # losses in fp32 under bf16 autocast
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


def token_share(labels_global: torch.Tensor, labels: torch.Tensor, world: World, n_micro: int) -> float:
    """Scale for a loss averaged over this shard's masked tokens, so that the mean over ranks and micro-batches
    equals the average over the global batch's masked tokens (shards hold different counts)."""
    n_global = int((labels_global != -100).sum())
    return (int((labels != -100).sum()) * world.size * n_micro / n_global) if n_global else 1.0


def distill_terms(ctx: Context, st, step: int, batches: Batches, batch: torch.Tensor, part, n_micro: int
                  ) -> dict[str, torch.Tensor]:
    d = ctx.r.recipe.data
    inputs, labels_global = mask_tokens(batch, ctx.tokenizer, d.mlm_probability, batches.generator(step, 1),
                                        d.whole_word_mask)
    inputs, labels = part(inputs), part(labels_global)
    # The loss reads masked positions only, so the vocabulary-wide head runs on those rows alone (about 7x
    # less head work at a 15% masking rate; the head dominates a narrow student's step).
    keep = labels != -100
    logits = ctx.student.cls(ctx.student.slimbert(inputs).last_hidden_state[keep])
    teacher_logits = None
    if st.alpha < 1.0:
        teacher_logits = ctx.teacher(inputs, want_mlm=True).mlm_logits[keep]
    loss = L.pretrain_distill_loss(logits, labels[keep], teacher_logits, st.alpha, st.temperature)
    return {"mlm": loss * token_share(labels_global, labels, ctx.world, n_micro)}


def adaptation_terms(ctx: Context, st, step: int, batches: Batches, batch: torch.Tensor, part, n_micro: int
                     ) -> dict[str, torch.Tensor]:
    """The IB teacher learns to reproduce its source: every hidden state read out in the source's width
    (MSE relative to the state's mean square, so each layer counts alike), every layer's attention
    (KL(source || teacher)) and, with an MLM head, the source's MLM distribution on masked tokens."""
    labels = share = None
    if st.mlm and ctx.ib.mlm_head is not None:
        d = ctx.r.recipe.data
        batch, labels_global = mask_tokens(batch, ctx.tokenizer, d.mlm_probability, batches.generator(step, 1),
                                           d.whole_word_mask)
        labels = part(labels_global)
        share = token_share(labels_global, labels, ctx.world, n_micro)
    batch = part(batch)
    s = ctx.source(batch, want_mlm=labels is not None)
    t, logits = ctx.ib(batch, want_mlm=labels is not None)
    terms = {}
    if st.hidden:
        mse = [F.mse_loss(ctx.ib.readout[j](h).float(), s.hidden_states[j]) / s.hidden_states[j].pow(2).mean()
               for j, h in enumerate(t.hidden_states)]
        terms["hidden"] = st.hidden * torch.stack(mse).mean()
    if st.attention:
        kl = [L.attention_loss(p, scores.float(), teacher_is_probs=True)
              for p, scores in zip(s.attentions, t.attention_scores)]
        terms["attention"] = st.attention * torch.stack(kl).mean()
    if labels is not None:
        terms["mlm"] = st.mlm * share * L.pretrain_distill_loss(logits, labels, s.mlm_logits, alpha=0.0)
    return terms


def compute(ctx: Context, st, step: int, batches: Batches, micro: int = 0, n_micro: int = 1) -> dict[str, torch.Tensor]:
    """The loss terms of one step (or of micro-batch `micro` of `n_micro`), on this rank's rows of the global
    batch. Masking is drawn on the global batch first, so every process count sees the same masks."""
    batch = batches.batch(step)
    w = ctx.world

    def part(x):
        return x[w.rank::w.size].chunk(n_micro)[micro]

    Ls = ctx.r.student_config.num_hidden_layers
    if st.kind == "progressive":
        terms = layerwise_terms(ctx, st, [step // st.steps_per_layer + 1], part(batch))
        return {k: getattr(st.losses, k) * v for k, v in terms.items()}
    if st.kind == "joint":
        terms = layerwise_terms(ctx, st, list(range(1, Ls + 1)), part(batch))
        return {k: getattr(st.losses, k) * v for k, v in terms.items()}
    if st.kind == "auxiliary":
        terms = layerwise_terms(ctx, st, list(range(1, Ls + 1)), part(batch))
        out = {k: getattr(st.losses, k) * v for k, v in terms.items()}
        out.update(distill_terms(ctx, st, step, batches, batch, part, n_micro))
        return out
    if st.kind == "pretrain_distill":
        return distill_terms(ctx, st, step, batches, batch, part, n_micro)
    if st.kind == "teacher_adaptation":
        return adaptation_terms(ctx, st, step, batches, batch, part, n_micro)
    raise RecipeError(Problem("transfer", f"stage kind {st.kind!r} is not available in this version yet"))


class StepModule(nn.Module):
    """What a stage trains, as one module, so DistributedDataParallel can average its gradients."""

    def __init__(self, ctx: Context, kind: str):
        super().__init__()
        if kind == "teacher_adaptation":
            self.ib = ctx.ib
        else:
            self.student = ctx.student
            if ctx.projections is not None:
                self.projections = ctx.projections
        self.ctx = ctx

    def forward(self, st, step, batches, micro, n_micro):
        return compute(self.ctx, st, step, batches, micro, n_micro)


def autocast(st):
    return torch.autocast("cpu", dtype=torch.bfloat16) if st.precision == "bf16" else nullcontext()


def run_stage(ctx: Context, k: int, st, start: int, opt_state: dict | None, progress) -> None:
    name = st.name or f"{k}-{st.kind}"
    stage_dir = ctx.out / "stages" / f"{k}-{st.kind}"
    total = stage_steps(st, ctx.r.student_config.num_hidden_layers)
    batches = Batches(ctx.train, st.batch_size, ctx.r.recipe.seed, k)
    params = ctx.trainable(st.kind)
    opt = make_optimizer(st, params)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    ctx.student.eval()  # transfer runs without dropout (official code: is_training=False with a teacher)
    if ctx.ib is not None:
        ctx.ib.eval()  # built without dropout; eval keeps the source's MLM head deterministic too
    tokens = st.batch_size * ctx.r.recipe.data.seq_len
    world = ctx.world
    task = progress.add_task(name, total=total, completed=start, info="")
    every = st.checkpoint_every or total
    model = world.wrap(StepModule(ctx, st.kind))
    n_micro = st.grad_accum
    metrics = open(ctx.out / "metrics.jsonl", "a") if world.main else None
    if metrics is not None and metrics.tell() and not (ctx.out / "metrics.jsonl").read_bytes().endswith(b"\n"):
        metrics.write("\n")  # end a line torn by a kill, so the resumed rows parse
    t0, seen = time.perf_counter(), 0
    try:
        for step in range(start, total):
            base = st.optimizer.lr * lr_factor(st, step)
            for g in opt.param_groups:
                g["lr"] = base * multiplier(st, g["name"], step)
            opt.zero_grad(set_to_none=True)
            local = {}
            for micro in range(n_micro):
                with world.no_sync(model, micro == n_micro - 1), autocast(st):
                    parts = model(st, step, batches, micro, n_micro)
                (sum(parts.values()) / n_micro).backward()
                for term, value in parts.items():
                    local[term] = local.get(term, 0.0) + value.detach() / n_micro
            terms = world.mean(local)  # the global batch's terms, identical on every rank
            loss = sum(terms.values())
            for term, value in {**terms, "total": loss}.items():
                if not torch.isfinite(value):
                    raise TrainingError(f"stage {k} ({name}), step {step}: loss term {term!r} is {value.item()}; "
                                        f"stopped. The last good checkpoint is kept in {stage_dir}")
            for g in opt.param_groups:
                if g["lr"] == 0.0:
                    for p in g["params"]:
                        p.grad = None  # frozen this step: no update, no moment change
            if st.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], st.grad_clip)
            opt.step()
            seen += 1
            rate = seen * tokens / (time.perf_counter() - t0)
            if metrics is not None and (step % LOG_EVERY == 0 or step == total - 1):
                row = {"stage": k, "kind": st.kind, "step": step, "lr": base, "loss": loss.item(),
                       "tokens_per_s": round(rate, 1), **{t: v.item() for t, v in terms.items()}}
                if st.kind == "progressive":
                    row["layer"] = step // st.steps_per_layer + 1
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
            progress.update(task, advance=1, info=f"loss {loss.item():.4g}  {rate:,.0f} tok/s")
            if world.main and ((step + 1) % every == 0 or step + 1 == total):
                ckpt.save(stage_dir, step + 1, ctx.tensors(st.kind), opt.state_dict(),
                          {"stage": k, "kind": st.kind, "total": total})
    finally:
        if metrics is not None:
            metrics.close()
    world.barrier()  # the stage's last checkpoint is on disk before any rank moves on
    if not world.main:
        return
    plot_stage(ctx.out, k, name)


def plot_stage(out: Path, k: int, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill or a full disk; the resumed run logged the step again
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
        for good in ckpt.good_checkpoints(stage_dir, warn) if stage_dir.is_dir() else ():
            try:
                state, tensors, opt = ckpt.load(good)
                break
            except ckpt.CheckpointError as e:
                warn(f"skipping bad checkpoint: {e}")
        else:
            continue
        if ctx.ib is not None and stages[k].kind != "teacher_adaptation":
            load_teacher(ctx)  # adapted before this stage; saved when adaptation ended
        ctx.load_tensors(tensors)
        if state["step"] >= state["total"]:
            return k + 1, 0, None
        return k, state["step"], opt
    return 0, 0, None


# ---- the IB teacher's fidelity and its saved copy --------------------------------------------------------------

def teacher_fidelity(ctx: Context) -> dict:
    mlm = None
    if ctx.ib.mlm_head is not None:
        d = ctx.r.recipe.data
        mlm = mask_tokens(ctx.eval, ctx.tokenizer, d.mlm_probability,
                          torch.Generator().manual_seed(ctx.r.recipe.seed + 7919), d.whole_word_mask)
    ctx.ib.eval()
    return fidelity(ctx.source.model, ctx.ib, ctx.eval, mlm)


def write_fidelity(ctx: Context, when: str, report: dict) -> dict:
    path = ctx.out / "teacher" / "fidelity.json"
    path.parent.mkdir(exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[when] = report
    data["held_out_sequences"] = len(ctx.eval)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return data


def print_fidelity(console, data: dict) -> None:
    from rich.table import Table

    whens = [w for w in ("before", "after") if w in data]
    table = Table(title=f"IB teacher vs source on {data['held_out_sequences']} held-out sequences "
                        "(before / after adaptation)")
    table.add_column("state")
    for w in whens:
        table.add_column(f"cosine {w}", justify="right")
    for w in whens:
        table.add_column(f"attention KL {w}", justify="right")
    n = len(data[whens[0]]["cosine"])
    for j in range(n):
        kl = [f"{data[w]['attention_kl'][j - 1]:.4f}" if j else "" for w in whens]
        table.add_row("embedding" if j == 0 else f"layer {j}", *[f"{data[w]['cosine'][j]:.4f}" for w in whens], *kl)
    if "teacher_mlm_loss" in data[whens[0]]:
        table.add_row("MLM loss (source)", *[f"{data[w]['source_mlm_loss']:.4f}" for w in whens], *[""] * len(whens))
        table.add_row("MLM loss (teacher)", *[f"{data[w]['teacher_mlm_loss']:.4f}" for w in whens], *[""] * len(whens))
        table.add_row("MLM accuracy (source)", *[f"{data[w]['source_mlm_accuracy']:.4f}" for w in whens],
                      *[""] * len(whens))
        table.add_row("MLM accuracy (teacher)", *[f"{data[w]['teacher_mlm_accuracy']:.4f}" for w in whens],
                      *[""] * len(whens))
    console.print(table)


def save_teacher(ctx: Context) -> Path:
    """The IB teacher as a slimbert model directory (loads with AutoModel), plus its readouts."""
    from safetensors.torch import save_file

    final = ctx.out / "teacher" / "model"
    with ckpt.atomic_dir(final) as tmp:
        ctx.ib.model.save_pretrained(tmp)
        save_file({k: v.contiguous() for k, v in ctx.ib.readout.state_dict().items()}, str(tmp / "readouts.safetensors"))
    return final


def load_teacher(ctx: Context) -> None:
    from safetensors.torch import load_file

    from ..models import SlimBertModel

    path = ctx.out / "teacher" / "model"
    if not (path / "readouts.safetensors").is_file():
        raise TrainingError(f"cannot resume: the adapted teacher is missing from {path}")
    ctx.ib.model.load_state_dict(SlimBertModel.from_pretrained(path).state_dict())
    ctx.ib.readout.load_state_dict(load_file(str(path / "readouts.safetensors")))


def start_student_stages(ctx: Context, adapted: bool) -> None:
    """Between the teacher's stages and the student's: report and save the teacher, copy its embeddings."""
    if ctx.ib is not None:
        if ctx.world.main:
            if adapted:
                print_fidelity(ctx.console, write_fidelity(ctx, "after", teacher_fidelity(ctx)))
            save_teacher(ctx)
        ctx.ib.requires_grad_(False)
    if ctx.r.recipe.student.init == "prune_from_teacher":
        init_student_by_pruning(ctx)
    if ctx.r.recipe.student.copy_embeddings:
        _copy_embeddings(ctx.teacher, ctx.student)


def init_student_by_pruning(ctx: Context) -> None:
    """student.init: prune_from_teacher, from the teacher as adapted (see teacher/prune.py)."""
    from ..teacher.prune import init_from_teacher

    report = init_from_teacher(ctx.student.slimbert, ctx.ib.model, ctx.r.layer_map, ctx.train[:16], ctx.eval[:16])
    if ctx.world.main:
        ctx.console.print(report.summary(ctx.ib.config, ctx.r.student_config, ctx.r.layer_map), highlight=False,
                          soft_wrap=True)
        (ctx.out / "student_init.json").write_text(json.dumps(report.as_dict(), indent=2))


def save_model(model, tokenizer, final: Path) -> Path:
    """Atomically: stock transformers format when the shape is expressible, else slimbert's."""
    reason = why_not_expressible(model.config)
    hf = to_transformers(model) if reason is None else model
    with ckpt.atomic_dir(final) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return final


def save_student(ctx: Context) -> Path:
    return save_model(ctx.student, ctx.tokenizer, ctx.out / "student")


def run_export(ctx: Context) -> None:
    """The recipe's export section: ONNX (with parity check), optional int8, optional latency report."""
    from ..export.bench import Entry, bench, bert_base_reference, teacher_reference, write_report
    from ..export.onnx import ExportError, export

    e = ctx.r.recipe.export
    out = ctx.out / "export"
    log = lambda m: ctx.console.print(m, highlight=False, soft_wrap=True)  # noqa: E731
    try:
        if not (out / "model.onnx").is_file():  # done before a resume otherwise
            calibration = None
            if e.static_int8:
                import numpy as np

                ids = ctx.train[: e.calibration_sequences].numpy().astype(np.int64)  # packed: no padding
                calibration = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            export(ctx.out, out, opset=e.opset, quantize=e.quantize, static_calibration=calibration, log=log)
            if ctx.r.recipe.finetune is not None:
                task_accuracy(ctx, out, log)
        if e.bench is not None:
            meta = json.loads((out / "slimbert_export.json").read_text())
            entries = [Entry("student", out / "model.onnx")]
            if e.quantize:
                entries.append(Entry("student-int8", out / "model_int8.onnx"))
            for c in e.bench.compare:
                ref = (bert_base_reference(meta["task"], out / "baselines" / f"bert_base-{meta['task']}", out)
                       if c == "bert_base" else teacher_reference(out, out / "baselines" / "teacher"))
                entries.append(Entry(c, ref))
            report = bench(entries, e.bench.batch, e.bench.seq, e.bench.threads)
            write_report(report, out / "bench")
            log((out / "bench" / "report.md").read_text())
    except ExportError as err:
        raise TrainingError(f"export: {err}") from None


def task_accuracy(ctx: Context, out: Path, log) -> dict:
    """The fine-tuned task's dev metrics for PyTorch and for each exported model: what quantisation costs."""
    from ..export.onnx import OrtTaskModel
    from .finetune import make_task

    spec = ctx.r.recipe.finetune
    task = make_task(spec, ctx.r.file.parent, ctx.tokenizer)
    report = {"task": spec.task, "pytorch": json.loads((ctx.out / "finetune" / "metrics.json").read_text())["dev"]}
    for name in ("model.onnx", "model_int8.onnx", "model_int8_static.onnx"):
        if (out / name).is_file():
            report[name] = task.evaluate(OrtTaskModel(out / name))
    key = next(iter(report["pytorch"]))
    for name in [n for n in report if n.endswith(".onnx")]:
        report[name][f"{key}_delta_vs_pytorch"] = report[name][key] - report["pytorch"][key]
        log(f"{spec.task} dev {key}: {name} {report[name][key]:.4f} (PyTorch {report['pytorch'][key]:.4f})")
    (out / "task_metrics.json").write_text(json.dumps(report, indent=2))
    return report


def run_finetune(ctx: Context, progress) -> dict:
    """Fine-tune the student on the recipe's task (with task distillation when asked) and evaluate it."""
    from .finetune import make_task, train

    spec, seed = ctx.r.recipe.finetune, ctx.r.recipe.seed
    done = ctx.out / "finetune" / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())  # finished before a resume
    base = ctx.r.file.parent
    task = make_task(spec, base, ctx.tokenizer)
    started = time.perf_counter()

    def bar(name):
        t = progress.add_task(name, total=None, info="")
        return lambda step, total, loss: progress.update(t, completed=step, total=total, info=f"loss {loss:.4g}")

    teacher, teacher_dev = None, None
    if spec.distill:
        if spec.teacher_model:
            teacher = task.source_model(base / spec.teacher_model)  # already fine-tuned: its head is kept
        else:
            teacher = task.source_model(ctx.r.source_path)
            train(teacher, task, seed, log=bar(f"fine-tune teacher on {spec.task}"))
        teacher_dev = task.evaluate(teacher)
    model = task.student_model(ctx.student, ctx.r.recipe.student.dropout)
    history = train(model, task, seed, teacher, log=bar(f"fine-tune student on {spec.task}"))
    dev = task.evaluate(model)
    save_model(model, ctx.tokenizer, ctx.out / "finetune" / "model")
    result = {"task": spec.task, "dev": dev, "teacher_dev": teacher_dev, "distill": spec.distill,
              "train_examples": task.n_train, "dev_examples": task.n_dev, "label_names": task.label_names, "seconds": round(time.perf_counter() - started, 1),
              "history": history}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, done)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items())
    ctx.console.print(f"[bold]{spec.task}[/] dev: {shown}" + (
        f"  (teacher: {', '.join(f'{k} {v:.4f}' for k, v in teacher_dev.items())})" if teacher_dev else ""),
        highlight=False)
    return result


def run(r: Resolved, out: Path | None = None, resume: bool = False, console=None, teacher: Teacher | None = None) -> Path:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    preflight(r)
    if teacher is None and r.recipe.teacher.plugin is not None:
        from ..plugins import TEACHERS

        teacher = TEACHERS[r.recipe.teacher.plugin](r)  # registered by a plugin the user allowed
    if teacher is not None:
        teacher = as_teacher(teacher)
        r = with_teacher(r, teacher.num_layers, teacher.num_heads, teacher.hidden_size,
                         attention=teacher_has_attention(teacher))
    world = world_from_env()
    if world.active:
        if out is None:
            raise RecipeError(Problem("--out", "a multi-process run needs --out: every process must use the same "
                                               "run directory"))
        for i, st in enumerate(r.recipe.transfer):
            if st.batch_size % (world.size * st.grad_accum):
                raise RecipeError(Problem(f"transfer.{i}.batch_size", f"{st.batch_size} does not split over "
                                          f"{world.size} processes x grad_accum {st.grad_accum}", None, str(r.file)))
        console = console if world.main else Console(stderr=True, quiet=True)
    existed = True
    if world.main:
        out, resuming = prepare_run_dir(r, out, resume)
        if resume and not resuming:
            warn(f"nothing to resume in {out} (the run had not written its recipe): starting from the beginning")
            resume = False
        existed = out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecipeError(Problem("--out", f"cannot create the run directory {out}: {e.strerror or e}")) from None
    world.barrier()
    out = Path(out)
    run_dir = RunDir(out)
    if world.main:
        try:
            run_dir.acquire(warn)
        except RecipeError:
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
            raise
    try:
        if world.main:
            _remove_partial_writes(out, warn)
        if not resume and world.main:
            ckpt.write_atomic(out / "recipe.resolved.yaml",
                              yaml.safe_dump(r.recipe.model_dump(mode="json"), sort_keys=False))
            ckpt.write_atomic(out / "plan.json", json.dumps(build_plan(r), indent=2, default=str))
        ctx = build_context(r, out, console, teacher)
        ctx.world = world
        start_stage, start_step, opt_state = find_resume_point(ctx, warn) if resume else (0, 0, None)
        if world.main and ctx.ib is not None and not (out / "teacher" / "fidelity.json").is_file():
            print_fidelity(console, write_fidelity(ctx, "before", teacher_fidelity(ctx)))
        first_student = next((k for k, st in enumerate(r.recipe.transfer) if st.kind != "teacher_adaptation"),
                             len(r.recipe.transfer))
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=False, disable=not world.main) as progress:
            for k, st in enumerate(r.recipe.transfer):
                if k < start_stage:
                    continue
                if k == first_student and not (k == start_stage and start_step > 0):
                    start_student_stages(ctx, adapted=first_student > 0)
                run_stage(ctx, k, st, start_step if k == start_stage else 0,
                          opt_state if k == start_stage else None, progress)
        if first_student == len(r.recipe.transfer) and start_stage <= first_student:
            start_student_stages(ctx, adapted=first_student > 0)  # a recipe that only builds the teacher
        if not world.main:
            return out  # rank 0 saves the student and fine-tunes it
        path = save_student(ctx)
        if r.recipe.finetune is not None:
            with Progress(*columns, console=console, transient=False) as progress:
                run_finetune(ctx, progress)
        if r.recipe.export.onnx:
            run_export(ctx)
        console.print(f"[green]done[/]: student in {path}", highlight=False)
        return out
    except Exception as e:
        if world.main and not resume and not any(out.glob("stages/*/checkpoint-*")):
            # A fresh run that stopped before its first checkpoint has nothing worth keeping: leave no partial
            # run directory behind (a bad corpus, a full disk), so the same command can simply be run again.
            run_dir.release()
            _discard(out, keep_dir=existed)
        if isinstance(e, OSError):
            raise TrainingError(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
                                + ("the last good checkpoint is kept" if out.exists() else "nothing was kept"))
        raise
    finally:
        if world.main:
            run_dir.release()


def _remove_partial_writes(out: Path, warn) -> None:
    """Temporary files a killed run left mid-write (never renamed into place, so never read); we hold the lock."""
    for p in sorted(out.rglob(".tmp*")):
        warn(f"removing {p}, a write the previous run did not finish")
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _discard(out: Path, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():  # an --out that existed (empty) before the run stays, empty
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
