"""SQuAD-format extractive QA: reading local JSON (v1.1 or v2.0), windowed features, span decoding, EM/F1.

Long contexts are cut into overlapping windows (doc_stride); a window that does not hold the answer is
labelled with the [CLS] position, as in BERT's SQuAD code. EM and F1 follow the official evaluation script's
answer normalisation (lower case, no punctuation, no articles, single spaces).
"""

from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

import torch

from .tasks import TaskDataError


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[str]             # empty: unanswerable (SQuAD v2)
    answer_start: int | None       # character offset of the first answer (training)


def read_squad(path: Path, max_examples: int | None = None) -> list[QAExample]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TaskDataError(f"{path}: not SQuAD-format JSON (expected {{'data': [{{'paragraphs': ...}}]}}): {e}") \
            from None
    out = []
    for article in data:
        for para in article.get("paragraphs", []):
            context = para["context"]
            for qa in para.get("qas", []):
                answers = [a["text"] for a in qa.get("answers", [])]
                start = qa["answers"][0]["answer_start"] if answers else None
                if start is not None and context[start:start + len(answers[0])] != answers[0]:
                    raise TaskDataError(f"{path}: question {qa['id']}: answer_start {start} does not point at "
                                        f"{answers[0]!r} in its context")
                out.append(QAExample(str(qa["id"]), qa["question"], context, answers, start))
                if max_examples and len(out) >= max_examples:
                    return out
    if not out:
        raise TaskDataError(f"{path}: no questions")
    return out


def features(examples: list[QAExample], tokenizer, seq_len: int, doc_stride: int) -> dict:
    """Windows over each (question, context): input tensors, start/end positions, and what decoding needs."""
    enc = tokenizer([e.question for e in examples], [e.context for e in examples], truncation="only_second",
                    max_length=seq_len, stride=doc_stride, return_overflowing_tokens=True,
                    return_offsets_mapping=True, padding="max_length")
    owner = enc["overflow_to_sample_mapping"]
    starts, ends, offsets = [], [], []
    for i, offs in enumerate(enc["offset_mapping"]):
        seq_ids = enc.sequence_ids(i)
        ex = examples[owner[i]]
        # offsets of context tokens only; None elsewhere, so decoding never answers with the question
        offsets.append([o if s == 1 else None for o, s in zip(offs, seq_ids)])
        ctx = [j for j, s in enumerate(seq_ids) if s == 1]
        if not ex.answers or ex.answer_start is None:
            starts.append(0), ends.append(0)
            continue
        a, b = ex.answer_start, ex.answer_start + len(ex.answers[0])
        if offs[ctx[0]][0] > a or offs[ctx[-1]][1] < b:
            starts.append(0), ends.append(0)  # not in this window: [CLS]
            continue
        s = next(j for j in ctx if offs[j][1] > a)
        e = next(j for j in reversed(ctx) if offs[j][0] < b)
        starts.append(s), ends.append(e)
    tensors = {k: torch.tensor(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    tensors["start_positions"] = torch.tensor(starts)
    tensors["end_positions"] = torch.tensor(ends)
    return {"tensors": tensors, "owner": list(owner), "offsets": offsets}


def best_answers(examples: list[QAExample], feats: dict, start_logits: torch.Tensor, end_logits: torch.Tensor,
                 max_answer_length: int = 30, top_k: int = 20) -> dict[str, str]:
    """The highest-scoring valid span (start <= end, within the context, at most max_answer_length tokens)
    over all windows of each example."""
    best: dict[int, tuple[float, str]] = {}
    for i in range(len(feats["owner"])):
        offs = feats["offsets"][i]
        ex = examples[feats["owner"][i]]
        s_top = torch.topk(start_logits[i], min(top_k, start_logits.shape[1])).indices.tolist()
        e_top = torch.topk(end_logits[i], min(top_k, end_logits.shape[1])).indices.tolist()
        for s in s_top:
            for e in e_top:
                if offs[s] is None or offs[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[i, s] + end_logits[i, e])
                if feats["owner"][i] not in best or score > best[feats["owner"][i]][0]:
                    best[feats["owner"][i]] = (score, ex.context[offs[s][0]:offs[e][1]])
    return {ex.id: best.get(k, (0.0, ""))[1] for k, ex in enumerate(examples)}


def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _f1(prediction: str, truth: str) -> float:
    p, t = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not p or not t:
        return float(p == t)
    common = collections.Counter(p) & collections.Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(examples: list[QAExample], predictions: dict[str, str]) -> dict[str, float]:
    """Exact match and F1 in percent, each the best over an example's reference answers (unanswerable: the
    empty answer)."""
    em = f1 = 0.0
    for ex in examples:
        truths = ex.answers or [""]
        pred = predictions.get(ex.id, "")
        em += max(float(normalize_answer(pred) == normalize_answer(t)) for t in truths)
        f1 += max(_f1(pred, t) for t in truths)
    n = max(len(examples), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}
