"""The recipe's corpus as packed sequences: tokenised once into the on-disk cache (data/cache.py) and read back
through memory maps, so it never sits in RAM. Reading and writing problems become RecipeErrors naming the key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.cache import PackedRows, dataset_identity, default_cache_dir, files_identity, frame_ids, load_or_build
from ..data.corpus import iter_dataset, iter_texts
from ..data.tasks import read_task_split
from ..recipe.errors import Problem, RecipeError
from ..recipe.resolve import Resolved


def _reading(texts: Iterator[str], failed: list[Exception]) -> Iterator[str]:
    """`texts`, noting a failure to read them, which is a data problem, unlike one in writing the cache."""
    try:
        yield from texts
    except Exception as e:
        failed.append(e)
        raise


def _task_texts(r: Resolved, failed: list[Exception]):
    """(cache identity, texts) of data.corpus.task: every text field of the finetune section's training examples
    (the same sample its max_examples and the recipe's seed draw), one text each, no labels."""
    ft = r.recipe.finetune
    split = ft.split("train")
    if ft.dataset is None:
        corpus = files_identity([r.base / split])
    else:
        local = Path(ft.dataset).expanduser()
        local = local if local.is_absolute() else r.base / local
        corpus = dataset_identity(str(local) if local.exists() else ft.dataset, ft.dataset_config, split, "")
    corpus.update(task_fields=list(ft.text_fields), max_examples=ft.max_examples, seed=r.recipe.seed)

    def texts() -> Iterator[str]:
        def read() -> Iterator[str]:
            data = read_task_split(r.base, split, ft.text_fields, ft.label_field, ft.regression, dataset=ft.dataset,
                                   config=ft.dataset_config, columns=ft.columns, max_examples=ft.max_examples,
                                   seed=r.recipe.seed)
            for row in data.texts:
                yield from row
        return _reading(read(), failed)
    return corpus, texts


def load_corpus(r: Resolved, tokenizer) -> tuple[PackedRows, torch.Tensor]:
    """(train rows, held-out rows): the first data.eval_sequences packed sequences are held out, the rest
    (up to data.max_sequences) are the training rows, memory-mapped."""
    rows = _rows(r, tokenizer, "packed")
    d = r.recipe.data
    if len(rows) <= d.eval_sequences:
        raise RecipeError(Problem("data.corpus", f"the corpus gives {len(rows)} sequences of {d.seq_len} tokens, not "
                                                 f"more than data.eval_sequences ({d.eval_sequences}); add text or "
                                                 "shorten data.seq_len", None, str(r.file)))
    return rows.view(d.eval_sequences), rows[: d.eval_sequences]


def load_texts(r: Resolved, tokenizer) -> PackedRows:
    """The corpus one text per row (the cache's "texts" layout), up to data.max_sequences rows, memory-mapped:
    what stages with `inputs: texts` read. Nothing is held out: the packed held-out rows serve fidelity."""
    rows = _rows(r, tokenizer, "texts")
    if len(rows) == 0:
        raise RecipeError(Problem("data.corpus", "the corpus has no non-empty text to read with inputs: texts",
                                  None, str(r.file)))
    return rows


def _rows(r: Resolved, tokenizer, layout: str) -> PackedRows:
    d, c = r.recipe.data, r.recipe.data.corpus
    need = None if d.max_sequences is None else d.max_sequences + (d.eval_sequences if layout == "packed" else 0)
    try:
        frame_ids(tokenizer)
    except ValueError as e:
        raise RecipeError(Problem("source.tokenizer", str(e))) from None
    cache_dir, failed = None, []
    if d.cache_dir:
        cache_dir = Path(d.cache_dir).expanduser()
        cache_dir = cache_dir if cache_dir.is_absolute() else r.base / cache_dir
    if c.dataset:
        local = Path(c.dataset).expanduser()
        local = local if local.is_absolute() else r.base / local  # relative to the recipe, as files
        name = str(local) if local.exists() else c.dataset
        corpus = dataset_identity(name, c.dataset_config, c.split, c.text_field)

        def texts() -> Iterator[str]:
            return _reading(iter_dataset(name, c.dataset_config, c.split, c.text_field, c.streaming), failed)
    elif c.task:
        corpus, texts = _task_texts(r, failed)
    else:
        corpus = files_identity(r.corpus_files)

        def texts() -> Iterator[str]:
            return _reading(iter_texts(r.corpus_files), failed)
    try:
        rows = load_or_build(texts, corpus, tokenizer, d.seq_len, need, cache_dir, d.num_proc, layout=layout).rows
    except Exception as e:  # noqa: BLE001 - a failure to read is a data problem, an OSError otherwise the cache's
        if failed and c.dataset:
            raise RecipeError(Problem("data.corpus.dataset", f"cannot read dataset {c.dataset!r}: {e}")) from None
        if failed and c.task:
            raise RecipeError(Problem("data.corpus.task", f"cannot read the finetune section's training texts: {e}")
                              ) from None
        if failed:
            raise RecipeError(Problem("data.corpus.files", f"cannot read the corpus: {e}")) from None
        if not isinstance(e, OSError):
            raise
        raise RecipeError(Problem("data.cache_dir", f"cannot write the corpus cache in "
                                                    f"{e.filename or cache_dir or default_cache_dir()}: "
                                                    f"{e.strerror or e}")) from None
    return rows if need is None else rows.view(0, need)
