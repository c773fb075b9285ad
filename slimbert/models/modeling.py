"""The bottleneck-BERT family: BERT, IB-BERT (teacher), MobileBERT and MobileBERT_TINY in one model.

Reads top to bottom: norms, embeddings, the block's parts, the block, the encoder, then the heads.
Block dataflow (post-norm, x = block input of width H; reference doc §1.2):

    u   = Norm(W_in x)                                   input bottleneck H -> I
    ctx = MHA(Q, K, V)  with Q,K,V fed per `qkv_source`  (x,x,x) | (s,s,x) | (u,u,u)
    a   = Norm(W_o ctx + u)                              residual to the *bottlenecked* input
    h   = a; N times: h = Norm(W2 act(W1 h) + h)         stacked FFNs I -> F -> I
    y   = Norm(Dropout(W_out h) + x)                     output bottleneck I -> H, residual to x

Without a bottleneck (BERT) u = x, I = H and y = h.

State-dict names match transformers' MobileBERT (with the prefix `slimbert.`), so converting a student
to the stock class is a rename, and the parity tests compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from .configuration import SlimBertConfig


# ---- norms -------------------------------------------------------------------------------------------

class NoNorm(nn.Module):
    """MobileBERT's NoNorm: an element-wise affine map, gamma * x + beta (no statistics, so it is cheap)."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.bias = nn.Parameter(torch.zeros(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


def make_norm(config: SlimBertConfig, size: int, kind: str | None = None) -> nn.Module:
    """`kind` None: the model's normalization_type; "bottleneck": the embedding/bottleneck norm type."""
    norm = config.bottleneck_norm if kind == "bottleneck" else config.normalization_type
    if norm == "no_norm":
        return NoNorm(size)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)


# ---- embeddings ---------------------------------------------------------------------------------------

class SlimBertEmbeddings(nn.Module):
    """Word table of width E, optional 3-gram concat, projection to H, + position + token type, norm."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.trigram_input = config.trigram_input
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        if config.has_embedding_transformation:
            width = config.embedding_size * (3 if config.trigram_input else 1)
            self.embedding_transformation = nn.Linear(width, config.hidden_size)
        else:
            self.embedding_transformation = None  # plain BERT: no dead H x H projection (unlike stock HF)
        self.LayerNorm = make_norm(config, config.hidden_size, "bottleneck")
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        seq_len = input_ids.shape[1]
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_len]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        e = self.word_embeddings(input_ids)  # (B, T) -> (B, T, E)
        if self.trigram_input:
            # [next, current, previous] along features, zero-padded at both ends: a width-3 convolution.
            nxt = F.pad(e[:, 1:], (0, 0, 0, 1))
            prv = F.pad(e[:, :-1], (0, 0, 1, 0))
            e = torch.cat([nxt, e, prv], dim=-1)  # (B, T, 3E)
        if self.embedding_transformation is not None:
            e = self.embedding_transformation(e)  # (B, T, E or 3E) -> (B, T, H)
        e = e + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(e))


# ---- the block's parts ---------------------------------------------------------------------------------

class BottleneckLayer(nn.Module):
    """H -> I projection and norm."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intra_bottleneck_size)
        self.LayerNorm = make_norm(config, config.intra_bottleneck_size, "bottleneck")

    def forward(self, x):
        return self.LayerNorm(self.dense(x))


class Bottleneck(nn.Module):
    """Returns (query input, key input, value input, u) for one block."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.qkv_source = config.qkv_source
        self.input = BottleneckLayer(config)
        if self.qkv_source == "shared_bottleneck":
            self.attention = BottleneckLayer(config)

    def forward(self, x):
        u = self.input(x)
        if self.qkv_source == "bottleneck":
            return u, u, u, u
        if self.qkv_source == "shared_bottleneck":
            s = self.attention(x)
            return s, s, x, u
        return x, x, x, u


class SlimBertSelfAttention(nn.Module):
    """Multi-head attention whose Q/K/V inputs may have different widths (I or H)."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        width = config.true_hidden_size
        qk_in, v_in = config.qkv_input_sizes
        self.num_heads = config.num_attention_heads
        self.head_size = width // self.num_heads
        self.query = nn.Linear(qk_in, width)
        self.key = nn.Linear(qk_in, width)
        self.value = nn.Linear(v_in, width)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, q_in, k_in, v_in, mask, seq_len: int, return_scores: bool = False):
        """Inputs and output are token-major, (B*T) x width; heads are split only here."""
        # (B*T, A*d) -> (B, T, A, d) -> (B, A, T, d): one attention map per head
        heads = lambda t: t.view(-1, seq_len, self.num_heads, self.head_size).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.query(q_in)), heads(self.key(k_in)), heads(self.value(v_in))
        scores = None
        if return_scores:
            # Explicit path: the masked pre-softmax scores are what attention transfer needs, and they are
            # taken before dropout (stock HF returns post-dropout probabilities).
            scores = (q @ k.transpose(-1, -2)) * self.head_size ** -0.5  # (B, A, T, T)
            if mask is not None:
                scores = scores + mask
            ctx = self.dropout(scores.softmax(-1)) @ v
        else:
            p = self.dropout.p if self.training else 0.0
            # An explicit scale exports as a constant (not Shape -> Sqrt -> Div per layer).
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                 scale=self.head_size ** -0.5)
        # (B, A, T, d) -> (B, T, A, d) -> (B*T, A*d): back to token-major, heads concatenated
        return ctx.transpose(1, 2).reshape(-1, self.num_heads * self.head_size), scores


