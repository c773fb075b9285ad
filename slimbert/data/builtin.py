"""The text that ships inside the package, so that the quickstart runs with no data folder and no network: two
public-domain Project Gutenberg books (data.corpus: {builtin: gutenberg}) and sentence pairs drawn from them for
the similarity report (data.similarity_pairs: [{builtin: gutenberg}]). gutenberg/NOTICE.md says where the text
came from; `python -m slimbert.data.builtin PG_FOLDER` rebuilds the folder from the Project Gutenberg files."""

from __future__ import annotations

import json
import random
import re
import sys
from importlib.resources import files
from pathlib import Path

BUILTIN = ("gutenberg",)  # the names a recipe can give to `builtin:`
# Project Gutenberg file -> (the name it ships under, its encoding, the first words and the last of the author's text)
BOOKS = {"pg2701.txt": ("moby-dick.txt", "ascii", "ETYMOLOGY.", "only found another orphan."),
         "pg1342.txt": ("pride-and-prejudice.txt", "cp1252", "It is a truth universally acknowledged",
                        "the means of uniting them.")}
PAIRS = "pairs.jsonl"
NUM_PAIRS = 300


def folder(name: str) -> Path:
    """The package folder of a built-in corpus. setuptools installs package data as plain files, so the folder
    is a real path, which the corpus cache and `datasets` need."""
    return Path(str(files("slimbert.data") / name))


def corpus_files(name: str) -> list[Path]:
    return sorted(folder(name).glob("*.txt"))


def pairs_file(name: str) -> Path:
    return folder(name) / PAIRS


def pairs_path(entry, base: Path) -> Path:
    """A data.similarity_pairs entry as a file: a built-in corpus's pairs ({builtin: NAME}), or a path, relative
    to `base` (the recipe's folder)."""
    name = getattr(entry, "builtin", None)
    if name is not None:
        return pairs_file(name)
    p = Path(entry).expanduser()
    return p if p.is_absolute() else base / p


def strip_gutenberg(text: str, first: str, last: str) -> str:
    """The author's text, from the paragraph that starts with `first` to the one that ends with `last`, one
    paragraph per line. Project Gutenberg's licence header and footer go (its terms apply to copies that carry its
    name), and so do the edition's front matter and illustration captions (not the author's text, and the corpus
    stays under 2 MB). Hard-wrapped lines are joined so that a text is a paragraph, as in WikiText: stages with
    `inputs: texts` read one text per input."""
    # a caption may hold a bracketed copyright line: one level of nesting
    text = re.sub(r"\[Illustration(?:[^\[\]]|\[[^\]]*\])*\]", "", text.replace("\r\n", "\n"))
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    start = next(i for i, p in enumerate(paragraphs) if p.startswith(first))
    end = next(i for i, p in enumerate(paragraphs) if i >= start and p.endswith(last))
    return "".join(p + "\n" for p in paragraphs[start:end + 1] if p)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+(?=[\"'\u201c\u2018]?[A-Z])")


def sentences(paragraph: str, shortest: int = 30, longest: int = 300) -> list[str]:
    """The sentences of a paragraph that make a useful pair member: neither a fragment nor a page-long period."""
    return [s for s in _SENTENCE_END.split(paragraph) if shortest <= len(s) <= longest]


def sentence_pairs(paragraphs: list[str], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` sentence pairs: half are neighbours in one paragraph (related), half are drawn at random from the whole
    text (mostly unrelated), so the pairs' cosines spread and their ranking means something. The similarity report
    needs no labels: it compares the source's ranking of the pairs with the student's."""
    rng = random.Random(seed)
    split = [sentences(p) for p in paragraphs]
    neighbours = [(s[i], s[i + 1]) for s in split for i in range(len(s) - 1)]
    pool = [x for s in split for x in s]
    related = rng.sample(neighbours, n // 2)
    unrelated = [tuple(rng.sample(pool, 2)) for _ in range(n - n // 2)]
    pairs = related + unrelated
    rng.shuffle(pairs)
    return pairs


def build(pg_folder: Path, out: Path | None = None) -> None:
    """Rewrite the built-in corpus (into `out`, by default the package's) from the Project Gutenberg files: the
    maintainers' step, not a run's."""
    out = out or folder("gutenberg")
    paragraphs = []
    for pg, (shipped, encoding, first, last) in BOOKS.items():
        body = strip_gutenberg((pg_folder / pg).read_text(encoding=encoding), first, last)
        (out / shipped).write_text(body, encoding="utf-8")
        paragraphs += body.splitlines()
    rows = (json.dumps({"sentence1": a, "sentence2": b}, ensure_ascii=False) + "\n"
            for a, b in sentence_pairs(paragraphs, NUM_PAIRS))
    (out / PAIRS).write_text("".join(rows), encoding="utf-8")


if __name__ == "__main__":
    build(Path(sys.argv[1]))
