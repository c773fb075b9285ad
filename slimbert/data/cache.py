"""An on-disk cache of packed token ids: a corpus is tokenised once, packed into [CLS] ... [SEP] rows of seq_len
tokens exactly as `corpus.pack` packs them (or, in the "texts" layout, one padded row per text), and written
as raw int32 shards beside a JSON manifest. Runs and
stages read the rows through memory maps, so the corpus never sits in RAM whatever its size.

The cache key covers everything the rows depend on: the corpus (file paths, sizes and mtimes, or the dataset's
name, config, split and column), the tokenizer (a hash of its serialised vocabulary and rules), seq_len and the
ids of the framing tokens. A build writes into a temporary folder that is renamed into place only once its
manifest is written, so a killed build never leaves a cache that a later run would read."""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = 1
MANIFEST = "manifest.json"
LAYOUTS = ("packed", "texts")
PAD = -1                      # the "texts" layout's padding: never a token id, so the mask is `rows != PAD`
SHARD_TOKENS = 1 << 24        # 64 MiB of int32 ids per shard file
BLOCK_TEXTS = 1000            # texts per tokenizer call (the fast tokenizer batches them across its threads)
AUTO_PARALLEL_BYTES = 64 << 20  # below this much text, worker processes cost more to start than they save


def default_cache_dir() -> Path:
    """$SLIMBERT_CACHE/corpus, else $XDG_CACHE_HOME/slimbert/corpus, else ~/.cache/slimbert/corpus."""
    root = os.environ.get("SLIMBERT_CACHE")
    if root:
        return Path(root).expanduser() / "corpus"
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "slimbert" / "corpus"


def cache_dir_problem(root: Path) -> str | None:
    """Why the corpus cache cannot be made in `root`, or None: it, or the nearest part of it that exists, is a file
    (mkdir(parents=True) makes the missing rest). A read-only folder is fine: a cache built there is only read."""
    existing = root
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return (f"{existing} is a file; expected a folder" if existing == root else
                f"{existing} is a file, so the folder {root} cannot be made in it; expected a folder path")
    return None


# ---- identities -------------------------------------------------------------------------------------------------