class SlimBertSelfOutput(nn.Module):
    """a = Norm(W_o ctx + residual). No dropout when bottlenecked, as in the official code."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.true_hidden_size, config.true_hidden_size)
        self.LayerNorm = make_norm(config, config.true_hidden_size)
        self.dropout = nn.Dropout(0.0 if config.use_bottleneck else config.hidden_dropout_prob)

    def forward(self, ctx, residual):
        return self.LayerNorm(self.dropout(self.dense(ctx)) + residual)


class SlimBertAttention(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.self = SlimBertSelfAttention(config)
        self.output = SlimBertSelfOutput(config)

    def forward(self, q_in, k_in, v_in, residual, mask, seq_len, return_scores=False):
        ctx, scores = self.self(q_in, k_in, v_in, mask, seq_len, return_scores)
        return self.output(ctx, residual), scores


class SlimBertIntermediate(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.true_hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, h):
        return self.act(self.dense(h))


class FFNOutput(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.true_hidden_size)
        self.LayerNorm = make_norm(config, config.true_hidden_size)

    def forward(self, f, residual):
        return self.LayerNorm(self.dense(f) + residual)


class FFNLayer(nn.Module):
    """One of the N-1 extra stacked FFNs: h = Norm(W2 act(W1 h) + h)."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.intermediate = SlimBertIntermediate(config)
        self.output = FFNOutput(config)

    def forward(self, h):
        return self.output(self.intermediate(h), h)


class OutputBottleneck(nn.Module):
    """y = Norm(Dropout(W_out h) + x): I -> H with the residual to the block input (times a learned
    per-feature gate when `inter_residual == "gated"`)."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.true_hidden_size, config.hidden_size)
        self.LayerNorm = make_norm(config, config.hidden_size, "bottleneck")
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.residual_gate = nn.Parameter(torch.ones(config.hidden_size)) if config.inter_residual == "gated" else None

    def forward(self, h, x):
        if self.residual_gate is not None:
            x = x * self.residual_gate
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class SlimBertOutput(nn.Module):
    """The last FFN's output projection, then the output bottleneck when there is one."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.true_hidden_size)
        self.LayerNorm = make_norm(config, config.true_hidden_size)
        self.dropout = nn.Dropout(0.0 if config.use_bottleneck else config.hidden_dropout_prob)
        self.bottleneck = OutputBottleneck(config) if config.use_bottleneck else None

    def forward(self, f, h, x):
        h = self.LayerNorm(self.dropout(self.dense(f)) + h)
        return h if self.bottleneck is None else self.bottleneck(h, x)


# ---- the block and the encoder ----------------------------------------------------------------------------

