"""The text that ships inside the package (data.corpus: {builtin: gutenberg}) and the presets found there."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest

from slimbert.data import builtin
from slimbert.recipe import RecipeError, load_recipe, presets, recipe_base
from slimbert.recipe.overrides import apply_overrides
from slimbert.recipe.schema import BuiltinName

PG = """The Project Gutenberg EBook of A Book\r
licence text\r
*** START OF THIS PROJECT GUTENBERG EBOOK A BOOK ***\r
\r
Produced by someone\r
\r
[Illustration:\r
   A CAPTION [Copyright 1894]\r
]\r
\r
CHAPTER 1.\r
\r
It was a dark night. The sea\r
rose high!\r
\r
  She said no more.  \r
\r
End of the Project Gutenberg EBook of A Book\r
*** END OF THIS PROJECT GUTENBERG EBOOK A BOOK ***\r
licence text\r
"""


def test_strip_gutenberg_keeps_the_authors_paragraphs_one_per_line():
    assert builtin.strip_gutenberg(PG, "CHAPTER 1.", "no more.") == (
        "CHAPTER 1.\nIt was a dark night. The sea rose high!\nShe said no more.\n")


def test_sentence_pairs_are_half_neighbours_and_reproducible():
    paragraphs = [" ".join(f"Sentence number {p}-{i} is long enough to keep here." for i in range(6))
                  for p in range(20)]
    pairs = builtin.sentence_pairs(paragraphs, 40, seed=1)
    assert len(pairs) == 40 and pairs == builtin.sentence_pairs(paragraphs, 40, seed=1)
    assert pairs != builtin.sentence_pairs(paragraphs, 40, seed=2)
    index = {s: (p, i) for p, para in enumerate(paragraphs) for i, s in enumerate(builtin.sentences(para))}
    neighbours = [a for a, b in pairs if index[a][0] == index[b][0] and index[b][1] == index[a][1] + 1]
    assert len(neighbours) >= 20
    assert builtin.sentences("Short. This one is long enough to be a sentence. Ok.") == [
        "This one is long enough to be a sentence."]


def test_the_package_ships_the_corpus_and_its_pairs():
    files = builtin.corpus_files("gutenberg")
    assert [f.name for f in files] == ["moby-dick.txt", "pride-and-prejudice.txt"]
    folder = builtin.folder("gutenberg")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2_000_000
    assert (folder / "NOTICE.md").is_file()
    for f in files:
        assert "gutenberg" not in f.read_text(encoding="utf-8").lower()   # the licence header and footer are gone
    rows = [json.loads(line) for line in builtin.pairs_file("gutenberg").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == builtin.NUM_PAIRS and all(r["sentence1"] and r["sentence2"] for r in rows)
    assert set(typing.get_args(BuiltinName)) == set(builtin.BUILTIN)


def test_the_shipped_corpus_is_what_build_writes(shared_data, tmp_path):
    builtin.build(shared_data / "gutenberg", tmp_path)
    for f in tmp_path.iterdir():
        assert f.read_bytes() == (builtin.folder("gutenberg") / f.name).read_bytes(), f.name


def test_a_presets_paths_start_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(presets()) >= {"quickstart", "mobilebert", "tinybert-style"}
    assert recipe_base(presets()["quickstart"]) == tmp_path
    mine = tmp_path / "sub" / "mine.yaml"
    assert recipe_base(mine) == mine.parent
    assert builtin.pairs_path("x.tsv", tmp_path) == tmp_path / "x.tsv"
    entry = type("Entry", (), {"builtin": "gutenberg"})()
    assert builtin.pairs_path(entry, tmp_path) == builtin.pairs_file("gutenberg")


def test_a_corpus_source_given_with_set_replaces_the_recipes():
    data = {"data": {"corpus": {"builtin": "gutenberg"}}}
    assert apply_overrides(data, ["data.corpus.files=[a.txt]"])["data"]["corpus"] == {"files": ["a.txt"]}
    assert apply_overrides(data, ["data.corpus.dataset=wikitext"])["data"]["corpus"] == {"dataset": "wikitext"}
    assert data == {"data": {"corpus": {"builtin": "gutenberg"}}}


@pytest.mark.e2e
def test_the_quickstart_reads_the_builtin_corpus_or_other_text(tmp_path, minilm_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe("quickstart")
    assert r.corpus_files == builtin.corpus_files("gutenberg")
    (tmp_path / "mine.txt").write_text("A line of my own text, long enough to tokenise into something.\n" * 400)
    r = load_recipe("quickstart", ["data.corpus.files=[mine.txt]"])   # relative to the working directory
    assert r.corpus_files == [tmp_path / "mine.txt"]
    with pytest.raises(RecipeError, match="neither a recipe file nor a preset"):
        load_recipe("no-such-preset")
