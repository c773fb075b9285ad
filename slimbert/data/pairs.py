"""Sentence pairs from GLUE-format files (MRPC, RTE, QQP, STS-B...), for similarity evaluations without labels."""

from __future__ import annotations

from pathlib import Path

from .tasks import TaskDataError, load_files, sample_rows

# The pair columns of the GLUE tasks, in the order they are tried.
PAIR_COLUMNS = (("#1 String", "#2 String"), ("sentence1", "sentence2"), ("question1", "question2"),
                ("question", "sentence"))
MIN_PAIRS = 2  # a rank correlation of fewer is undefined (and embedding none fails)


def read_pairs(path: Path, max_pairs: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """`max_pairs` pairs of the file, sampled with `seed` (all when None); the columns are found by name."""
    rows = load_files([path])  # the same reader as task files (datasets: TSV, CSV, JSON, parquet)
    if len(rows) == 0:
        raise TaskDataError(f"{path}: no rows")
    cols = next((c for c in PAIR_COLUMNS if all(k in rows.column_names for k in c)), None)
    if cols is None:
        raise TaskDataError(f"{path}: no sentence-pair columns (expected one of "
                            f"{', '.join('/'.join(c) for c in PAIR_COLUMNS)}); its columns are "
                            f"{', '.join(map(repr, rows.column_names))}")
    table = rows.select_columns(list(cols)).to_dict()  # column -> list
    pairs = [(str(a or "").strip(), str(b or "").strip()) for a, b in zip(table[cols[0]], table[cols[1]])]
    pairs = [p for p in pairs if p[0] and p[1]]
    if len(pairs) < MIN_PAIRS:
        raise TaskDataError(f"{path}: {len(pairs)} pair(s) with both {cols[0]!r} and {cols[1]!r} filled in; a "
                            f"Spearman correlation needs at least {MIN_PAIRS}")
    return sample_rows(pairs, max_pairs, seed)
