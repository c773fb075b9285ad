"""Conversion between slimbert models and stock transformers MobileBERT.

Stock `MobileBertModel` expresses most of the family: any widths, heads, FFN stacking, norm and
activation, with Q/K/V fed from a shared bottleneck (released checkpoint), from the input bottleneck
(TINY), or without a bottleneck at all (BERT blocks). It can not feed Q/K from the H-wide block input
when the intra width differs (the IB-BERT teacher, the paper's Table-1 student): its query/key take
I-wide inputs (reference doc §5.3). Those models stay in slimbert's format.
"""

from __future__ import annotations

import logging

import torch
from transformers import (MobileBertConfig, MobileBertForMaskedLM, MobileBertForPreTraining,
                          MobileBertForQuestionAnswering, MobileBertForSequenceClassification, MobileBertModel)

from .configuration import SlimBertConfig
from .modeling import (SlimBertForMaskedLM, SlimBertForPreTraining, SlimBertForQuestionAnswering,
                       SlimBertForSequenceClassification, SlimBertModel, SlimBertPreTrainedModel)

log = logging.getLogger(__name__)

PAIRS = [
    (SlimBertModel, MobileBertModel),
    (SlimBertForMaskedLM, MobileBertForMaskedLM),
    (SlimBertForPreTraining, MobileBertForPreTraining),
    (SlimBertForSequenceClassification, MobileBertForSequenceClassification),
    (SlimBertForQuestionAnswering, MobileBertForQuestionAnswering),
]
SHARED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                 "type_vocab_size", "initializer_range", "layer_norm_eps", "pad_token_id", "embedding_size",
                 "trigram_input", "use_bottleneck", "intra_bottleneck_size", "num_feedforward_networks",
                 "normalization_type", "classifier_activation", "classifier_dropout", "tie_word_embeddings",
                 "id2label", "label2id", "problem_type")
# Stock MobileBERT builds these two norms as nn.LayerNorm(size) and so ignores the config's eps.
HF_FIXED_EPS = 1e-5


class NotExpressibleError(ValueError):
    """The architecture has no stock-transformers equivalent."""


def why_not_expressible(config: SlimBertConfig) -> str | None:
    """None when stock MobileBERT can express `config`, else the reason."""
    if config.inter_residual == "gated":
        return "inter_residual='gated' (a learned gate on the block's residual) has no stock MobileBERT equivalent"
    if config.classifier_pooling != "cls":
        return (f"classifier_pooling={config.classifier_pooling!r}: stock MobileBERT's pooler reads h[CLS] only")
    if config.bottleneck_norm != config.normalization_type:
        return (f"bottleneck_normalization_type={config.bottleneck_normalization_type!r} differs from "
                f"normalization_type={config.normalization_type!r}; stock MobileBERT uses one norm type")
    if config.use_bottleneck and config.qkv_source == "inter" and config.intra_bottleneck_size != config.hidden_size:
        return (f"qkv_source='inter' feeds Q/K from the {config.hidden_size}-wide block input while the intra width "
                f"is {config.intra_bottleneck_size}; stock MobileBERT's query/key projections take intra-width "
                "inputs (reference doc §5.3). Keep this model in slimbert format (the IB-BERT teacher and the "
                "paper's Table-1 student are such models), or use qkv_source 'shared_bottleneck' or 'bottleneck'.")
    return None


def to_transformers_config(config: SlimBertConfig) -> MobileBertConfig:
    reason = why_not_expressible(config)
    if reason:
        raise NotExpressibleError(reason)
    kw = {f: getattr(config, f) for f in SHARED_FIELDS}
    kw["use_bottleneck_attention"] = config.use_bottleneck and config.qkv_source == "bottleneck"
    kw["key_query_shared_bottleneck"] = config.use_bottleneck and config.qkv_source == "shared_bottleneck"
    if config.normalization_type == "layer_norm" and config.layer_norm_eps != HF_FIXED_EPS:
        log.warning("stock MobileBERT uses eps=%g in two of its LayerNorms whatever the config says; this model "
                    "uses %g, so outputs will differ slightly after conversion", HF_FIXED_EPS, config.layer_norm_eps)
    # MobileBertConfig derives true_hidden_size from intra_bottleneck_size; nothing stale is written.
    return MobileBertConfig(**kw)


def _pair_of(model, side: int):
    for pair in PAIRS:
        # isinstance: the Auto classes open slimbert folders as remote_modeling's subclasses of these.
        if isinstance(model, pair[side]):
            return pair[1 - side]
    names = ", ".join(p[side].__name__ for p in PAIRS)
    raise NotExpressibleError(f"{type(model).__name__} has no counterpart; expected one of: {names}")


def to_transformers(model: SlimBertPreTrainedModel):
    """The same network as a stock transformers MobileBERT model (same weights, same outputs)."""
    hf_config = to_transformers_config(model.config)
    hf_cls = _pair_of(model, 0)
    hf = hf_cls(hf_config)
    state = {k.replace("slimbert.", "mobilebert.", 1): v for k, v in model.state_dict().items()}
    # Parts stock MobileBERT always builds but never uses here: give them defined values.
    for key, tensor in hf.state_dict().items():
        if key not in state and (key.endswith("embeddings.embedding_transformation.weight")
                                 or key.endswith("embeddings.embedding_transformation.bias")
                                 or key.endswith("cls.predictions.dense.weight")):
            state[key] = torch.zeros_like(tensor)
    hf.load_state_dict(state, strict=True)
    return hf.eval() if not model.training else hf


def from_transformers_config(c: MobileBertConfig) -> SlimBertConfig:
    kw = {f: getattr(c, f) for f in SHARED_FIELDS}
    # Stock precedence: use_bottleneck_attention wins over key_query_shared_bottleneck.
    if c.use_bottleneck_attention:
        kw["qkv_source"] = "bottleneck"
    elif c.key_query_shared_bottleneck:
        kw["qkv_source"] = "shared_bottleneck"
    else:
        kw["qkv_source"] = "inter"
    return SlimBertConfig(**kw)


def from_transformers(hf_model) -> SlimBertPreTrainedModel:
    """A slimbert model from a stock MobileBERT model (e.g. google/mobilebert-uncased)."""
    model = _pair_of(hf_model, 1)(from_transformers_config(hf_model.config))
    wanted = model.state_dict()
    state = {}
    for k, v in hf_model.state_dict().items():
        k = k.replace("mobilebert.", "slimbert.", 1)
        if k in wanted:
            state[k] = v
        elif not (".bottleneck.attention." in k or "embedding_transformation" in k or "predictions.dense" in k):
            raise NotExpressibleError(f"unexpected weight {k!r} in {type(hf_model).__name__}")
        # else: parts stock MobileBERT builds but does not use (dead shared bottleneck, projection).
    model.load_state_dict(state, strict=True)
    return model.eval() if not hf_model.training else model
