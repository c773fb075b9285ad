"""Labelled task data and its metrics, read through `datasets`.

A split comes from a local file (CSV/TSV with or without a header row, JSON/JSONL, parquet), a local folder of
split files (train.*, dev.*/validation.*, as `datasets` names them) or a hub dataset with a configuration.
Single sentences and sentence pairs, classification (integer or string labels) and regression.

CSV/TSV columns are read as text, so labels and ids keep their spelling ("007" stays "007") and words such as
"null" or "NA" stay words. TSV files are read as GLUE writes them, without quoting: quotes inside the text are
text; CSV files use standard quoting. A UTF-8 byte-order mark (MRPC's header starts with one) is dropped.
"""

from __future__ import annotations

import csv
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch

# suffix -> (`datasets` builder, its options)
FILE_FORMATS: dict[str, tuple[str, dict]] = {
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE}),
    ".csv": ("csv", {"sep": ","}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


class TaskDataError(ValueError):
    """A task file or dataset that cannot be read as the recipe describes it. `key` names the finetune key to
    change when it is not the file itself (e.g. "regression" for real-valued labels read as classes)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class DatasetUnavailable(TaskDataError):
    """A hub dataset that cannot be reached (offline, or no such name)."""


def _real_valued(labels: set[str]) -> list[str]:
    """Labels that are numbers but not whole numbers (STS-B's 3.8): a regression target, never classes."""
    out = []
    for x in labels:
        try:
            v = float(x)
        except ValueError:
            return []  # string labels: classes
        if v != v or v in (float("inf"), float("-inf")) or not v.is_integer():
            out.append(x)
    return sorted(out)


@dataclass
class TaskData:
    texts: list[tuple[str, ...]]      # one or two texts per example
    labels: list[float] | list[int]
    label_names: list[str] | None     # classification: index -> the file's label


def _datasets():
    import datasets

    # slimbert draws its own progress; the builders' bars would interleave with it.
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _format(path: Path) -> tuple[str, dict]:
    if path.suffix.lower() not in FILE_FORMATS:
        raise TaskDataError(f"{path}: a task file must end in {', '.join(FILE_FORMATS)}")
    return FILE_FORMATS[path.suffix.lower()]


def _delimited_options(files: list[Path], columns: list[str] | None, options: dict) -> dict:
    """pandas options for CSV/TSV files: every column read as text, the header from the file or `columns`."""
    import pandas as pd

    datasets = _datasets()
    opts = {**options, "encoding": "utf-8-sig", "na_filter": False}
    first = files[0]
    read = {k: v for k, v in opts.items() if k != "na_filter"}
    try:
        head = pd.read_csv(first, nrows=1, header=None, dtype=str, keep_default_na=False, **read)
        # pandas names the header's columns as the builder will (an empty name is "Unnamed: 2", a repeat "a.1")
        names = [str(c) for c in pd.read_csv(first, nrows=0, **read).columns]
    except pd.errors.EmptyDataError:
        raise TaskDataError(f"{first}: no examples") from None
    if columns is None:
        opts["header"] = 0
    else:
        if len(columns) != head.shape[1]:
            raise TaskDataError(f"{first}: line 1 has {head.shape[1]} fields but {len(columns)} column names are "
                                f"given ({', '.join(map(repr, columns))})")
        if [str(c).strip() for c in head.iloc[0]] == [c.strip() for c in columns]:
            raise TaskDataError(f"{first}: line 1 is a header row ({', '.join(map(repr, columns))}); column names are "
                                f"for files without one: drop them")
        names = list(columns)
        opts.update(header=None, names=names)
    opts["features"] = datasets.Features({n: datasets.Value("string") for n in names})
    return opts


def _first_bad_json_line(path: Path) -> str:
    """Where a JSON Lines file stops parsing (the builder's message counts rows from 0, not lines)."""
    if path.suffix.lower() != ".jsonl":
        return ""
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    return f":{i}: not JSON ({e.msg})"
    return ""


def load_files(files: list[Path], columns: list[str] | None = None):
    """The rows of local task files (one split), as a `datasets.Dataset`."""
    datasets = _datasets()
    formats = {_format(f)[0] for f in files}
    if len(formats) > 1:
        raise TaskDataError(f"files of different formats in one split: {', '.join(map(str, files))}")
    builder, options = _format(files[0])
    if columns is not None and builder != "csv":
        raise TaskDataError(f"{files[0]}: column names are for CSV/TSV files without a header row; "
                            f"{builder} files name their columns")
    if builder == "csv":
        options = _delimited_options(files, columns, options)
    try:
        return datasets.load_dataset(builder, data_files={"train": [str(f) for f in files]}, split="train", **options)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e
        where = _first_bad_json_line(files[0]) if builder == "json" else ""
        detail = (str(cause).splitlines() or [""])[0][:300]
        raise TaskDataError(f"{files[0]}{where or ''}: cannot read it as {builder} ({detail})") from None


def load_split(dataset: str, split: str, config: str | None = None, base: Path | None = None,
               columns: list[str] | None = None):
    """One split of a local folder of split files (relative to `base`) or of a hub dataset."""
    datasets = _datasets()
    folder = (base or Path()) / dataset
    if folder.is_dir():
        from datasets.data_files import DataFilesDict, get_data_patterns

        try:
            found = DataFilesDict.from_patterns(get_data_patterns(str(folder)), base_path=str(folder))
        except datasets.exceptions.DataFilesNotFoundError:
            found = {}
        splits = {str(k): [Path(f) for f in v] for k, v in found.items()}
        if split not in splits:
            raise TaskDataError(f"{folder}: no {split!r} split files (named like {split}.tsv"
                                f"{' or dev.tsv' if split == 'validation' else ''}); found "
                                f"{', '.join(f'{k}: {[f.name for f in v]}' for k, v in splits.items()) or 'none'}")
        return load_files(splits[split], columns)
    if dataset.startswith((".", "/", "~")) or dataset.count("/") > 1 or "\\" in dataset:
        raise TaskDataError(f"folder not found: {folder}")  # a path, not a hub name (owner/name)
    if columns is not None:
        raise TaskDataError(f"{dataset}: column names are for local CSV/TSV files without a header row")
    try:
        return datasets.load_dataset(dataset, config, split=split)
    except ConnectionError as e:
        raise DatasetUnavailable(f"{dataset!r} is not a local folder ({folder}) and the hub cannot be reached ({e}); "
                                 "download it while online, or point at local files") from None
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetsError) as e:
        raise TaskDataError(f"{dataset!r}{f' ({config})' if config else ''}, split {split!r}: "
                            f"{(str(e).splitlines() or [''])[0][:300]}") from None


def _label_text(value) -> str:
    # A numeric column (parquet, JSON, hub ClassLabel) spells 1 as 1, a text column as "1": both name label "1".
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return str(value).strip()


def sample_rows(rows: list, n: int | None, seed: int) -> list:
    """`n` rows drawn without replacement with `seed`, in file order (all rows when n is None or too large).
    GLUE files are grouped by source, so their head is a biased sample."""
    if not n or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def to_task(rows, where: str, text_fields: list[str], label_field: str, regression: bool,
            label_names: list[str] | None = None, max_examples: int | None = None, seed: int = 0) -> TaskData:
    """Examples from `rows` (a `datasets.Dataset`; `where` names it in errors; `max_examples` of them sampled
    with `seed`). Classification labels map to indices by `label_names` (from the training split: its distinct
    labels, sorted numerically when they are numbers)."""
    if len(rows) == 0:
        raise TaskDataError(f"{where}: no examples")
    missing = [k for k in (*text_fields, label_field) if k not in rows.column_names]
    if missing:
        raise TaskDataError(f"{where}: no column {', '.join(map(repr, missing))}; its columns are "
                            f"{', '.join(map(repr, rows.column_names))} (a file without a header row needs its "
                            f"column names given)")
    table = rows.select_columns(list(dict.fromkeys((*text_fields, label_field)))).to_dict()  # column -> list
    labels = table[label_field]
    keep = [i for i, v in enumerate(labels) if v is not None and str(v).strip() != ""]
    keep = sample_rows(keep, max_examples, seed)
    columns = [table[k] for k in text_fields]
    texts = [tuple("" if c[i] is None else str(c[i]).strip() for c in columns) for i in keep]
    raw = [_label_text(labels[i]) for i in keep]
    if regression:
        try:
            return TaskData(texts, [float(x) for x in raw], None)
        except ValueError as e:
            raise TaskDataError(f"{where}: column {label_field!r} is not numeric ({e})") from None
    real = _real_valued(set(raw))
    if real:
        raise TaskDataError(f"{where}: column {label_field!r} holds real numbers ({', '.join(real[:3])}, ...), a "
                            "regression target, not class labels; set finetune.regression: true", key="regression")
    if label_names is None:
        distinct = set(raw)
        try:
            label_names = sorted(distinct, key=float)
        except ValueError:
            label_names = sorted(distinct)
    index = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise TaskDataError(f"{where}: labels {unknown[:5]} do not occur in the training data ({label_names})")
    return TaskData(texts, [index[x] for x in raw], label_names)


def read_task(path: Path, text_fields: list[str], label_field: str, regression: bool,
              label_names: list[str] | None = None, max_examples: int | None = None, *,
              columns: list[str] | None = None, seed: int = 0) -> TaskData:
    """Examples from one local task file (see `to_task`)."""
    return to_task(load_files([path], columns), str(path), text_fields, label_field, regression, label_names,
                   max_examples, seed)


def read_task_split(base: Path, name: str, text_fields: list[str], label_field: str, regression: bool, *,
                    dataset: str | None = None, config: str | None = None, columns: list[str] | None = None,
                    label_names: list[str] | None = None, max_examples: int | None = None,
                    seed: int = 0) -> TaskData:
    """Examples from a file `name` relative to `base` or, with `dataset` (a folder relative to `base`, or a hub
    name), from its split `name`."""
    if dataset is None:
        return read_task(base / name, text_fields, label_field, regression, label_names, max_examples,
                         columns=columns, seed=seed)
    rows = load_split(dataset, name, config, base, columns)
    where = f"{dataset}{f' ({config})' if config else ''}, split {name!r}"
    return to_task(rows, where, text_fields, label_field, regression, label_names, max_examples, seed)


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
