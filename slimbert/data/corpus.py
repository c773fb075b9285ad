"""Unlabelled corpora: read text, tokenize with the source's tokenizer, pack into fixed-length sequences,
and mask for MLM. Batches are a pure function of (seed, stage, step), so a resumed run sees exactly the
batches an uninterrupted run would have seen."""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import torch

from .cache import PAD


def iter_texts(files: list[Path]) -> Iterator[str]:
    """The non-empty lines of text files, one at a time (WikiText headings skipped)."""
    for f in files:
        with open(f, encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                for line in raw.splitlines():  # as str.splitlines on the whole file: \x0c, \u2028 ... break too
                    line = line.strip()
                    if line and not (line.startswith("=") and line.endswith("=")):  # skip WikiText headings
                        yield line


def read_texts(files: list[Path]) -> list[str]:
    return list(iter_texts(files))


BUILDERS = {".txt": "text", ".raw": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


# Suffixes of data files that `datasets` cannot read as a corpus here: a name ending in one is a file, not a hub id.
OTHER_DATA_FILES = (".tsv", ".gz", ".bz2", ".xz", ".zip", ".tar", ".xml", ".xlsx", ".xls", ".arrow", ".feather",
                    ".md", ".html", ".pdf", ".docx", ".tfrecord")


def dataset_problem(name: str, base: Path) -> str | None:
    """Why data.corpus.dataset cannot be read (as iter_dataset would find out later), or None. A local path is
    relative to the recipe's folder `base`; a hub name is only checked when the run loads it."""
    local = Path(name).expanduser()
    local = local if local.is_absolute() else base / local
    kinds = ", ".join(BUILDERS)
    if local.is_file() and local.suffix not in BUILDERS:
        return (f"{local} is a {local.suffix or 'suffix-less'} file; a corpus data file must end in {kinds} (or "
                "list plain text files under data.corpus.files)")
    if not local.exists() and (name.startswith((".", "/", "~")) or local.suffix in BUILDERS
                               or local.suffix.lower() in OTHER_DATA_FILES):
        return f"no such data file or folder: {local} (data files end in {kinds})"
    return None


def iter_dataset(name: str, config: str | None, split: str, field: str, streaming: bool) -> Iterator[str]:
    """The texts of a `datasets` dataset, one at a time: a local data file (by its suffix), a local folder of data
    files, or a hub name (when online). Streaming reads only what is consumed, for corpora too large to load."""
    try:
        import datasets
    except ImportError:
        raise RuntimeError("data.corpus.dataset needs the `datasets` package: pip install datasets") from None
    path = Path(name)
    if path.is_file():
        if path.suffix not in BUILDERS:
            raise ValueError(f"{name}: a data file must end in {', '.join(BUILDERS)}")
        ds = datasets.load_dataset(BUILDERS[path.suffix], config, data_files={split: str(path)}, split=split,
                                   streaming=streaming)
    else:
        ds = datasets.load_dataset(name, config, split=split, streaming=streaming)
    for row in ds:
        if field not in row:
            raise ValueError(f"no column {field!r} (columns: {', '.join(row)}); set data.corpus.text_field")
        if row[field]:
            yield row[field]


def count_sequences(files: list[Path], tokenizer, seq_len: int, enough: int, max_bytes: int = 64 << 20) -> int | None:
    """How many sequences `pack(read_texts(files), ...)` gives, counted only up to `enough` (tokenising stops
    there), so validate can tell a corpus too small for the held-out set without reading a large one. None
    when more than `max_bytes` would have to be read before deciding (the run then checks it)."""
    body = seq_len - 2
    tokens, read = 0, 0
    for f in files:
        read += f.stat().st_size
        if read > max_bytes:
            return None
        texts = read_texts([f])
        for i in range(0, len(texts), 256):
            # verbose=False: lines longer than the model's positions are fine here, they are cut when packed
            for ids in tokenizer(texts[i:i + 256], add_special_tokens=False, verbose=False)["input_ids"]:
                tokens += len(ids)
            if tokens // body >= enough:
                return enough
    return tokens // body


def pack(texts: list[str], tokenizer, seq_len: int, max_sequences: int | None = None) -> torch.Tensor:
    """Concatenate token streams and cut into [CLS] ... [SEP] sequences of exactly seq_len tokens, in RAM.
    Runs go through cache.load_or_build, which gives the same rows from disk; this stays as its reference."""
    body = seq_len - 2
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        cls = tokenizer.bos_token_id if cls is None else cls
        sep = tokenizer.eos_token_id if sep is None else sep
    rows, buf = [], []
    chunk = 256
    for i in range(0, len(texts), chunk):
        enc = tokenizer(texts[i:i + chunk], add_special_tokens=False)["input_ids"]
        for ids in enc:
            buf.extend(ids)
            while len(buf) >= body:
                rows.append([cls, *buf[:body], sep])
                buf = buf[body:]
                if max_sequences and len(rows) >= max_sequences:
                    return torch.tensor(rows, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long).view(-1, seq_len)


@lru_cache(maxsize=8)
def _start_table(tokenizer) -> torch.Tensor:
    """Per vocabulary id: does this token start a word? WordPiece (BERT) marks continuations with '##';
    byte-level BPE (RoBERTa, GPT-2) and SentencePiece mark word starts with 'Ġ' or '▁' instead, so there a
    token without the mark continues the word before it. Special tokens count as starts (never masked)."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    vocab = [t or "" for t in vocab]
    if any(t.startswith("##") for t in vocab):
        return torch.tensor([not t.startswith("##") for t in vocab])
    starts = torch.tensor([t.startswith(("Ġ", "▁")) for t in vocab])
    starts[torch.tensor(tokenizer.all_special_ids, dtype=torch.long)] = True
    return starts


def word_starts(tokenizer, ids: torch.Tensor) -> torch.Tensor:
    """True where a token starts a word (and at the first position of every sequence)."""
    table = _start_table(tokenizer)
    starts = table[ids.clamp_max(len(table) - 1)]
    starts[..., 0] = True
    return starts


def mask_tokens(ids: torch.Tensor, tokenizer, probability: float, generator: torch.Generator,
                whole_word: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: choose `probability` of the real tokens; 80% [MASK], 10% random, 10% unchanged."""
    special = torch.tensor(tokenizer.all_special_ids)
    can = ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=generator) < probability) & can
    if whole_word:
        starts = word_starts(tokenizer, ids)
        word = torch.cumsum(starts.long(), dim=1)  # word index per token
        chosen_start = chosen & starts
        picked = torch.zeros_like(chosen)
        for b in range(ids.shape[0]):  # a word is masked when its first piece was chosen
            words = word[b][chosen_start[b]]
            picked[b] = torch.isin(word[b], words) & can[b]
        chosen = picked
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    inputs = ids.clone()
    r = torch.rand(ids.shape, generator=generator)
    inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand] = torch.randint(len(tokenizer), ids.shape, generator=generator)[rand]
    return inputs, labels


