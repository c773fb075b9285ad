"""Labelled task data in GLUE format (TSV with a header, or JSONL) and its metrics.

Single sentences and sentence pairs, classification (integer or string labels) and regression. GLUE's TSVs
keep quotes inside the text, so they are read without quoting; MRPC's header starts with a byte-order mark.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch


class TaskDataError(ValueError):
    """A task file that cannot be read as the recipe describes it."""


@dataclass
class TaskData:
    texts: list[tuple[str, ...]]      # one or two texts per example
    labels: list[float] | list[int]
    label_names: list[str] | None     # classification: index -> the file's label


def read_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{i}: not JSON ({e.msg})") from None
        return rows
    csv.field_size_limit(2 ** 30)
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def sample_rows(rows: list, n: int | None, seed: int) -> list:
    """`n` rows drawn without replacement with `seed`, in file order (all rows when n is None or too large).
    GLUE files are grouped by source, so their head is a biased sample."""
    if not n or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def read_task(path: Path, text_fields: list[str], label_field: str, regression: bool,
              label_names: list[str] | None = None, max_examples: int | None = None, seed: int = 0) -> TaskData:
    """Examples from `path` (`max_examples` of them sampled with `seed`). Classification labels map to indices
    by `label_names` (from the training file: its distinct labels, sorted numerically when they are numbers)."""
    rows = read_rows(path)
    if not rows:
        raise TaskDataError(f"{path}: no examples")
    missing = [k for k in (*text_fields, label_field) if k not in rows[0]]
    if missing:
        raise TaskDataError(f"{path}: no column {', '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(map(repr, rows[0]))}")
    rows = [r for r in rows if r.get(label_field) not in (None, "")]
    rows = sample_rows(rows, max_examples, seed)
    texts = [tuple(str(r[k] or "").strip() for k in text_fields) for r in rows]
    raw = [str(r[label_field]).strip() for r in rows]
    if regression:
        try:
            return TaskData(texts, [float(x) for x in raw], None)
        except ValueError as e:
            raise TaskDataError(f"{path}: column {label_field!r} is not numeric ({e})") from None
    if label_names is None:
        distinct = set(raw)
        try:
            label_names = sorted(distinct, key=float)
        except ValueError:
            label_names = sorted(distinct)
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise TaskDataError(f"{path}: labels {unknown[:5]} do not occur in the training file ({label_names})")
    return TaskData(texts, [index[x] for x in raw], label_names)


def encode(data: TaskData, tokenizer, seq_len: int) -> dict[str, torch.Tensor]:
    """Tokenised, truncated and padded to the longest example (at most seq_len)."""
    columns = list(zip(*data.texts))
    enc = tokenizer(*columns, truncation=True, max_length=seq_len, padding=True, return_tensors="pt")
    out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out["labels"] = torch.tensor(data.labels)
    return out


def metrics(predictions, labels, regression: bool, num_labels: int) -> dict[str, float]:
    """accuracy (+ F1 and Matthews correlation for two classes, macro-F1 beyond); Pearson and Spearman for
    regression. From scikit-learn and scipy."""
    import numpy as np

    p, y = np.asarray(predictions), np.asarray(labels)
    if regression:
        from scipy.stats import pearsonr, spearmanr

        return {"pearson": float(pearsonr(p, y)[0]), "spearman": float(spearmanr(p, y)[0])}
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(y, p)), "matthews": float(matthews_corrcoef(y, p))}
    if num_labels == 2:
        out["f1"] = float(f1_score(y, p, pos_label=1, zero_division=0))
    else:
        out["f1_macro"] = float(f1_score(y, p, average="macro", zero_division=0))
    return out
