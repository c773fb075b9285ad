"""TinyBERT-style task data augmentation: neighbours from an embedding table, word swaps, teacher labels."""

import random
import re

import pytest
import torch

from slimbert.data.augment import WordSubstitution, augment_task_data, candidate_vocabulary, nearest_words
from slimbert.data.tasks import TaskData


def _table(tokenizer, close: dict[str, str], seed: int = 0) -> torch.Tensor:
    """A random embedding table where each `close` word's row is a small step from its partner's."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(len(tokenizer), 32, generator=g)
    vocab = tokenizer.get_vocab()
    for word, partner in close.items():
        table[vocab[partner]] = table[vocab[word]] + 0.01 * torch.randn(32, generator=g)
    return table


def test_candidates_are_whole_words_only(tokenizer):
    vocab = candidate_vocabulary(tokenizer)
    words = set(vocab.values())
    assert {"movie", "film", "said"} <= words
    assert not any(w.startswith("##") or not w.isalpha() or len(w) < 3 for w in words)
    assert not {"the", "and", "which", "to"} & words
    assert not set(tokenizer.all_special_ids) & set(vocab)
    assert all(tokenizer(" " + w, add_special_tokens=False)["input_ids"] == [i] for i, w in vocab.items())


def test_nearest_words_follow_the_embedding_table(tokenizer):
    table = _table(tokenizer, {"movie": "film", "said": "told"})
    vocab = candidate_vocabulary(tokenizer)
    ids = tokenizer.convert_tokens_to_ids(["movie", "said"])
    near = nearest_words(table, vocab, ids, k=5)
    assert near[ids[0]][0] == "film" and near[ids[1]][0] == "told"
    assert all(len(v) == 5 and "movie" not in near[ids[0]] for v in near.values())
    # the cosine ranking, recomputed by hand for one word
    cand = torch.tensor(sorted(vocab))
    cos = torch.nn.functional.cosine_similarity(table[ids[1]][None], table[cand], dim=-1)
    order = [vocab[int(cand[j])] for j in cos.argsort(descending=True).tolist() if int(cand[j]) != ids[1]]
    assert near[ids[1]] == order[:5]


def test_copies_swap_words_and_keep_everything_else(tokenizer):
    table = _table(tokenizer, {"movie": "film"})
    sub = WordSubstitution(tokenizer, table, candidates=3)
    data = TaskData(texts=[("The movie, at 120 minutes, is long.", "A movie isn't short.")] * 2,
                    labels=[1, 0], label_names=["0", "1"])
    out = augment_task_data(data, sub, copies=3, prob=1.0, seed=0)
    assert len(out.texts) == 6 and out.labels == [1, 1, 1, 0, 0, 0]
    between = re.compile(r"[\W\d_]+")
    for first, second in out.texts:
        assert between.findall(first) == between.findall(data.texts[0][0])   # numbers, punctuation, spacing stay
        assert " 120 " in first and first.startswith("The ") and " is " in first   # function words stay
        assert "movie" not in re.findall(r"\w+", first + " " + second)   # prob 1: every replaceable word swaps
        assert "isn't" in second                                       # several tokens: kept
        assert first.split()[1].rstrip(",") == second.split()[1]       # "movie": swapped alike in both texts
    again = augment_task_data(data, WordSubstitution(tokenizer, table, candidates=3), copies=3, prob=1.0, seed=0)
    assert again.texts == out.texts
    assert augment_task_data(data, sub, copies=3, prob=1.0, seed=1).texts != out.texts


def test_swap_probability_is_what_was_asked(tokenizer):
    sub = WordSubstitution(tokenizer, _table(tokenizer, {}), candidates=5)
    text = " ".join(["movie", "house", "river", "green", "table"] * 40)   # no function words
    sub.prepare([text])
    rng = random.Random(0)
    swapped = [a != b for _ in range(40) for a, b in zip(text.split(), sub((text,), 0.4, rng)[0].split())]
    assert 0.3 < sum(swapped) / len(swapped) < 0.5


def test_an_embedding_table_of_another_vocabulary_is_refused(tokenizer):
    with pytest.raises(ValueError, match="not the same model's"):
        WordSubstitution(tokenizer, torch.zeros(100, 8))


def test_the_teacher_labels_the_copies_and_the_originals_keep_theirs(tokenizer, tiny_source, shared_data):
    from transformers import AutoModelForSequenceClassification

    from slimbert.engine.finetune import ClassificationTask, TeacherOutputs, augment
    from slimbert.recipe.schema import Finetune

    spec = Finetune(task="mrpc", train=str(shared_data / "MRPC" / "train.tsv"),
                    dev=str(shared_data / "MRPC" / "dev.tsv"), text_fields=["#1 String", "#2 String"],
                    label_field="Quality", max_examples=24, seq_len=64, distill=True, augment=2)
    task = ClassificationTask(spec, shared_data, tokenizer)
    gold = task.train["labels"].clone()
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_source), num_labels=2).eval()
    assert augment(task, teacher, tokenizer, seed=0) == 48
    assert (task.n_original, task.n_train) == (24, 72)
    outputs = TeacherOutputs(teacher, task, batch_size=16)
    task.label_copies(outputs)
    assert torch.equal(task.train["labels"][:24], gold)
    assert torch.equal(task.train["labels"][24:], outputs.outputs["logits"][24:].argmax(-1))


@pytest.mark.parametrize("change, message", [
    (dict(distill=False), "set distill: true"),
    (dict(format="squad"), "format: glue"),
    (dict(augment=0, augment_prob=0.3), "augment_prob shapes the augmented copies, but augment is 0"),
])
def test_augment_needs_a_teacher_and_sentences(change, message):
    from pydantic import ValidationError

    from slimbert.recipe.schema import Finetune

    with pytest.raises(ValidationError, match=message):
        Finetune(task="t", train="a.tsv", dev="b.tsv", **{"distill": True, "augment": 2, **change})


def test_byte_level_bpe_words_are_found_as_roberta_reads_them(shared_data, tmp_path):
    """RoBERTa-style tokenizers mark a word start with a space ("Ġmovie"); only those entries are candidates, and a
    word of running text is looked up as one."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(shared_data / "wikitext-2-raw" / "wiki.test.raw")], vocab_size=2000, min_frequency=2,
              special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    vocab = candidate_vocabulary(tok)
    assert vocab and all(tok.convert_ids_to_tokens(i).startswith("Ġ") for i in vocab)
    word = next(w for w in vocab.values() if len(w) > 4)
    sub = WordSubstitution(tok, torch.randn(len(tok), 16), candidates=3)
    sub.prepare([f"The {word} was here."])
    copy = sub((f"The {word} was here.",), 1.0, random.Random(0))[0]
    assert copy != f"The {word} was here." and copy.startswith("The ") and copy.endswith(" was here.")