def unpad(rows: torch.Tensor, pad_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the "texts" layout (padded with cache.PAD) -> (input_ids, attention_mask), cut to the
    longest row: the tokenizer's pad id where the mask is 0, so that models which read positions from it
    (RoBERTa) see ordinary padding."""
    mask = rows != PAD
    width = max(1, int(mask.sum(1).max()))
    mask = mask[:, :width]
    ids = torch.where(mask, rows[:, :width], torch.full_like(rows[:, :width], pad_id or 0))
    return ids, mask.long()


class Batches:
    """Deterministic batches: epoch e of stage s uses permutation(seed, s, e); masking is seeded per step.
    `sequences` is a tensor or the memory-mapped rows of a corpus cache (`cache.PackedRows`): only the rows of
    each batch are read."""

    def __init__(self, sequences, batch_size: int, seed: int, stage: int):
        if len(sequences) == 0:
            raise ValueError("the corpus produced no sequences")
        self.seq, self.bs, self.seed, self.stage = sequences, batch_size, seed, stage
        self._perm_epoch, self._perm = None, None

    def generator(self, step: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + self.stage * 10_007 + step * 31 + salt)

    def batch(self, step: int) -> torch.Tensor:
        n = len(self.seq)
        start = step * self.bs
        idx = []
        while len(idx) < self.bs:
            epoch, offset = divmod(start + len(idx), n)
            if epoch != self._perm_epoch:
                g = torch.Generator().manual_seed(self.seed * 7919 + self.stage * 104_729 + epoch)
                self._perm, self._perm_epoch = torch.randperm(n, generator=g), epoch
            take = min(self.bs - len(idx), n - offset)
            idx.extend(self._perm[offset:offset + take].tolist())
        return self.seq[idx]
