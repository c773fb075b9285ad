"""Build an inverted-bottleneck (IB) teacher from a pretrained source encoder, initialised from data.

The paper pre-trains IB-BERT_LARGE from scratch; slimbert derives it from the source instead. Its intra
width is the source's width, so every source layer is carried over as it is, wrapped in bottlenecks:

    x_{l-1} (d wide) --P_{l-1}--> u ~= z_{l-1} --source layer l--> h = z_l --P_l^T--> x_l

P_i (I x d) are the top-d principal directions of the source's hidden state i on the recipe's corpus
(uncentred, as ib-teacher-probe.md). Q/K/V read the d-wide block input (the paper's teacher), with the
input projection folded into them: W_q x P_{l-1}. The bottleneck norms start as identity NoNorms and the
inter-block residual as a gate at 0, so the only error at initialisation is the PCA truncation; the
probe measured that the plain residual alone drops fidelity to about -0.1 by the last layer.

The embedding: the source's LayerNorm(word + position + type) is linear up to the per-token spread,
LN(s) ~= C s * gamma / sigma + beta with C the centring and sigma the mean spread on the corpus. Each
table goes through that map and P_0; the word table is then factorised by a truncated SVD into the
narrow (E) table and the 3-gram projection's middle block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..models import SlimBertConfig, SlimBertModel
from .source import position_offset


@dataclass
class SourceLayer:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    ln1: nn.LayerNorm
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    ln2: nn.LayerNorm


class SourceWeights:
    """Uniform access to a BERT / RoBERTa / ELECTRA / DistilBERT encoder's weights."""

    def __init__(self, model: nn.Module):
        body = getattr(model, "base_model", model)
        self.model_type = body.config.model_type
        emb = body.embeddings
        self.word = emb.word_embeddings.weight.detach()
        self.position = emb.position_embeddings.weight.detach()
        tt = getattr(emb, "token_type_embeddings", None)
        self.token_type = tt.weight.detach() if tt is not None else None
        self.position_offset = position_offset(self.model_type, body.config.pad_token_id)
        # ELECTRA with embedding_size != hidden_size: LayerNorm in the embedding width, then a projection.
        project = getattr(body, "embeddings_project", None)
        self.project = project.weight.detach().T if project is not None else None  # E_src x I
        self.ln = emb.LayerNorm
        if self.model_type == "distilbert":
            self.layers = [SourceLayer(l.attention.q_lin, l.attention.k_lin, l.attention.v_lin, l.attention.out_lin,
                                       l.sa_layer_norm, l.ffn.lin1, l.ffn.lin2, l.output_layer_norm)
                           for l in body.transformer.layer]
            self.act = body.config.activation
            self.intermediate = body.config.hidden_dim
            self.heads = body.config.n_heads
        else:
            self.layers = [SourceLayer(l.attention.self.query, l.attention.self.key, l.attention.self.value,
                                       l.attention.output.dense, l.attention.output.LayerNorm, l.intermediate.dense,
                                       l.output.dense, l.output.LayerNorm) for l in body.encoder.layer]
            self.act = body.config.hidden_act
            self.intermediate = body.config.intermediate_size
            self.heads = body.config.num_attention_heads
        self.width = self.word.shape[1] if self.project is None else self.project.shape[1]
        self.ln_eps = self.ln.eps
        self.mlm_head = mlm_head_of(model)

    def embedding_sum(self, ids: torch.Tensor) -> torch.Tensor:
        """word + position + type before the embedding LayerNorm, for type 0 (packed single segments)."""
        T = ids.shape[1]
        s = self.word[ids] + self.position[self.position_offset:self.position_offset + T]
        if self.token_type is not None:
            s = s + self.token_type[0]
        return s


class _Sequential(nn.Module):
    def __init__(self, *steps):
        super().__init__()
        self.steps = nn.ModuleList(steps)

    def forward(self, h):
        for step in self.steps:
            h = step(h)
        return h


