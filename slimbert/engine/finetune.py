"""Task fine-tuning and evaluation, with optional task distillation from a fine-tuned teacher.

Lifecycle: read the task files -> a task model from the student (encoder weights carried over, fresh head)
-> (teacher: a given fine-tuned model, or the source fine-tuned here first) -> train with AdamW, linear
warm-up and decay -> evaluate on dev with the task's metrics. Two task kinds: GLUE-format classification /
regression, and SQuAD-format extractive QA.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from ..data.augment import WordSubstitution, augment_task_data
from ..data.qa import best_answers, features, read_squad, squad_metrics
from ..data.tasks import TaskData, encode, metrics, read_task_split, sample_rows
from ..models import SlimBertForMaskedLM, SlimBertForQuestionAnswering, SlimBertForSequenceClassification
from ..models.encoders import classifier_head
from ..recipe.resolve import Resolved
from ..transfer import losses as L
from ..transfer.source_init import cut_classifier, selection
from . import checkpoint as ckpt
from .artifacts import save_model
from .cards import write_card
from .checkpoint import TrainingError

LABELS = ("labels", "start_positions", "end_positions")


def _device(model) -> torch.device:
    """Where a model computes: its parameters' device (the CPU for a model without any, e.g. ONNX Runtime's)."""
    parameters = getattr(model, "parameters", None)
    first = next(parameters(), None) if callable(parameters) else None
    return first.device if first is not None else torch.device("cpu")


def _inputs(enc: dict, idx: torch.Tensor, device: torch.device | None = None) -> dict:
    """The model inputs of examples `idx` (tokenised once, on the CPU), moved to `device`."""
    batch = {k: v[idx] for k, v in enc.items() if k not in LABELS}
    width = int(batch["attention_mask"].sum(1).max())  # drop columns that are padding for the whole batch
    return {k: v[:, :width].to(device, non_blocking=True) if device is not None else v[:, :width]
            for k, v in batch.items()}


def _from_student(cls, student, dropout: float, **config_changes):
    """The student's encoder under a fresh task head (and pooler)."""
    config = student.config.__class__.from_dict(student.config.to_dict())
    for k, v in config_changes.items():
        setattr(config, k, v)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    model = cls(config)
    missing, _ = model.load_state_dict(student.state_dict(), strict=False)
    carried = [k for k in missing if k.startswith(("slimbert.encoder", "slimbert.embeddings"))]
    if carried:
        raise RuntimeError(f"the student's encoder did not carry over into {cls.__name__}: {carried[:3]}")
    return model


