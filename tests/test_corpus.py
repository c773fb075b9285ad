"""Corpus reading, packing and masking on real text: whole-word masking, tokenizer families, `datasets` corpora."""

from __future__ import annotations

import pytest
import torch

from slimbert.data.corpus import mask_tokens, pack, read_texts, word_starts


@pytest.fixture(scope="module")
def packed(tokenizer, shared_data):
    texts = read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"])[:400]
    return pack(texts, tokenizer, seq_len=64, max_sequences=64)


def _words(tokenizer, ids):
    return torch.cumsum(word_starts(tokenizer, ids).long(), dim=1)


def test_whole_word_masking_takes_every_piece_of_a_chosen_word(tokenizer, packed):
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(packed, tokenizer, 0.15, g, whole_word=True)
    words = _words(tokenizer, packed)
    special = torch.isin(packed, torch.tensor(tokenizer.all_special_ids))
    split_words_masked = 0
    for b in range(len(packed)):
        for w in words[b][labels[b] != -100].unique():
            pieces = (words[b] == w) & ~special[b]
            assert (labels[b][pieces] != -100).all(), "a word was masked in part"
            split_words_masked += int(pieces.sum() > 1)
    assert split_words_masked > 10  # multi-piece words occur and are masked whole
    # about 15% of the words are chosen (each word by its first piece)
    n_words = sum(len(words[b][~special[b]].unique()) for b in range(len(packed)))
    n_masked = sum(len(words[b][labels[b] != -100].unique()) for b in range(len(packed)))
    assert 0.12 < n_masked / n_words < 0.18
    # labels hold the original ids; 80% of the labelled positions show [MASK]
    assert torch.equal(labels[labels != -100], packed[labels != -100])
    share = (inputs[labels != -100] == tokenizer.mask_token_id).float().mean().item()
    assert 0.72 < share < 0.88


def test_token_masking_splits_words(tokenizer, packed):
    """Without whole-word masking, some word is masked in part: the two modes really differ."""
    g = torch.Generator().manual_seed(0)
    _, labels = mask_tokens(packed, tokenizer, 0.15, g, whole_word=False)
    words = _words(tokenizer, packed)
    partial = 0
    for b in range(len(packed)):
        for w in words[b][labels[b] != -100].unique():
            picked = labels[b][words[b] == w] != -100
            partial += int(not picked.all())
    assert partial > 0


