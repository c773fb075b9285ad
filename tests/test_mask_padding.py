"""transfer[].losses.mask_padding: padding positions leave the feature-map, statistics and attention terms. Golden
identities on stub models whose features and attention scores are functions of the tokens: the masked terms of a
padded batch equal the terms of the same sequences without their padding (token-weighted across sequences), and
the unmasked terms differ (so the test can fail)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from slimbert.recipe.schema import Losses
from slimbert.transfer.strategies import Shard, TransferInputs, layerwise_terms, no_terms_problems, require_terms

PAD, VOCAB, WIDTH, HEADS = 0, 32, 8, 2


class Stub:
    """Hidden states and attention scores from per-token tables: what a position holds depends on its token only
    (and its row of keys), so dropping padding changes nothing but the padding."""

    def __init__(self, seed: int, probs: bool):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(VOCAB, WIDTH, generator=g)
        self.q = torch.randn(VOCAB, HEADS, 4, generator=g)
        self.k = torch.randn(VOCAB, HEADS, 4, generator=g)
        self.probs = probs

    def _outputs(self, batch: torch.Tensor, n: int):
        hidden = [self.emb[batch] * (l + 1) + l for l in range(n + 1)]
        scores = torch.einsum("bihd,bjhd->bhij", self.q[batch], self.k[batch])
        return hidden, [scores * (l + 1) for l in range(n)]

    def slimbert(self, batch, output_hidden_states=True, output_attention_scores=True, num_layers=None):
        hidden, scores = self._outputs(batch, num_layers)
        return SimpleNamespace(hidden_states=hidden, attention_scores=scores)

    def __call__(self, batch, num_layers=None):
        hidden, scores = self._outputs(batch, num_layers)
        return SimpleNamespace(hidden_states=hidden, attentions=[s.softmax(-1) for s in scores],
                               attentions_are_probs=True)


def inputs() -> TransferInputs:
    return TransferInputs(student=Stub(0, False), teacher=Stub(1, True), projections=None, layer_map=[1, 2],
                          tokenizer=SimpleNamespace(pad_token_id=PAD), mlm_probability=0.15, whole_word_mask=False,
                          shard=Shard())


def terms(batch, mask_padding: bool) -> dict[str, float]:
    w = Losses(feature_map=1, feature_mean=1, feature_var=1, attention=1, mask_padding=mask_padding)
    return {k: float(v) for k, v in layerwise_terms(inputs(), w, [1, 2], torch.tensor(batch)).items()}


A, B = [5, 6, 7, 8], [9, 10, 11, 12, 13, 14]


def test_masked_terms_equal_the_terms_without_padding():
    padded = terms([A + [PAD, PAD]], mask_padding=True)
    plain = terms([A], mask_padding=False)
    assert padded.keys() == plain.keys() == {"feature_map", "feature_mean", "feature_var", "attention"}
    for k in plain:
        assert padded[k] == pytest.approx(plain[k], rel=1e-5), k
    unmasked = terms([A + [PAD, PAD]], mask_padding=False)
    assert all(abs(unmasked[k] - plain[k]) > 1e-4 * abs(plain[k]) for k in plain), (unmasked, plain)


def test_masked_terms_weigh_sequences_by_their_real_tokens():
    both = terms([A + [PAD, PAD], B], mask_padding=True)
    a, b = terms([A], mask_padding=False), terms([B], mask_padding=False)
    for k in both:
        assert both[k] == pytest.approx((len(A) * a[k] + len(B) * b[k]) / (len(A) + len(B)), rel=1e-5), k


def test_without_padding_the_mask_changes_nothing():
    assert terms([B], mask_padding=True) == pytest.approx(terms([B], mask_padding=False), rel=1e-6)


def test_a_stage_with_no_terms_is_refused_before_and_during_training():
    st = SimpleNamespace(losses=Losses(feature_map=0, feature_mean=0, feature_var=0, attention=0))
    [(key, message)] = no_terms_problems(st, 3)
    assert key == "transfer.3.losses" and "every loss weight is 0" in message
    assert no_terms_problems(SimpleNamespace(losses=Losses(feature_map=0, attention=1)), 0) == []
    with pytest.raises(ValueError, match="no loss term"):
        require_terms({}, "joint")