class ClassificationTask:
    """A GLUE-format task (classification or regression), read and tokenised once."""

    def __init__(self, spec, base: Path, tokenizer, seed: int = 0):
        self.spec = spec
        where = dict(dataset=spec.dataset, config=spec.dataset_config, columns=spec.columns)
        self.train_data: TaskData = read_task_split(base, spec.split("train"), spec.text_fields, spec.label_field,
                                                    spec.regression, max_examples=spec.max_examples, seed=seed,
                                                    **where)
        self.dev_data: TaskData = read_task_split(base, spec.split("dev"), spec.text_fields, spec.label_field,
                                                  spec.regression, label_names=self.train_data.label_names, **where)
        self.num_labels = 1 if spec.regression else len(self.train_data.label_names)
        self.label_names = self.train_data.label_names
        self.train = encode(self.train_data, tokenizer, spec.seq_len)
        self.dev = encode(self.dev_data, tokenizer, spec.seq_len)
        self.n_train, self.n_dev = len(self.train["labels"]), len(self.dev["labels"])
        self.n_original = self.n_train   # rows past it are augmented copies, labelled by the teacher

    def add_copies(self, copies: TaskData, tokenizer) -> None:
        """Append augmented copies to the training set (re-encoded with it: one padding width)."""
        data = TaskData(texts=self.train_data.texts + copies.texts, labels=self.train_data.labels + copies.labels,
                        label_names=self.train_data.label_names)
        self.train = encode(data, tokenizer, self.spec.seq_len)
        self.n_train = len(self.train["labels"])

    def label_copies(self, teacher: "TeacherOutputs") -> None:
        """The teacher's predictions become the copies' hard labels: a swapped word may change the answer, which
        only the teacher can say (its soft targets are read by the distillation term as for every row)."""
        logits = teacher.outputs["logits"][self.n_original:self.n_train]
        y = logits.squeeze(-1) if self.spec.regression else logits.argmax(-1)
        self.train["labels"][self.n_original:] = y.to(self.train["labels"].dtype)

    def student_model(self, student, dropout: float):
        return _from_student(SlimBertForSequenceClassification, student, dropout, num_labels=self.num_labels,
                             classifier_pooling=self.spec.pooling)

    def source_model(self, path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=self.num_labels,
                                                                  use_safetensors=True)

    def hard_loss(self, out, idx):
        y = self.train["labels"][idx].to(out.logits.device)
        if self.spec.regression:
            return F.mse_loss(out.logits.squeeze(-1), y.float())
        return F.cross_entropy(out.logits, y)

    def soft_loss(self, out, teacher_out):
        r = self.spec.regression
        student, teacher = (out.logits.squeeze(-1), teacher_out.logits.squeeze(-1)) if r else \
            (out.logits, teacher_out.logits)
        return L.task_distill_loss(student, teacher, self.spec.temperature, r)

    @torch.no_grad()
    def evaluate(self, model, batch_size: int = 64) -> dict[str, float]:
        model.eval()
        preds = []
        for i in range(0, self.n_dev, batch_size):
            logits = model(**_inputs(self.dev, torch.arange(i, min(self.n_dev, i + batch_size)), _device(model))).logits
            preds.append((logits.squeeze(-1) if self.spec.regression else logits.argmax(-1)).float().cpu())
        return metrics(torch.cat(preds).tolist(), self.dev["labels"].tolist(), self.spec.regression, self.num_labels)


class QATask:
    """A SQuAD-format extractive QA task: windowed features for training, span decoding and EM/F1 on dev."""

    num_labels = 2
    label_names = None

    def __init__(self, spec, base: Path, tokenizer, seed: int = 0):
        self.spec = spec
        self.train_examples = sample_rows(read_squad(base / spec.train), spec.max_examples, seed)
        self.dev_examples = read_squad(base / spec.dev)
        self.train_features = features(self.train_examples, tokenizer, spec.seq_len, spec.doc_stride)
        self.dev_features = features(self.dev_examples, tokenizer, spec.seq_len, spec.doc_stride)
        self.train, self.dev = self.train_features["tensors"], self.dev_features["tensors"]
        self.n_train, self.n_dev = len(self.train["input_ids"]), len(self.dev_examples)
        self.n_original = self.n_train   # (no augmented copies for QA)

    def student_model(self, student, dropout: float):
        return _from_student(SlimBertForQuestionAnswering, student, dropout)

    def source_model(self, path):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering.from_pretrained(str(path), use_safetensors=True)

    def hard_loss(self, out, idx):
        s, e = (self.train[k][idx].to(out.start_logits.device) for k in ("start_positions", "end_positions"))
        return (F.cross_entropy(out.start_logits, s) + F.cross_entropy(out.end_logits, e)) / 2

    def soft_loss(self, out, teacher_out):
        T = self.spec.temperature
        return (L.task_distill_loss(out.start_logits, teacher_out.start_logits, T)
                + L.task_distill_loss(out.end_logits, teacher_out.end_logits, T)) / 2

    @torch.no_grad()
    def evaluate(self, model, batch_size: int = 64) -> dict[str, float]:
        model.eval()
        n = len(self.dev["input_ids"])
        starts, ends = [], []
        for i in range(0, n, batch_size):
            out = model(**_inputs(self.dev, torch.arange(i, min(n, i + batch_size)), _device(model)))
            pad = self.dev["input_ids"].shape[1] - out.start_logits.shape[1]  # _inputs trimmed padding columns
            starts.append(F.pad(out.start_logits.float().cpu(), (0, pad), value=-1e4))
            ends.append(F.pad(out.end_logits.float().cpu(), (0, pad), value=-1e4))
        answers = best_answers(self.dev_examples, self.dev_features, torch.cat(starts), torch.cat(ends),
                               self.spec.max_answer_length)
        return squad_metrics(self.dev_examples, answers)


