"""Conversion between slimbert's plain (bottleneck-free) BERT block and the stock encoders it is cut from.

A student pruned from its source (`student.init: prune_from_source`) keeps the source's block: post-LN, one FFN,
heads of width H / A, LayerNorm everywhere, the word table as wide as the residual stream. That is stock BERT
(and RoBERTa, whose only difference is where its position table starts), so such a student is saved as a model
of its source's own type: it opens with `AutoModel` and `SentenceTransformer` without remote code.

    from_encoder(hf_model)                 stock BertModel / RobertaModel / ...ForMaskedLM -> slimbert, exact
    to_encoder(model, "bert")              slimbert -> stock, exact (None-reason from why_not_encoder)

Names: slimbert's state dict already uses BERT's names below the prefix (`slimbert.encoder.layer.0.attention.
self.query.weight` is BERT's `bert.encoder.layer.0...`); only the prefix, RoBERTa's position offset and the MLM
heads' names differ.
"""

from __future__ import annotations

import torch
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel, RobertaConfig,
                          RobertaForMaskedLM, RobertaModel)

from .configuration import SlimBertConfig
from .modeling import SlimBertForMaskedLM, SlimBertForSequenceClassification, SlimBertModel, SlimBertPreTrainedModel

# model_type -> (config class, {slimbert class: stock class}, the stock prefix, position offset from padding_idx)
ENCODERS = {
    "bert": (BertConfig, {SlimBertModel: BertModel, SlimBertForMaskedLM: BertForMaskedLM,
                          SlimBertForSequenceClassification: BertForSequenceClassification}, "bert", False),
    "roberta": (RobertaConfig, {SlimBertModel: RobertaModel, SlimBertForMaskedLM: RobertaForMaskedLM},
                "roberta", True),
}
ENCODER_TYPES = tuple(ENCODERS)
# BERT's MLM head <-> slimbert's (the same modules: transform dense + act + LayerNorm, decoder tied to the table).
_BERT_MLM = {"cls.predictions.transform.dense": "cls.predictions.transform.dense",
             "cls.predictions.transform.LayerNorm": "cls.predictions.transform.LayerNorm",
             "cls.predictions.bias": "cls.predictions.bias"}
_ROBERTA_MLM = {"lm_head.dense": "cls.predictions.transform.dense",
                "lm_head.layer_norm": "cls.predictions.transform.LayerNorm", "lm_head.bias": "cls.predictions.bias"}

# A *ForSequenceClassification head in slimbert's names: BERT's pooler (tanh of a dense layer on h[CLS]) and
# classifier are slimbert's; RoBERTa's head is the same computation (dense, tanh, out_proj on h[CLS]) under its
# own names, so it maps onto slimbert's pooler and classifier too.
_CLASSIFIER = {"bert": {"bert.pooler.dense": "slimbert.pooler.dense", "classifier": "classifier"},
               "roberta": {"classifier.dense": "slimbert.pooler.dense", "classifier.out_proj": "classifier"}}


def why_not_encoder(config: SlimBertConfig, model_type: str, model_cls: type | None = None) -> str | None:
    """None when `config` (and the head class) is a stock `model_type` encoder, else the reason."""
    if model_type not in ENCODERS:
        return f"{model_type!r} is not one of the stock encoders slimbert writes ({', '.join(ENCODER_TYPES)})"
    if model_cls is not None and model_cls not in ENCODERS[model_type][1]:
        return f"{model_cls.__name__} has no stock {model_type} counterpart here"
    if config.use_bottleneck:
        return "the block has bottlenecks"
    if config.num_feedforward_networks != 1:
        return f"{config.num_feedforward_networks} stacked FFNs (stock encoders have one)"
    if config.normalization_type != "layer_norm" or config.bottleneck_norm != "layer_norm":
        return "NoNorm (stock encoders use LayerNorm)"
    if config.has_embedding_transformation:
        return "a factorised or 3-gram embedding"
    if config.inter_residual != "plain":
        return "a gated residual"
    if config.classifier_pooling != "cls" or not config.classifier_activation:
        return "a pooler other than BERT's (tanh of a dense layer on h[CLS])"
    return None


