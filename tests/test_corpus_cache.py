"""The on-disk corpus cache on real text: the rows `pack` gives, reuse without tokenising, keys that change with
what the rows depend on, killed builds, streamed datasets written shard by shard, batches drawn from the memory
map, and peak memory that does not grow with the corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimbert.data import cache as C
from slimbert.data.corpus import Batches, iter_dataset, iter_texts, pack, read_texts

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, shared_data) -> Path:
    """WikiText-2 then a Gutenberg book, as bytes: headings, blank lines, CRLF line ends and bytes that are not
    UTF-8 (the book has some) are read as `read_texts` reads them."""
    wiki = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_bytes().split(b"\n")[:3000]
    book = (shared_data / "gutenberg" / "pg1342.txt").read_bytes().split(b"\n")[:3000]
    path = tmp_path_factory.mktemp("corpus") / "mixed.txt"
    path.write_bytes(b"\n".join(wiki + book) + b"\n")
    return path


def build(files: list[Path], tokenizer, seq_len: int, root: Path, **kw) -> C.Cache:
    return C.load_or_build(lambda: iter_texts(files), C.files_identity(files), tokenizer, seq_len, cache_dir=root, **kw)


def test_cache_rows_are_the_rows_pack_gives(tmp_path, tokenizer, corpus_file):
    texts = read_texts([corpus_file])
    want = pack(texts, tokenizer, 64)
    assert len(want) > 500
    one = build([corpus_file], tokenizer, 64, tmp_path / "a", shard_tokens=64 * 100, block_texts=97)
    assert one.built and len(one.manifest["shards"]) == -(-len(want) // 100)  # several shards
    assert one.rows.shape == want.shape and torch.equal(one.rows[:], want)
    # worker processes give the same rows in the same order
    two = build([corpus_file], tokenizer, 64, tmp_path / "b", num_proc=2, block_texts=53)
    assert torch.equal(two.rows[:], want)
    # a row cap stops the build early and gives pack's capped rows
    capped = build([corpus_file], tokenizer, 64, tmp_path / "c", rows_needed=77)
    assert torch.equal(capped.rows[:], pack(texts, tokenizer, 64, max_sequences=77))
    assert not capped.manifest["exhausted"] and capped.manifest["tokens_read"] < want.numel() // 2
    # random access across shard boundaries, negative rows, views
    idx = [0, 99, 100, 101, 350, len(want) - 1, 5]
    assert torch.equal(one.rows[idx], want[idx]) and torch.equal(one.rows[torch.tensor(idx)], want[idx])
    assert torch.equal(one.rows[-1], want[-1]) and one.rows[3].dtype == torch.long
    view = one.rows.view(10, 250)
    assert len(view) == 240 and torch.equal(view[[0, 239]], want[[10, 249]]) and torch.equal(view[:5], want[10:15])
    with pytest.raises(IndexError):
        view[[240]]


def test_the_texts_layout_keeps_one_text_per_row(tmp_path, tokenizer, corpus_file):
    """Each non-empty text its own [CLS] ids [SEP] row, truncated to seq_len and padded with PAD; its own cache
    key beside the packed one; workers and row caps as for packed rows; unpad gives ids and mask."""
    from slimbert.data.corpus import unpad

    texts = read_texts([corpus_file])
    cls, sep = C.frame_ids(tokenizer)
    one = build([corpus_file], tokenizer, 32, tmp_path / "a", layout="texts", shard_tokens=32 * 100, block_texts=97)
    rows = one.rows[:]
    ids = [t for t in tokenizer(texts, add_special_tokens=False)["input_ids"] if t]
    assert len(rows) == len(ids) > 1000 and one.manifest["layout"] == "texts"
    for i in (0, 1, 500, len(ids) - 1):
        body = ids[i][:30]
        assert rows[i, :len(body) + 2].tolist() == [cls, *body, sep]
        assert (rows[i, len(body) + 2:] == C.PAD).all()
    assert one.path.name != C.cache_key(C.files_identity([corpus_file]), tokenizer, 32)[0]  # not the packed key
    two = build([corpus_file], tokenizer, 32, tmp_path / "b", layout="texts", num_proc=2, block_texts=53)
    assert torch.equal(two.rows[:], rows)
    capped = build([corpus_file], tokenizer, 32, tmp_path / "c", layout="texts", rows_needed=77, block_texts=50)
    assert len(capped.rows) == 77 and torch.equal(capped.rows[:], rows[:77]) and not capped.manifest["exhausted"]
    batch, mask = unpad(rows[[0, 1, 2]], tokenizer.pad_token_id)
    lengths = [min(len(t), 30) + 2 for t in ids[:3]]
    assert batch.shape == (3, max(lengths)) and mask.sum(1).tolist() == lengths
    assert (batch[mask == 0] == tokenizer.pad_token_id).all() and (batch >= 0).all()
    with pytest.raises(ValueError, match="layout 'lines'"):
        build([corpus_file], tokenizer, 32, tmp_path / "d", layout="lines")


def test_second_load_reads_the_cache_without_tokenising(tmp_path, tokenizer, corpus_file, monkeypatch):
    first = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=200)
    manifest = first.path / C.MANIFEST
    stamp = manifest.stat().st_mtime_ns

    def no(*a, **k):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(C, "_tokenize", no)
    again = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=150)  # fewer rows: the same cache serves
    assert not again.built and manifest.stat().st_mtime_ns == stamp and torch.equal(again.rows[:], first.rows[:])
    with pytest.raises(AssertionError, match="tokenised again"):  # more rows than were cached: a new build
        build([corpus_file], tokenizer, 64, tmp_path, rows_needed=300)
    monkeypatch.undo()
    more = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=300)
    assert more.built and len(more.rows) == 300 and torch.equal(more.rows[:200], first.rows[:])
    assert sorted(p.name for p in tmp_path.iterdir()) == [more.path.name]  # replaced in place, nothing left over


def test_the_key_follows_seq_len_tokenizer_and_file_content(tmp_path, tokenizer, corpus_file, tiny_source):
    from transformers import AutoTokenizer

    f = tmp_path / "c.txt"
    f.write_bytes(corpus_file.read_bytes()[:20000])
    key = lambda tok, n: C.cache_key(C.files_identity([f]), tok, n)[0]  # noqa: E731
    base = key(tokenizer, 64)
    assert key(tokenizer, 64) == base and key(tokenizer, 32) != base
    # the same tokenizer saved elsewhere shares the key; one with an added token does not
    assert key(AutoTokenizer.from_pretrained(tiny_source), 64) == base
    other = AutoTokenizer.from_pretrained(tiny_source)
    other.add_tokens(["slimbertword"])
    assert key(other, 64) != base
    # truncation set on the backend by an earlier call does not change the identity
    tokenizer("x " * 600, truncation=True, max_length=16)
    assert key(tokenizer, 64) == base
    old = build([f], tokenizer, 64, tmp_path / "cache")
    f.write_text(f.read_text(encoding="utf-8") + "More text appended to the corpus.\n", encoding="utf-8")
    assert key(tokenizer, 64) != base
    new = build([f], tokenizer, 64, tmp_path / "cache")
    assert new.built and new.path != old.path


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from transformers import AutoTokenizer
from slimbert.data import cache as C
from slimbert.data.corpus import iter_texts

tok, f, root = AutoTokenizer.from_pretrained(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

def texts():
    for i, t in enumerate(iter_texts([f])):
        if i == 2500:  # shards already on disk, no manifest yet
            os.kill(os.getpid(), signal.SIGKILL)
        yield t

C.load_or_build(texts, C.files_identity([f]), tok, 64, cache_dir=root, shard_tokens=64 * 50, block_texts=100)
"""


