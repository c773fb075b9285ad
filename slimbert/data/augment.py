"""Task data augmentation for distillation (TinyBERT's, section 3.2 of its paper), without downloads.

TinyBERT replaces each word of a training sentence, with probability p, by one of its K nearest candidates (a
masked LM's predictions for single-piece words, GloVe neighbours for the rest), makes N such copies of every
example, and lets the fine-tuned teacher label them. The student then matches the teacher on N times as many
inputs around the training set: the lever that paid most on the small GLUE tasks there.

Here the candidates come from the nearest neighbours of the word in the teacher's own input-embedding table,
by cosine, among vocabulary entries that are whole words: the same tokens the teacher reads, no masked-LM head
(embedding and reranking models have none) and no word-vector download. Only words that the tokenizer keeps
as one token are replaced, and not function words (scikit-learn's English stop words) or words under three
letters: a masked LM would swap "the" or "to" in context, but their embedding neighbours ("of", "s") break the
sentence. Every other word, punctuation and numbers stay as they are. A subword tokenizer's word-start pieces
("Ġdif" in byte-level BPE) pass the whole-word test too; in a trained embedding table they are rarely a real
word's nearest neighbours. The labels of the copies are left to the
caller (the teacher's predictions, see engine/finetune.py).
"""

from __future__ import annotations

import random
import re

import torch

from slimbert.data.tasks import TaskData

# A word of running text: letters, with inner apostrophes ("don't" stays one word, and as several tokens is kept).
_WORDS = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def _whole_word_token(tokenizer, word: str) -> int | None:
    """The one token id the tokenizer gives `word` as a word of running text, or None when it takes several
    pieces. A leading space makes byte-level BPE (RoBERTa, GPT-2) and SentencePiece read it as a word start."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def replaceable(word: str) -> bool:
    """A word that may be swapped or swapped in: letters only, three or more, not a function word."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return len(word) >= 3 and word.isalpha() and word.lower() not in ENGLISH_STOP_WORDS


def candidate_vocabulary(tokenizer) -> dict[int, str]:
    """token id -> word, for the vocabulary entries that are whole replaceable words read back as themselves:
    the substitutes a word may get (no '##' pieces, no special tokens, no punctuation, no function words)."""
    special = set(tokenizer.all_special_ids)
    out: dict[int, str] = {}
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        word = tokenizer.convert_tokens_to_string([token]).strip()
        if replaceable(word) and _whole_word_token(tokenizer, word) == i:
            out[i] = word
    return out


@torch.no_grad()
def nearest_words(embeddings: torch.Tensor, vocabulary: dict[int, str], ids: list[int], k: int,
                  chunk: int = 1024) -> dict[int, list[str]]:
    """id -> its k nearest words of `vocabulary` by the cosine of their rows of `embeddings` (V x H), nearest
    first, itself and case variants of itself excluded."""
    if not ids or not vocabulary:
        return {}
    cand = torch.tensor(sorted(vocabulary))
    table = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)
    keys = table[cand]                                                    # C x H
    out: dict[int, list[str]] = {}
    for start in range(0, len(ids), chunk):
        part = ids[start:start + chunk]
        scores = table[torch.tensor(part)] @ keys.T                       # n x C
        top = scores.topk(min(k + 3, len(cand)), dim=-1).indices          # room for itself and its case variants
        for i, row in zip(part, top.tolist()):
            own = vocabulary.get(i, "").lower()
            words = [vocabulary[int(cand[j])] for j in row if vocabulary[int(cand[j])].lower() != own]
            out[i] = words[:k]
    return out


class WordSubstitution:
    """Builds the substitution table once for a tokenizer and an embedding table, then augments texts."""

    def __init__(self, tokenizer, embeddings: torch.Tensor, candidates: int = 15):
        if embeddings.shape[0] < len(tokenizer):
            raise ValueError(f"augment: the embedding table has {embeddings.shape[0]} rows, the tokenizer "
                             f"{len(tokenizer)} tokens: they are not the same model's")
        self.tokenizer, self.embeddings, self.k = tokenizer, embeddings, candidates
        self.vocabulary = candidate_vocabulary(tokenizer)
        self.table: dict[str, list[str]] = {}

    def prepare(self, texts: list[str]) -> None:
        """Neighbours for every replaceable word of `texts`, computed in one batch."""
        # numbers, punctuation, mixed tokens and function words are never replaced
        words = {w for t in texts for w in _WORDS.findall(t) if replaceable(w) and w not in self.table}
        ids = {}
        for w in words:
            i = _whole_word_token(self.tokenizer, w)
            if i is not None:
                ids[w] = i
            else:
                self.table[w] = []
        near = nearest_words(self.embeddings, self.vocabulary, sorted(set(ids.values())), self.k)
        for w, i in ids.items():
            self.table[w] = near.get(i, [])

    def __call__(self, texts: tuple[str, ...], prob: float, rng: random.Random) -> tuple[str, ...]:
        """`texts` (one example: a sentence or a pair) with each replaceable word swapped, with probability
        `prob`, for one of its neighbours; the spacing and punctuation between words are kept. A word is swapped
        the same way wherever it occurs in the example: independent swaps in the two texts of a pair would break
        the overlap that paraphrase and entailment hinge on (MRPC copies swapped per text were labelled
        paraphrases 47 % of the time by the teacher, against 78 % for the originals)."""
        chosen: dict[str, str] = {}

        def swap(m: re.Match) -> str:
            w = m.group(0)
            if w not in chosen:
                options = self.table.get(w)
                chosen[w] = rng.choice(options) if options and rng.random() < prob else w
            return chosen[w]

        return tuple(_WORDS.sub(swap, t) for t in texts)


def augment_task_data(data: TaskData, substitute: WordSubstitution, copies: int, prob: float,
                      seed: int = 0) -> TaskData:
    """`copies` substituted versions of every example (a pair's texts swapped alike), in example order; the
    labels are the originals' placeholders, for the teacher to overwrite. Copies equal to their original are
    redrawn a few times, so that short sentences still change."""
    substitute.prepare([t for row in data.texts for t in row])
    rng = random.Random(seed)
    texts: list[tuple[str, ...]] = []
    for row in data.texts:
        for _ in range(copies):
            for _try in range(4):
                new = substitute(row, prob, rng)
                if new != row:
                    break
            texts.append(new)
    labels = [y for y in data.labels for _ in range(copies)]
    return TaskData(texts=texts, labels=labels, label_names=data.label_names)