def augment(task, teacher, tokenizer, seed: int = 0) -> int:
    """TinyBERT's data augmentation when finetune.augment asks: spec.augment copies of every training example,
    words swapped for their neighbours in the teacher's input-embedding table, appended to the task's training
    set; train() has the teacher label them. Call it after the teacher's own fine-tune (on the originals only).
    Returns the number of copies added."""
    s = task.spec
    if not s.augment:   # (the schema refuses augment with format: squad)
        return 0
    substitute = WordSubstitution(tokenizer, teacher.get_input_embeddings().weight, s.augment_candidates)
    copies = augment_task_data(task.train_data, substitute, s.augment, s.augment_prob, seed)
    task.add_copies(copies, tokenizer)
    return len(copies.labels)


def make_task(spec, base: Path, tokenizer, seed: int = 0):
    """The task, its training set sampled with `seed` when finetune.max_examples caps it."""
    return (QATask if spec.format == "squad" else ClassificationTask)(spec, base, tokenizer, seed)


class TeacherOutputs:
    """A fine-tuned teacher's outputs on every training example, computed once: the teacher is frozen and runs
    in eval mode, so its logits for an example never change, and every epoch (or every student distilled from
    the same teacher) reads them instead of running the teacher again."""

    FIELDS = ("logits", "start_logits", "end_logits")

    @torch.no_grad()
    def __init__(self, teacher, task, batch_size: int = 64):
        teacher.eval()
        width = task.train["input_ids"].shape[1]
        parts: dict[str, list[torch.Tensor]] = {}
        for i in range(0, task.n_train, batch_size):
            out = teacher(**_inputs(task.train, torch.arange(i, min(task.n_train, i + batch_size)), _device(teacher)))
            for f in self.FIELDS:
                if getattr(out, f, None) is not None:
                    x = getattr(out, f).float().cpu()  # kept on the CPU: one row per training example
                    if f != "logits":  # span logits: pad the trimmed columns back to the full width
                        x = F.pad(x, (0, width - x.shape[1]), value=-1e4)
                    parts.setdefault(f, []).append(x)
        self.outputs = {f: torch.cat(v) for f, v in parts.items()}

    @classmethod
    def from_outputs(cls, outputs: dict[str, torch.Tensor]) -> "TeacherOutputs":
        """Outputs computed earlier (e.g. saved with safetensors), shared by several students."""
        self = cls.__new__(cls)
        self.outputs = outputs
        return self

    def __call__(self, idx: torch.Tensor, width: int, device: torch.device | None = None):
        out = {f: (v[idx] if f == "logits" else v[idx, :width]).to(device) for f, v in self.outputs.items()}
        return SimpleNamespace(**out)


class HiddenDistill(torch.nn.Module):
    """Intermediate-layer task distillation (TinyBERT's task stage): the normalised feature-map MSE between the
    student's hidden states and the fine-tuned teacher's, pair by pair: the embedding outputs, then each student
    layer with the teacher layer `layer_map` gives it (1-based). A projection, trained with the student and
    dropped after, maps the student's width to the teacher's when they differ."""

    def __init__(self, student_width: int, teacher_width: int, layer_map: list[int]):
        super().__init__()
        self.pairs = [(0, 0)] + [(i + 1, t) for i, t in enumerate(layer_map)]
        self.proj = (torch.nn.Linear(student_width, teacher_width, bias=False) if student_width != teacher_width
                     else torch.nn.Identity())

    def forward(self, student_hidden, teacher_hidden, mask: torch.Tensor) -> torch.Tensor:
        if len(student_hidden) != len(self.pairs) or len(teacher_hidden) <= max(t for _, t in self.pairs):
            raise ValueError(f"distill_hidden: layer_map pairs {len(self.pairs) - 1} student layers with teacher "
                             f"layers up to {max(t for _, t in self.pairs)}, but the student has "
                             f"{len(student_hidden) - 1} and the task teacher {len(teacher_hidden) - 1}")
        losses = [L.feature_map_loss(teacher_hidden[t], self.proj(student_hidden[i]), mask) for i, t in self.pairs]
        return torch.stack(losses).mean()