def mlm_head_of(model: nn.Module) -> nn.Module | None:
    """The MLM head of a *ForMaskedLM / *ForPreTraining model as a module mapping hidden states to logits
    (None for a bare encoder). ELECTRA's is its generator head."""
    cls = getattr(model, "cls", None)
    if cls is not None:  # BERT: BertOnlyMLMHead, or BertPreTrainingHeads (its .predictions)
        return getattr(cls, "predictions", cls)
    if getattr(model, "lm_head", None) is not None:  # RoBERTa family
        return model.lm_head
    if getattr(model, "generator_lm_head", None) is not None:  # ELECTRA generator
        return _Sequential(model.generator_predictions, model.generator_lm_head)
    if getattr(model, "vocab_projector", None) is not None:  # DistilBERT
        return _Sequential(model.vocab_transform, model.activation, model.vocab_layer_norm, model.vocab_projector)
    return None


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def source_hidden_states(model: nn.Module, ids: torch.Tensor, batch: int = 16) -> list[torch.Tensor]:
    """Per hidden state (embedding output, then each layer), all tokens stacked: (N*T) x I."""
    body = getattr(model, "base_model", model)
    ids = ids.to(_device_of(model))
    chunks = None
    for i in range(0, len(ids), batch):
        out = body(input_ids=ids[i:i + batch], output_hidden_states=True, return_dict=True).hidden_states
        flat = [h.reshape(-1, h.shape[-1]) for h in out]
        chunks = [[f] for f in flat] if chunks is None else [c + [f] for c, f in zip(chunks, flat)]
    return [torch.cat(c) for c in chunks]


def principal_directions(z: torch.Tensor, d: int) -> torch.Tensor:
    """Top-d right singular vectors of the uncentred token matrix, as columns: I x d."""
    gram = (z.T.double() @ z.double())
    vals, vecs = torch.linalg.eigh(gram)
    return vecs[:, torch.argsort(vals, descending=True)[:d]].float().contiguous()


def random_directions(width: int, d: int, generator: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(width, d, generator=generator))
    return q.contiguous()


def ib_teacher_config(*, vocab_size: int, source_width: int, num_layers: int, intermediate_size: int,
                      hidden_act: str, type_vocab_size: int, max_positions: int, layer_norm_eps: float, inter: int,
                      heads: int, embedding_size: int, trigram: bool) -> SlimBertConfig:
    """The IB teacher's architecture: the source's layers (intra width = source width, Q/K/V from the d-wide
    block input, LayerNorms kept) inside identity-initialised NoNorm bottlenecks with a gated residual."""
    return SlimBertConfig(
        vocab_size=vocab_size, embedding_size=embedding_size, trigram_input=trigram, hidden_size=inter,
        use_bottleneck=True, intra_bottleneck_size=source_width, qkv_source="inter", num_hidden_layers=num_layers,
        num_attention_heads=heads, intermediate_size=intermediate_size, num_feedforward_networks=1,
        normalization_type="layer_norm", bottleneck_normalization_type="no_norm", inter_residual="gated",
        hidden_act=hidden_act if hidden_act in ("gelu", "relu", "gelu_new") else "gelu", hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, max_position_embeddings=max_positions,
        type_vocab_size=max(1, type_vocab_size), layer_norm_eps=layer_norm_eps, classifier_activation=False)


