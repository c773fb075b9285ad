"""student.init: prune_from_teacher: the IB teacher pruned with torch-pruning to the student's shape."""

import io
import json
import subprocess
import sys

import pytest
import torch
from rich.console import Console

from slimbert.engine.runner import run
from slimbert.models import SlimBertConfig, SlimBertModel
from slimbert.recipe import RecipeError, load_recipe
from slimbert.recipe.resolve import with_teacher
from slimbert.teacher.build import build_ib_teacher
from slimbert.transfer.init import init_from_teacher

from conftest import write_recipe


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, tokenizer):
    """A 2-layer random BERT whose layers do something (a larger init than BERT's 0.02, under which a random
    layer is nearly the identity and any student looks like it)."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, initializer_range=0.2,
                        attn_implementation="eager")
    path = tmp_path_factory.mktemp("prune-source")
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ids(tokenizer, shared_data):
    text = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text()[:100_000]
    return torch.tensor(tokenizer(text)["input_ids"][: 48 * 32]).view(48, 32)


@pytest.fixture(scope="module")
def teacher(source_dir, ids):
    from transformers import BertForMaskedLM

    source = BertForMaskedLM.from_pretrained(source_dir).eval()
    return build_ib_teacher(source, ids[:32], inter=64, heads=4, embedding_size=32, trigram=True).model


def student_of(teacher, **kw):
    """A student narrower than the teacher everywhere: inter 64->48, E 32->24, intra 64->32, heads 4x16->2x16,
    FFN 128 -> 2 x 48."""
    t = teacher.config
    c = dict(vocab_size=t.vocab_size, embedding_size=24, trigram_input=True, hidden_size=48, use_bottleneck=True,
             intra_bottleneck_size=32, qkv_source="inter", num_hidden_layers=2, num_attention_heads=2,
             intermediate_size=48, num_feedforward_networks=2, normalization_type="layer_norm", hidden_act="gelu",
             max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
             attention_probs_dropout_prob=0.0)
    c.update(kw)
    torch.manual_seed(1)
    return SlimBertModel(SlimBertConfig(**c), add_pooling_layer=False).eval()


def test_kept_weights_are_slices_of_the_teacher(teacher, ids):
    student = student_of(teacher)
    report = init_from_teacher(student, teacher, [1, 2], ids[:16], ids[32:])
    k = report.kept
    assert len(k.inter) == 48 and len(k.embedding) == 24 and [len(x) for x in k.intra] == [32, 32]
    # Whole heads: two of the teacher's four, every dim of each kept head (16 wide in both).
    heads = sorted({c // 16 for c in k.attention[1]})
    assert len(heads) == 2 and k.attention[1] == [h * 16 + d for h in heads for d in range(16)]
    t, s = teacher.encoder.layer[1], student.encoder.layer[1]
    inter, intra, att = torch.tensor(k.inter), torch.tensor(k.intra[1]), torch.tensor(k.attention[1])
    assert torch.equal(s.attention.self.query.weight, t.attention.self.query.weight[att][:, inter])
    assert torch.equal(s.attention.self.value.bias, t.attention.self.value.bias[att])
    assert torch.equal(s.attention.output.dense.weight, t.attention.output.dense.weight[intra][:, att])
    assert torch.equal(s.attention.output.LayerNorm.weight, t.attention.output.LayerNorm.weight[intra])
    assert torch.equal(s.bottleneck.input.dense.weight, t.bottleneck.input.dense.weight[intra][:, inter])
    # The teacher's FFN (128) pruned to 2 x 48 = 96 neurons: the top 48 in the last FFN (the one the output
    # bottleneck reads), the next 48 in the extra FFN, which starts as a pass-through (zero output).
    ffn, rank = torch.tensor(k.ffn[1]), k.ffn_rank[1]
    w1 = t.intermediate.dense.weight[ffn][:, intra]
    assert len(ffn) == 96
    assert torch.equal(s.intermediate.dense.weight, w1[rank[:48]])
    assert torch.equal(s.output.dense.weight, t.output.dense.weight[intra][:, ffn[rank[:48]]])
    assert torch.equal(s.ffn[0].intermediate.dense.weight, w1[rank[48:]])
    assert not s.ffn[0].output.dense.weight.any()
    emb = student.embeddings
    assert torch.equal(emb.word_embeddings.weight, teacher.embeddings.word_embeddings.weight[:, k.embedding])
    assert torch.equal(emb.position_embeddings.weight[:10], teacher.embeddings.position_embeddings.weight[:10, inter])


@pytest.mark.parametrize("qkv", ["inter", "shared_bottleneck", "bottleneck"])
def test_pruned_student_is_closer_to_the_teacher_than_random(teacher, ids, qkv):
    student = student_of(teacher, qkv_source=qkv)
    report = init_from_teacher(student, teacher, [1, 2], ids[:16], ids[32:])
    pruned, random = report.cosine, report.random_cosine  # embedding, layer 1, layer 2 (held-out text)
    assert pruned[0] > 0.9 > random[0] + 0.5
    for p, r in zip(pruned[1:], random[1:]):
        assert p > r + 0.15, (pruned, random)


def _first_progressive_loss(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r["kind"] == "progressive")


@pytest.mark.e2e
def test_run_starts_lower_than_random_init(tmp_path, source_dir, shared_data):
    losses = {}
    for init in ("random", "prune_from_teacher"):
        d = tmp_path / init
        d.mkdir()
        recipe = write_recipe(
            d, source_dir, shared_data, teacher={"type": "inverted_bottleneck", "init_sequences": 16},
            student={"num_layers": 2, "inter_size": 64, "intra_size": 32, "num_heads": 4, "qkv_from": "inter",
                     "ffn": {"size": 64, "stacked": 2}, "embedding": {"size": 32, "trigram": True}, "init": init},
            data={"corpus": {"files": [str(shared_data / "wikitext-2-raw" / "wiki.test.raw")]}, "seq_len": 32,
                  "max_sequences": 24, "eval_sequences": 8},
            transfer=[{"kind": "progressive", "steps_per_layer": 1, "batch_size": 4}])
        console = Console(file=io.StringIO(), width=400)
        run(load_recipe(recipe), out=d / "out", console=console)  # the runner `slimbert run` calls
        losses[init] = _first_progressive_loss(d / "out")
    assert "pruning the teacher (torch-pruning)" in console.file.getvalue()
    report = json.loads((tmp_path / "prune_from_teacher" / "out" / "student_init.json").read_text())
    assert report["feature_cosine"][1] > report["random_init_feature_cosine"][1]
    pruned, random = losses["prune_from_teacher"], losses["random"]
    assert pruned["loss"] < 0.8 * random["loss"], (pruned, random)
    assert pruned["feature_map"] < random["feature_map"] and pruned["attention"] < random["attention"]


@pytest.mark.e2e
def test_validate_refuses_what_cannot_be_pruned(tmp_path, source_dir, shared_data):
    recipe = write_recipe(
        tmp_path, source_dir, shared_data, teacher={"type": "inverted_bottleneck", "num_heads": 4},
        student={"num_layers": 2, "inter_size": 64, "intra_size": 64, "num_heads": 8, "qkv_from": "inter",
                 "ffn": {"size": 256, "stacked": 1}, "embedding": {"size": 32, "trigram": True},
                 "init": "prune_from_teacher"})
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "validate", str(recipe)], capture_output=True,
                          text=True)
    assert done.returncode == 2, done.stderr
    err = " ".join(done.stderr.split())
    assert "student.num_heads" in err and "student.ffn.size" in err, err
    assert err.count("student.init: prune_from_teacher") >= 2 and "Traceback" not in err
    # The source itself as the teacher: a BERT layer has no bottleneck to prune into the student's.
    plain = write_recipe(tmp_path, source_dir, shared_data,
                         student={"num_layers": 2, "inter_size": 64, "intra_size": 32, "num_heads": 4,
                                  "ffn": {"size": 64, "stacked": 2}, "embedding": {"size": 32, "trigram": True},
                                  "copy_embeddings": False, "init": "prune_from_teacher"})
    with pytest.raises(RecipeError, match="student.init"):
        load_recipe(plain)



def test_validate_accepts_a_student_narrower_everywhere(tmp_path, source_dir, shared_data):
    # copy_embeddings stays on (the default): the pruned embedding is what the student gets.
    recipe = write_recipe(
        tmp_path, source_dir, shared_data, teacher={"type": "inverted_bottleneck", "inter_size": 64},
        student={"num_layers": 2, "inter_size": 48, "intra_size": 32, "num_heads": 2, "qkv_from": "bottleneck",
                 "ffn": {"size": 48, "stacked": 3}, "embedding": {"size": 24, "trigram": True},
                 "init": "prune_from_teacher"},
        # No layer-wise terms (the widths differ): a stage of MLM on hard labels. (A stage with every layer-wise
        # weight 0 is refused now: it would have nothing to train on.)
        transfer=[{"kind": "pretrain_distill", "steps": 1, "batch_size": 4, "alpha": 1.0}])
    r = load_recipe(recipe)
    assert r.student_config.hidden_size == 48 and r.teacher_config.hidden_size == 64
    # A teacher passed in through the Python API replaces the IB teacher there would be to prune.
    with pytest.raises(RecipeError, match="student.init"):
        with_teacher(r, num_layers=2, num_heads=4, hidden_size=48)
