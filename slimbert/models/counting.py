"""Parameters and FLOPs per component, from a config (analytic) or from a model (its modules).

FLOP convention: 2 x multiply-accumulates of every matmul, for one sequence (batch 1) of `seq_len`
tokens, including the two T x T attention matmuls (QK^T and PV) and the embedding projection. Lookups,
adds, norms, softmax and activations are not counted. This reproduces the paper's 22.5B (BERT_BASE) and
5.7B (MobileBERT) within 1% (reference doc §6: 22.3B and 5.59B).

Parameters count every trainable tensor once (tied MLM decoder weights belong to the embedding).
`attention_ffn_ratio` follows the paper's architecture search: parameters of the attention linears
(Q, K, V, O) over parameters of the FFN linears, norms and bottlenecks excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration import SlimBertConfig
from . import modeling as m
from .modeling import SlimBertModel, SlimBertPreTrainedModel

COMPONENTS = ("embedding", "bottleneck", "attention", "ffn", "pooler", "head")
HEADS = (None, "mlm", "pretraining", "classification", "qa")


@dataclass
class Counts:
    params: dict[str, int]
    flops: dict[str, int]
    attention_ffn_ratio: float
    seq_len: int
    head: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def encoder_params(self) -> int:
        """Non-embedding parameters of the blocks (what 'N x fewer encoder parameters' compares)."""
        return self.params["bottleneck"] + self.params["attention"] + self.params["ffn"]

    @property
    def total_flops(self) -> int:
        return sum(self.flops.values())

    def as_dict(self) -> dict:
        return {"params": {**self.params, "total": self.total_params, "encoder": self.encoder_params},
                "flops": {**self.flops, "total": self.total_flops},
                "attention_ffn_ratio": self.attention_ffn_ratio, "seq_len": self.seq_len, "head": self.head}


def _norm_params(config: SlimBertConfig, size: int) -> int:
    return 2 * size  # LayerNorm and NoNorm both hold a weight and a bias


def _linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def count_config(config: SlimBertConfig, seq_len: int = 128, head: str | None = None,
                 num_labels: int | None = None, pooler: bool = True) -> Counts:
    """Analytic counts for `SlimBertModel(config)` (+ `head`)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    V, E, H, I = config.vocab_size, config.embedding_size, config.hidden_size, config.true_hidden_size
    Fw, N, L, T = config.intermediate_size, config.num_feedforward_networks, config.num_hidden_layers, seq_len
    qk_in, v_in = config.qkv_input_sizes
    params = dict.fromkeys(COMPONENTS, 0)
    macs = dict.fromkeys(COMPONENTS, 0)

    params["embedding"] = V * E + config.max_position_embeddings * H + config.type_vocab_size * H + 2 * H
    if config.has_embedding_transformation:
        k = 3 if config.trigram_input else 1
        params["embedding"] += _linear(k * E, H)
        macs["embedding"] = T * k * E * H

    if config.use_bottleneck:
        n_in = 2 if config.qkv_source == "shared_bottleneck" else 1
        gate = H if config.inter_residual == "gated" else 0
        params["bottleneck"] = L * (n_in * (_linear(H, I) + 2 * I) + _linear(I, H) + 2 * H + gate)
        macs["bottleneck"] = L * T * (n_in * H * I + I * H)

    attn_linears = 2 * _linear(qk_in, I) + _linear(v_in, I) + _linear(I, I)
    params["attention"] = L * (attn_linears + 2 * I)
    macs["attention"] = L * (T * (2 * qk_in * I + v_in * I + I * I) + 2 * T * T * I)

    ffn_linears = N * (_linear(I, Fw) + _linear(Fw, I))
    params["ffn"] = L * (ffn_linears + N * 2 * I)
    macs["ffn"] = L * N * T * 2 * I * Fw

    has_pooler = pooler and head not in ("mlm", "qa")
    if has_pooler and config.classifier_activation:
        params["pooler"] = _linear(H, H)
        macs["pooler"] = H * H

    if head in ("mlm", "pretraining"):
        params["head"] = _linear(H, H) + 2 * H + V * (H - E) + V  # transform, LN, extra columns, bias
        macs["head"] = T * (H * H + H * V)
        if head == "pretraining":
            params["head"] += _linear(H, 2)
            macs["head"] += H * 2
    elif head == "classification":
        labels = num_labels if num_labels is not None else config.num_labels
        params["head"] = _linear(H, labels)
        macs["head"] = H * labels
    elif head == "qa":
        params["head"] = _linear(H, 2)
        macs["head"] = T * H * 2

    ratio = attn_linears / ffn_linears
    return Counts(params=params, flops={k: 2 * v for k, v in macs.items()}, attention_ffn_ratio=ratio,
                  seq_len=seq_len, head=head)


# ---- counting an instantiated model ---------------------------------------------------------------------------

def component_of(name: str) -> str:
    """Map a parameter name of the family to its component."""
    parts = name.split(".")
    if "embeddings" in parts:
        return "embedding"
    if "pooler" in parts:
        return "pooler"
    if "layer" in parts:
        if "bottleneck" in parts:
            return "bottleneck"
        if "attention" in parts:
            return "attention"
        return "ffn"
    return "head"


def head_of(model: nn.Module) -> str | None:
    return {m.SlimBertForMaskedLM: "mlm", m.SlimBertForPreTraining: "pretraining",
            m.SlimBertForSequenceClassification: "classification",
            m.SlimBertForQuestionAnswering: "qa"}.get(type(model))


def measure_params(model: nn.Module) -> dict[str, int]:
    out = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # named_parameters yields a tied tensor once
        out[component_of(name)] += p.numel()
    return out


def measure_flops(model: nn.Module, seq_len: int = 128) -> int:
    """FLOPs of one forward on 1 x seq_len ids, counted by torch's FlopCounterMode (matmuls, 2 x MACs)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.ones(1, seq_len, dtype=torch.long)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        # The explicit attention path: SDPA kernels are counted too, but this keeps the count exact.
        model(ids, output_attention_scores=True)
    model.train(was_training)
    return counter.get_total_flops()


def count(model_or_config, seq_len: int = 128, head: str | None = None) -> Counts:
    """Parameters and FLOPs per component (embedding, bottleneck, attention, ffn, pooler, head).

    A model is counted from its own modules (parameters) and the analytic formulas (FLOPs); a config
    from the formulas alone. Tests hold both to agree exactly.
    """
    if isinstance(model_or_config, SlimBertConfig):
        return count_config(model_or_config, seq_len, head)
    if isinstance(model_or_config, SlimBertPreTrainedModel):
        model = model_or_config
        pooler = not isinstance(model, SlimBertModel) or model.pooler is not None
        counts = count_config(model.config, seq_len, head_of(model), pooler=pooler)
        counts.params = measure_params(model)
        return counts
    raise TypeError(f"count() takes a SlimBertConfig or a slimbert model, got {type(model_or_config).__name__}")
