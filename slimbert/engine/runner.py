"""Run a resolved recipe stage by stage, leaving a run directory anyone can inspect.

Lifecycle, in the order of this file: preflight (refuse what cannot run, before anything is written) -> run
directory and lock (rundir.py) -> context: tokenizer, corpus, teacher, student -> stages, each with its
optimizer, steps, checkpoints, metrics and loss curve (what a stage *is* lives in transfer/strategies.py) ->
resume point -> run(): the whole, then the student in transformers format, fine-tuning and export.

Transfer stages keep the student in eval mode (no dropout, as the official run) and draw batches as a
pure function of (seed, stage, step), so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from ..data.cache import PAD, PackedRows
from ..data.corpus import Batches
from ..models import SlimBertForMaskedLM
from ..plugins import TEACHERS
from ..recipe.errors import Problem, RecipeError
from ..recipe.plan import build_plan
from ..recipe.resolve import Resolved, with_task_teacher, with_teacher
from ..recipe.schema import Stage
from ..teacher.adapters import HFEncoderTeacher, IBTeacherAdapter, Teacher, as_teacher, teacher_has_attention
from ..teacher.adapters import to_device as teacher_to
from ..teacher.build import IBTeacher, build_ib_teacher
from ..transfer.init import copy_embeddings, init_from_teacher
from ..transfer.source_init import attach_pooler, init_from_source, selection
from ..transfer.strategies import STRATEGIES, Shard, TransferInputs, corpus_layout, strategy
from . import checkpoint as ckpt
from . import device as dev
from . import throughput as tp
from .artifacts import (load_teacher, plot_stage, print_fidelity, save_student, save_teacher, teacher_fidelity,
                        write_fidelity)
from .checkpoint import TrainingError
from .corpus import load_corpus, load_texts
from .distributed import World, world_from_env
from .export_step import run_export
from .finetune import prepare_task_teacher, run_finetune, task_teacher_path
from .metrics import MetricLogger
from .rundir import RunDir, discard, preflight, prepare_run_dir, remove_partial_writes
from .sentence import finish_sentence_student
from .tracking import Trackers

__all__ = ["Context", "TrainingError", "build_context", "compute", "run", "run_stage"]

LOG_EVERY = 5


# ---- the pieces a stage works on ---------------------------------------------------------------------------------

@dataclass
class Context:
    r: Resolved
    out: Path
    tokenizer: object
    train: torch.Tensor
    held_out: torch.Tensor                        # data.eval_sequences, never trained on (teacher fidelity, pruning)
    teacher: Teacher
    student: SlimBertForMaskedLM
    projections: nn.ModuleList | None
    console: object
    ib: IBTeacher | None = None                   # the IB teacher being built (teacher.type: inverted_bottleneck)
    source: HFEncoderTeacher | None = None        # its source, the reference while adapting
    world: World = field(default_factory=World)   # this process's rank among torchrun's processes
    trackers: Trackers | None = None              # recipe.logging's experiment trackers (rank 0 only)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where the models compute
    texts: PackedRows | None = None               # the corpus one text per row, when a stage reads `inputs: texts`

    def rows(self, st) -> PackedRows | torch.Tensor:
        """The corpus rows stage `st` draws its batches from."""
        return self.texts if corpus_layout(st) == "texts" else self.train

    def inputs(self) -> TransferInputs:
        """The narrow view a strategy computes its loss terms from."""
        d = self.r.recipe.data
        return TransferInputs(self.student, self.teacher, self.projections, self.r.layer_map, self.tokenizer,
                              d.mlm_probability, d.whole_word_mask,
                              Shard(self.world.rank, self.world.size, self.device),
                              self.ib, self.source)

    def trainable(self, kind: str) -> dict[str, nn.Parameter]:
        if STRATEGIES[kind].trains == "teacher":
            return {f"teacher.{k}": p for k, p in self.ib.named_parameters() if p.requires_grad}
        params = {f"student.{k}": p for k, p in self.student.named_parameters()}
        if self.projections is not None:
            params.update({f"projections.{k}": p for k, p in self.projections.named_parameters()})
        return params

    def tensors(self, kind: str) -> dict[str, torch.Tensor]:
        if STRATEGIES[kind].trains == "teacher":
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


def build_context(r: Resolved, out: Path, console, teacher=None, quick: bool = False,
                  device: torch.device = torch.device("cpu")) -> Context:
    """Tokenizer, corpus (kept on the CPU), teacher and student (on `device`). `teacher` (any object
    slimbert.as_teacher accepts) replaces the recipe's; `quick` (for plan's timings) builds an IB teacher
    without its PCA."""
    from transformers import AutoTokenizer

    torch.manual_seed(r.recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(r.tokenizer_path))
    train, held_out = load_corpus(r, tokenizer)
    ib = source = None
    if teacher is not None:
        teacher = as_teacher(teacher)
    elif r.teacher_config is not None:
        source = HFEncoderTeacher(r.source_path, with_mlm=r.source.has_mlm_head).to(device)
        t = r.recipe.teacher
        ids = train[: 8 if quick else t.init_sequences]
        started = time.perf_counter()
        ib = build_ib_teacher(source.model, ids, config=r.teacher_config, init="random" if quick else t.init,
                              seed=r.recipe.seed)  # on the source's device: its PCA and SVD run there
        if not quick:
            console.print(f"IB teacher built from {r.source.path} ({t.init} init on {len(ids)} sequences) in "
                          f"{time.perf_counter() - started:.1f} s", highlight=False)
        teacher = IBTeacherAdapter(ib)
    else:
        needs_mlm = any(getattr(st, "alpha", 1.0) < 1.0 for st in r.recipe.transfer) and r.source.has_mlm_head
        teacher = HFEncoderTeacher(r.cut_source, with_mlm=needs_mlm)  # the source, or the task teacher cut from
    teacher_to(teacher, device)
    # Initialised on the CPU, then moved: the same initial weights on every device.
    student = SlimBertForMaskedLM(r.student_config).to(device)
    if r.recipe.student.init == "prune_from_source":
        attach_pooler(student, r.student_config)  # the source's pooler, cut with it: saved with the bare encoder
    projections = None
    if teacher.hidden_size != r.student_config.hidden_size:
        # TinyBERT-style: learned maps from the student's feature width to the teacher's, one per layer.
        projections = nn.ModuleList(nn.Linear(r.student_config.hidden_size, teacher.hidden_size)
                                    for _ in range(r.student_config.num_hidden_layers)).to(device)
    texts = load_texts(r, tokenizer) if any(corpus_layout(st) == "texts" for st in r.recipe.transfer) else None
    return Context(r, out, tokenizer, train, held_out, teacher, student, projections, console, ib, source,
                   device=device, texts=texts)


def start_student_stages(ctx: Context, adapted: bool) -> None:
    """Between the teacher's stages and the student's: report and save the teacher, initialise the student."""
    if ctx.ib is not None:
        if ctx.world.main:
            if adapted:
                print_fidelity(ctx.console, write_fidelity(ctx.out, "after", _fidelity(ctx), len(ctx.held_out)))
            save_teacher(ctx.ib, ctx.out)
        ctx.ib.requires_grad_(False)
    if ctx.r.recipe.student.init == "prune_from_teacher":
        # From the teacher as adapted; the report says what was kept and how close the start is.
        report = init_from_teacher(ctx.student.slimbert, ctx.ib.model, ctx.r.layer_map, ctx.train[:16],
                                   ctx.held_out[:16])
        if ctx.world.main:
            ctx.console.print(report.summary(ctx.ib.config, ctx.r.student_config, ctx.r.layer_map), highlight=False,
                              soft_wrap=True)
            (ctx.out / "student_init.json").write_text(json.dumps(report.as_dict(), indent=2))
    if ctx.r.recipe.student.init == "prune_from_source":
        cut_from_source(ctx)
    elif ctx.r.recipe.student.copy_embeddings:
        copy_embeddings(ctx.teacher, ctx.student)


def cut_from_source(ctx: Context) -> None:
    """student.init: prune_from_source: the source cut to the student's shape (its layers chosen by importance
    when layer_map says so); the layer map becomes the kept layers, and the feature projections (when the width
    was cut) start as the channel selection, so every transfer term starts at the cut source's own error."""
    from transformers import AutoModel, AutoModelForMaskedLM

    r = ctx.r
    auto = AutoModelForMaskedLM if r.source.has_mlm_head else AutoModel
    source = auto.from_pretrained(str(r.cut_source), use_safetensors=True).to(ctx.device).eval()
    layers = None if r.recipe.layer_map == "importance" else [j - 1 for j in r.layer_map]
    # The refit's rows: enough packed training rows for student.refit_tokens (all of them when the corpus is short).
    want = -(-r.recipe.student.refit_tokens // r.recipe.data.seq_len)
    refit_ids = ctx.train[:want] if want else None
    if want > len(ctx.train) and ctx.world.main:
        ctx.console.print(f"student.refit_tokens: the corpus has {len(ctx.train) * r.recipe.data.seq_len:,} training "
                          f"tokens, fewer than the {r.recipe.student.refit_tokens:,} asked for; the refit uses them all",
                          highlight=False, soft_wrap=True)
    report = init_from_source(ctx.student, source, layers, ctx.train[:32], ctx.held_out[:16], r.source.pooling,
                              refit_ids)
    del source
    ctx.r = dataclasses.replace(r, layer_map=[j + 1 for j in report.kept.layers])
    if ctx.projections is not None:
        with torch.no_grad():
            for p in ctx.projections:
                p.weight.copy_(selection(report.kept.hidden, p.out_features))
                p.bias.zero_()
    if ctx.world.main:
        ctx.console.print(report.summary(r.source, r.student_config), highlight=False, soft_wrap=True)
        ckpt.write_atomic(ctx.out / "student_init.json", json.dumps(report.as_dict(), indent=2))


def progress_columns() -> tuple:
    """The progress bars' columns: what runs, its bar, steps done of all, its loss, time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn())


def first_task_teacher(r: Resolved, out: Path, console, world: World, where: torch.device) -> Path | str:
    """finetune.cut_from: task_teacher: the task teacher, fine-tuned by rank 0 before anything is cut from it."""
    from rich.progress import Progress
    from transformers import AutoTokenizer

    if world.main:
        with Progress(*progress_columns(), console=console, transient=False) as progress:
            prepare_task_teacher(r, out, AutoTokenizer.from_pretrained(str(r.tokenizer_path)), progress, console,
                                 device=where)
    world.barrier()
    return task_teacher_path(r, out)


def restore_cut(ctx: Context) -> None:
    """On resume past the student's initialisation: the layers it kept (the stages' layer map) from the run."""
    path = ctx.out / "student_init.json"
    if ctx.r.recipe.student.init == "prune_from_source" and path.is_file():
        ctx.r = dataclasses.replace(ctx.r, layer_map=json.loads(path.read_text())["layers"])


def _fidelity(ctx: Context) -> dict:
    return teacher_fidelity(ctx.ib, ctx.source.model, ctx.held_out, ctx.tokenizer, ctx.r.recipe.data,
                            ctx.r.recipe.seed)


# ---- one stage -----------------------------------------------------------------------------------------------------

def compute(ctx: Context, st: Stage, step: int, batches: Batches, micro: int = 0, n_micro: int = 1
            ) -> dict[str, torch.Tensor]:
    """The loss terms of one step (or of micro-batch `micro` of `n_micro`), on this rank's rows of the global
    batch (see transfer/strategies.py)."""
    return strategy(st).terms(st, ctx.inputs(), step, batches, micro, n_micro)


def make_optimizer(st: Stage, params: dict[str, nn.Parameter]) -> torch.optim.Optimizer:
    """One parameter group per parameter, so each gets its own LR multiplier every step."""
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


class StepModule(nn.Module):
    """What a stage trains, as one module, so DistributedDataParallel can average its gradients."""

    def __init__(self, ctx: Context, kind: str):
        super().__init__()
        if STRATEGIES[kind].trains == "teacher":
            self.ib = ctx.ib
        else:
            self.student = ctx.student
            if ctx.projections is not None:
                self.projections = ctx.projections
        self.ctx = ctx

    def forward(self, st: Stage, step: int, batches: Batches, micro: int, n_micro: int) -> dict[str, torch.Tensor]:
        return compute(self.ctx, st, step, batches, micro, n_micro)


def step_flops(ctx: Context, st: Stage, step: int, cache: dict) -> float | None:
    """Counted FLOPs of one step (engine/throughput.py); None for a teacher slimbert does not know the shape of
    (a plugin's or one passed in), whose MFU is then n/a."""
    layer = strategy(st).log_fields(st, step).get("layer")
    if layer not in cache:
        known = ctx.ib is not None or isinstance(ctx.teacher, HFEncoderTeacher)
        cache[layer] = tp.recipe_step_flops(ctx.r, st, layer, teacher_known=known)
    return cache[layer]


def _sig(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")  # 4 significant digits: a tiny model's TFLOP/s are ~1e-3


def run_stage(ctx: Context, k: int, st: Stage, start: int, opt_state: dict | None, progress) -> None:
    """Steps `start`..end of stage k: LR, accumulated micro-batches, NaN guard, clipping, logs, checkpoints."""
    kind = strategy(st)
    name = st.name or f"{k}-{st.kind}"
    stage_dir = ctx.out / "stages" / f"{k}-{st.kind}"
    total = kind.total_steps(st, ctx.r.student_config.num_hidden_layers)
    batches = Batches(ctx.rows(st), st.batch_size, ctx.r.recipe.seed, k)
    params = ctx.trainable(st.kind)
    opt = make_optimizer(st, params)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    ctx.student.eval()  # transfer runs without dropout (official code: is_training=False with a teacher)
    if ctx.ib is not None:
        ctx.ib.eval()  # built without dropout; eval keeps the source's MLM head deterministic too
    tokens = st.batch_size * ctx.r.recipe.data.seq_len
    padded = corpus_layout(st) == "texts"
    world = ctx.world
    task = progress.add_task(name, total=total, completed=start, info="")
    every = st.checkpoint_every or total
    model = world.wrap(StepModule(ctx, st.kind))
    n_micro = st.grad_accum
    # Throughput: counted FLOPs over each logged window's time, against the device's peak (engine/throughput.py).
    precision = dev.precision(st.precision, ctx.device)
    peak = tp.device_peak(ctx.device, precision)
    flops_cache: dict = {}
    window = {"t0": time.perf_counter(), "tokens": 0, "flops": 0.0}
    rate = None
    with MetricLogger(ctx.out / "metrics.jsonl", main=world.main, trackers=ctx.trackers) as metrics:
        for step in range(start, total):
            # 1. LR: the stage's schedule times each parameter's multiplier, set every step because progressive
            #    stages move the trained layer (and restart the schedule) as they go.
            base = st.optimizer.lr * kind.lr_factor(st, step)
            for g in opt.param_groups:
                g["lr"] = base * kind.multiplier(st, g["name"], step)
            opt.zero_grad(set_to_none=True)
            # 2. Micro-batches: each backward adds 1/n_micro of its loss; DDP syncs gradients on the last only.
            local = {}
            for micro in range(n_micro):
                with world.no_sync(model, micro == n_micro - 1), dev.autocast(ctx.device, precision):
                    parts = model(st, step, batches, micro, n_micro)
                (sum(parts.values()) / n_micro).backward()
                for term, value in parts.items():
                    local[term] = local.get(term, 0.0) + value.detach() / n_micro
            terms = world.mean(local)  # the global batch's terms, identical on every rank
            loss = sum(terms.values())
            # 3. NaN guard before the update: a non-finite loss would poison the weights and every later checkpoint.
            for term, value in {**terms, "total": loss}.items():
                if not torch.isfinite(value):
                    raise TrainingError(f"stage {k} ({name}), step {step}: loss term {term!r} is {value.item()}; "
                                        f"stopped. The last good checkpoint is kept in {stage_dir}")
            # 4. Frozen this step (LR 0): drop the gradient, so neither the weight nor Adam's moments change.
            for g in opt.param_groups:
                if g["lr"] == 0.0:
                    for p in g["params"]:
                        p.grad = None
            # 5. Clip the global norm of what is trained this step (official: 1.0).
            if st.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for p in params.values() if p.grad is not None], st.grad_clip)
            opt.step()
            flops = step_flops(ctx, st, step, flops_cache)
            if padded:  # padded texts: count the batch's real tokens (FLOPs scaled alike; attention's T^2 aside)
                real = int((batches.batch(step) != PAD).sum())
                flops = None if flops is None else flops * real / tokens
                window["tokens"] += real
            else:
                window["tokens"] += tokens
            window["flops"] = None if flops is None or window["flops"] is None else window["flops"] + flops
            # 6. Log every LOG_EVERY steps and the last: enough for the loss curve, cheap on disk. Throughput is
            #    the window since the last log, after the device has finished its queued work.
            if step % LOG_EVERY == 0 or step == total - 1:
                dev.synchronize(ctx.device)
                rate = tp.rates(window["flops"] or 0.0, window["tokens"], time.perf_counter() - window["t0"], peak,
                                world.size)
                if window["flops"] is None:
                    rate["tflops"] = rate["mfu"] = None
                window.update(t0=time.perf_counter(), tokens=0, flops=0.0)
                metrics.log({"stage": k, "kind": st.kind, "step": step, "lr": base, "loss": loss.item(),
                             "tokens_per_s": round(rate["tokens_per_s"], 1), "tflops": _sig(rate["tflops"]),
                             "mfu": _sig(rate["mfu"]), "device": str(ctx.device), "precision": precision,
                             "processes": world.size, "peak": peak.source,
                             **{t: v.item() for t, v in terms.items()}, **kind.log_fields(st, step)})
            info = f"loss {loss.item():.4g}"
            if rate is not None:
                info += f"  {rate['tokens_per_s']:,.0f} tok/s  {tp.fmt_mfu(rate['mfu'])}"
            progress.update(task, advance=1, info=info)
            # 7. Checkpoint (weights + optimizer) every checkpoint_every steps and at the end: resume starts here.
            if world.main and ((step + 1) % every == 0 or step + 1 == total):
                ckpt.save(stage_dir, step + 1, ctx.tensors(st.kind), opt.state_dict(),
                          {"stage": k, "kind": st.kind, "total": total})
    world.barrier()  # the stage's last checkpoint is on disk before any rank moves on
    if world.main:
        plot_stage(ctx.out, k, name)


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
        if ctx.ib is not None and strategy(stages[k]).trains != "teacher":
            load_teacher(ctx.ib, ctx.out)  # adapted before this stage; saved when adaptation ended
        ctx.load_tensors(tensors)
        if state["step"] >= state["total"]:
            return k + 1, 0, None
        return k, state["step"], opt
    return 0, 0, None


