"""Numerics against transformers' own MobileBERT, on real token ids with padding."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import (MobileBertForMaskedLM, MobileBertForQuestionAnswering,
                          MobileBertForSequenceClassification, MobileBertModel)

from slimbert.models import (NotExpressibleError, SlimBertForMaskedLM, SlimBertForQuestionAnswering,
                             SlimBertForSequenceClassification, SlimBertModel, from_transformers, preset,
                             to_transformers)
from conftest import randomize_norms

TOL = 1e-5

ARCHS = {
    # The released checkpoint's shape at full width, shallow for speed.
    "released": dict(preset="mobilebert_released", num_hidden_layers=3),
    "tiny": dict(preset="mobilebert_tiny", num_hidden_layers=3),
    # Custom width / FFN / heads combinations.
    "w384_e96_i96_n3": dict(preset="mobilebert_released", hidden_size=384, embedding_size=96,
                            intra_bottleneck_size=96, intermediate_size=384, num_feedforward_networks=3,
                            num_attention_heads=4, num_hidden_layers=4),
    "w256_i64_h8_gelu_ln": dict(preset="mobilebert_tiny", hidden_size=256, embedding_size=64,
                                intra_bottleneck_size=64, intermediate_size=256, num_attention_heads=8,
                                num_feedforward_networks=1, normalization_type="layer_norm", hidden_act="gelu",
                                layer_norm_eps=1e-5, num_hidden_layers=2),
    "no_trigram_h2_n6": dict(preset="mobilebert_released", trigram_input=False, hidden_size=192,
                             embedding_size=192, intra_bottleneck_size=48, intermediate_size=96,
                             num_attention_heads=2, num_feedforward_networks=6, num_hidden_layers=2),
    "bert_blocks": dict(preset="bert_base", hidden_size=128, embedding_size=128, intra_bottleneck_size=128,
                        intermediate_size=512, num_attention_heads=4, num_hidden_layers=2, layer_norm_eps=1e-5),
}
PAIRS = [(SlimBertModel, MobileBertModel, "last_hidden_state"),
         (SlimBertForMaskedLM, MobileBertForMaskedLM, "logits"),
         (SlimBertForSequenceClassification, MobileBertForSequenceClassification, "logits"),
         (SlimBertForQuestionAnswering, MobileBertForQuestionAnswering, "start_logits")]


def build(arch: str, cls, seed=0):
    spec = dict(ARCHS[arch])
    torch.manual_seed(seed)
    model = cls(preset(spec.pop("preset"), **spec))
    return randomize_norms(model, seed=seed).eval()


def max_abs(a, b, mask):
    """Max |a - b| over real (non-padding) positions when outputs are per token."""
    if a.dim() >= 2 and a.shape[:2] == mask.shape:
        keep = mask.bool()
        return (a[keep] - b[keep]).abs().max().item()
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("ours, stock, field", PAIRS, ids=lambda p: getattr(p, "__name__", p))
def test_to_transformers_parity(arch, ours, stock, field, real_batch):
    model = build(arch, ours)
    hf = to_transformers(model)
    assert type(hf) is stock
    with torch.no_grad():
        a = getattr(model(**real_batch), field)
        b = getattr(hf(**real_batch), field)
    assert max_abs(a, b, real_batch["attention_mask"]) <= TOL
    if field == "start_logits":
        assert max_abs(model(**real_batch).end_logits, hf(**real_batch).end_logits,
                       real_batch["attention_mask"]) <= TOL


@pytest.mark.parametrize("arch", ["released", "tiny", "bert_blocks"])
def test_from_stock_transformers_parity(arch, real_batch):
    """Weights made by transformers' own MobileBERT, read into slimbert."""
    spec = dict(ARCHS[arch])
    from slimbert.models.convert import to_transformers_config

    hf_config = to_transformers_config(preset(spec.pop("preset"), **spec))
    torch.manual_seed(1)
    hf = randomize_norms(MobileBertForMaskedLM(hf_config), seed=1).eval()
    ours = from_transformers(hf)
    with torch.no_grad():
        d = max_abs(ours(**real_batch).logits, hf(**real_batch).logits, real_batch["attention_mask"])
    assert d <= TOL


def test_stock_flags_both_set_drops_dead_shared_bottleneck(real_batch):
    """Stock MobileBERT with use_bottleneck_attention and key_query_shared_bottleneck builds an unused
    shared bottleneck (+dead params); slimbert reads it as TINY-style attention without them."""
    from transformers import MobileBertConfig

    hf = MobileBertModel(MobileBertConfig(num_hidden_layers=2, use_bottleneck_attention=True,
                                          key_query_shared_bottleneck=True)).eval()
    ours = from_transformers(hf)
    assert ours.config.qkv_source == "bottleneck"
    dead = sum(p.numel() for n, p in hf.named_parameters() if ".bottleneck.attention." in n)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters()) - dead
    with torch.no_grad():
        d = max_abs(ours(**real_batch).last_hidden_state, hf(**real_batch).last_hidden_state,
                    real_batch["attention_mask"])
    assert d <= TOL


@pytest.mark.parametrize("name", ["ib_bert_large", "mobilebert"])
def test_teacher_and_table1_student_are_not_expressible(name):
    config = preset(name, num_hidden_layers=1)
    with pytest.raises(NotExpressibleError, match="query/key projections take intra-width inputs"):
        to_transformers(SlimBertModel(config))


def test_converted_student_loads_without_slimbert(tmp_path, real_batch):
    """A converted student is a plain transformers checkpoint: a fresh process that never imports
    slimbert loads it with AutoModelForMaskedLM and reproduces slimbert's logits."""
    model = build("released", SlimBertForMaskedLM)
    hf = to_transformers(model)
    hf.save_pretrained(tmp_path / "student")
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    assert config["model_type"] == "mobilebert"
    assert config.get("true_hidden_size", config["intra_bottleneck_size"]) == config["intra_bottleneck_size"]
    with torch.no_grad():
        expected = model(**real_batch).logits
    save_file({**{k: v.contiguous() for k, v in real_batch.items()}, "expected": expected}, tmp_path / "io.safetensors")
    script = f"""
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM
io = load_file({str(tmp_path / 'io.safetensors')!r})
m = AutoModelForMaskedLM.from_pretrained({str(tmp_path / 'student')!r}).eval()
assert type(m).__name__ == "MobileBertForMaskedLM", type(m)
with torch.no_grad():
    out = m(input_ids=io["input_ids"], attention_mask=io["attention_mask"], token_type_ids=io["token_type_ids"]).logits
keep = io["attention_mask"].bool()
d = (out[keep] - io["expected"][keep]).abs().max().item()
assert not any(k.startswith("slimbert") for k in sys.modules), "slimbert was imported"
print(d)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= TOL
