"""Behaviour of the family itself: embedding order, transfer access, truncation, save/load."""

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoModelForMaskedLM

from slimbert.models import SlimBertForMaskedLM, SlimBertModel, preset, remote_modeling
from conftest import randomize_norms


def tiny(name="mobilebert", **kw):
    base = dict(num_hidden_layers=3, vocab_size=100, max_position_embeddings=32)
    return preset(name, **{**base, **kw})


def test_trigram_order_is_next_current_previous_with_zero_padding():
    config = tiny(embedding_size=4, hidden_size=16, intra_bottleneck_size=8)
    emb = SlimBertModel(config).embeddings.eval()
    with torch.no_grad():
        emb.embedding_transformation.weight.copy_(torch.eye(16, 12))  # identity on the first 12 features
        emb.embedding_transformation.bias.zero_()
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
    ids = torch.tensor([[5, 6, 7]])
    e = emb.word_embeddings(ids)[0]
    out = emb(ids)[0, :, :12]
    z = torch.zeros(4)
    torch.testing.assert_close(out[0], torch.cat([e[1], e[0], z]))
    torch.testing.assert_close(out[1], torch.cat([e[2], e[1], e[0]]))
    torch.testing.assert_close(out[2], torch.cat([z, e[2], e[1]]))


def test_plain_bert_has_no_dead_embedding_projection():
    config = tiny("bert_base", hidden_size=64, embedding_size=64, intra_bottleneck_size=64, intermediate_size=128,
                  num_attention_heads=4)
    assert SlimBertModel(config).embeddings.embedding_transformation is None


def test_feature_maps_and_attention_scores_are_exposed():
    config = tiny()
    model = randomize_norms(SlimBertModel(config)).eval()
    ids = torch.randint(1, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 5:] = 0
    out = model(ids, attention_mask=mask, output_hidden_states=True, output_attention_scores=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, 9, config.hidden_size) for h in out.hidden_states)
    assert len(out.attention_scores) == config.num_hidden_layers
    s = out.attention_scores[0]
    assert s.shape == (2, config.num_attention_heads, 9, 9)
    # Padded keys carry the mask, real keys do not; softmax of the scores gives zero weight to padding.
    assert (s[1, :, :, 5:] < -1e30).all() and (s[1, :, :, :5] > -1e4).all()
    assert F.softmax(s[1], -1)[..., 5:].abs().max() == 0
    # The last feature map is the model output, and the explicit path equals the SDPA path.
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    fast = model(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(fast, out.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_attention_scores_are_dropout_free_in_train_mode():
    config = tiny(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0)
    model = SlimBertModel(config).train()
    ids = torch.randint(1, 100, (2, 7))
    a = model(ids, output_attention_scores=True).attention_scores
    b = model(ids, output_attention_scores=True).attention_scores
    # Layer 1's scores depend only on the (dropout-free) embedding and layer-1 weights.
    torch.testing.assert_close(a[0], b[0])


def test_num_layers_runs_a_prefix_of_the_encoder():
    model = randomize_norms(SlimBertModel(tiny())).eval()
    ids = torch.randint(1, 100, (2, 8))
    full = model(ids, output_hidden_states=True)
    part = model(ids, output_hidden_states=True, num_layers=2)
    assert len(part.hidden_states) == 3
    torch.testing.assert_close(part.last_hidden_state, full.hidden_states[2])


def test_heads_shapes_and_losses():
    from slimbert.models import SlimBertForQuestionAnswering, SlimBertForSequenceClassification

    ids = torch.randint(1, 100, (3, 10))
    mlm = SlimBertForMaskedLM(tiny())
    labels = torch.full((3, 10), -100)
    labels[:, 2] = 7
    out = mlm(ids, labels=labels)
    assert out.logits.shape == (3, 10, 100) and out.loss.ndim == 0
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[:, 2], torch.full((3,), 7)))
    reg = SlimBertForSequenceClassification(tiny(num_labels=1))
    out = reg(ids, labels=torch.tensor([0.5, 1.0, 2.0]))
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits[:, 0], torch.tensor([0.5, 1.0, 2.0])))
    clf = SlimBertForSequenceClassification(tiny(num_labels=3))
    assert clf(ids, labels=torch.tensor([0, 2, 1])).logits.shape == (3, 3)
    qa = SlimBertForQuestionAnswering(tiny())
    out = qa(ids, start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([2, 3, 4]))
    assert out.start_logits.shape == (3, 10) and out.end_logits.shape == (3, 10) and out.loss > 0


def test_mlm_decoder_is_tied_to_word_table():
    model = SlimBertForMaskedLM(tiny())
    assert model.cls.predictions.decoder.weight is model.slimbert.embeddings.word_embeddings.weight


def test_save_and_load_with_auto_classes(tmp_path):
    model = randomize_norms(SlimBertForMaskedLM(tiny())).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is remote_modeling.SlimBertForMaskedLM       # the strict class, taking transformers' keywords
    assert isinstance(loaded, SlimBertForMaskedLM)
    assert loaded.cls.predictions.decoder.weight is loaded.slimbert.embeddings.word_embeddings.weight
    ids = torch.randint(1, 100, (2, 6))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is remote_modeling.SlimBertModel and isinstance(base, SlimBertModel)


def test_a_misspelt_argument_is_refused_not_ignored():
    """Explicit forward signatures: an argument nobody reads is a TypeError, not a silently unmasked batch."""
    import pytest

    from slimbert.models import SlimBertForSequenceClassification

    ids = torch.randint(5, 100, (2, 8))
    for model in (SlimBertModel(tiny()), SlimBertForMaskedLM(tiny()), SlimBertForSequenceClassification(tiny())):
        with pytest.raises(TypeError, match="attention_msk"):
            model(ids, attention_msk=torch.ones(2, 8))
        model(ids, attention_mask=torch.ones(2, 8), token_type_ids=torch.zeros(2, 8, dtype=torch.long))
