"""Golden values for every transfer loss, computed by hand (the arithmetic is in the comments)."""

import math

import pytest
import torch

from slimbert.transfer import losses as L

LN2, LN3 = math.log(2), math.log(3)

# Two tokens, two features: teacher [1, 2], [3, 4]; student [1, 0], [3, 7].
T = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
S = torch.tensor([[[1.0, 0.0], [3.0, 7.0]]])


def test_feature_map_mse():
    # differences (0, 2), (0, -3): squares 0, 4, 0, 9; mean 13/4
    assert L.feature_map_loss(T, S, normalize=False).item() == pytest.approx(3.25)
    # second token masked out: (0 + 4) / 2
    assert L.feature_map_loss(T, S, mask=torch.tensor([[1, 0]]), normalize=False).item() == pytest.approx(2.0)


def test_feature_map_mse_on_parameter_free_layer_norm():
    # LN([1, 3]) = [-1, 1]; LN([2, 2]) = [0, 0]: mean of (1, 1) = 1
    t, s = torch.tensor([[[1.0, 3.0]]]), torch.tensor([[[2.0, 2.0]]])
    assert L.feature_map_loss(t, s, normalize=True).item() == pytest.approx(1.0, abs=1e-6)
    # LN removes scale and shift: a student that is 5 x teacher + 2 matches it exactly
    assert L.feature_map_loss(T, 5 * T + 2, normalize=True).item() == pytest.approx(0.0, abs=1e-8)


def test_feature_mean_and_variance_terms():
    # per-token means: teacher 1.5, 3.5; student 0.5, 5 -> squares 1, 2.25 -> 1.625
    assert L.feature_mean_loss(T, S).item() == pytest.approx(1.625)
    # per-token variances: teacher 0.25, 0.25; student 0.25, 4 -> |0|, 3.75 -> 1.875
    assert L.feature_var_loss(T, S).item() == pytest.approx(1.875)
    assert L.feature_var_loss(T, S, mask=torch.tensor([[1, 0]])).item() == pytest.approx(0.0)


def _scores(*rows):
    return torch.tensor([[rows]])  # B=1, A=1, T=len(rows)


def test_attention_kl_from_scores():
    # teacher softmax([0, ln 3]) = [1/4, 3/4]; student softmax([0, 0]) = [1/2, 1/2]
    # KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.1308121
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    t = _scores([0.0, LN3], [0.0, LN3])
    s = _scores([0.0, 0.0], [0.0, 0.0])
    assert L.attention_loss(t, s).item() == pytest.approx(kl, abs=1e-6)
    # cross-entropy: -(1/4 + 3/4) ln(1/2) = ln 2
    assert L.attention_loss(t, s, kind="ce").item() == pytest.approx(LN2, abs=1e-6)
    # teacher given as probabilities: the same
    assert L.attention_loss(t.softmax(-1), s, teacher_is_probs=True).item() == pytest.approx(kl, abs=1e-6)


def test_attention_masked_keys_and_queries_are_excluded():
    # A third, padded key with a huge teacher score and a padded third query: neither counts.
    t = _scores([0.0, LN3, 50.0], [0.0, LN3, 50.0], [9.0, -9.0, 0.0])
    s = _scores([0.0, 0.0, -50.0], [0.0, 0.0, 7.0], [0.0, 0.0, 0.0])
    mask = torch.tensor([[1, 1, 0]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert L.attention_loss(t, s, mask=mask).item() == pytest.approx(kl, abs=1e-6)
    assert L.attention_loss(t.softmax(-1), s, mask=mask, teacher_is_probs=True).item() == pytest.approx(kl, abs=1e-6)


def test_pretrain_distillation_target():
    # vocab 2; student softmax([0, ln 3]) = [1/4, 3/4]; label 1; teacher softmax([0, ln 3]) = [1/4, 3/4]
    student = torch.tensor([[[0.0, LN3], [5.0, -5.0]]])
    teacher = torch.tensor([[[0.0, LN3], [0.0, 0.0]]])
    labels = torch.tensor([[1, -100]])  # the second position is not masked: ignored
    # alpha 0.5: target [1/8, 7/8]; loss = 1/8 ln 4 + 7/8 ln(4/3) = 0.4250094
    expect = 0.125 * math.log(4) + 0.875 * math.log(4 / 3)
    assert L.pretrain_distill_loss(student, labels, teacher, alpha=0.5).item() == pytest.approx(expect, abs=1e-6)
    # alpha 1: plain MLM cross-entropy, ln(4/3)
    assert L.pretrain_distill_loss(student, labels, None, alpha=1.0).item() == pytest.approx(math.log(4 / 3), abs=1e-6)
    # temperature 2: softmax([0, ln 3 / 2]) = [1/(1+sqrt 3), sqrt 3/(1+sqrt 3)]
    p0 = 1 / (1 + math.sqrt(3))
    target = [0.5 * p0, 0.5 + 0.5 * (1 - p0)]
    expect = target[0] * math.log(4) + target[1] * math.log(4 / 3)
    got = L.pretrain_distill_loss(student, labels, teacher, alpha=0.5, temperature=2.0).item()
    assert got == pytest.approx(expect, abs=1e-6)


def test_task_distillation():
    student, teacher = torch.tensor([[0.0, LN3]]), torch.tensor([[0.0, 0.0]])
    # T = 1: -(1/2 ln 1/4 + 1/2 ln 3/4) = 0.8369882
    assert L.task_distill_loss(student, teacher).item() == pytest.approx(0.5 * math.log(4) + 0.5 * math.log(4 / 3),
                                                                         abs=1e-6)
    # T = 2: student softmax([0, ln 3 / 2]); soft CE scaled by T^2 = 4
    p0 = 1 / (1 + math.sqrt(3))
    expect = 4 * -(0.5 * math.log(p0) + 0.5 * math.log(1 - p0))
    assert L.task_distill_loss(student, teacher, temperature=2.0).item() == pytest.approx(expect, abs=1e-5)
    # regression: MSE
    assert L.task_distill_loss(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]), regression=True).item() == \
        pytest.approx(2.5)