def run(r: Resolved, out: Path | None = None, resume: bool = False, console=None, teacher: Teacher | None = None,
        device: str | None = None) -> Path:
    """The whole run: device and preflight, teacher checks, run directory and lock, context, resume point, the
    stages, then the student, fine-tuning and export; returns the run directory. `device` (auto, cpu, cuda,
    cuda:N) overrides the recipe's `device`; under torchrun each process takes cuda:LOCAL_RANK."""
    from rich.console import Console
    from rich.progress import Progress

    console = console or Console(stderr=True)
    warn = lambda m: console.print(f"[yellow]warning:[/] {m}", highlight=False, soft_wrap=True)  # noqa: E731
    where = dev.select(device or r.recipe.device, "--device" if device else "device",
                       [st.precision for st in r.recipe.transfer])  # exit 2 before anything is written
    preflight(r, where)
    if teacher is None and r.recipe.teacher.plugin is not None:
        teacher = TEACHERS[r.recipe.teacher.plugin](r)  # registered by a plugin the user allowed
    if teacher is not None:
        teacher = as_teacher(teacher)
        r = with_teacher(r, teacher.num_layers, teacher.num_heads, teacher.hidden_size,
                         attention=teacher_has_attention(teacher))
    world = world_from_env(where)
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
    trackers = None
    try:
        if world.main:
            remove_partial_writes(out, warn)
        if not resume and world.main:
            ckpt.write_atomic(out / "recipe.resolved.yaml",
                              yaml.safe_dump(r.recipe.model_dump(mode="json"), sort_keys=False))
            ckpt.write_atomic(out / "plan.json", json.dumps(build_plan(r), indent=2, default=str))
        if r.recipe.finetune is not None and r.recipe.finetune.cut_from == "task_teacher":
            r = with_task_teacher(r, first_task_teacher(r, out, console, world, where))
        ctx = build_context(r, out, console, teacher, device=where)
        ctx.world = world
        console.print(f"device: {dev.describe(where)}" + (f" x {world.size} processes" if world.active else ""),
                      highlight=False)
        if world.main:
            trackers = ctx.trackers = Trackers(r.recipe.logging, out, r.base, out.name,
                                               r.recipe.model_dump(mode="json"), warn)
        start_stage, start_step, opt_state = find_resume_point(ctx, warn) if resume else (0, 0, None)
        if resume:
            restore_cut(ctx)
        if world.main and ctx.ib is not None and not (out / "teacher" / "fidelity.json").is_file():
            print_fidelity(console, write_fidelity(out, "before", _fidelity(ctx), len(ctx.held_out)))
        first_student = next((k for k, st in enumerate(r.recipe.transfer) if strategy(st).trains != "teacher"),
                             len(r.recipe.transfer))
        columns = progress_columns()
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
        r = ctx.r  # a student cut from its source: the layers it kept are now the layer map
        as_source = (r.source.model_type, r.source.has_mlm_head) if r.recipe.student.init == "prune_from_source" \
            else None
        path = save_student(ctx.student, ctx.tokenizer, out, as_source)
        finish_sentence_student(r, ctx.student, ctx.tokenizer, path, out, lambda m: console.print(m, highlight=False))
        if r.recipe.finetune is not None:
            with Progress(*columns, console=console, transient=False) as progress:
                run_finetune(r, out, ctx.student, ctx.tokenizer, progress, console, device=where)
        if r.recipe.export.onnx:
            run_export(r, out, ctx.train, ctx.tokenizer, lambda m: console.print(m, highlight=False, soft_wrap=True),
                       device=where)
        trackers.finish()  # results, plots, then close
        console.print(f"[green]done[/]: student in {path}", highlight=False)
        return out
    except Exception as e:
        if trackers is not None:
            trackers.close(failed=True)  # before a partial run directory is removed
        if world.main and not resume and not any(out.glob("stages/*/checkpoint-*")):
            # A fresh run that stopped before its first checkpoint has nothing worth keeping: leave no partial
            # run directory behind (a bad corpus, a full disk), so the same command can simply be run again.
            run_dir.release()
            discard(out, keep_dir=existed)
        if isinstance(e, OSError):
            raise TrainingError(f"{e.strerror or e}{f' ({e.filename})' if e.filename else ''}; "
                                + ("the last good checkpoint is kept" if out.exists() else "nothing was kept"))
        raise
    finally:
        if trackers is not None:
            trackers.close(failed=True)  # interrupted (finish and the except above have closed the others)
        if world.main:
            run_dir.release()