def train(model, task, seed: int, teacher=None, log=None, layer_map: list[int] | None = None,
          projection: torch.Tensor | None = None) -> list[dict]:
    """Fine-tune `model` on the task's training set, on the device the model is on; with `teacher` (a model,
    or its precomputed TeacherOutputs), mix in task distillation:
    distill_alpha * hard-label loss + (1 - distill_alpha) * soft cross-entropy at the temperature,
    plus distill_hidden * the hidden-state loss (HiddenDistill over `layer_map`; default one teacher layer per
    student layer, spread evenly), which needs the teacher model itself: it then runs on every batch.
    `projection` (teacher width x student width): where the hidden-state projection starts (a student cut from
    the teacher: the channel selection, so the term starts at the cut's own error), instead of at random.
    The example order is drawn on the CPU from `seed`, so it is the same on every device."""
    s = task.spec
    device = _device(model)
    hidden = None
    if teacher is not None and s.distill_hidden > 0:   # (the teacher's own fine-tune has none)
        if isinstance(teacher, TeacherOutputs):
            raise ValueError("distill_hidden needs the fine-tuned teacher model, not its precomputed logits")
        teacher.eval()
        t_layers, s_layers = teacher.config.num_hidden_layers, model.config.num_hidden_layers
        layer_map = layer_map or [round((i + 1) * t_layers / s_layers) for i in range(s_layers)]
        hidden = HiddenDistill(model.config.hidden_size, teacher.config.hidden_size, layer_map).to(device)
        if projection is not None and isinstance(hidden.proj, torch.nn.Linear):
            with torch.no_grad():
                hidden.proj.weight.copy_(projection)
    elif teacher is not None and not isinstance(teacher, TeacherOutputs):
        teacher = TeacherOutputs(teacher, task)
    if task.n_train > task.n_original:   # augmented copies: the teacher labels them
        if teacher is None:
            raise ValueError("finetune.augment: the augmented copies need the task teacher to label them")
        task.label_copies(teacher if isinstance(teacher, TeacherOutputs) else TeacherOutputs(teacher, task))
    n = task.n_train
    total = max(1, math.ceil(s.epochs * math.ceil(n / s.batch_size)))
    warmup = int(s.warmup_ratio * total)
    decay, no_decay = [], []
    for _, p in list(model.named_parameters()) + (list(hidden.named_parameters()) if hidden is not None else []):
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / (warmup + 1) if i < warmup else max(0.0, (total - i) / max(1, total - warmup)))
    g = torch.Generator().manual_seed(seed)
    history, step, t0 = [], 0, time.perf_counter()
    model.train()
    while step < total:
        order = torch.randperm(n, generator=g)
        for i in range(0, n, s.batch_size):
            if step >= total:
                break
            idx = order[i:i + s.batch_size]
            x = _inputs(task.train, idx, device)
            out = model(**x, output_hidden_states=True) if hidden is not None else model(**x)
            loss = task.hard_loss(out, idx)
            if hidden is not None:
                with torch.no_grad():
                    t_out = teacher(**x, output_hidden_states=True)
                loss = (s.distill_alpha * loss + (1 - s.distill_alpha) * task.soft_loss(out, t_out)
                        + s.distill_hidden * hidden(out.hidden_states, t_out.hidden_states, x["attention_mask"]))
            elif teacher is not None:
                t_out = teacher(idx, x["input_ids"].shape[1], device)
                loss = s.distill_alpha * loss + (1 - s.distill_alpha) * task.soft_loss(out, t_out)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning {s.task}, step {step}: loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            sched.step()
            step += 1
            if step % 20 == 0 or step == total:
                history.append({"step": step, "loss": round(loss.item(), 5),
                                "examples_per_s": round(step * s.batch_size / (time.perf_counter() - t0), 1)})
            if log is not None:
                log(step, total, loss.item())
    model.eval()
    return history


