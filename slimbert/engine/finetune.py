"""Task fine-tuning and evaluation, with optional task distillation from a fine-tuned teacher.

Lifecycle: read the task files -> classifier from the student (encoder weights carried over, new pooler and
classifier) -> (teacher: a given fine-tuned classifier, or the source fine-tuned here first) -> train with
AdamW, linear warm-up and decay -> evaluate on dev with the task's metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.tasks import TaskData, encode, metrics, read_task
from ..models import SlimBertForSequenceClassification
from ..transfer import losses as L


class Task:
    """A finetune spec's files, read and tokenised once."""

    def __init__(self, spec, base: Path, tokenizer):
        self.spec = spec
        self.train_data: TaskData = read_task(base / spec.train, spec.text_fields, spec.label_field, spec.regression,
                                              max_examples=spec.max_examples)
        self.dev_data: TaskData = read_task(base / spec.dev, spec.text_fields, spec.label_field, spec.regression,
                                            label_names=self.train_data.label_names)
        self.num_labels = 1 if spec.regression else len(self.train_data.label_names)
        self.train = encode(self.train_data, tokenizer, spec.seq_len)
        self.dev = encode(self.dev_data, tokenizer, spec.seq_len)


def classifier_from_student(student, num_labels: int, dropout: float) -> SlimBertForSequenceClassification:
    """The student's encoder under a fresh pooler and classifier."""
    config = student.config.__class__.from_dict(student.config.to_dict())
    config.num_labels = num_labels
    config.hidden_dropout_prob = dropout
    config.attention_probs_dropout_prob = dropout
    model = SlimBertForSequenceClassification(config)
    missing, unexpected = model.load_state_dict(student.state_dict(), strict=False)
    assert not [k for k in missing if k.startswith("slimbert.encoder") or k.startswith("slimbert.embeddings")]
    return model


def hf_classifier(path, num_labels: int):
    """A transformers model (e.g. the source) with a fresh sequence-classification head."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=num_labels)


def _inputs(enc: dict, idx: torch.Tensor) -> dict:
    batch = {k: v[idx] for k, v in enc.items() if k != "labels"}
    width = int(batch["attention_mask"].sum(1).max())  # drop columns that are padding for the whole batch
    return {k: v[:, :width] for k, v in batch.items()}


def train_classifier(model, task: Task, seed: int, teacher=None, log=None) -> list[dict]:
    """Fine-tune `model` on the task's training set; with `teacher`, mix in task distillation:
    distill_alpha * hard-label loss + (1 - distill_alpha) * soft cross-entropy at the temperature."""
    s = task.spec
    n = len(task.train["labels"])
    steps_per_epoch = math.ceil(n / s.batch_size)
    total = max(1, math.ceil(s.epochs * steps_per_epoch))
    warmup = int(s.warmup_ratio * total)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: (i + 1) / (warmup + 1) if i < warmup else max(0.0, (total - i) / max(1, total - warmup)))
    g = torch.Generator().manual_seed(seed)
    history, step, t0 = [], 0, time.perf_counter()
    model.train()
    if teacher is not None:
        teacher.eval()
    while step < total:
        order = torch.randperm(n, generator=g)
        for i in range(0, n, s.batch_size):
            if step >= total:
                break
            idx = order[i:i + s.batch_size]
            x, y = _inputs(task.train, idx), task.train["labels"][idx]
            logits = model(**x).logits
            hard = (F.mse_loss(logits.squeeze(-1), y.float()) if s.regression else F.cross_entropy(logits, y))
            loss = hard
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(**x).logits
                soft = L.task_distill_loss(logits.squeeze(-1) if s.regression else logits,
                                           t_logits.squeeze(-1) if s.regression else t_logits,
                                           s.temperature, s.regression)
                loss = s.distill_alpha * hard + (1 - s.distill_alpha) * soft
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning {s.task}, step {step}: loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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


@torch.no_grad()
def evaluate(model, task: Task, batch_size: int = 64) -> dict[str, float]:
    model.eval()
    preds = []
    n = len(task.dev["labels"])
    for i in range(0, n, batch_size):
        logits = model(**_inputs(task.dev, torch.arange(i, min(n, i + batch_size)))).logits
        preds.append(logits.squeeze(-1) if task.spec.regression else logits.argmax(-1))
    return metrics(torch.cat(preds).tolist(), task.dev["labels"].tolist(), task.spec.regression, task.num_labels)