class SlimBertLayer(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.bottleneck = Bottleneck(config) if config.use_bottleneck else None
        self.attention = SlimBertAttention(config)
        n_extra = config.num_feedforward_networks - 1
        self.ffn = nn.ModuleList([FFNLayer(config) for _ in range(n_extra)]) if n_extra else None
        self.intermediate = SlimBertIntermediate(config)
        self.output = SlimBertOutput(config)

    def forward(self, x, mask, seq_len, return_scores=False):
        q_in, k_in, v_in, u = self.bottleneck(x) if self.bottleneck is not None else (x, x, x, x)
        h, scores = self.attention(q_in, k_in, v_in, u, mask, seq_len, return_scores)
        for ffn in self.ffn or ():
            h = ffn(h)
        return self.output(self.intermediate(h), h, x), scores


class SlimBertEncoder(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.layer = nn.ModuleList([SlimBertLayer(config) for _ in range(config.num_hidden_layers)])


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """B x T x H -> B x H: the mean over real tokens ("mean") or the first token ("cls"), as
    sentence-transformers' Pooling module."""
    if mode == "cls":
        return hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"pooling {mode!r}: expected 'mean' or 'cls'")
    if mask is None:
        return hidden.mean(1)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class SlimBertPooler(nn.Module):
    """pool(h, mask, `classifier_pooling`): h[CLS] or the masked mean, through dense + tanh only when
    `classifier_activation` (official MobileBERT: off)."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.mode = config.classifier_pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size) if config.classifier_activation else None

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        pooled = pool(hidden, attention_mask, self.mode)  # (B, T, H) -> (B, H)
        return pooled if self.dense is None else torch.tanh(self.dense(pooled))


# ---- outputs ------------------------------------------------------------------------------------------------

@dataclass
class SlimBertModelOutput(ModelOutput):
    """`hidden_states`: embedding output then every block output (L + 1 tensors, B x T x H): the feature maps.
    `attention_scores`: per block, masked pre-softmax scores (B x A x T x T), dropout-free."""

    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None


@dataclass
class SlimBertHeadOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    seq_relationship_logits: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None
    end_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attention_scores: tuple[torch.Tensor, ...] | None = None


# ---- the base model -----------------------------------------------------------------------------------------------

class SlimBertPreTrainedModel(PreTrainedModel):
    config_class = SlimBertConfig
    config: SlimBertConfig
    base_model_prefix = "slimbert"
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, NoNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, SlimBertLMPredictionHead):
            module.bias.zero_()
        elif isinstance(module, OutputBottleneck) and module.residual_gate is not None:
            module.residual_gate.fill_(1.0)  # a fresh gated model starts as the plain one
        elif isinstance(module, SlimBertEmbeddings):
            module.position_ids.copy_(torch.arange(module.position_ids.shape[-1])[None])



def additive_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, T) of 1 = keep / 0 = pad  ->  (B, 1, 1, T) additive mask, dtype-min on padded keys (as HF)."""
    if attention_mask is None:
        return None
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


class SlimBertModel(SlimBertPreTrainedModel):
    def __init__(self, config: SlimBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = SlimBertEmbeddings(config)
        self.encoder = SlimBertEncoder(config)
        self.pooler = SlimBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                num_layers: int | None = None) -> SlimBertModelOutput:
        """`input_ids` (B, T); `attention_mask` (B, T) of 1 = token, 0 = padding. `num_layers` runs only the
        first k blocks: progressive transfer of layer k needs no more."""
        e = self.embeddings(input_ids, token_type_ids, position_ids)  # (B, T, inter)
        B, T, _ = e.shape
        mask = additive_mask(attention_mask, e.dtype)
        layers = self.encoder.layer if num_layers is None else self.encoder.layer[:num_layers]
        # Token-major inside the encoder: every Linear sees (B*T) x width, one GEMM with its bias (an ONNX
        # Gemm, which onnxruntime also fuses with the activation); heads are split only inside attention.
        x = e.reshape(B * T, -1)  # (B, T, H) -> (B*T, H)
        hidden, scores = [e], []
        for layer in layers:
            x, s = layer(x, mask, T, output_attention_scores)
            hidden.append(x.view(B, T, -1))  # (B*T, inter) -> (B, T, inter) for the outputs
            scores.append(s)
        last = hidden[-1]
        return SlimBertModelOutput(
            last_hidden_state=last,
            pooler_output=self.pooler(last, attention_mask) if self.pooler is not None else None,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attention_scores=tuple(scores) if output_attention_scores else None,
        )


# ---- heads --------------------------------------------------------------------------------------------------------

class SlimBertPredictionHeadTransform(nn.Module):
    """dense H -> H, activation, and a real LayerNorm even in a NoNorm student (as the official code)."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h):
        return self.LayerNorm(self.act(self.dense(h)))


class SlimBertLMPredictionHead(nn.Module):
    """logits = t(h) @ [word table (V x E) ; extra columns (V x (H - E))]^T + bias."""

    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.transform = SlimBertPredictionHeadTransform(config)
        # Stored as (H - E) x V, the layout of transformers' MobileBERT, so weights convert as they are.
        extra = config.hidden_size - config.embedding_size
        self.dense = nn.Linear(config.vocab_size, extra, bias=False) if extra else None
        self.decoder = nn.Linear(config.embedding_size, config.vocab_size)  # weight tied to the word table
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h):
        w = self.decoder.weight.t()
        if self.dense is not None:
            w = torch.cat([w, self.dense.weight], dim=0)
        return self.transform(h) @ w + self.decoder.bias


class SlimBertMLMHead(nn.Module):
    def __init__(self, config: SlimBertConfig):
        super().__init__()
        self.predictions = SlimBertLMPredictionHead(config)

    def forward(self, h):
        return self.predictions(h)


class SlimBertPreTrainingHeads(SlimBertMLMHead):
    def __init__(self, config: SlimBertConfig):
        super().__init__(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


_TIED_MLM = {
    "cls.predictions.decoder.bias": "cls.predictions.bias",
    "cls.predictions.decoder.weight": "slimbert.embeddings.word_embeddings.weight",
}


def _mlm_loss(logits, labels, vocab_size):
    return F.cross_entropy(logits.view(-1, vocab_size), labels.view(-1), ignore_index=-100)


class SlimBertForMaskedLM(SlimBertPreTrainedModel):
    _tied_weights_keys = _TIED_MLM

    def __init__(self, config: SlimBertConfig):
        super().__init__(config)
        self.slimbert = SlimBertModel(config, add_pooling_layer=False)
        self.cls = SlimBertMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new):
        self.cls.predictions.decoder = new

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                num_layers: int | None = None) -> SlimBertHeadOutput:
        out = self.slimbert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                            output_attention_scores, num_layers)
        logits = self.cls(out.last_hidden_state)
        loss = _mlm_loss(logits, labels, self.config.vocab_size) if labels is not None else None
        return SlimBertHeadOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                  attention_scores=out.attention_scores)


class SlimBertForPreTraining(SlimBertPreTrainedModel):
    """MLM + next-sentence prediction on the pooled output (the paper's pre-training heads)."""

    _tied_weights_keys = _TIED_MLM

    def __init__(self, config: SlimBertConfig):
        super().__init__(config)
        self.slimbert = SlimBertModel(config)
        self.cls = SlimBertPreTrainingHeads(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new):
        self.cls.predictions.decoder = new

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, next_sentence_label: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                num_layers: int | None = None) -> SlimBertHeadOutput:
        out = self.slimbert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                            output_attention_scores, num_layers)
        logits = self.cls(out.last_hidden_state)
        nsp = self.cls.seq_relationship(out.pooler_output)
        loss = None
        if labels is not None:
            loss = _mlm_loss(logits, labels, self.config.vocab_size)
            if next_sentence_label is not None:
                loss = loss + F.cross_entropy(nsp, next_sentence_label.view(-1))
        return SlimBertHeadOutput(loss=loss, logits=logits, seq_relationship_logits=nsp,
                                  hidden_states=out.hidden_states, attention_scores=out.attention_scores)


