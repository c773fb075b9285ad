"""Transfer losses (paper §3.5, official code §3.2 of the reference doc). Pure functions of tensors.

Shapes: features B x T x H; attention B x A x T x T; logits B x T x V; `mask` is B x T with 1 = real token.
Every loss computes in fp32 whatever its inputs' dtype (bf16 under autocast): variances of near-equal
features, softmaxes over attention rows and over the vocabulary lose their meaning in bf16's 8-bit mantissa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free LayerNorm over features (gamma 1, beta 0), as the official feature-map loss."""
    return F.layer_norm(x, x.shape[-1:], eps=1e-12)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of a B x T (x ...) tensor over real positions (all positions when mask is None)."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    while m.dim() < x.dim():
        m = m.unsqueeze(-1)
    return (x * m).sum() / (m.sum() * (x.numel() / m.numel())).clamp_min(1)


def feature_map_loss(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor | None = None,
                     normalize: bool = True) -> torch.Tensor:
    """MSE between feature maps, averaged over tokens and features (1/(T*N) sum of squares, per sequence)."""
    teacher, student = teacher.float(), student.float()
    if normalize:
        teacher, student = _layer_norm(teacher), _layer_norm(student)
    return _masked_mean((teacher - student).pow(2), mask)


def feature_mean_loss(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of (mu_t - mu_s)^2, mu = per-token feature mean (the official beta term)."""
    teacher, student = teacher.float(), student.float()
    return _masked_mean((teacher.mean(-1) - student.mean(-1)).pow(2), mask)


def feature_var_loss(teacher: torch.Tensor, student: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over tokens of |var_t - var_s|, var = per-token feature variance (the official gamma term)."""
    vt = teacher.float().var(-1, unbiased=False)
    vs = student.float().var(-1, unbiased=False)
    return _masked_mean((vt - vs).abs(), mask)


def attention_loss(teacher: torch.Tensor, student_scores: torch.Tensor, mask: torch.Tensor | None = None,
                   teacher_is_probs: bool = False, kind: str = "kl") -> torch.Tensor:
    """KL(teacher || student) (or cross-entropy) between per-head attention rows, averaged over batch,
    heads and real query positions. Masked keys are excluded from both distributions."""
    teacher, student_scores = teacher.float(), student_scores.float()
    if mask is not None:
        key_pad = (mask == 0)[:, None, None, :]
        student_scores = student_scores.masked_fill(key_pad, float("-inf"))
        if not teacher_is_probs:
            teacher = teacher.masked_fill(key_pad, float("-inf"))
    log_s = F.log_softmax(student_scores, dim=-1)
    if teacher_is_probs:
        p_t = teacher
        if mask is not None:
            p_t = p_t.masked_fill(key_pad, 0.0)
            p_t = p_t / p_t.sum(-1, keepdim=True).clamp_min(torch.finfo(p_t.dtype).tiny)
        log_t = torch.log(p_t.clamp_min(1e-30))
    else:
        log_t = F.log_softmax(teacher, dim=-1)
        p_t = log_t.exp()
    ce = -(p_t * log_s.masked_fill(p_t == 0, 0.0)).sum(-1)            # B x A x T
    if kind == "kl":
        ce = ce + (p_t * log_t.masked_fill(p_t == 0, 0.0)).sum(-1)   # minus the teacher's entropy
    q_mask = None if mask is None else mask[:, None, :].expand(-1, ce.shape[1], -1)
    return _masked_mean(ce, q_mask)


def distillation_targets(labels: torch.Tensor, teacher_logits: torch.Tensor | None, vocab: int, alpha: float,
                         temperature: float) -> torch.Tensor:
    """alpha * one-hot + (1 - alpha) * softmax(teacher / T), at the labelled positions (N x V)."""
    keep = labels != -100
    onehot = F.one_hot(labels[keep], vocab).to(torch.float32)
    if teacher_logits is None or alpha >= 1.0:
        return onehot
    soft = F.softmax(teacher_logits[keep].float() / temperature, dim=-1)
    return alpha * onehot + (1 - alpha) * soft


def pretrain_distill_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
                          alpha: float, temperature: float = 1.0) -> torch.Tensor:
    """MLM cross-entropy against alpha * one-hot + (1 - alpha) * softmax(teacher / T), masked tokens only."""
    keep = labels != -100
    if not keep.any():
        return student_logits.sum() * 0.0
    target = distillation_targets(labels, teacher_logits, student_logits.shape[-1], alpha, temperature)
    return -(target * F.log_softmax(student_logits[keep].float(), dim=-1)).sum(-1).mean()


def task_distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                      regression: bool = False) -> torch.Tensor:
    """Soft cross-entropy on logits at temperature T (scaled by T^2), or MSE for regression."""
    student_logits, teacher_logits = student_logits.float(), teacher_logits.float()
    if regression:
        return F.mse_loss(student_logits, teacher_logits)
    t = F.softmax(teacher_logits / temperature, dim=-1)
    return -(t * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean() * temperature ** 2


# ---- sentence embeddings (sentence-transformers' distillation) -----------------------------------------------------

def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """B x H -> B x B cosine similarities."""
    x = F.normalize(x, dim=-1)
    return x @ x.T


def embedding_mse_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' MSELoss: mean squared error between embeddings of equal width."""
    return F.mse_loss(student, teacher)


def embedding_cosine_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """1 - cosine between each sentence's embeddings, averaged."""
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def similarity_matrix_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """MSE between the in-batch cosine-similarity matrices (any widths): the geometry similarity search reads."""
    return F.mse_loss(cosine_matrix(student), cosine_matrix(teacher))
