"""Teacher construction from a pretrained source, its adaptation, and custom teachers through the Python API."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimbert
from slimbert.recipe import RecipeError
from slimbert.teacher.build import build_ib_teacher, fidelity, principal_directions

from conftest import write_recipe


@pytest.fixture(scope="module")
def source(tokenizer):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, type_vocab_size=2,
                        attn_implementation="eager")
    return BertForMaskedLM(config).eval()


@pytest.fixture(scope="module")
def ids(tokenizer, shared_data):
    text = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text()[:300_000]
    flat = torch.tensor(tokenizer(text)["input_ids"][: 160 * 32])
    return flat.view(160, 32)


def mean(xs):
    return sum(xs) / len(xs)


# ---- construction ---------------------------------------------------------------------------------------------

def test_carried_weights_are_exact(source, ids):
    teacher = build_ib_teacher(source, ids[:64], inter=32, heads=4, embedding_size=16, trigram=True)
    P = [principal_directions(z, 32) for z in _states(source, ids[:64])]
    body = source.bert
    for l, (mine, theirs) in enumerate(zip(teacher.model.encoder.layer, body.encoder.layer)):
        a = theirs.attention
        # The source layer itself, untouched.
        assert torch.equal(mine.attention.output.dense.weight, a.output.dense.weight)
        assert torch.equal(mine.attention.output.LayerNorm.weight, a.output.LayerNorm.weight)
        assert torch.equal(mine.attention.output.LayerNorm.bias, a.output.LayerNorm.bias)
        assert torch.equal(mine.intermediate.dense.weight, theirs.intermediate.dense.weight)
        assert torch.equal(mine.output.dense.weight, theirs.output.dense.weight)
        assert torch.equal(mine.output.dense.bias, theirs.output.dense.bias)
        assert torch.equal(mine.output.LayerNorm.weight, theirs.output.LayerNorm.weight)
        # Q/K/V read the d-wide block input through the folded input projection: W x P_{l-1}.
        torch.testing.assert_close(mine.attention.self.query.weight, a.self.query.weight @ P[l])
        torch.testing.assert_close(mine.attention.self.value.weight, a.self.value.weight @ P[l])
        assert torch.equal(mine.attention.self.key.bias, a.self.key.bias)
        # Bottlenecks are the principal directions; the residual gate starts closed.
        torch.testing.assert_close(mine.bottleneck.input.dense.weight, P[l])
        torch.testing.assert_close(mine.output.bottleneck.dense.weight, P[l + 1].T)
        assert torch.count_nonzero(mine.output.bottleneck.residual_gate) == 0
    assert teacher.mlm_head is source.cls.predictions


def _states(source, ids):
    with torch.no_grad():
        out = source.bert(input_ids=ids, output_hidden_states=True).hidden_states
    return [h.reshape(-1, h.shape[-1]) for h in out]


def test_full_width_teacher_reproduces_its_source(source, ids):
    """At inter width = source width nothing is truncated: only the embedding LayerNorm is linearised."""
    teacher = build_ib_teacher(source, ids[:128], inter=64, heads=4, embedding_size=64, trigram=False, init="random")
    report = fidelity(source, teacher, ids[128:])
    assert min(report["cosine"]) > 0.99, report
    assert max(report["attention_kl"]) < 1e-3, report


def test_pca_init_beats_random_init(source, ids):
    reports = {init: fidelity(source, build_ib_teacher(source, ids[:128], inter=32, heads=4, embedding_size=16,
                                                       init=init), ids[128:])
               for init in ("pca", "random")}
    pca, rnd = reports["pca"]["cosine"], reports["random"]["cosine"]
    assert all(p > r + 0.1 for p, r in zip(pca[1:], rnd[1:])), reports
    assert min(pca) > 0.85, reports


def test_builds_from_roberta_electra_and_distilbert(tokenizer, ids):
    from transformers import (DistilBertConfig, DistilBertForMaskedLM, ElectraConfig, ElectraForMaskedLM,
                              RobertaConfig, RobertaForMaskedLM)

    torch.manual_seed(0)
    v = len(tokenizer)
    sources = {
        "roberta": RobertaForMaskedLM(RobertaConfig(vocab_size=v, hidden_size=48, num_hidden_layers=2,
                                                    num_attention_heads=4, intermediate_size=96,
                                                    max_position_embeddings=66, pad_token_id=1)),
        "electra": ElectraForMaskedLM(ElectraConfig(vocab_size=v, embedding_size=24, hidden_size=48,
                                                    num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=96, max_position_embeddings=64)),
        "distilbert": DistilBertForMaskedLM(DistilBertConfig(vocab_size=v, dim=48, n_layers=2, n_heads=4,
                                                             hidden_dim=96, max_position_embeddings=64)),
    }
    for name, model in sources.items():
        model.eval().set_attn_implementation("eager")
        teacher = build_ib_teacher(model, ids[:96], inter=48, heads=4, embedding_size=48, trigram=False,
                                   init="random")
        report = fidelity(model, teacher, ids[96:128])
        assert min(report["cosine"]) > 0.97, (name, report)
        assert teacher.mlm_head is not None, name


def test_build_refuses_a_teacher_wider_than_its_source(source, ids):
    with pytest.raises(ValueError, match="must not exceed the source width"):
        build_ib_teacher(source, ids[:8], inter=128, heads=4, embedding_size=16)


# ---- the run: build, adapt, report ----------------------------------------------------------------------------

IB_SECTIONS = dict(
    # Random bottlenecks start the teacher far from its source, so adaptation has something to recover.
    teacher={"type": "inverted_bottleneck", "inter_size": 48, "num_heads": 4, "embedding_size": 32,
             "init_sequences": 64, "init": "random"},
    student={"num_layers": 2, "inter_size": 48, "intra_size": 24, "num_heads": 4, "qkv_from": "inter",
             "ffn": {"size": 48, "stacked": 2}, "embedding": {"size": 32, "trigram": True}, "copy_embeddings": True},
)


def adapt_stage(steps=30):
    return {"kind": "teacher_adaptation", "steps": steps, "batch_size": 8, "optimizer": {"lr": 1e-3},
            "warmup_steps": 2, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def ib_run(tmp_path_factory, tiny_source, shared_data):
    tmp = tmp_path_factory.mktemp("ib")
    recipe = write_recipe(tmp, tiny_source, shared_data, **IB_SECTIONS, transfer=[
        adapt_stage(),
        {"kind": "progressive", "steps_per_layer": 4, "batch_size": 4, "optimizer": {"lr": 2e-3}},
        {"kind": "pretrain_distill", "steps": 4, "batch_size": 4, "alpha": 0.5, "optimizer": {"lr": 1e-3}},
    ])
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out", done


@pytest.mark.e2e
def test_adaptation_improves_fidelity(ib_run):
    out, done = ib_run
    report = json.loads((out / "teacher" / "fidelity.json").read_text())
    before, after = report["before"], report["after"]
    assert mean(after["cosine"]) > mean(before["cosine"]) + 0.1, report
    assert mean(after["attention_kl"]) <= mean(before["attention_kl"]), report
    # The tiny source has an MLM head: MLM loss and accuracy are reported, and adaptation moves the teacher's
    # MLM loss towards the source's.
    gap = lambda r: abs(r["teacher_mlm_loss"] - r["source_mlm_loss"])  # noqa: E731
    assert gap(after) < gap(before), report
    assert "cosine before" in done.stderr and "cosine after" in done.stderr  # the terminal table


@pytest.mark.e2e
def test_adapted_teacher_is_saved_and_loads(ib_run):
    from transformers import AutoModel

    out, _ = ib_run
    model = AutoModel.from_pretrained(out / "teacher" / "model")
    assert model.config.model_type == "slimbert" and model.config.inter_residual == "gated"
    assert (out / "teacher" / "model" / "readouts.safetensors").is_file()
    assert (out / "student" / "config.json").is_file()


@pytest.mark.e2e
def test_student_embeddings_come_from_the_adapted_teacher(ib_run):
    from safetensors.torch import load_file
    from transformers import AutoModel

    out, _ = ib_run
    teacher = AutoModel.from_pretrained(out / "teacher" / "model")
    ckpt = sorted((out / "stages" / "1-progressive").glob("checkpoint-*"))[-1]
    tensors = load_file(str(ckpt / "model.safetensors"))
    # Progressive stages keep embeddings frozen: the student's are the adapted teacher's, unchanged.
    torch.testing.assert_close(tensors["student.slimbert.embeddings.word_embeddings.weight"],
                               teacher.embeddings.word_embeddings.weight)


@pytest.mark.e2e
def test_validate_names_a_teacher_wider_than_its_source(tmp_path, tiny_source, shared_data):
    sections = json.loads(json.dumps(IB_SECTIONS))
    sections["teacher"]["inter_size"] = 96  # the tiny source is 64 wide
    recipe = write_recipe(tmp_path, tiny_source, shared_data, **sections)
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "validate", str(recipe)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "teacher.inter_size" in done.stderr and "Traceback" not in done.stderr


# ---- custom teachers through slimbert.compress ------------------------------------------------------------------

def tiny_recipe(tmp_path, tiny_source, shared_data, **kw):
    student = {"num_layers": 2, "inter_size": 32, "intra_size": 16, "num_heads": 4, "qkv_from": "inter",
               "ffn": {"size": 32, "stacked": 2}, "embedding": {"size": 16, "trigram": True},
               "copy_embeddings": False}
    transfer = [{"kind": "progressive", "steps_per_layer": 3, "batch_size": 4, "optimizer": {"lr": 2e-3}},
                {"kind": "pretrain_distill", "steps": 3, "batch_size": 4, "alpha": 1.0, "optimizer": {"lr": 1e-3}}]
    return write_recipe(tmp_path, tiny_source, shared_data, student=student, transfer=transfer, **kw)


def _finished(out):
    assert (out / "student" / "config.json").is_file()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"progressive", "pretrain_distill"}
    assert any("attention" in r for r in rows)


@pytest.mark.parametrize("family", ["roberta", "distilbert"])
def test_compress_with_a_transformers_teacher(family, tmp_path, tiny_source, shared_data, tokenizer):
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    torch.manual_seed(0)
    v = len(tokenizer)
    model = (RobertaModel(RobertaConfig(vocab_size=v, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                                       intermediate_size=96, max_position_embeddings=66, pad_token_id=1))
             if family == "roberta" else
             DistilBertModel(DistilBertConfig(vocab_size=v, dim=48, n_layers=3, n_heads=4, hidden_dim=96,
                                              max_position_embeddings=64)))
    out = slimbert.compress(tiny_recipe(tmp_path, tiny_source, shared_data), teacher=model, out=tmp_path / "out")
    _finished(out)
    # 3 teacher layers, 2 student layers, layer_map uniform: student 1 <- teacher 1, student 2 <- teacher 3.
    assert json.loads((out / "plan.json").read_text()) is not None


class Block(nn.Module):
    """A user's own pre-LN transformer block; attention probabilities come out of `attn.softmax`."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.attn = nn.Module()
        self.attn.softmax = nn.Softmax(dim=-1)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x, mask):
        B, T, W = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (W // self.heads) ** 0.5 + mask
        y = (self.attn.softmax(scores) @ v).transpose(1, 2).reshape(B, T, W)
        x = x + self.proj(y)
        return x + self.mlp(self.norm2(x))


class MyEncoder(nn.Module):
    def __init__(self, vocab, width=40, heads=4, layers=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.calls = 0  # how many blocks ran, to show truncation

    def forward(self, ids, attention_mask=None):
        mask = torch.zeros(ids.shape[0], 1, 1, ids.shape[1])
        if attention_mask is not None:
            mask = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        x = self.embed(ids)
        for block in self.blocks:
            self.calls += 1
            x = block(x, mask)
        return x


def test_compress_with_a_plain_module_wired_by_paths(tmp_path, tiny_source, shared_data, tokenizer):
    torch.manual_seed(0)
    model = MyEncoder(len(tokenizer))
    teacher = slimbert.ModuleTeacher(model, layers=("blocks.{i}", 3), attentions=("blocks.{i}.attn.softmax", 3))
    assert (teacher.num_layers, teacher.num_heads, teacher.hidden_size) == (3, 4, 40)
    x = torch.randint(0, 100, (2, 8))
    out = teacher(x)
    torch.testing.assert_close(out.hidden_states[-1], model(x))  # what the hooks saw is what the model computes
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(2, 4, 8))
    model.calls = 0
    teacher(x, num_layers=1)
    assert model.calls == 1  # progressive transfer of layer 1 never runs the layers above
    run = slimbert.compress(tiny_recipe(tmp_path, tiny_source, shared_data), teacher=teacher, out=tmp_path / "out")
    _finished(run)


def test_custom_teacher_errors_name_the_problem(tmp_path, tiny_source, shared_data, tokenizer):
    model = MyEncoder(len(tokenizer))
    with pytest.raises(slimbert.TeacherError, match=r"'blocks.3'.*has no child '3'|blocks.3"):
        slimbert.ModuleTeacher(model, layers=["blocks.0", "blocks.3"])
    with pytest.raises(slimbert.TeacherError, match="attn.sofmax"):
        slimbert.ModuleTeacher(model, layers=("blocks.{i}", 3), attentions=("blocks.{i}.attn.sofmax", 3))
    with pytest.raises(slimbert.TeacherError, match="ModuleTeacher"):
        slimbert.compress(tiny_recipe(tmp_path, tiny_source, shared_data), teacher=model, out=tmp_path / "a")
    # No attention exposed, but the recipe asks for attention transfer: the recipe key is named.
    no_attention = slimbert.ModuleTeacher(model, layers=("blocks.{i}", 3))
    with pytest.raises(RecipeError, match=r"transfer\.0\.losses\.attention.*no attention"):
        slimbert.compress(tiny_recipe(tmp_path, tiny_source, shared_data), teacher=no_attention, out=tmp_path / "b")
    # A head-count mismatch with the student.
    five = slimbert.ModuleTeacher(MyEncoder(len(tokenizer), width=40, heads=5), layers=("blocks.{i}", 3),
                                  attentions=("blocks.{i}.attn.softmax", 3))
    with pytest.raises(RecipeError, match=r"transfer\.0\.losses\.attention.*5"):
        slimbert.compress(tiny_recipe(tmp_path, tiny_source, shared_data), teacher=five, out=tmp_path / "c")
    # A layer whose output is not a feature map.
    with pytest.raises(slimbert.TeacherError, match=r"blocks\.0\.attn\.softmax gave shape"):
        slimbert.ModuleTeacher(model, layers=["blocks.0.attn.softmax"])
    for d in "abc":
        assert not (tmp_path / d).exists()  # nothing written for a refused teacher


@pytest.mark.e2e
def test_resume_after_adaptation_reproduces_the_run(ib_run, tmp_path):
    """Resuming at the student's stages uses the adapted teacher (from its checkpoint, or teacher/model when a
    later stage resumes): the final student is bit-identical."""
    import shutil

    from safetensors.torch import load_file

    out, _ = ib_run
    reference = load_file(str(out / "student" / "model.safetensors"))
    for drop in (["1-progressive", "2-pretrain_distill"], ["2-pretrain_distill"]):
        copy = tmp_path / f"resume-{len(drop)}"
        shutil.copytree(out, copy)
        for stage in drop:
            shutil.rmtree(copy / "stages" / stage)
        shutil.rmtree(copy / "student")
        done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(out.parent / "recipe.yaml"),
                               "--out", str(copy), "--resume"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        resumed = load_file(str(copy / "student" / "model.safetensors"))
        assert resumed.keys() == reference.keys()
        for k in reference:
            assert torch.equal(resumed[k], reference[k]), (drop, k)