def test_a_killed_build_leaves_nothing_that_is_read(tmp_path, tokenizer, corpus_file, minilm_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(minilm_path), str(corpus_file), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and ".tmp-" in left[0].name and list(left[0].glob("rows-*.bin"))
    assert not (left[0] / C.MANIFEST).exists()
    key = C.cache_key(C.files_identity([corpus_file]), tokenizer, 64)[0]
    assert C._open(tmp_path / key, key, 64) is None  # nothing published under the key
    fresh = build([corpus_file], tokenizer, 64, tmp_path)
    assert fresh.built and torch.equal(fresh.rows[:], pack(read_texts([corpus_file]), tokenizer, 64))
    assert [p.name for p in tmp_path.iterdir()] == [key]  # the dead build's folder was swept


def test_a_damaged_cache_is_rebuilt(tmp_path, tokenizer, corpus_file):
    first = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=120)
    shard = first.path / first.manifest["shards"][0]["file"]
    shard.write_bytes(shard.read_bytes()[:-4])  # truncated on disk
    again = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=120)
    assert again.built and torch.equal(again.rows[:], pack(read_texts([corpus_file]), tokenizer, 64, 120))


def test_a_streamed_dataset_is_written_in_shards_as_it_is_read(tmp_path, tokenizer, corpus_file):
    lines = read_texts([corpus_file])
    data = tmp_path / "corpus.jsonl"
    data.write_text("".join(json.dumps({"body": line}) + "\n" for line in lines), encoding="utf-8")
    read = 0

    def texts():
        nonlocal read
        for t in iter_dataset(str(data), None, "train", "body", streaming=True):
            read += 1
            yield t

    ident = C.dataset_identity(str(data), None, "train", "body")
    got = C.load_or_build(texts, ident, tokenizer, 64, rows_needed=120, cache_dir=tmp_path / "cache",
                          shard_tokens=64 * 25, block_texts=50)
    want = pack(lines, tokenizer, 64, max_sequences=120)
    assert torch.equal(got.rows[:], want) and len(got.manifest["shards"]) == 5
    # the stream was read only as far as 120 rows need (plus the block being tokenised), not to its end
    assert read < len(lines) // 4 and read % 50 == 0
    assert len(lines) > 4000