def cut_channels(r: Resolved, out: Path) -> list[int] | None:
    """The source's hidden channels a student cut from it kept (student_init.json), or None."""
    path = out / "student_init.json"
    if r.recipe.student.init != "prune_from_source" or not path.is_file():
        return None
    return json.loads(path.read_text())["kept"]["hidden"]


def source_classifier(path, num_labels: int) -> bool:
    """Whether the source is a sequence classifier (a model already fine-tuned on the task) with the task's
    number of labels; one with another number was fine-tuned on something else, which cannot teach this task."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    if not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return False
    if config.num_labels != num_labels:
        raise TrainingError(f"source.model {path} is a sequence classifier with {config.num_labels} labels; "
                            f"finetune.task has {num_labels}: use a source fine-tuned on this task, or its encoder")
    return True


def carry_head(model, classifier, kept: list[int]) -> None:
    """The task student's pooler and classifier start as `classifier`'s (a stock *ForSequenceClassification of
    the source's shape), restricted to the hidden channels the cut kept."""
    head = classifier_head(classifier)
    if head is None:
        return  # a head slimbert does not map: the student's stays fresh
    device = _device(model)
    model.load_state_dict({k: v.to(device) for k, v in cut_classifier(head, kept).items()}, strict=False)


def progress_bar(progress, name: str):
    """A new bar on `progress` and the train() log that moves it: steps done of all, the last loss."""
    t = progress.add_task(name, total=None, info="")
    return lambda step, total, loss: progress.update(t, completed=step, total=total, info=f"loss {loss:.4g}")


def prepare_task_teacher(r: Resolved, out: Path, tokenizer, progress, console,
                         device: torch.device = torch.device("cpu")) -> Path | str:
    """finetune.cut_from: task_teacher, before the student is cut: the source when it is already a classifier of
    the task, else the source fine-tuned on the task here, saved in <out>/task_teacher (stock transformers, read
    back by a resumed run). Returns the model's path; rank 0 only (the others read the path, task_teacher_path)."""
    spec = r.recipe.finetune
    final = task_teacher_path(r, out)
    task = make_task(spec, r.base, tokenizer, r.recipe.seed)
    if final == r.source_path and source_classifier(r.source_path, task.num_labels):  # (checks its labels)
        console.print(f"task teacher: the source ({r.source.path}), a classifier already fine-tuned on {spec.task}; "
                      "the student is cut from it", highlight=False)
        return final
    if (final / "metrics.json").is_file():
        return final  # fine-tuned before a resume
    teacher = task.source_model(r.source_path).to(device)
    started = time.perf_counter()
    train(teacher, task, r.recipe.seed, log=progress_bar(progress, f"fine-tune teacher on {spec.task}"))
    dev = task.evaluate(teacher)
    with ckpt.atomic_dir(final) as tmp:
        teacher.to("cpu").save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "metrics.json").write_text(json.dumps({"task": spec.task, "dev": dev, "train_examples": task.n_train,
                                                      "seconds": round(time.perf_counter() - started, 1)}, indent=2))
    console.print(f"task teacher: the source fine-tuned on {spec.task} ({', '.join(f'{k} {v:.4f}' for k, v in dev.items())}"
                  f" on dev), saved in {final}; the student is cut from it", highlight=False)
    return final


