"""Parameter and FLOP accounting: the paper's figures (reference doc §6), and analytic == measured."""

import pytest

from slimbert.models import (SlimBertConfig, SlimBertForMaskedLM, SlimBertForPreTraining,
                             SlimBertForQuestionAnswering, SlimBertForSequenceClassification, SlimBertModel,
                             count, preset)
from slimbert.models.counting import count_config, head_of, measure_flops


@pytest.mark.parametrize("name, params", [
    ("mobilebert_released", 24_581_888),
    ("mobilebert", 25_359_104),
    ("ib_bert_large", 294_205_184),
    ("bert_base", 109_482_240),
    ("bert_large", 335_141_888),
    ("mobilebert_tiny", 15_485_696),
])
def test_paper_parameter_counts(name, params):
    assert count(preset(name)).total_params == params


@pytest.mark.parametrize("name, gflops, rel", [
    ("bert_base", 22.3, 0.003),   # paper: 22.5B; formula (reference doc §6): 22.3B
    ("mobilebert", 5.59, 0.002),  # paper: 5.7B; formula: 5.59B
    ("mobilebert_tiny", 3.07, 0.002),
])
def test_paper_flops_at_seq_128(name, gflops, rel):
    assert count(preset(name), seq_len=128).total_flops / 1e9 == pytest.approx(gflops, rel=rel)


@pytest.mark.parametrize("name, ratio", [
    ("mobilebert", 0.405), ("mobilebert_released", 0.219), ("mobilebert_tiny", 0.251),
    ("ib_bert_large", 0.313), ("bert_base", 0.500),
])
def test_attention_ffn_ratio(name, ratio):
    assert count(preset(name)).attention_ffn_ratio == pytest.approx(ratio, abs=5e-4)


CUSTOM = [
    dict(preset="mobilebert_released", hidden_size=384, embedding_size=96, intra_bottleneck_size=96,
         intermediate_size=384, num_feedforward_networks=3, num_attention_heads=4, num_hidden_layers=2),
    dict(preset="mobilebert", hidden_size=256, intra_bottleneck_size=64, num_attention_heads=2,
         num_feedforward_networks=2, num_hidden_layers=2, trigram_input=False, embedding_size=64),
    dict(preset="mobilebert_tiny", num_hidden_layers=2, normalization_type="layer_norm", hidden_act="gelu"),
    dict(preset="bert_base", num_hidden_layers=2, hidden_size=128, embedding_size=128, intra_bottleneck_size=128,
         intermediate_size=256, num_attention_heads=4, classifier_activation=True),
    dict(preset="ib_bert_large", num_hidden_layers=1, intra_bottleneck_size=256, intermediate_size=512),
    dict(preset="ib_bert_large", num_hidden_layers=2, intra_bottleneck_size=128, intermediate_size=256,
         hidden_size=96, embedding_size=32, inter_residual="gated", bottleneck_normalization_type="no_norm"),
]
HEADS = [SlimBertModel, SlimBertForMaskedLM, SlimBertForPreTraining, SlimBertForSequenceClassification,
         SlimBertForQuestionAnswering]


@pytest.mark.parametrize("spec", CUSTOM, ids=lambda s: s["preset"])
@pytest.mark.parametrize("cls", HEADS, ids=lambda c: c.__name__)
def test_analytic_counts_equal_measured(spec, cls):
    spec = dict(spec)
    config = preset(spec.pop("preset"), **spec)
    model = cls(config)
    analytic = count_config(config, seq_len=48, head=head_of(model))
    measured = count(model, seq_len=48)
    assert analytic.params == measured.params  # per component, from the modules themselves
    assert analytic.total_params == sum(p.numel() for p in model.parameters())
    assert analytic.total_flops == measure_flops(model, seq_len=48)  # torch's FlopCounterMode


def test_count_rejects_other_objects():
    with pytest.raises(TypeError, match="SlimBertConfig or a slimbert model"):
        count("mobilebert")


def test_encoder_params_exclude_embedding():
    c = count(SlimBertConfig())
    assert c.encoder_params == c.params["bottleneck"] + c.params["attention"] + c.params["ffn"]
    assert c.encoder_params + c.params["embedding"] == c.total_params