def test_word_starts_for_byte_level_bpe(shared_data):
    """RoBERTa-style tokenizers mark word starts with 'Ġ' instead of continuations with '##'."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    lines = read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"])[:2000]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=600, min_frequency=2, special_tokens=["<s>", "</s>", "<pad>", "<mask>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", mask_token="<mask>")
    ids = torch.tensor([[tok.bos_token_id, *tok(" the unbelievably long road", add_special_tokens=False)["input_ids"],
                         tok.eos_token_id]])
    pieces = tok.convert_ids_to_tokens(ids[0].tolist())
    starts = word_starts(tok, ids)[0].tolist()
    assert starts == [True] + [p.startswith("Ġ") for p in pieces[1:-1]] + [True]
    assert len(pieces) - 2 > 4 and sum(starts[1:-1]) == 4  # four words, more pieces than words
    # whole-word masking on this tokenizer: every chosen word is masked whole
    g = torch.Generator().manual_seed(1)
    batch = ids.repeat(64, 1)
    _, labels = mask_tokens(batch, tok, 0.3, g, whole_word=True)
    words = torch.cumsum(word_starts(tok, batch).long(), dim=1)
    for b in range(len(batch)):
        for w in words[b][labels[b] != -100].unique():
            assert (labels[b][(words[b] == w)] != -100).all()


@pytest.mark.parametrize("streaming", [False, True])
def test_a_datasets_corpus_packs_like_the_same_text_in_files(tmp_path, tiny_source, shared_data, tokenizer, streaming):
    """data.corpus.dataset (a local JSON-lines file, relative to the recipe, loaded or streamed through `datasets`)
    gives exactly the sequences that the same lines give as a text file."""
    import json

    from conftest import write_recipe
    from slimbert.engine.runner import load_corpus
    from slimbert.recipe import RecipeError, load_recipe

    lines = read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"])[:300]
    (tmp_path / "corpus.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"body": l, "id": i}) + "\n" for i, l in enumerate(lines)))
    data = {"seq_len": 32, "max_sequences": 40, "eval_sequences": 8}
    files = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {"files": ["corpus.txt"]}})
    want = load_corpus(load_recipe(files), tokenizer)
    ds = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {
        "dataset": "corpus.jsonl", "text_field": "body", "streaming": streaming}})
    got = load_corpus(load_recipe(ds), tokenizer)
    assert len(want[0]) == 40 and all(torch.equal(a[:], b[:]) for a, b in zip(want, got))

    bad = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {
        "dataset": "corpus.jsonl", "text_field": "text", "streaming": streaming}})
    with pytest.raises(RecipeError, match=r"data\.corpus\.dataset.*no column 'text'.*body"):
        load_corpus(load_recipe(bad), tokenizer)


def test_count_sequences_matches_pack_and_stops_early(tokenizer, shared_data, tmp_path):
    from slimbert.data.corpus import count_sequences, pack, read_texts

    files = [shared_data / "wikitext-2-raw" / "wiki.test.raw"]
    text = files[0].read_text(encoding="utf-8")[:20000]
    small = tmp_path / "small.txt"
    small.write_text(text)
    assert count_sequences([small], tokenizer, 32, 10 ** 9) == len(pack(read_texts([small]), tokenizer, 32))
    assert count_sequences(files, tokenizer, 32, 5) == 5                      # stops once there is enough
    assert count_sequences(files, tokenizer, 32, 10 ** 9, max_bytes=1000) is None  # too big to decide cheaply
    long_words = tmp_path / "long.txt"
    long_words.write_text("\n".join("x" * 1000 for _ in range(12)))           # 12 KB, 12 [UNK] tokens
    assert count_sequences([long_words], tokenizer, 32, 10) == 0


def test_a_task_corpus_reads_the_finetune_sections_training_texts(tmp_path, tiny_source, shared_data, tokenizer):
    """data.corpus.task: the finetune section's training texts (every text field, no labels, the same sample its
    max_examples draws) are the corpus: exactly what the same texts give as a file. Without a finetune section the
    key is named."""
    from conftest import write_recipe
    from slimbert.data.tasks import read_task
    from slimbert.engine.runner import load_corpus
    from slimbert.recipe import RecipeError, load_recipe

    ft = {"task": "mrpc", "train": str(shared_data / "MRPC" / "train.tsv"), "dev": str(shared_data / "MRPC" / "dev.tsv"),
          "text_fields": ["#1 String", "#2 String"], "label_field": "Quality", "max_examples": 200}
    rows = read_task(shared_data / "MRPC" / "train.tsv", ft["text_fields"], "Quality", False, max_examples=200,
                     seed=3).texts
    (tmp_path / "texts.txt").write_text("".join(t + "\n" for row in rows for t in row))
    data = {"seq_len": 32, "max_sequences": 60, "eval_sequences": 8}
    files = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {"files": ["texts.txt"]}})
    want = load_corpus(load_recipe(files), tokenizer)
    task = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {"task": True}}, finetune=ft)
    got = load_corpus(load_recipe(task), tokenizer)
    assert len(want[0]) == 60 and all(torch.equal(a[:], b[:]) for a, b in zip(want, got))
    # another sample of the task (max_examples) is another corpus, not the cached one
    other = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {"task": True}},
                         finetune={**ft, "max_examples": 100})
    assert not torch.equal(load_corpus(load_recipe(other), tokenizer)[0][:], got[0][:])

    alone = write_recipe(tmp_path, tiny_source, shared_data, data={**data, "corpus": {"task": True}})
    with pytest.raises(RecipeError, match=r"data\.corpus\.task.*no finetune section"):
        load_recipe(alone)
    two = write_recipe(tmp_path, tiny_source, shared_data, finetune=ft,
                       data={**data, "corpus": {"task": True, "files": ["texts.txt"]}})
    with pytest.raises(RecipeError, match=r"data\.corpus.*exactly one of files, dataset, builtin or task"):
        load_recipe(two)