def _offset(model_type: str, pad_token_id: int | None) -> int:
    return (pad_token_id or 0) + 1 if ENCODERS[model_type][3] else 0


def encoder_config(config: SlimBertConfig, model_type: str):
    """The stock config of the same network (RoBERTa's position table is padding_idx + 1 rows longer)."""
    cls = ENCODERS[model_type][0]
    offset = _offset(model_type, config.pad_token_id)
    kw = dict(vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
              num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
              hidden_act=config.hidden_act, hidden_dropout_prob=config.hidden_dropout_prob,
              attention_probs_dropout_prob=config.attention_probs_dropout_prob,
              max_position_embeddings=config.max_position_embeddings + offset, type_vocab_size=config.type_vocab_size,
              initializer_range=config.initializer_range, layer_norm_eps=config.layer_norm_eps,
              pad_token_id=config.pad_token_id, tie_word_embeddings=config.tie_word_embeddings,
              id2label=config.id2label, label2id=config.label2id, problem_type=config.problem_type)
    if config.classifier_dropout is not None:
        kw["classifier_dropout"] = config.classifier_dropout
    return cls(**kw)


def to_encoder(model: SlimBertPreTrainedModel, model_type: str):
    """The same network as a stock `model_type` model (same weights, same outputs on real tokens)."""
    reason = why_not_encoder(model.config, model_type, type(model))
    if reason:
        raise ValueError(f"not a stock {model_type} model: {reason}")
    _, classes, prefix, _ = ENCODERS[model_type]
    hf = classes[type(model)](encoder_config(model.config, model_type))
    offset = _offset(model_type, model.config.pad_token_id)
    mlm = {v: k for k, v in (_ROBERTA_MLM if model_type == "roberta" else _BERT_MLM).items()}
    theirs = hf.state_dict()
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("slimbert."):
            k = prefix + k[len("slimbert"):] if type(model) is not SlimBertModel else k[len("slimbert."):]
        elif type(model) is SlimBertModel:
            pass
        for mine, stock in mlm.items():
            if k.startswith(mine):
                k = stock + k[len(mine):]
        if k.endswith("embeddings.position_embeddings.weight") and offset:
            # RoBERTa counts positions from padding_idx + 1: the rows before are the padding's (never attended).
            v = torch.cat([v.new_zeros(offset, v.shape[1]), v])
        if k in theirs:
            state[k] = v
    missing = [k for k in theirs if k not in state and not _tied_or_buffer(k)]
    if missing:
        raise ValueError(f"to_encoder: no slimbert weight for {missing[:4]}")
    hf.load_state_dict(state, strict=False)
    hf.tie_weights()
    return hf.eval() if not model.training else hf


def _tied_or_buffer(key: str) -> bool:
    return key.endswith(("decoder.weight", "decoder.bias", "position_ids", "token_type_ids"))


def from_encoder_config(hf_config, **overrides) -> SlimBertConfig:
    """A stock BERT/RoBERTa config as slimbert's plain block."""
    model_type = hf_config.model_type
    offset = _offset(model_type, hf_config.pad_token_id)
    kw = dict(vocab_size=hf_config.vocab_size, embedding_size=hf_config.hidden_size, trigram_input=False,
              hidden_size=hf_config.hidden_size, use_bottleneck=False, intra_bottleneck_size=hf_config.hidden_size,
              num_hidden_layers=hf_config.num_hidden_layers, num_attention_heads=hf_config.num_attention_heads,
              intermediate_size=hf_config.intermediate_size, num_feedforward_networks=1,
              normalization_type="layer_norm", hidden_act=hf_config.hidden_act,
              hidden_dropout_prob=hf_config.hidden_dropout_prob,
              attention_probs_dropout_prob=hf_config.attention_probs_dropout_prob,
              max_position_embeddings=hf_config.max_position_embeddings - offset,
              type_vocab_size=max(1, hf_config.type_vocab_size), layer_norm_eps=hf_config.layer_norm_eps,
              pad_token_id=hf_config.pad_token_id, classifier_activation=True, classifier_pooling="cls")
    kw.update(overrides)
    return SlimBertConfig(**kw)