class SlimBertForSequenceClassification(SlimBertPreTrainedModel):
    """Classifier on the pooled output; `num_labels == 1` is regression (MSE), as in transformers."""

    def __init__(self, config: SlimBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.slimbert = SlimBertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                num_layers: int | None = None) -> SlimBertHeadOutput:
        out = self.slimbert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                            output_attention_scores, num_layers)
        logits = self.classifier(self.dropout(out.pooler_output))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            else:
                loss = F.cross_entropy(logits, labels.view(-1))
        return SlimBertHeadOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                  attention_scores=out.attention_scores)


class SlimBertForQuestionAnswering(SlimBertPreTrainedModel):
    """Extractive QA: start/end logits per token; loss is the mean of the two cross-entropies."""

    def __init__(self, config: SlimBertConfig):
        super().__init__(config)
        self.slimbert = SlimBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                start_positions: torch.Tensor | None = None, end_positions: torch.Tensor | None = None,
                output_hidden_states: bool = False, output_attention_scores: bool = False,
                num_layers: int | None = None) -> SlimBertHeadOutput:
        out = self.slimbert(input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states,
                            output_attention_scores, num_layers)
        start, end = self.qa_outputs(out.last_hidden_state).unbind(-1)
        loss = None
        if start_positions is not None and end_positions is not None:
            T = start.shape[1]  # positions outside the sequence are ignored, as in transformers
            s, e = start_positions.view(-1).clamp(0, T), end_positions.view(-1).clamp(0, T)
            loss = (F.cross_entropy(start, s, ignore_index=T) + F.cross_entropy(end, e, ignore_index=T)) / 2
        return SlimBertHeadOutput(loss=loss, start_logits=start.contiguous(), end_logits=end.contiguous(),
                                  hidden_states=out.hidden_states, attention_scores=out.attention_scores)
