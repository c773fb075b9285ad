"""Compressing sentence-embedding models for what they are: pooling, the embedding_distill stage's losses and
terms, the similarity fidelity, and a student that sentence-transformers opens."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

from slimbert.data.corpus import Batches
from slimbert.data.pairs import read_pairs
from slimbert.data.tasks import TaskDataError
from slimbert.engine.sentence import pair_cosines, spearman, write_sentence_transformers
from slimbert.models.modeling import pool
from slimbert.recipe.checks import advice
from slimbert.recipe.schema import Stage
from slimbert.teacher.source import describe_source, sentence_pooling
from slimbert.transfer import losses as L
from slimbert.transfer.strategies import Shard, TeacherFacts, TransferInputs, stage_problems, strategy

from conftest import write_recipe

STAGE = TypeAdapter(Stage)


def test_pool_mean_over_real_tokens_and_cls():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(h, mask, "mean").tolist() == [[2.0, 3.0]]       # padding left out
    assert pool(h, None, "mean")[0].tolist() == pytest.approx([104 / 3, 106 / 3])
    assert pool(h, mask, "cls").tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="pooling 'max'"):
        pool(h, mask, "max")


def test_embedding_losses_golden():
    t = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    s = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    assert L.embedding_mse_loss(t, s).item() == pytest.approx(0.5)        # (1 + 1) / 4
    assert L.embedding_cosine_loss(t, s).item() == pytest.approx(0.5)     # (1 - 0 + 1 - 1) / 2
    # the similarity matrix ignores width, scale and rotation: a rotated, scaled, wider copy costs nothing
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(8, 8))
    wide = torch.cat([x, torch.zeros(6, 4)], 1) @ q * 3
    assert L.similarity_matrix_loss(x, wide).item() == pytest.approx(0.0, abs=1e-10)
    assert L.similarity_matrix_loss(x, torch.randn(6, 4)).item() > 0.05


def test_source_pooling_from_the_sentence_transformers_layout(minilm_path, tiny_source, tmp_path):
    assert sentence_pooling(Path(minilm_path)) == "mean"
    info = describe_source(Path(minilm_path))
    assert info.sentence_transformers and info.pooling == "mean" and not info.has_mlm_head
    assert sentence_pooling(tiny_source) is None and describe_source(tiny_source).pooling == "mean"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "x.Transformer"},
                                                       {"idx": 1, "name": "1", "path": "1_Pooling",
                                                        "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert sentence_pooling(tmp_path) == "cls"


def test_read_pairs_finds_the_glue_columns(shared_data, tmp_path):
    mrpc = read_pairs(shared_data / "MRPC" / "dev.tsv")
    assert len(mrpc) == 408 and all(a and b for a, b in mrpc)
    rte = read_pairs(shared_data / "RTE" / "dev.tsv", max_pairs=50, seed=1)
    assert len(rte) == 50 and rte != read_pairs(shared_data / "RTE" / "dev.tsv", max_pairs=50, seed=2)
    with pytest.raises(TaskDataError, match="no sentence-pair columns"):
        read_pairs(shared_data / "SST-2" / "dev.tsv")


def test_spearman_of_pair_cosines():
    torch.manual_seed(0)
    e = torch.randn(40, 8)
    assert spearman(pair_cosines(e), pair_cosines(e * 2)) == pytest.approx(1.0)
    assert abs(spearman(pair_cosines(e), pair_cosines(torch.randn(40, 8)))) < 0.5


def test_embedding_distill_problems_and_advice():
    f = TeacherFacts(layers=4, heads=4, width=64, student_width=64, student_heads=4, inverted_bottleneck=False,
                     has_mlm_head=False)
    none = STAGE.validate_python({"kind": "embedding_distill", "steps": 5, "mse": 0, "cosine": 0, "similarity": 0})
    assert stage_problems([none], f)[0][0] == "transfer.0.mse"
    ok = STAGE.validate_python({"kind": "embedding_distill", "steps": 5})
    assert stage_problems([ok], f) == [] and ok.pooling == "auto"
    assert strategy(ok).plan_row(ok, 2)["losses"] == {"mse": 1.0, "cosine": 1.0, "similarity": 1.0, "tokens": 0.0,
                                                      "hidden": 0.0}


def test_validate_suggests_embedding_distill_for_a_sentence_model(tmp_path, minilm_path, shared_data):
    from slimbert.recipe import load_recipe

    stages = [{"kind": "joint", "steps": 4, "batch_size": 4, "losses": {"attention": 0}},
              {"kind": "pretrain_distill", "steps": 4, "batch_size": 4, "alpha": 1.0}]
    r = load_recipe(write_recipe(tmp_path, Path(minilm_path), shared_data, transfer=stages))
    notes = advice(r.recipe, r.source.has_mlm_head, r.source.sentence_transformers)
    assert notes and notes[0][0] == "transfer.1.kind" and "embedding_distill" in notes[0][1]
    stages.append({"kind": "embedding_distill", "steps": 4, "batch_size": 4})
    r = load_recipe(write_recipe(tmp_path, Path(minilm_path), shared_data, transfer=stages))
    assert advice(r.recipe, r.source.has_mlm_head, r.source.sentence_transformers) == []
    assert r.recipe.transfer[2].pooling == "mean"  # auto: the source's own, in the resolved recipe


def test_embedding_distill_terms_train_the_student_towards_the_source(tiny_source, tokenizer, shared_data):
    from torch import nn

    from slimbert.data.corpus import pack, read_texts
    from slimbert.models import SlimBertConfig, SlimBertForMaskedLM
    from slimbert.teacher.adapters import HFEncoderTeacher

    teacher = HFEncoderTeacher(tiny_source)
    torch.manual_seed(0)
    student = SlimBertForMaskedLM(SlimBertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32,
                                                 intra_bottleneck_size=16, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=32,
                                                 max_position_embeddings=128))
    projections = nn.ModuleList(nn.Linear(32, 64) for _ in range(2))  # 32 -> the source's 64, as the runner's
    seqs = pack(read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"])[:400], tokenizer, 32, 64)
    batches = Batches(seqs, 8, seed=0, stage=0)
    x = TransferInputs(student, teacher, projections, [2, 4], tokenizer, 0.15, False, Shard())
    st = STAGE.validate_python({"kind": "embedding_distill", "steps": 30, "pooling": "mean"})
    s = strategy(st)
    first = s.terms(st, x, 0, batches)
    assert set(first) == {"mse", "cosine", "similarity"} and all(math.isfinite(v.item()) for v in first.values())
    params = [p for n, p in student.named_parameters() if not n.startswith("cls.")] + list(projections.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    for step in range(30):
        loss = sum(s.terms(st, x, step % 4, batches).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = s.terms(st, x, 0, batches)
    assert sum(last.values()).item() < 0.5 * sum(first.values()).item()
    assert all(p.grad is None for n, p in student.named_parameters() if n.startswith("cls.predictions.decoder"))


def test_embedding_distill_on_texts_pools_over_each_texts_own_tokens(tiny_source, tokenizer, shared_data, tmp_path):
    """inputs: texts (the default) reads one padded text per row: the source's target is its embedding of each
    text alone, as a user embeds it, whatever padding the batch adds."""
    from slimbert.data import cache as C
    from slimbert.data.corpus import iter_texts
    from slimbert.models import SlimBertConfig, SlimBertForMaskedLM
    from slimbert.teacher.adapters import HFEncoderTeacher
    from transformers import AutoModel

    f = shared_data / "MRPC" / "dev.tsv"
    texts = [line.split("\t")[3] for line in f.read_text(encoding="utf-8").splitlines()[1:40]]
    (tmp_path / "s.txt").write_text("\n".join(texts) + "\n")
    files = [tmp_path / "s.txt"]
    rows = C.load_or_build(lambda: iter_texts(files), C.files_identity(files), tokenizer, 48, cache_dir=tmp_path,
                           layout="texts").rows
    teacher = HFEncoderTeacher(tiny_source)
    student = SlimBertForMaskedLM(SlimBertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=64,
                                                 intra_bottleneck_size=16, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64,
                                                 max_position_embeddings=128))
    x = TransferInputs(student, teacher, None, [2, 4], tokenizer, 0.15, False, Shard())
    st = STAGE.validate_python({"kind": "embedding_distill", "steps": 3, "pooling": "mean", "mse": 1.0,
                                "cosine": 0, "similarity": 0})
    assert st.inputs == "texts"
    batches = Batches(rows, 4, seed=0, stage=0)
    got = strategy(st).terms(st, x, 0, batches)["mse"]
    # the same MSE from each text embedded on its own, with no padding at all
    source = AutoModel.from_pretrained(tiny_source).eval()
    want = []
    for row in batches.batch(0):
        ids = row[row != C.PAD][None]
        with torch.no_grad():
            t = source(input_ids=ids).last_hidden_state.mean(1)
            s_ = student.slimbert(ids).last_hidden_state.mean(1)
        want.append(((t - s_) ** 2).mean())
    torch.testing.assert_close(got.detach(), torch.stack(want).mean(), rtol=2e-4, atol=1e-6)


def test_write_sentence_transformers_layout(minilm_path, tmp_path):
    write_sentence_transformers(tmp_path, Path(minilm_path), 96, "mean")
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 96 and pooling["pooling_mode_mean_tokens"]
    assert (tmp_path / "sentence_bert_config.json").is_file()


@pytest.mark.e2e
def test_a_sentence_transformers_student_opens_in_sentence_transformers(tmp_path, tiny_source, shared_data):
    """A run on a sentence-transformers source (a tiny BERT in that layout) with an embedding_distill stage: the
    student, of a shape stock MobileBERT expresses, opens with SentenceTransformer and embeds as slimbert pools;
    similarity.json reports the Spearman on MRPC pairs."""
    import shutil

    import slimbert
    from sentence_transformers import SentenceTransformer

    src = tmp_path / "st-source"
    shutil.copytree(tiny_source, src)
    (src / "1_Pooling").mkdir()
    (src / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (src / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 64,
                                                              "pooling_mode_mean_tokens": True}))
    (src / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    stages = [{"kind": "joint", "steps": 3, "batch_size": 4},
              {"kind": "embedding_distill", "steps": 3, "batch_size": 4}]
    recipe = write_recipe(tmp_path, src, shared_data, transfer=stages,
                          data={"corpus": {"files": [str(shared_data / "wikitext-2-raw" / "wiki.test.raw")]},
                                "seq_len": 32, "max_sequences": 64, "eval_sequences": 8,
                                "similarity_pairs": [str(shared_data / "MRPC" / "dev.tsv")],
                                "similarity_max_pairs": 30})
    out = slimbert.compress(recipe, out=tmp_path / "run")
    student_dir = out / "student"
    config = json.loads((student_dir / "config.json").read_text())
    assert config["model_type"] == "mobilebert"  # stock: no remote code needed
    report = json.loads((out / "similarity.json").read_text())
    m = report["files"][str(shared_data / "MRPC" / "dev.tsv")]
    assert m["pairs"] == 30 and -1 <= m["spearman"] <= 1
    model = SentenceTransformer(str(student_dir), device="cpu")
    emb = model.encode(["a short sentence", "another, somewhat longer sentence here"], convert_to_tensor=True)
    assert emb.shape == (2, 64)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student_dir)
    enc = tok(["a short sentence", "another, somewhat longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        mine = pool(AutoModel.from_pretrained(student_dir)(**enc).last_hidden_state, enc["attention_mask"], "mean")
    torch.testing.assert_close(emb, mine, rtol=1e-4, atol=1e-4)


def test_the_tokens_term_is_the_last_hidden_states_mse_over_real_tokens(tiny_source, tokenizer):
    """embedding_distill's `tokens` term: the MSE of every real token's last hidden state (through the projection
    when the widths differ): zero for a student that is its source (on padded texts), and it sees a moved output."""
    from transformers import AutoModel

    from slimbert.data.corpus import Batches as B
    from slimbert.models import SlimBertForMaskedLM
    from slimbert.models.encoders import from_encoder
    from slimbert.teacher.adapters import HFEncoderTeacher

    source = AutoModel.from_pretrained(tiny_source).eval()
    student = SlimBertForMaskedLM(from_encoder(source).config)
    student.slimbert.load_state_dict(from_encoder(source).state_dict(), strict=False)
    student.eval()  # no dropout: the same function as the source
    enc = tokenizer(["a short one", "a rather longer sentence than the first"], padding="max_length", max_length=16,
                    return_tensors="pt")["input_ids"]
    x = TransferInputs(student, HFEncoderTeacher(tiny_source), None, [4], tokenizer, 0.15, False, Shard())
    st = STAGE.validate_python({"kind": "embedding_distill", "steps": 1, "tokens": 1.0, "mse": 0, "cosine": 0,
                                "similarity": 0, "pooling": "mean"})
    terms = strategy(st).terms(st, x, 0, B(enc, 2, seed=0, stage=0))
    assert set(terms) == {"tokens"} and terms["tokens"].item() < 1e-10
    with torch.no_grad():
        student.slimbert.encoder.layer[-1].output.LayerNorm.bias.add_(0.5)
    moved = strategy(st).terms(st, x, 0, B(enc, 2, seed=0, stage=0))["tokens"].item()
    assert moved > 1e-4


def test_the_hidden_term_reads_each_layer_below_the_last_through_the_layer_map(tiny_source, tokenizer):
    """embedding_distill's `hidden` term: the MSE of each student layer but the last against the source layer the
    layer map names: zero for a student that is its source, above zero when a lower layer moves (the last layer
    untouched) or when the map points at other layers; the IB teacher's layer map is refused."""
    from transformers import AutoModel

    from slimbert.data.corpus import Batches as B
    from slimbert.models import SlimBertForMaskedLM
    from slimbert.models.encoders import from_encoder
    from slimbert.teacher.adapters import HFEncoderTeacher

    source = AutoModel.from_pretrained(tiny_source).eval()
    student = SlimBertForMaskedLM(from_encoder(source).config)
    student.slimbert.load_state_dict(from_encoder(source).state_dict(), strict=False)
    student.eval()
    enc = tokenizer(["a short one", "a rather longer sentence than the first"], padding="max_length", max_length=16,
                    return_tensors="pt")["input_ids"]
    teacher = HFEncoderTeacher(tiny_source)
    st = STAGE.validate_python({"kind": "embedding_distill", "steps": 1, "hidden": 1.0, "mse": 0, "cosine": 0,
                                "similarity": 0, "pooling": "mean"})

    def term(layer_map: list[int]) -> float:
        x = TransferInputs(student, teacher, None, layer_map, tokenizer, 0.15, False, Shard())
        terms = strategy(st).terms(st, x, 0, B(enc, 2, seed=0, stage=0))
        assert set(terms) == {"hidden"}
        return terms["hidden"].item()

    assert term([1, 2, 3, 4]) < 1e-10
    assert term([2, 3, 4, 4]) > 1e-4                  # layer 1 held to layer 2's output: the map is read
    with torch.no_grad():
        student.slimbert.encoder.layer[1].output.LayerNorm.bias.add_(0.5)
    assert term([1, 2, 3, 4]) > 1e-4
    f = TeacherFacts(layers=4, heads=4, width=64, student_width=64, student_heads=4, inverted_bottleneck=True,
                     has_mlm_head=False)
    assert stage_problems([st], f)[0][0] == "transfer.0.hidden"
    one = TeacherFacts(layers=4, heads=4, width=64, student_width=64, student_heads=4, inverted_bottleneck=False,
                       has_mlm_head=False, student_layers=1)
    assert stage_problems([st], one)[0][0] == "transfer.0.hidden"
    assert stage_problems([st], dataclasses.replace(one, student_layers=2)) == []


def test_runner_encoder_feeds_int64_numpy_and_zero_token_types():
    """An exported model's runner scores pairs like the PyTorch encoder: int64 numpy inputs, token_type_ids zeros
    when the tokenizer gives none (RoBERTa-style), the first output back as a tensor."""
    import numpy as np

    from slimbert.engine.sentence import runner_encoder

    seen = {}

    class Runner:
        def run(self, feed):
            seen.update(feed)
            return [np.full((*feed["input_ids"].shape, 3), 0.5, np.float32)]

    out = runner_encoder(Runner())({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3)})
    assert set(seen) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(v.dtype == np.int64 for v in seen.values())
    assert seen["token_type_ids"].tolist() == [[0, 0, 0]]
    assert out.shape == (1, 3, 3) and torch.all(out == 0.5)