def from_encoder(hf_model, with_mlm: bool | None = None) -> SlimBertPreTrainedModel:
    """A stock BERT / RoBERTa model (bare or *ForMaskedLM) as slimbert's plain block, exact on real tokens.
    `with_mlm` None: a slimbert MLM model when the source has an MLM head. The bare encoder's pooler is kept."""
    model_type = hf_model.config.model_type
    if model_type not in ENCODERS:
        raise ValueError(f"from_encoder: {model_type!r} is not one of {', '.join(ENCODER_TYPES)}")
    _, _, prefix, _ = ENCODERS[model_type]
    offset = _offset(model_type, hf_model.config.pad_token_id)
    has_mlm = any(k.startswith(("cls.predictions", "lm_head.")) for k in hf_model.state_dict())
    with_mlm = has_mlm if with_mlm is None else with_mlm
    config = from_encoder_config(hf_model.config)
    model = SlimBertForMaskedLM(config) if with_mlm else SlimBertModel(config)
    mlm = _ROBERTA_MLM if model_type == "roberta" else _BERT_MLM
    wanted = model.state_dict()
    state = {}
    for k, v in hf_model.state_dict().items():
        if k.startswith(prefix + "."):
            k = k[len(prefix) + 1:]
        for stock, mine in mlm.items():
            if k.startswith(stock):
                k = mine + k[len(stock):]
        if k.endswith("embeddings.position_embeddings.weight") and offset:
            v = v[offset:]
        key = k if isinstance(model, SlimBertModel) or k.startswith("cls.") else f"slimbert.{k}"
        if key in wanted and wanted[key].shape == v.shape:
            state[key] = v
    if isinstance(model, SlimBertModel) and "pooler.dense.weight" not in state:
        model.pooler = None  # an MLM checkpoint has no pooler: none rather than a random one
    model.load_state_dict(state, strict=False)
    missing = [k for k in model.state_dict() if k not in state and not _tied_or_buffer(k)
               and not (k.startswith("cls.") and not has_mlm)]
    if missing:
        raise ValueError(f"from_encoder: {type(hf_model).__name__} has no weight for {missing[:4]}")
    if with_mlm:
        model.tie_weights()
    return model.eval()


def classifier_head(hf_model) -> dict[str, torch.Tensor] | None:
    """A stock *ForSequenceClassification model's pooler and classifier in slimbert's names (the keys of a
    SlimBertForSequenceClassification), or None when `hf_model` has no such head."""
    names = _CLASSIFIER.get(hf_model.config.model_type, {})
    head = {}
    for k, v in hf_model.state_dict().items():
        for stock, mine in names.items():
            if k.startswith(stock + "."):
                head[mine + k[len(stock):]] = v
    return head if len(head) == 4 else None


def save_as_encoder(model: SlimBertPreTrainedModel, save_dir, model_type: str, with_mlm: bool) -> bool:
    """Save `model` as a stock `model_type` model and return True; False (nothing written) when its shape or head
    is not one. An MLM student whose source had no MLM head is saved as the bare encoder (with its pooler): the
    head it carries was never trained."""
    target = model.slimbert if isinstance(model, SlimBertForMaskedLM) and not with_mlm else model
    if why_not_encoder(target.config, model_type, type(target)) is not None:
        return False
    if isinstance(target, SlimBertModel) and target.pooler is None:
        return False
    to_encoder(target, model_type).save_pretrained(save_dir)
    return True
