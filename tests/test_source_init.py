"""student.init: prune_from_source — the source as slimbert's plain block (exact), the depth search, the width cut
through torch-pruning, and a run whose student is a stock model of its source's type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import (AutoModel, AutoModelForSequenceClassification, BertConfig, BertForMaskedLM,
                          BertForSequenceClassification, BertModel, RobertaConfig, RobertaForMaskedLM, RobertaModel,
                          RobertaForSequenceClassification)

from conftest import open_without_slimbert, write_recipe
from slimbert.models import SlimBertForMaskedLM, SlimBertForSequenceClassification, SlimBertModel
from slimbert.models.encoders import from_encoder, from_encoder_config, save_as_encoder, to_encoder, why_not_encoder
from slimbert.models.modeling import pool
from slimbert.transfer.source_init import (attach_pooler, choose_layers, init_from_source, refit, removal_cost, selection,
                                           source_as_slimbert)


def _tiny(cls, config_cls, **kw):
    torch.manual_seed(0)
    kw = {"vocab_size": 300, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
          "intermediate_size": 48, "max_position_embeddings": 40 if config_cls is RobertaConfig else 36,
          "pad_token_id": 1 if config_cls is RobertaConfig else 0, **kw}
    c = config_cls(**kw)
    return cls(c).eval()


def _batch():
    ids = torch.randint(5, 300, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask


@pytest.mark.parametrize("cls,config_cls", [(BertModel, BertConfig), (BertForMaskedLM, BertConfig),
                                            (RobertaModel, RobertaConfig), (RobertaForMaskedLM, RobertaConfig)])
def test_stock_encoders_convert_both_ways_exactly(cls, config_cls):
    hf = _tiny(cls, config_cls)
    ids, mask = _batch()
    mine = from_encoder(hf)
    assert isinstance(mine, SlimBertForMaskedLM if "MaskedLM" in cls.__name__ else SlimBertModel)
    key = "logits" if "MaskedLM" in cls.__name__ else "last_hidden_state"
    theirs = getattr(hf(input_ids=ids, attention_mask=mask), key)
    ours = getattr(mine(ids, mask), key)
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
    back = to_encoder(mine, hf.config.model_type)
    assert type(back) is cls
    torch.testing.assert_close(getattr(back(input_ids=ids, attention_mask=mask), key)[real], theirs[real],
                               rtol=1e-5, atol=1e-5)


def test_only_the_plain_block_is_a_stock_encoder():
    plain = from_encoder_config(BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48))
    assert why_not_encoder(plain, "bert") is None
    bottleneck = from_encoder_config(BertConfig(hidden_size=32, num_attention_heads=4), use_bottleneck=True,
                                     intra_bottleneck_size=16)
    assert "bottleneck" in why_not_encoder(bottleneck, "bert")
    assert "NoNorm" in why_not_encoder(from_encoder_config(BertConfig(hidden_size=32, num_attention_heads=4),
                                                           normalization_type="no_norm"), "bert")
    assert "not one of" in why_not_encoder(plain, "electra")


def test_removal_cost_is_zero_for_the_same_representation_and_grows_with_the_angle():
    a = torch.randn(5, 8)
    assert removal_cost(a, a) == pytest.approx(0.0, abs=1e-6)
    assert removal_cost(a, -a) == pytest.approx(2.0, abs=1e-6)


def _with_idle_layer(idle: int) -> BertModel:
    """A tiny BERT whose layer `idle` adds nothing (zero attention and FFN outputs, identity norms): removing it
    costs nothing, removing any other layer does."""
    hf = _tiny(BertModel, BertConfig, num_hidden_layers=4, initializer_range=0.5)  # layers that change things
    layer = hf.encoder.layer[idle]
    with torch.no_grad():
        for lin in (layer.attention.output.dense, layer.output.dense):
            lin.weight.zero_()
            lin.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    return hf


def test_the_depth_search_drops_the_layer_that_adds_nothing_first():
    hf = _with_idle_layer(2)
    ids = torch.randint(5, 300, (8, 12))
    kept, trace = choose_layers(from_encoder(hf), 2, ids, "mean")
    assert trace[0]["removed"] == 3 and 2 not in kept and len(kept) == 2 and kept == sorted(kept)
    assert trace[0]["cost_of_removing"][3] < 1e-4 < min(c for j, c in trace[0]["cost_of_removing"].items() if j != 3)
    assert len(trace) == 2 and len(trace[1]["kept"]) == 3  # re-measured after the first removal


def _dead_parts(hf: BertModel) -> BertModel:
    """Make FFN neurons 0-15 and head 1 of every layer contribute nothing (zero weights and biases)."""
    d = hf.config.hidden_size // hf.config.num_attention_heads
    with torch.no_grad():
        for layer in hf.encoder.layer:
            layer.intermediate.dense.weight[:16].zero_()
            layer.intermediate.dense.bias[:16].zero_()
            layer.output.dense.weight[:, :16].zero_()
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.weight[d:2 * d].zero_()
                lin.bias[d:2 * d].zero_()
            layer.attention.output.dense.weight[:, d:2 * d].zero_()
    return hf


def test_cutting_dead_heads_and_neurons_keeps_the_function_exactly():
    """Activation importance ranks what contributes nothing last: cutting exactly that leaves the outputs as they
    were, and the report says so (cosine 1 at every layer)."""
    hf = _dead_parts(_tiny(BertModel, BertConfig))
    config = from_encoder_config(hf.config, intermediate_size=32)  # width and heads kept: only dead neurons go
    student = SlimBertForMaskedLM(config)
    attach_pooler(student, config)
    ids = torch.randint(5, 300, (6, 12))
    report = init_from_source(student, hf, [0, 1, 2], ids, pooling="mean")
    assert all(k == list(range(16, 48)) for k in report.kept.ffn)
    assert report.layer_cosine == pytest.approx([1.0] * 4, abs=1e-5)
    x, mask = _batch()
    torch.testing.assert_close(student.slimbert(x, mask).last_hidden_state[mask.bool()],
                               hf(input_ids=x, attention_mask=mask).last_hidden_state[mask.bool()], rtol=1e-4, atol=1e-5)


def test_whole_dead_heads_go_first():
    hf = _dead_parts(_tiny(BertModel, BertConfig))
    # 3 heads of 8 (the source's width) over a 24-wide residual stream: head 1 (dead) is the one cut.
    config = from_encoder_config(hf.config, hidden_size=24, embedding_size=24, intra_bottleneck_size=24,
                                 num_attention_heads=3)
    student = SlimBertForMaskedLM(config)
    attach_pooler(student, config)
    report = init_from_source(student, hf, None, torch.randint(5, 300, (6, 12)), pooling="mean")
    d = 8
    for heads in report.kept.heads:
        assert sorted({c // d for c in heads}) == [0, 2, 3] and len(heads) == 24
    assert len(report.kept.hidden) == 24 and len(report.kept.layers) == 3
    sq = student.slimbert.encoder.layer[0].attention.self
    assert sq.num_heads == 3 and sq.head_size == 8 and sq.query.weight.shape == (24, 24)
    assert student.slimbert.pooler.dense.weight.shape == (24, 24)


def _cut(hf, refit_ids=None):
    """`hf` cut to a quarter of its FFN neurons, with the least-squares refit on `refit_ids` or without."""
    config = from_encoder_config(hf.config, intermediate_size=12)
    student = SlimBertForMaskedLM(config)
    attach_pooler(student, config)
    torch.manual_seed(1)
    report = init_from_source(student, hf, [0, 1, 2], torch.randint(5, 300, (8, 12)), pooling="mean",
                              refit_ids=refit_ids)
    return student.slimbert, report


def test_the_refit_lowers_the_error_the_cut_left_on_held_out_text():
    """Cutting heads and neurons leaves each layer's sum short of the source's; re-solving the output projections
    on corpus tokens brings the student's states closer to the source's on tokens the refit never saw, and the
    report keeps the fidelity from before the refit."""
    hf = _tiny(BertModel, BertConfig, initializer_range=0.2)
    fit = torch.randint(5, 300, (64, 12))
    plain, plain_report = _cut(hf)
    fitted, report = _cut(hf, fit)
    assert plain_report.before_refit is None
    assert report.before_refit["tokens"] == fit.numel()
    assert report.before_refit["pooled_cosine"] == pytest.approx(plain_report.pooled_cosine, abs=1e-4)
    held_out = torch.randint(5, 300, (32, 12))
    target = hf(input_ids=held_out).last_hidden_state
    err = {name: (m(held_out).last_hidden_state - target).pow(2).mean().item()
           for name, m in (("plain", plain), ("fitted", fitted))}
    assert err["fitted"] < 0.7 * err["plain"], err
    assert report.pooled_cosine > plain_report.pooled_cosine
    assert report.before_refit["kept"] is True


def test_a_refit_that_lowers_the_held_out_fidelity_is_not_kept(monkeypatch):
    """A refit on too few tokens can fit them and miss held-out text: the cut is then kept as it was before the
    refit, and the report and its one-line summary say that the refit was not kept, with the cosine it reached."""
    import slimbert.transfer.source_init as S

    def harmful(student, source, kept, ids, ridge=1e-3):  # stands in for a refit that overfits its few tokens
        for layer in student.encoder.layer:
            layer.output.dense.weight.mul_(-1.0)

    hf = _tiny(BertModel, BertConfig, initializer_range=0.2)
    plain, plain_report = _cut(hf)
    monkeypatch.setattr(S, "refit", torch.no_grad()(harmful))
    guarded, report = _cut(hf, torch.randint(5, 300, (2, 12)))
    assert report.before_refit["kept"] is False
    assert report.before_refit["pooled_cosine_refitted"] < report.before_refit["pooled_cosine"]
    assert report.pooled_cosine == pytest.approx(plain_report.pooled_cosine, abs=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), guarded.state_dict().values()):
        assert torch.equal(a, b), name
    c = hf.config
    source = SimpleNamespace(num_layers=c.num_hidden_layers, hidden_size=c.hidden_size,
                             num_heads=c.num_attention_heads, intermediate_size=c.intermediate_size)
    line = report.summary(source, plain.config)
    assert f"lowered the held-out pooled cosine to {report.before_refit['pooled_cosine_refitted']:.3f}: not kept" \
        in line and "student.refit_tokens" in line


def test_the_refit_leaves_a_layer_that_lost_nothing_as_it_was():
    """A layer kept whole and fed the source's own inputs already solves its least squares: without a ridge the
    refit returns its weights."""
    hf = _tiny(BertModel, BertConfig, initializer_range=0.2)
    config = from_encoder_config(hf.config)
    student = SlimBertForMaskedLM(config)
    report = init_from_source(student, hf, [0, 1, 2], torch.randint(5, 300, (4, 12)))
    body = student.slimbert
    before = {k: v.clone() for k, v in body.state_dict().items()}
    refit(body, source_as_slimbert(hf), report.kept, torch.randint(5, 300, (64, 12)), ridge=0.0)
    for k, v in body.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-4, atol=1e-4, msg=k)


def test_the_mlm_head_is_cut_with_the_word_table():
    hf = _tiny(BertForMaskedLM, BertConfig)
    config = from_encoder_config(hf.config, num_hidden_layers=3)
    student = SlimBertForMaskedLM(config)
    init_from_source(student, hf, [0, 1, 2], torch.randint(5, 300, (4, 10)))
    x, mask = _batch()
    torch.testing.assert_close(student(x, mask).logits[mask.bool()], hf(input_ids=x, attention_mask=mask).logits[
        mask.bool()], rtol=1e-4, atol=1e-4)


def test_selection_puts_each_student_channel_at_its_source_channel():
    w = selection([1, 4], 5)
    assert torch.equal(w @ torch.tensor([2.0, 3.0]), torch.tensor([0.0, 2.0, 0.0, 0.0, 3.0]))


def test_a_cut_mlm_student_without_a_trained_head_saves_as_the_bare_encoder(tmp_path):
    hf = _tiny(BertModel, BertConfig)
    config = from_encoder_config(hf.config, num_hidden_layers=2)
    student = SlimBertForMaskedLM(config)
    attach_pooler(student, config)
    init_from_source(student, hf, [0, 2], torch.randint(5, 300, (4, 10)))
    assert save_as_encoder(student, tmp_path, "bert", with_mlm=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["BertModel"] and saved["num_hidden_layers"] == 2
    x, mask = _batch()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids=x, attention_mask=mask).pooler_output,
                               student.slimbert(x, mask).pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.e2e
def test_a_run_cuts_minilm_and_the_student_is_a_stock_sentence_transformer(tmp_path, minilm_path, shared_data):
    """The embedding source, cut to half its depth and two thirds of its width by importance, distilled for a few
    steps: the student is a stock BertModel in the sentence-transformers layout that opens without slimbert and
    embeds exactly as slimbert pools it; the run reports the cut's fidelity before training."""
    import slimbert

    recipe = write_recipe(
        tmp_path, Path(minilm_path), shared_data, teacher={"type": "source"}, layer_map="importance",
        student={"init": "prune_from_source", "num_layers": 3, "inter_size": 256, "ffn": {"size": 1024}},
        data={"corpus": {"files": [str(shared_data / "wikitext-2-raw" / "wiki.test.raw")]}, "seq_len": 32,
              "max_sequences": 64, "eval_sequences": 8, "similarity_pairs": [str(shared_data / "MRPC" / "dev.tsv")],
              "similarity_max_pairs": 30},
        transfer=[{"kind": "joint", "steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-5},
                   "losses": {"feature_map": 1.0, "attention": 0.0}},
                  {"kind": "embedding_distill", "steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-5}}])
    out = slimbert.compress(recipe, out=tmp_path / "run")
    init = json.loads((out / "student_init.json").read_text())
    assert len(init["layers"]) == 3 and init["depth_search"] and len(init["layer_cosine"]) == 4
    assert len(init["kept"]["hidden"]) == 256 and all(len(h) == 256 for h in init["kept"]["heads"])
    student = out / "student"
    config = json.loads((student / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]) == (256, 8, 1024)
    assert "auto_map" not in config and not list(student.glob("*.py"))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(student)
    batch = dict(tok(["a short sentence", "another, somewhat longer sentence here"], padding=True,
                     return_tensors="pt"))
    theirs = open_without_slimbert(student, "AutoModel", batch, tmp_path)
    assert theirs["class"].endswith("BertModel")
    hidden = torch.tensor(theirs["out"])
    code = ("import sys, json; from sentence_transformers import SentenceTransformer; "
            "m = SentenceTransformer(sys.argv[1], device='cpu'); "
            "print(json.dumps(m.encode(['a short sentence', 'another, somewhat longer sentence here']).tolist()))")
    done = subprocess.run([sys.executable, "-c", "import sys; sys.modules['slimbert'] = None\n" + code, str(student)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    encoded = torch.tensor(json.loads(done.stdout.strip().splitlines()[-1]))
    # all-MiniLM-L6-v2's layout ends in a Normalize module, which the student's keeps
    mine = torch.nn.functional.normalize(pool(hidden, batch["attention_mask"], "mean"), dim=-1)
    torch.testing.assert_close(encoded, mine, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,config_cls", [(BertForSequenceClassification, BertConfig),
                                            (RobertaForSequenceClassification, RobertaConfig)])
def test_a_task_source_cut_to_its_own_shape_keeps_its_logits_and_its_head(cls, config_cls, tmp_path):
    """A source fine-tuned on a task, cut with nothing removed: the encoder is read from the classifier
    checkpoint, the task student's pooler and classifier start as the source's, and the logits are the source's.
    Cut in width, the head keeps exactly the kept channels; a BERT task student saves as BertForSequenceClassification."""
    from slimbert.engine.finetune import _from_student, carry_head

    hf = _tiny(cls, config_cls, num_labels=3)
    x, mask = _batch()
    theirs = hf(input_ids=x, attention_mask=mask).logits

    def task_student(**shape):
        config = from_encoder_config(hf.config, **shape)
        student = SlimBertForMaskedLM(config)
        attach_pooler(student, config)
        report = init_from_source(student, hf, list(range(config.num_hidden_layers)), torch.randint(5, 300, (4, 10)))
        model = _from_student(SlimBertForSequenceClassification, student, 0.0, num_labels=3).eval()
        carry_head(model, hf, report.kept.hidden)
        return model, report.kept.hidden

    model, kept = task_student()
    assert kept == list(range(32))
    torch.testing.assert_close(model(x, mask).logits, theirs, rtol=1e-5, atol=1e-5)
    if cls is BertForSequenceClassification:
        assert save_as_encoder(model, tmp_path, "bert", with_mlm=False)
        stock = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
        assert type(stock) is BertForSequenceClassification
        torch.testing.assert_close(stock(input_ids=x, attention_mask=mask).logits, theirs, rtol=1e-5, atol=1e-5)
    else:  # RoBERTa's head is not slimbert's module for module: no stock save
        assert not save_as_encoder(model, tmp_path, "roberta", with_mlm=False)

    narrow, kept = task_student(hidden_size=16, embedding_size=16, intra_bottleneck_size=16, num_attention_heads=2,
                                 intermediate_size=24)
    head = torch.tensor(kept)
    w = hf.classifier.weight if cls is BertForSequenceClassification else hf.classifier.out_proj.weight
    assert len(kept) == 16 and torch.equal(narrow.classifier.weight, w[:, head])
    pooler = hf.bert.pooler.dense if cls is BertForSequenceClassification else hf.classifier.dense
    assert torch.equal(narrow.slimbert.pooler.dense.weight, pooler.weight[head][:, head])


@pytest.fixture(scope="module")
def tiny_task_source(tmp_path_factory, tokenizer) -> Path:
    """A small random BertForSequenceClassification with the real MiniLM tokenizer: stands in for a model
    fine-tuned on SST-2 (two labels)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, num_labels=2)
    path = tmp_path_factory.mktemp("tiny-bert-sst2")
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_classifier_source_with_the_tasks_labels_is_the_task_teacher(tiny_task_source, tiny_source):
    from slimbert.engine.checkpoint import TrainingError
    from slimbert.engine.finetune import source_classifier

    assert source_classifier(tiny_task_source, 2) and not source_classifier(tiny_source, 2)
    with pytest.raises(TrainingError, match="2 labels; finetune.task has 3"):
        source_classifier(tiny_task_source, 3)


@pytest.mark.e2e
@pytest.mark.parametrize("fine_tuned", [True, False])
def test_one_recipe_cuts_a_task_model_distils_it_on_the_task_and_saves_it_stock(tmp_path, request, shared_data,
                                                                                fine_tuned):
    """Task compression in one run: the source (a classifier fine-tuned on SST-2, or an MLM model the run
    fine-tunes first) cut in depth and width, distilled on SST-2 (logits and hidden states), evaluated; the
    fine-tuned student is a stock BertForSequenceClassification that opens without slimbert, and exports."""
    import slimbert

    source = request.getfixturevalue("tiny_task_source" if fine_tuned else "tiny_source")
    recipe = write_recipe(
        tmp_path, source, shared_data, teacher={"type": "source"}, layer_map="importance",
        student={"init": "prune_from_source", "num_layers": 2, "inter_size": 32},
        data={"corpus": {"files": [str(shared_data / "wikitext-2-raw" / "wiki.test.raw")]}, "seq_len": 32,
              "max_sequences": 48, "eval_sequences": 8},
        transfer=[{"kind": "joint", "steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-5},
                   "losses": {"feature_map": 1.0, "attention": 0.0}}],
        finetune={"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
                  "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 64, "epochs": 1, "batch_size": 16,
                  "lr": 1e-4, "seq_len": 32, "distill": True, "distill_hidden": 1.0})
    out = slimbert.compress(recipe, out=tmp_path / "run")
    result = json.loads((out / "finetune" / "metrics.json").read_text())
    assert result["distill"] and set(result["teacher_dev"]) == {"accuracy", "f1", "matthews"}
    assert result["train_examples"] == 64 and 0 <= result["dev"]["accuracy"] <= 1
    model = out / "finetune" / "model"
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and "auto_map" not in config
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 32)
    from transformers import AutoTokenizer

    batch = dict(AutoTokenizer.from_pretrained(model)(["a gripping film", "dull and far too long"], padding=True,
                                                      return_tensors="pt"))
    theirs = open_without_slimbert(model, "AutoModelForSequenceClassification", batch, tmp_path)
    assert theirs["class"].endswith("BertForSequenceClassification")
    mine = AutoModelForSequenceClassification.from_pretrained(model).eval()(**batch).logits
    assert mine.shape == (2, 2)
    torch.testing.assert_close(torch.tensor(theirs["out"]), mine, rtol=1e-5, atol=1e-5)
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "export", str(out), "--onnx"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "export" / "model.onnx").is_file()


def _task_cut_recipe(tmp_path, source, shared_data, stage=None, **finetune):
    return write_recipe(
        tmp_path, source, shared_data, teacher={"type": "source"}, layer_map="importance",
        student={"init": "prune_from_source", "num_layers": 2, "inter_size": 32},
        data={"corpus": {"task": True}, "seq_len": 32, "max_sequences": 48, "eval_sequences": 8},
        transfer=[stage or {"kind": "joint", "steps": 1, "batch_size": 4, "freeze": ["slimbert.embeddings"],
                            "optimizer": {"lr": 1e-9, "weight_decay": 0.0},
                            "losses": {"feature_map": 1.0, "attention": 0.0}}],
        finetune={"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
                  "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 64, "epochs": 1, "batch_size": 16,
                  "lr": 1e-3, "seq_len": 32, "distill": True, "cut_from": "task_teacher", **finetune})


def test_cut_from_the_task_teacher_names_what_it_needs(tmp_path, tiny_source, shared_data):
    from slimbert.recipe import RecipeError, load_recipe

    def problems(**kw):
        with pytest.raises(RecipeError) as e:
            load_recipe(_task_cut_recipe(tmp_path, tiny_source, shared_data, **kw))
        return {p.path: p.message for p in e.value.problems}

    assert "distill: true" in problems(distill=False)["finetune.cut_from"]
    assert "give your fine-tuned model as source.model" in problems(teacher_model=str(tiny_source))[
        "finetune.teacher_model"]
    # The task teacher is a classifier: a stage distilling MLM logits has nothing to read.
    mlm = {"kind": "pretrain_distill", "steps": 1, "batch_size": 4, "alpha": 0.5}
    assert any("cut_from: task_teacher" in m for m in problems(stage=mlm).values())
    load_recipe(_task_cut_recipe(tmp_path, tiny_source, shared_data))   # the tiny source has an MLM head: fine


@pytest.mark.e2e
def test_cut_from_the_task_teacher_fine_tunes_the_source_first_and_cuts_that(tmp_path, tiny_source, shared_data):
    """Issue 29's order, in one run: the source (an MLM model) fine-tuned on the task, saved, then cut; the cut reads
    the task teacher's weights (not the source's), and the task distillation starts from that same teacher."""
    import slimbert
    from safetensors.torch import load_file

    out = slimbert.compress(_task_cut_recipe(tmp_path, tiny_source, shared_data), out=tmp_path / "run")
    teacher = out / "task_teacher"
    made = json.loads((teacher / "metrics.json").read_text())
    assert made["train_examples"] == 64 and set(made["dev"]) == {"accuracy", "f1", "matthews"}
    assert json.loads((teacher / "config.json").read_text())["architectures"] == ["BertForSequenceClassification"]
    kept = json.loads((out / "student_init.json").read_text())["kept"]["hidden"]
    # The word table is frozen in the transfer: the student's is the task teacher's, cut to the kept channels.
    words = load_file(out / "student" / "model.safetensors")
    student = next(v for k, v in words.items() if k.endswith("word_embeddings.weight"))
    tuned = load_file(teacher / "model.safetensors")["bert.embeddings.word_embeddings.weight"][:, kept]
    source = AutoModel.from_pretrained(tiny_source).embeddings.word_embeddings.weight.detach()[:, kept]
    assert torch.equal(student, tuned) and not torch.equal(student, source)
    result = json.loads((out / "finetune" / "metrics.json").read_text())
    assert result["teacher_dev"] == made["dev"] and result["distill"]
    # A resumed run reads the saved teacher back instead of fine-tuning it again (nor cutting a different one).
    stamp = (teacher / "model.safetensors").stat().st_mtime_ns
    slimbert.compress(_task_cut_recipe(tmp_path, tiny_source, shared_data), out=tmp_path / "run", resume=True)
    assert (teacher / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((teacher / "metrics.json").read_text()) == made