def _stat(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def files_identity(files: list[Path]) -> dict:
    return {"files": [_stat(Path(f)) for f in files]}


def dataset_identity(name: str, config: str | None, split: str, field: str) -> dict:
    """A local data file or folder is identified by its files' stats; a hub dataset by its name alone."""
    ident: dict = {"dataset": name, "config": config, "split": split, "field": field}
    path = Path(name)
    if path.is_file():
        ident["files"] = [_stat(path)]
    elif path.is_dir():
        ident["files"] = [_stat(p) for p in sorted(path.rglob("*")) if p.is_file()]
    return ident


def tokenizer_identity(tokenizer) -> dict:
    """A hash of the fast tokenizer's full serialisation (vocabulary, normaliser, pre-tokeniser), so the same
    tokenizer at two paths shares a cache and a retrained one never does. Truncation and padding are left out:
    transformers sets them per call and packing never uses them."""
    ident = {"class": type(tokenizer).__name__, "vocab": len(tokenizer)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        ident["sha256"] = hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()
    else:  # a slow tokenizer: its name and vocabulary are the best identity there is
        ident["name_or_path"] = str(getattr(tokenizer, "name_or_path", ""))
        ident["sha256"] = hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    return ident


def frame_ids(tokenizer) -> tuple[int, int]:
    """The ids that open and close every packed row: [CLS]/[SEP], or <s>/</s> for tokenizers without them."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    cls = tokenizer.bos_token_id if cls is None else cls
    sep = tokenizer.eos_token_id if sep is None else sep
    if cls is None or sep is None:
        raise ValueError("the tokenizer has neither [CLS]/[SEP] nor <s>/</s> tokens to frame packed sequences")
    return int(cls), int(sep)


def cache_key(corpus: dict, tokenizer, seq_len: int, layout: str = "packed") -> tuple[str, dict]:
    cls, sep = frame_ids(tokenizer)
    spec = {"format": FORMAT, "corpus": corpus, "tokenizer": tokenizer_identity(tokenizer), "seq_len": seq_len,
            "cls": cls, "sep": sep}
    if layout != "packed":  # packed caches keep the keys they had before there was a second layout
        spec["layout"] = layout
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24], spec


# ---- rows read back through memory maps ---------------------------------------------------------------------------

class PackedRows:
    """Rows [start, stop) of a packed cache. Indexing (an int, a slice, or a list / array / tensor of row numbers)
    reads only the rows asked for from the memory-mapped shards and returns int64 tensors, so `Batches` draws
    from it exactly as from an in-RAM tensor."""

    def __init__(self, shards: list[np.ndarray], seq_len: int, start: int = 0, stop: int | None = None):
        self.shards, self.seq_len = shards, seq_len
        self.offsets = np.cumsum([0] + [len(s) for s in shards])
        total = int(self.offsets[-1])
        self.start = start
        self.stop = total if stop is None else min(stop, total)
        if not 0 <= self.start <= self.stop:
            raise ValueError(f"rows [{start}, {stop}) outside a cache of {total} rows")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.seq_len))

    def view(self, start: int, stop: int | None = None) -> PackedRows:
        stop = len(self) if stop is None else min(stop, len(self))
        return PackedRows(self.shards, self.seq_len, self.start + start, self.start + stop)

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.seq_len), dtype=np.int64)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for s in np.unique(which):
            at = which == s
            out[at] = self.shards[s][rows[at] - self.offsets[s]]
        return out

    def __getitem__(self, key) -> torch.Tensor:
        n = len(self)
        if isinstance(key, slice):
            rows = np.arange(*key.indices(n), dtype=np.int64)
        elif isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"row {key} of {n}")
            return self[[int(key) % n]][0]
        else:
            rows = np.asarray(key.tolist() if isinstance(key, torch.Tensor) else key, dtype=np.int64).reshape(-1)
            if len(rows) and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"row index out of range for {n} rows")
            rows = rows % max(n, 1)
        return torch.from_numpy(self._gather(rows + self.start))

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self[i]


@dataclass
class Cache:
    path: Path
    manifest: dict
    rows: PackedRows
    built: bool  # tokenised by this call (False: read back from an earlier build)


def _open(path: Path, key: str, seq_len: int) -> Cache | None:
    """The cache at `path` if it is complete and intact, else None (it is then rebuilt)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT or manifest.get("key") != key:
            return None
        shards = []
        for s in manifest["shards"]:
            f = path / s["file"]
            if f.stat().st_size != s["rows"] * seq_len * 4:
                return None
            shards.append(np.memmap(f, dtype=np.int32, mode="r", shape=(s["rows"], seq_len)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Cache(path, manifest, PackedRows(shards, seq_len), built=False)


# ---- building -----------------------------------------------------------------------------------------------------

def _tokenize(tokenizer, texts: list[str], rows: tuple[int, int, int] | None = None) -> np.ndarray:
    """One block of texts as a single stream of ids, without special tokens (as `pack` tokenises); with
    `rows` = (seq_len, cls, sep), as `text_rows` instead."""
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if rows is not None:
        return text_rows(enc, *rows)
    return np.fromiter(itertools.chain.from_iterable(enc), dtype=np.int32, count=sum(map(len, enc)))


def text_rows(ids: list[list[int]], seq_len: int, cls: int, sep: int) -> np.ndarray:
    """The "texts" layout: each non-empty text its own row, [CLS] first seq_len - 2 ids [SEP], then PAD (-1,
    never a token id) to seq_len. Sentence-embedding distillation reads sentences as users embed them, one at
    a time, rather than packed spans that cross sentence boundaries."""
    kept = [t[: seq_len - 2] for t in ids if t]
    out = np.full((len(kept), seq_len), PAD, dtype=np.int32)
    for i, t in enumerate(kept):
        out[i, 0], out[i, 1:len(t) + 1], out[i, len(t) + 1] = cls, t, sep
    return out


_WORKER_TOKENIZER = None
_WORKER_ROWS = None


def _worker_init(tokenizer, rows) -> None:
    global _WORKER_TOKENIZER, _WORKER_ROWS
    _WORKER_TOKENIZER, _WORKER_ROWS = tokenizer, rows


def _worker_tokenize(texts: list[str]) -> np.ndarray:
    return _tokenize(_WORKER_TOKENIZER, texts, _WORKER_ROWS)


def _blocks(texts: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(texts)
    while block := list(itertools.islice(it, size)):
        yield block


def _token_blocks(texts: Iterable[str], tokenizer, num_proc: int, block_texts: int,
                  rows: tuple[int, int, int] | None = None) -> Iterator[np.ndarray]:
    """Token ids block by block (a stream, or with `rows` a block of text rows), in corpus order whatever
    num_proc is. With workers, at most 2 blocks per worker are in flight, so a streamed corpus is read only as
    fast as it is tokenised."""
    if num_proc <= 1:
        for block in _blocks(texts, block_texts):
            yield _tokenize(tokenizer, block, rows)
        return
    # fork where there is one: spawn and forkserver re-import the caller's __main__, which fails for `python -`
    # and notebooks. The children only run the tokenizer (never torch or CUDA), which is fork-safe; its own
    # thread pool is switched off first so that it neither warns nor oversubscribes the cores.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with ProcessPoolExecutor(num_proc, mp_context=multiprocessing.get_context(method), initializer=_worker_init,
                                 initargs=(tokenizer, rows)) as pool:
            pending: deque = deque()
            try:
                for block in _blocks(texts, block_texts):
                    pending.append(pool.submit(_worker_tokenize, block))
                    if len(pending) >= 2 * num_proc:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # stopped early (enough rows): drop what is queued
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


class _ShardWriter:
    def __init__(self, folder: Path, seq_len: int, shard_rows: int):
        self.folder, self.seq_len, self.shard_rows = folder, seq_len, max(1, shard_rows)
        self.shards: list[dict] = []
        self._file = None

    def write(self, rows: np.ndarray) -> None:
        while len(rows):
            if self._file is None or self.shards[-1]["rows"] == self.shard_rows:
                self._close()
                name = f"rows-{len(self.shards):05d}.bin"
                self._file = open(self.folder / name, "wb")
                self.shards.append({"file": name, "rows": 0})
            take = min(len(rows), self.shard_rows - self.shards[-1]["rows"])
            self._file.write(np.ascontiguousarray(rows[:take], dtype=np.int32).tobytes())
            self.shards[-1]["rows"] += take
            rows = rows[take:]

    def _close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close()


def pack_blocks(blocks: Iterable[np.ndarray], seq_len: int, cls: int, sep: int, limit: int | None,
                emit: Callable[[np.ndarray], None]) -> tuple[int, bool]:
    """`corpus.pack` on a stream of id blocks: the concatenated stream cut into bodies of seq_len - 2 ids, each
    framed by cls and sep; the tail that does not fill a row is dropped. Returns (rows, whether the stream
    ran out before `limit` rows)."""
    body = seq_len - 2
    carry = np.empty(0, dtype=np.int32)
    done = 0
    for ids in blocks:
        buf = np.concatenate([carry, ids]) if len(carry) else ids
        n = len(buf) // body
        if limit is not None:
            n = min(n, limit - done)
        if n:
            rows = np.empty((n, seq_len), dtype=np.int32)
            rows[:, 0], rows[:, -1] = cls, sep
            rows[:, 1:-1] = buf[: n * body].reshape(n, body)
            emit(rows)
            done += n
        carry = buf[n * body:]
        if limit is not None and done >= limit:
            return done, False
    return done, True


def limit_rows(blocks: Iterable[np.ndarray], limit: int | None,
               emit: Callable[[np.ndarray], None]) -> tuple[int, bool]:
    """The "texts" layout's counterpart of pack_blocks: blocks of ready rows, emitted up to `limit` rows."""
    done = 0
    for rows in blocks:
        if limit is not None:
            rows = rows[: limit - done]
        if len(rows):
            emit(rows)
            done += len(rows)
        if limit is not None and done >= limit:
            return done, False
    return done, True


LOCK = ".building"


def _hold(folder: Path):
    """An exclusive flock on the build folder's lock file, held while the build runs: the kernel drops it
    when the process dies however it dies, so a lock that can be taken marks an abandoned build."""
    fh = open(folder / LOCK, "w")
    try:
        import fcntl

        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no flock (Windows): abandoned folders are then left for the user to delete
        pass
    return fh


def _sweep_abandoned(root: Path, key: str) -> None:
    """Remove temporary folders left by builds of this key whose process died (killed mid-build)."""
    try:
        import fcntl
    except ImportError:
        return
    for old in root.glob(f"{key}.old-*"):  # a replaced cache whose remover died
        shutil.rmtree(old, ignore_errors=True)
    for tmp in root.glob(f"{key}.tmp-*"):
        try:  # a folder without its lock file yet is being set up: left alone
            with open(tmp / LOCK, "r+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while the build is alive
        except OSError:
            continue
        shutil.rmtree(tmp, ignore_errors=True)


def auto_num_proc(size_bytes: int | None) -> int:
    if size_bytes is not None and size_bytes < AUTO_PARALLEL_BYTES:
        return 1
    return max(1, min(8, (os.cpu_count() or 1)))


def corpus_bytes(corpus: dict) -> int | None:
    files = corpus.get("files")
    return sum(f["size"] for f in files) if files else None


def load_or_build(texts: Callable[[], Iterable[str]], corpus: dict, tokenizer, seq_len: int,
                  rows_needed: int | None = None, cache_dir: Path | None = None, num_proc: int | None = None,
                  shard_tokens: int = SHARD_TOKENS, block_texts: int = BLOCK_TEXTS, layout: str = "packed") -> Cache:
    """The rows of a corpus, from the cache when a build of the same key holds enough of them, else
    tokenised now (stopping at `rows_needed` rows when given) and cached. layout "packed": the token stream
    cut into full rows (`pack_blocks`); "texts": one padded row per text (`text_rows`).

    `texts` is called only when a build is needed and must yield the corpus' texts in order (a generator: it is
    read block by block, never collected). `corpus` identifies it (files_identity / dataset_identity).
    num_proc: tokenising worker processes (None: 1 for a small corpus, else up to 8); the rows do not depend
    on it."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    key, spec = cache_key(corpus, tokenizer, seq_len, layout)
    final = root / key
    found = _open(final, key, seq_len)
    if found and (found.manifest["exhausted"] or (rows_needed is not None and found.manifest["rows"] >= rows_needed)):
        return found
    root.mkdir(parents=True, exist_ok=True)
    _sweep_abandoned(root, key)
    tmp = root / f"{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    lock = _hold(tmp)
    try:
        procs = num_proc or auto_num_proc(corpus_bytes(corpus))
        cls, sep = frame_ids(tokenizer)
        writer = _ShardWriter(tmp, seq_len, shard_tokens // seq_len)
        started = time.perf_counter()
        tokens = 0

        framing = (seq_len, cls, sep) if layout == "texts" else None

        def counted() -> Iterator[np.ndarray]:
            nonlocal tokens
            for ids in _token_blocks(texts(), tokenizer, procs, block_texts, framing):
                tokens += int((ids != PAD).sum()) if framing else len(ids)
                yield ids

        if framing:
            rows, exhausted = limit_rows(counted(), rows_needed, writer.write)
        else:
            rows, exhausted = pack_blocks(counted(), seq_len, cls, sep, rows_needed, writer.write)
        writer.close()
        seconds = time.perf_counter() - started
        manifest = {**spec, "key": key, "rows": rows, "exhausted": exhausted, "shards": writer.shards,
                    "tokens_read": tokens, "build_seconds": round(seconds, 3), "num_proc": procs,
                    "tokens_per_second": round(tokens / seconds) if seconds > 0 else None}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        lock.close()
        (tmp / LOCK).unlink()
        _publish(tmp, final, key, seq_len, rows_needed)
    except BaseException:
        lock.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    done = _open(final, key, seq_len)
    if done is None:
        raise OSError(f"the corpus cache at {final} could not be read back after it was written")
    done.built = True
    return done


def _publish(tmp: Path, final: Path, key: str, seq_len: int, rows_needed: int | None) -> None:
    """Move a finished build into place. Another process (a second rank) may have published the same key
    meanwhile: keep its cache when it is enough (the rows are the same), else replace it."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        pass
    other = _open(final, key, seq_len)
    if other and (other.manifest["exhausted"] or (rows_needed is not None and other.manifest["rows"] >= rows_needed)):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = final.with_name(f"{key}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