def task_teacher_path(r: Resolved, out: Path) -> Path | str:
    """Where finetune.cut_from: task_teacher's teacher is: the source itself when it is a classifier of the task
    (format glue), else <out>/task_teacher."""
    from transformers import AutoConfig

    architectures = AutoConfig.from_pretrained(str(r.source_path)).architectures or []
    if r.recipe.finetune.format == "glue" and any(a.endswith("ForSequenceClassification") for a in architectures):
        return r.source_path
    return out / "task_teacher"


def run_finetune(r: Resolved, out: Path, student: SlimBertForMaskedLM, tokenizer, progress, console,
                 device: torch.device = torch.device("cpu")) -> dict:
    """The recipe's finetune section: fine-tune the student on the task (with task distillation when asked) on
    `device`, evaluate it, save it to <out>/finetune; a run resumed after this step reads the saved result."""
    spec, seed = r.recipe.finetune, r.recipe.seed
    done = out / "finetune" / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())  # finished before a resume
    base = r.base
    task = make_task(spec, base, tokenizer, seed)
    started = time.perf_counter()

    kept = cut_channels(r, out)
    classifier = spec.format == "glue" and (r.task_teacher is not None
                                            or source_classifier(r.source_path, task.num_labels))
    teacher, teacher_dev, projection = None, None, None
    if spec.distill:
        if spec.teacher_model:
            teacher = task.source_model(base / spec.teacher_model).to(device)  # already fine-tuned: head kept
        elif r.task_teacher is not None:   # finetune.cut_from: task_teacher: the model the student was cut from
            teacher = task.source_model(r.task_teacher).to(device)
        elif classifier:
            # The source is a model fine-tuned on the task: it is the task teacher as it is (named once).
            teacher = task.source_model(r.source_path).to(device)
            console.print(f"task teacher: the source ({r.source.path}), a classifier already fine-tuned on "
                          f"{spec.task}", highlight=False)
        else:
            teacher = task.source_model(r.source_path).to(device)
            train(teacher, task, seed, log=progress_bar(progress, f"fine-tune teacher on {spec.task}"))
        teacher_dev = task.evaluate(teacher)
        augment(task, teacher, tokenizer, seed)
        if kept is not None and not spec.teacher_model:   # a teacher of the source's width the student was cut from
            projection = selection(kept, teacher.config.hidden_size)
    model = task.student_model(student, r.recipe.student.dropout).to(device)
    if kept is not None and classifier:
        carry_head(model, teacher if teacher is not None and not spec.teacher_model
                   else task.source_model(r.source_path), kept)
    history = train(model, task, seed, teacher, log=progress_bar(progress, f"fine-tune student on {spec.task}"),
                    layer_map=r.layer_map, projection=projection)
    dev = task.evaluate(model)
    # A student cut from its source saves as a stock model of the source's type when its head is one: BERT's
    # (BertForSequenceClassification). RoBERTa's head has other modules (dense + out_proj, no pooler), so a
    # RoBERTa student, like a mean-pooling one, falls back to the portable save (save_as_encoder says no).
    as_source = (r.source.model_type, False) if r.recipe.student.init == "prune_from_source" else None
    save_model(model, tokenizer, out / "finetune" / "model", as_source)
    result = {"task": spec.task, "dev": dev, "teacher_dev": teacher_dev, "distill": spec.distill,
              "train_examples": task.n_original,
              "augmented_examples": task.n_train - task.n_original,
              "dev_examples": task.n_dev, "label_names": task.label_names,
              "seconds": round(time.perf_counter() - started, 1), "history": history}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, done)
    write_card(out, out / "finetune" / "model", "finetuned")   # after metrics.json, which it reports
    shown = ", ".join(f"{k} {v:.4f}" for k, v in dev.items())
    console.print(f"[bold]{spec.task}[/] dev: {shown}" + (
        f"  (teacher: {', '.join(f'{k} {v:.4f}' for k, v in teacher_dev.items())})" if teacher_dev else ""),
        highlight=False)
    return result