class IBTeacher(nn.Module):
    """The IB teacher, its readouts (d -> source width, one per hidden state) and the source's MLM head, if
    any. The readouts let adaptation and the fidelity report compare it with the source in the source's
    width; the MLM logits are the source's head applied to the last state read out."""

    def __init__(self, config: SlimBertConfig, source_width: int, mlm_head: nn.Module | None = None):
        super().__init__()
        self.model = SlimBertModel(config, add_pooling_layer=False)
        self.readout = nn.ModuleList(nn.Linear(config.hidden_size, source_width)
                                     for _ in range(config.num_hidden_layers + 1))
        self.mlm_head = mlm_head
        if mlm_head is not None:
            mlm_head.requires_grad_(False)  # the source's, fitted to the source's last state: kept as it is

    @property
    def config(self) -> SlimBertConfig:
        return self.model.config

    def forward(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False):
        out = self.model(input_ids, attention_mask=attention_mask, output_hidden_states=True,
                         output_attention_scores=True, num_layers=None if want_mlm else num_layers)
        logits = None
        if want_mlm and self.mlm_head is not None:
            logits = self.mlm_head(self.readout[-1](out.hidden_states[-1]))
        return out, logits

    def weights(self) -> dict[str, torch.Tensor]:
        """What adaptation changes (the source's MLM head is not included)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("mlm_head.")}


def _copy(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    linear.weight.copy_(weight)
    if bias is None:
        linear.bias.zero_()
    else:
        linear.bias.copy_(bias)


@torch.no_grad()
def build_ib_teacher(source_model: nn.Module, ids: torch.Tensor, inter: int = 0, heads: int = 0,
                     embedding_size: int = 0, trigram: bool = True, init: str = "pca", seed: int = 0,
                     config: SlimBertConfig | None = None) -> IBTeacher:
    """An IB teacher from `source_model`, with bottlenecks from the hidden states of `ids` (N x T token ids).
    Its shape is `config` (as the recipe resolved it) or inter / heads / embedding_size / trigram."""
    if config is not None:
        inter, heads, embedding_size = config.hidden_size, config.num_attention_heads, config.embedding_size
        trigram = config.trigram_input
    source_model.eval()
    device = _device_of(source_model)  # the PCA, SVD and fits run where the source is (a GPU when there is one)
    ids = ids.to(device)
    src = SourceWeights(source_model)
    I = src.width
    if inter > I:
        raise ValueError(f"the teacher's inter width ({inter}) must not exceed the source width ({I}): the "
                         "bottleneck keeps the top principal directions of the source's hidden states")
    if I % heads:
        raise ValueError(f"teacher heads ({heads}) must divide the source width ({I})")
    if embedding_size > inter:
        raise ValueError(f"embedding size ({embedding_size}) must be <= the teacher's inter width ({inter})")
    hidden = source_hidden_states(source_model, ids)
    g = torch.Generator().manual_seed(seed)
    P = [principal_directions(z, inter) if init == "pca" else random_directions(I, inter, g).to(device)
         for z in hidden]

    if config is None:
        config = ib_teacher_config(
            vocab_size=src.word.shape[0], source_width=I, num_layers=len(src.layers),
            intermediate_size=src.intermediate, hidden_act=src.act,
            type_vocab_size=0 if src.token_type is None else src.token_type.shape[0],
            max_positions=src.position.shape[0] - src.position_offset, layer_norm_eps=src.ln_eps, inter=inter,
            heads=heads, embedding_size=embedding_size, trigram=trigram)
    teacher = IBTeacher(config, I, src.mlm_head).to(device)
    m = teacher.model

    # Embedding: x_0 ~= LN(word + position + type) P_0. LN divides by each token's spread, which makes it
    # nonlinear; the word rows are linearised at their own spread (with the corpus' mean position/type vector
    # added), then each position row is solved in closed form, as the mean residual of the tokens at that
    # position on the corpus. That absorbs beta, type 0 and the outlying spread of position 0.
    T = ids.shape[1]
    s = src.embedding_sum(ids)
    context = (s - src.word[ids]).reshape(-1, s.shape[-1]).mean(0)
    sigma_word = (src.word + context).var(-1, unbiased=False, keepdim=True).add(src.ln_eps).sqrt()
    sigma = s.var(-1, unbiased=False).add(src.ln_eps).sqrt().mean()
    gamma = src.ln.weight.detach()

    def through_ln(table, spread):  # (rows x I) -> (rows x d), the linear part of the LayerNorm
        normed = (table - table.mean(-1, keepdim=True)) * gamma / spread
        return (normed if src.project is None else normed @ src.project) @ P[0]

    word_d = through_ln(src.word, sigma_word)
    e = m.embeddings
    if e.embedding_transformation is not None:  # factorise: narrow table (E) + the 3-gram's middle block
        E = embedding_size
        # The rank-E subspace is weighted by how often each word occurs in the corpus (plus one, so unseen
        # words still count): frequent words are what the fidelity, and the student, see.
        weight = torch.bincount(ids.flatten(), minlength=len(word_d)).float().add(1.0).sqrt()[:, None]
        V = torch.linalg.svd(word_d * weight, full_matrices=False).Vh[:E]  # E x d, orthonormal rows
        narrow = word_d @ V.T
        e.word_embeddings.weight.copy_(narrow)
        w = torch.zeros_like(e.embedding_transformation.weight)  # d x (3E or E): [next, current, previous]
        w[:, slice(E, 2 * E) if trigram else slice(0, E)] = V.T
        _copy(e.embedding_transformation, w, None)
        word_d = narrow @ V
    else:
        e.word_embeddings.weight.copy_(word_d)
    target = (hidden[0] @ P[0]).view(len(ids), T, -1)
    pos_d = through_ln(src.position[src.position_offset:], sigma)
    fitted = (target - word_d[ids]).mean(0)
    pos_d[T:] += (fitted - pos_d[:T]).mean(0)  # positions past the corpus' length: beta and type 0 only
    pos_d[:T] = fitted
    e.position_embeddings.weight.copy_(pos_d)
    if src.token_type is not None:  # type 0 is inside the positions; the others as offsets from it
        e.token_type_embeddings.weight.copy_(through_ln(src.token_type - src.token_type[0], sigma))
    else:
        e.token_type_embeddings.weight.zero_()

    # Blocks: the source layer inside, PCA bottlenecks outside, Q/K/V with the input projection folded in.
    for l, (layer, sl) in enumerate(zip(m.encoder.layer, src.layers)):
        p_in, p_out = P[l], P[l + 1]
        _copy(layer.bottleneck.input.dense, p_in, None)
        att = layer.attention
        for mine, theirs in ((att.self.query, sl.q), (att.self.key, sl.k), (att.self.value, sl.v)):
            _copy(mine, theirs.weight @ p_in, theirs.bias)
        _copy(att.output.dense, sl.o.weight, sl.o.bias)
        att.output.LayerNorm.load_state_dict(sl.ln1.state_dict())
        _copy(layer.intermediate.dense, sl.ffn_in.weight, sl.ffn_in.bias)
        _copy(layer.output.dense, sl.ffn_out.weight, sl.ffn_out.bias)
        layer.output.LayerNorm.load_state_dict(sl.ln2.state_dict())
        _copy(layer.output.bottleneck.dense, p_out.T, None)
        layer.output.bottleneck.residual_gate.zero_()
    for readout, p in zip(teacher.readout, P):
        _copy(readout, p, None)
    return teacher.eval()


# ---- fidelity -------------------------------------------------------------------------------------------------

@torch.no_grad()
def fidelity(source_model: nn.Module, teacher: IBTeacher, ids: torch.Tensor, mlm_inputs=None, batch: int = 16) -> dict:
    """Source vs teacher on held-out ids: per hidden state, the mean token cosine between the source's state
    and the teacher's (read out in the source width); per layer, the attention KL(source || teacher). With
    `mlm_inputs` (masked ids, labels) and an MLM head: both models' MLM loss and accuracy on the masked tokens."""
    body = getattr(source_model, "base_model", source_model)
    n_states = teacher.config.num_hidden_layers + 1
    device = _device_of(teacher)
    ids = ids.to(device)
    cos = torch.zeros(n_states, device=device)
    kl = torch.zeros(n_states - 1, device=device)
    n = 0
    for i in range(0, len(ids), batch):
        x = ids[i:i + batch]
        s = body(input_ids=x, output_hidden_states=True, output_attentions=True, return_dict=True)
        t, _ = teacher(x)
        for j in range(n_states):
            cos[j] += F.cosine_similarity(teacher.readout[j](t.hidden_states[j]), s.hidden_states[j], dim=-1).sum()
        for j in range(n_states - 1):
            p = s.attentions[j].clamp_min(1e-30)
            kl[j] += (p * (p.log() - F.log_softmax(t.attention_scores[j], -1))).sum(-1).mean(dim=(1, 2)).sum()
        n += x.shape[0]
    report = {"cosine": [round(v, 4) for v in (cos / (n * ids.shape[1])).tolist()],
              "attention_kl": [round(v, 4) for v in (kl / n).tolist()]}
    if mlm_inputs is not None and teacher.mlm_head is not None:
        masked, labels = (x.to(device) for x in mlm_inputs)
        totals = {"source": [0.0, 0, 0], "teacher": [0.0, 0, 0]}
        for i in range(0, len(masked), batch):
            x, y = masked[i:i + batch], labels[i:i + batch]
            keep = y != -100
            both = {"source": source_model(input_ids=x).logits, "teacher": teacher(x, want_mlm=True)[1]}
            for name, logits in both.items():
                totals[name][0] += F.cross_entropy(logits[keep], y[keep], reduction="sum").item()
                totals[name][1] += (logits[keep].argmax(-1) == y[keep]).sum().item()
                totals[name][2] += int(keep.sum())
        for name, (loss, right, count) in totals.items():
            report[f"{name}_mlm_loss"] = round(loss / max(count, 1), 4)
            report[f"{name}_mlm_accuracy"] = round(right / max(count, 1), 4)
    return report
