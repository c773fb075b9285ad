"""Students of sentence-embedding sources: how faithful their embeddings are (no fine-tuning needed) and saving
them in the sentence-transformers layout, so `SentenceTransformer(student_dir)` opens them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch

from ..data.builtin import pairs_path
from ..data.pairs import read_pairs
from ..models.modeling import pool

Encoder = Callable[[dict], torch.Tensor]  # tokenised batch -> last hidden state B x T x H


@torch.no_grad()
def embed(encoder: Encoder, tokenizer, texts: list[str], pooling: str, seq_len: int, device: torch.device,
          batch_size: int = 64) -> torch.Tensor:
    """Pooled sentence embeddings (N x H, fp32 on the CPU)."""
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], truncation=True, max_length=seq_len, padding=True,
                        return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append(pool(encoder(enc).float(), enc["attention_mask"], pooling).cpu())
    return torch.cat(out)


def pair_cosines(embeddings: torch.Tensor) -> torch.Tensor:
    """Embeddings of [a_1..a_n, b_1..b_n] -> cos(a_i, b_i)."""
    a, b = embeddings.chunk(2)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x.numpy(), y.numpy())[0])


def similarity_fidelity(source: Encoder, student: Encoder, tokenizer, pairs: list[tuple[str, str]], pooling: str,
                        seq_len: int, device: torch.device) -> dict:
    """Spearman between the source's and the student's cosine similarities of the same sentence pairs: 1 means
    the student ranks every pair as the source does (what search and clustering read)."""
    texts = [a for a, _ in pairs] + [b for _, b in pairs]
    s = pair_cosines(embed(source, tokenizer, texts, pooling, seq_len, device))
    t = pair_cosines(embed(student, tokenizer, texts, pooling, seq_len, device))
    return {"spearman": round(spearman(s, t), 4), "pairs": len(pairs),
            "source_mean_cosine": round(float(s.mean()), 4), "student_mean_cosine": round(float(t.mean()), 4)}


def hf_encoder(model) -> Encoder:
    """A transformers (or slimbert) encoder as an Encoder."""
    return lambda enc: model(**enc).last_hidden_state


def runner_encoder(runner) -> Encoder:
    """An exported feature-extraction model's runner (slimbert.export.runtime: run(feed) -> outputs, numpy in and
    out) as an Encoder; token_type_ids are zeros when the tokenizer gives none."""
    import numpy as np

    def encode(enc: dict) -> torch.Tensor:
        feed = {k: v.cpu().numpy().astype(np.int64) for k, v in enc.items()}
        feed.setdefault("token_type_ids", np.zeros_like(feed["input_ids"]))
        return torch.from_numpy(runner.run(feed)[0])
    return encode


def similarity_report(student, source_path, tokenizer, pair_files: list[Path], pooling: str, seq_len: int,
                      max_pairs: int, seed: int) -> dict:
    """similarity_fidelity of the student against the source on each file's pairs."""
    from transformers import AutoModel

    device = next(student.parameters()).device
    source = AutoModel.from_pretrained(str(source_path), use_safetensors=True).to(device).eval()
    was_training = student.training
    student.eval()
    try:
        return {str(f): similarity_fidelity(hf_encoder(source), hf_encoder(student), tokenizer,
                                            read_pairs(f, max_pairs, seed), pooling, seq_len, device)
                for f in pair_files}
    finally:
        student.train(was_training)


def write_sentence_transformers(student_dir: Path, source_dir: Path, width: int, pooling: str) -> None:
    """The source's sentence-transformers layout around the student's weights: its modules.json (the
    Transformer module at the root, then Pooling and Normalize; a Dense module is dropped, since it reads the
    source's width), a Pooling config of the student's width with the source's pooling, and
    sentence_bert_config.json."""
    modules = json.loads((source_dir / "modules.json").read_text())
    kept = [m for m in modules if not m.get("type", "").endswith(".Dense")]
    for i, m in enumerate(kept):
        m["idx"], m["name"] = i, str(i)
    (student_dir / "modules.json").write_text(json.dumps(kept, indent=2))
    for m in kept:
        if m["path"] and m["type"].endswith(".Pooling"):
            (student_dir / m["path"]).mkdir(parents=True, exist_ok=True)
            config = {"word_embedding_dimension": width, "pooling_mode_cls_token": pooling == "cls",
                      "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": False,
                      "pooling_mode_mean_sqrt_len_tokens": False}
            (student_dir / m["path"] / "config.json").write_text(json.dumps(config, indent=2))
        elif m["path"] and (source_dir / m["path"]).is_dir():
            shutil.copytree(source_dir / m["path"], student_dir / m["path"], dirs_exist_ok=True)
    for name in ("sentence_bert_config.json", "config_sentence_transformers.json"):
        if (source_dir / name).is_file():
            shutil.copy(source_dir / name, student_dir / name)
    if not (student_dir / "sentence_bert_config.json").is_file():
        (student_dir / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512,
                                                                           "do_lower_case": False}))


def finish_sentence_student(r, student, tokenizer, student_dir: Path, out: Path, say: Callable[[str], None]) -> None:
    """After the student is saved: the sentence-transformers layout when the source has one, and the similarity
    fidelity on data.similarity_pairs (similarity.json in the run directory)."""
    source_dir = r.source_path if isinstance(r.source_path, Path) else None
    if r.source.sentence_transformers and source_dir is not None:
        write_sentence_transformers(student_dir, source_dir, student.config.hidden_size, r.source.pooling)
    pairs = r.recipe.data.similarity_pairs
    if not pairs:
        return
    files = [pairs_path(x, r.base) for x in pairs]
    report = similarity_report(student.slimbert, r.source_path, tokenizer, files, r.source.pooling,
                               r.recipe.data.seq_len, r.recipe.data.similarity_max_pairs, r.recipe.seed)
    (out / "similarity.json").write_text(json.dumps({"pooling": r.source.pooling, "files": report}, indent=2))
    for f, m in report.items():
        say(f"similarity to the source on {Path(f).parent.name}/{Path(f).name}: Spearman {m['spearman']:.3f} "
            f"over {m['pairs']} pairs")
