import json

import pytest

from slimbert.models import SlimBertConfig, preset
from slimbert.models.configuration import PRESETS


@pytest.mark.parametrize("kwargs, field, constraint", [
    (dict(intra_bottleneck_size=130, num_attention_heads=4), "intra_bottleneck_size", "divisible by num_attention_heads"),
    (dict(use_bottleneck=False, hidden_size=100, embedding_size=100, num_attention_heads=3), "hidden_size", "divisible"),
    (dict(embedding_size=640, hidden_size=512), "embedding_size", "must be <= hidden_size"),
    (dict(num_hidden_layers=0), "num_hidden_layers", "positive integer"),
    (dict(num_feedforward_networks=-1), "num_feedforward_networks", "positive integer"),
    (dict(hidden_act="swishy"), "hidden_act", "must be one of"),
    (dict(normalization_type="batch_norm"), "normalization_type", "must be one of"),
    (dict(qkv_source="values"), "qkv_source", "must be one of"),
    (dict(attention_probs_dropout_prob=1.5), "attention_probs_dropout_prob", "[0, 1)"),
    (dict(layer_norm_eps=0.0), "layer_norm_eps", "> 0"),
])
def test_impossible_config_names_field_and_constraint(kwargs, field, constraint):
    with pytest.raises(ValueError) as e:
        SlimBertConfig(**kwargs)
    assert field in str(e.value) and constraint in str(e.value)


def test_preset_unknown_name():
    with pytest.raises(ValueError, match="unknown preset 'mobilebert_xl'.*mobilebert_tiny"):
        preset("mobilebert_xl")


def test_config_round_trip_drops_stale_true_hidden_size(tmp_path):
    config = preset("mobilebert_released", intra_bottleneck_size=256, num_hidden_layers=2)
    config.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "true_hidden_size" not in raw
    # A hand-edited file that carries a stale derived width must not override the real one.
    raw["true_hidden_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(raw))
    loaded = SlimBertConfig.from_pretrained(tmp_path)
    assert loaded.true_hidden_size == 256 and loaded.qkv_source == "shared_bottleneck"


def test_presets_are_the_papers_architectures():
    ib = preset("ib_bert_large")
    assert (ib.hidden_size, ib.intra_bottleneck_size, ib.num_attention_heads, ib.intermediate_size,
            ib.num_feedforward_networks, ib.normalization_type, ib.hidden_act, ib.qkv_source) == (
        512, 1024, 4, 4096, 1, "layer_norm", "gelu", "inter")
    tiny = preset("mobilebert_tiny")
    assert (tiny.qkv_source, tiny.num_feedforward_networks, tiny.normalization_type) == ("bottleneck", 2, "no_norm")
    assert set(PRESETS) >= {"bert_base", "bert_large", "ib_bert_large", "mobilebert", "mobilebert_released",
                            "mobilebert_tiny"}