def test_batches_from_the_cache_are_the_batches_from_the_tensor(tmp_path, tokenizer, corpus_file):
    cached = build([corpus_file], tokenizer, 64, tmp_path, rows_needed=90, shard_tokens=64 * 16)
    train_t, train_m = cached.rows[:][8:], cached.rows.view(8)
    a, b = Batches(train_t, 7, seed=3, stage=1), Batches(train_m, 7, seed=3, stage=1)
    for step in [0, 1, 11, 12, 13, 40, 2]:  # 82 rows, 7 a batch: steps 11-12 cross an epoch
        assert torch.equal(a.batch(step), b.batch(step))
    assert not torch.equal(b.batch(0), Batches(train_m, 7, seed=3, stage=2).batch(0))


RSS_PROBE = """
import json, resource, sys, time
from pathlib import Path
from transformers import AutoTokenizer
from slimbert.data import cache as C
from slimbert.data.corpus import Batches, iter_texts

tok, f, root = AutoTokenizer.from_pretrained(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()
built = C.load_or_build(lambda: iter_texts([f]), C.files_identity([f]), tok, 128, cache_dir=root, num_proc=1)
batches = Batches(built.rows.view(64), 32, seed=0, stage=0)
total = sum(int(batches.batch(step).sum()) for step in range(200))
print(json.dumps({"rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rows": len(built.rows),
                  "tokens_per_second": built.manifest["tokens_per_second"]}))
"""


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path, shared_data, minilm_path):
    """Build the cache of a corpus and draw 200 batches of 32 x 128 from it, at 1x and 10x the text (real
    WikiText-2 and Gutenberg repeated): peak RSS differs by less than 10 %."""
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in [shared_data / "wikitext-2-raw" / "wiki.test.raw",
                                                              shared_data / "gutenberg" / "pg2701.txt"])[:500_000]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    got = {}
    for times in (1, 10):
        f = tmp_path / f"x{times}.txt"
        f.write_text(text * times, encoding="utf-8")
        done = subprocess.run([sys.executable, "-c", RSS_PROBE, str(minilm_path), str(f), str(tmp_path / "cache")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        got[times] = json.loads(done.stdout.strip().splitlines()[-1])
    assert got[10]["rows"] > 9.5 * got[1]["rows"] > 7500
    print(f"peak RSS 1x {got[1]} 10x {got[10]}")
    assert abs(got[10]["rss_kb"] - got[1]["rss_kb"]) < 0.10 * got[1]["rss_kb"], got


def test_the_recipe_keys_cache_dir_and_num_proc(tmp_path, tiny_source, shared_data, tokenizer):
    """data.cache_dir (relative to the recipe) holds the cache, data.num_proc tokenises in workers with the same
    rows, and a cache folder that cannot be written is a RecipeError naming data.cache_dir."""
    from conftest import write_recipe
    from slimbert.engine.runner import load_corpus
    from slimbert.recipe import RecipeError, load_recipe

    lines = read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"])[:400]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = {"corpus": {"files": ["corpus.txt"]}, "seq_len": 32, "max_sequences": 40, "eval_sequences": 8}
    recipe = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "cache_dir": "my-cache", "num_proc": 2})
    train, held_out = load_corpus(load_recipe(recipe), tokenizer)
    (manifest,) = (tmp_path / "my-cache").glob(f"*/{C.MANIFEST}")
    assert json.loads(manifest.read_text())["num_proc"] == 2
    want = pack(lines, tokenizer, 32, 48)
    assert isinstance(train, C.PackedRows) and len(train) == 40 and torch.equal(train[:], want[8:])
    assert torch.equal(held_out, want[:8])
    (tmp_path / "a-file").write_text("not a folder")
    bad = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "cache_dir": "a-file/cache"})
    with pytest.raises(RecipeError, match=r"data\.cache_dir.*is a file.*expected a folder path"):
        load_corpus(load_recipe(bad), tokenizer)
