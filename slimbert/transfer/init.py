"""Student initialisation: `student.init: prune_from_teacher` (below) and `student.copy_embeddings` (at the end).

`prune_from_teacher` starts the student as a structurally pruned copy of its teacher.

The teacher is the IB teacher the run uses (after `teacher_adaptation` when the recipe has one). Its blocks
and the student's are the same bottleneck block, so the student is the teacher made narrower:

1. Layer selection: student layer i is a copy of teacher layer layer_map[i] (the recipe's resolved map).
2. Widths, through torch-pruning: a DependencyGraph traced on the selected layers couples every channel that
   must go together (the inter channels across the embedding, every bottleneck, Q/K/V inputs and residuals;
   the 3-gram concat's three copies of each word-table column; a block's intra channels across its input
   bottleneck, attention output, FFN and norms; Q/K/V outputs with the attention output's inputs). Each
   coupled group is ranked by torch-pruning's activation importance on a few corpus sequences and pruned
   to the student's width:
     inter H, word table E, intra I, attention heads (whole heads by summed importance) and head dims
     (within each kept head, the same dims for Q, K, V and the output), FFN inner size to min(N*F, F_t).
   slimbert only picks *how many* channels each group keeps (and whole heads); torch-pruning ranks them and
   removes them from every coupled weight, norm and gate.
3. Structure, by hand (no pruning library does this): the pruned teacher's weights are copied into the
   student's modules; where the student's block has a different shape, a documented rule maps them:
     - stacked FFNs: the teacher block has one FFN. Its F most important neurons go to the student's last
       FFN (the one the output bottleneck reads); the N-1 extra FFNs before it take the next-ranked neurons'
       input weights with a zero output projection and an identity norm, so they start as pass-throughs
       (ReZero-style) that training opens up. Measured against dealing the top N*F neurons round-robin over
       the N FFNs (an additive split of the teacher's FFN): on all-MiniLM-L6-v2's IB teacher into the
       quickstart student (6 x 384/96, 12 heads, 3 x 384 FFNs) this rule had 1-4% lower normalised feature
       MSE at every layer, for NoNorm/ReLU and LayerNorm/GELU students alike.
     - qkv_from bottleneck / shared_bottleneck: the teacher reads Q/K/V from the block input x; the student
       from the bottleneck u = Norm(W_in x). Q = W_q x becomes W_q pinv(g * W_in) u (least squares), so it
       is exact on the bottleneck's row space. shared_bottleneck's own bottleneck starts as the input one.
     - norms: LayerNorm and NoNorm weights slice with their channels (step 2). A teacher LayerNorm into a
       student NoNorm is linearised, LN(z) ~= gamma (z - mu) / sigma + beta at the corpus' average per-token
       mu and sigma; a teacher NoNorm (its bottlenecks) into a student LayerNorm copies gamma/beta, which
       does not preserve the function. The run's summary line says which happened.
     - the inter residual and the norms: the IB teacher's residual is a gate (0 after its PCA init, with a
       different basis per layer), the student's is plain, and a NoNorm student has no LayerNorm to keep the
       scale. Copied as they are, errors compound layer by layer (feature-mean terms in the 10^5 by layer 4
       of the quickstart student). So each output bottleneck (W, b) is refit by least squares, layer by
       layer on the student's own activations, to reproduce the teacher's feature map on a few corpus
       sequences (`fit_output_bottlenecks`). These refit weights are the only ones not sliced from the teacher.
     - the MLM head: the IB teacher has none of its own (it reads the source's head through a readout), so
       the student's head stays as initialised; its decoder is tied to the pruned word table.

Validation (`problems`) refuses, before training, whatever cannot be pruned: a student wider than the
teacher anywhere, more heads or wider heads, a teacher that is the source itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models import SlimBertConfig, SlimBertModel
from ..models.modeling import NoNorm
from ..teacher.source import position_offset

# ---- validation ---------------------------------------------------------------------------------------------------

def problems(teacher: SlimBertConfig | None, student: SlimBertConfig) -> list[tuple[str, str]]:
    """(recipe key, message) for every reason `student` cannot be pruned out of `teacher`."""
    init = "student.init: prune_from_teacher"
    if teacher is None:
        return [("student.init", f"{init} prunes the inverted-bottleneck teacher the recipe builds, but this "
                                 "teacher is not one (teacher.type: source or a plugin): a BERT layer has no "
                                 "bottleneck and no inter-block residual, so it does not map onto the student's "
                                 "block; use teacher.type: inverted_bottleneck or student.init: random")]
    out = []

    def wider(key, what, s, t, teacher_key):
        if s > t:
            out.append((key, f"{init} needs a student no wider than its teacher: {what} is {s} in the "
                             f"student ({key}) and {t} in the teacher ({teacher_key})"))

    wider("student.inter_size", "the inter width", student.hidden_size, teacher.hidden_size, "teacher.inter_size")
    wider("student.intra_size", "the intra width", student.true_hidden_size, teacher.true_hidden_size,
          "the source width")
    wider("student.ffn.size", "the FFN inner size", student.intermediate_size, teacher.intermediate_size,
          "the source's intermediate_size")
    wider("student.embedding.size", "the word-table width", student.embedding_size, teacher.embedding_size,
          "teacher.embedding_size")
    if student.num_attention_heads > teacher.num_attention_heads:
        out.append(("student.num_heads", f"{init} keeps a subset of the teacher's heads: the student has "
                                         f"{student.num_attention_heads} (student.num_heads), the teacher "
                                         f"{teacher.num_attention_heads} (teacher.num_heads)"))
    else:
        ds = student.true_hidden_size // student.num_attention_heads
        dt = teacher.true_hidden_size // teacher.num_attention_heads
        if ds > dt:
            out.append(("student.intra_size", f"{init} keeps a subset of each head's dimensions: the student's "
                                              f"heads are {ds} wide (student.intra_size / student.num_heads), "
                                              f"the teacher's {dt}"))
    if teacher.has_embedding_transformation and not student.has_embedding_transformation:
        out.append(("student.embedding", f"{init} copies the teacher's factorised embedding, but the student has "
                                         "no embedding projection (embedding.size == inter_size without trigram); "
                                         "use a smaller embedding.size or trigram: true"))
    if not teacher.has_embedding_transformation and student.embedding_size != student.hidden_size:
        out.append(("student.embedding.size", f"{init}: the teacher's word table is unfactorised (its width is the "
                                              "inter width), so the student's embedding.size must equal its "
                                              f"inter_size ({student.hidden_size})"))
    if teacher.vocab_size != student.vocab_size:
        out.append(("student.init", f"{init} needs the teacher's vocabulary ({teacher.vocab_size} rows), the "
                                    f"student's has {student.vocab_size}"))
    return out


# ---- step 1 and 2: select layers and prune widths with torch-pruning -----------------------------------------------

def _nonorm_pruner():
    import torch_pruning as tp

    class NoNormPruner(tp.pruner.function.BasePruningFunc):
        """NoNorm (gamma * x + beta) is not a torch module torch-pruning knows: slice both vectors."""

        def prune_out_channels(self, layer, idxs):
            keep = sorted(set(range(layer.weight.shape[0])) - set(idxs))
            layer.weight = nn.Parameter(layer.weight.data[keep].clone())
            layer.bias = nn.Parameter(layer.bias.data[keep].clone())
            return layer

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return layer.weight.shape[0]

        get_in_channels = get_out_channels

    return NoNormPruner()


@dataclass
class Kept:
    """Teacher channel indices each coupled group kept (in the teacher's numbering, ascending)."""

    inter: list[int]
    embedding: list[int]
    intra: list[list[int]] = field(default_factory=list)       # per student layer
    attention: list[list[int]] = field(default_factory=list)   # per student layer: Q/K/V output channels
    ffn: list[list[int]] = field(default_factory=list)         # per student layer: teacher FFN neurons kept
    ffn_rank: list[list[int]] = field(default_factory=list)    # positions in `ffn`, most important first


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.topk(scores, k).indices.tolist())


def _heads(scores: torch.Tensor, heads: int, keep_heads: int, keep_dims: int) -> list[int]:
    """Whole heads by their summed importance, then the same number of dims inside each kept head."""
    per_head = scores.view(heads, -1)
    kept = []
    for h in _top(per_head.sum(1), keep_heads):
        kept += [h * per_head.shape[1] + d for d in _top(per_head[h], keep_dims)]
    return kept


def select_layers(teacher: SlimBertModel, layer_map: list[int]) -> SlimBertModel:
    """A float32 copy of the teacher holding only the layers the student takes (student layer i <- teacher
    layer layer_map[i], 1-based; a teacher layer taken twice is copied twice)."""
    layers = teacher.encoder.layer
    teacher.encoder.layer = nn.ModuleList()  # do not deep-copy the layers left out
    try:
        t = copy.deepcopy(teacher)
    finally:
        teacher.encoder.layer = layers
    t.encoder.layer = nn.ModuleList(copy.deepcopy(layers[j - 1]) for j in layer_map)
    t.pooler = None
    return t.float().eval().requires_grad_(True)


def prune_widths(t: SlimBertModel, student: SlimBertConfig, ids: torch.Tensor) -> Kept:
    """Prune `t` (from `select_layers`) in place to the student's widths; returns what each group kept.
    `ids` (a few corpus sequences) feed the trace and the activation importance."""
    import torch_pruning as tp

    gates = {l.output.bottleneck.residual_gate: 0 for l in t.encoder.layer
             if l.output.bottleneck.residual_gate is not None}
    DG = tp.DependencyGraph().build_dependency(
        t, example_inputs=ids[:2], forward_fn=lambda m, x: m(x).last_hidden_state,
        customized_pruners={NoNorm: _nonorm_pruner()}, unwrapped_parameters=list(gates.items()), verbose=False)
    # Activation importance: |input| of every Linear reading the channel, summed over real tokens, averaged
    # over the group. Weight magnitude says little here (PCA bottlenecks have unit-norm columns whatever the
    # variance they carry); on the quickstart student it gave 1.3-2.7x the normalised feature MSE of this.
    imp = tp.importance.ActivationImportance()
    with imp.compute_importance(t), torch.no_grad():
        t(ids)

    def group(module, fn, n):
        return DG.get_pruning_group(module, fn, list(range(n)))

    linear_out, emb_out = tp.prune_linear_out_channels, tp.prune_embedding_out_channels
    e, layers = t.embeddings, t.encoder.layer
    tc = t.config
    ds = student.true_hidden_size // student.num_attention_heads
    nf = min(student.num_feedforward_networks * student.intermediate_size, tc.intermediate_size)
    # Every group's importance first, on the unpruned copy: the groups are disjoint sets of dimensions, so
    # pruning one does not renumber another.
    plan = [(group(layers[-1].output.bottleneck.dense, linear_out, tc.hidden_size), student.hidden_size, "inter")]
    if e.embedding_transformation is not None:  # else the word table is H wide and pruned with the inter group
        plan.append((group(e.word_embeddings, emb_out, tc.embedding_size), student.embedding_size, "embedding"))
    for l in layers:
        plan += [(group(l.bottleneck.input.dense, linear_out, tc.true_hidden_size), student.true_hidden_size, "intra"),
                 (group(l.attention.self.query, linear_out, tc.true_hidden_size), None, "attention"),
                 (group(l.intermediate.dense, linear_out, tc.intermediate_size), nf, "ffn")]
    kept = Kept(inter=[], embedding=[])
    chosen = []
    for g, k, what in plan:
        scores = imp(g)
        if what == "attention":
            idx = _heads(scores, tc.num_attention_heads, student.num_attention_heads, ds)
        else:
            idx = _top(scores, k)
        if what in ("inter", "embedding"):
            setattr(kept, what, idx)
            kept.embedding = kept.embedding or idx  # an unfactorised word table keeps the inter channels
        else:
            getattr(kept, what).append(idx)
        if what == "ffn":
            kept.ffn_rank.append(torch.argsort(scores[idx], descending=True, stable=True).tolist())
        chosen.append((g, idx))
    for g, idx in chosen:
        root = g[0].dep
        drop = sorted(set(range(len(g[0].idxs))) - set(idx))
        if drop:
            DG.get_pruning_group(root.target.module, root.handler, drop).prune()
    for l in layers:  # the head split is not a tensor shape torch-pruning can see
        l.attention.self.num_heads, l.attention.self.head_size = student.num_attention_heads, ds
    for m in t.modules():
        m.__dict__.pop("_importance", None)
    return kept


# ---- step 3: copy the pruned teacher into the student's modules ------------------------------------------------------

def _set(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    module.weight.copy_(weight)
    if getattr(module, "bias", None) is not None:
        module.bias.copy_(bias if bias is not None else torch.zeros_like(module.bias))


def _copy_norm(dst: nn.Module, src: nn.Module, stats: dict) -> None:
    """gamma/beta as they are, except LayerNorm -> NoNorm: LN(z) ~= gamma (z - mu) / sigma + beta, linearised at
    the calibration text's average per-token mean mu and spread sigma (as the IB teacher's embedding is), so
    the NoNorm sees activations of the scale the teacher's next layer expects."""
    if isinstance(src, nn.LayerNorm) and isinstance(dst, NoNorm):
        mu, sigma = stats[src]
        _set(dst, src.weight / sigma, src.bias - src.weight * mu / sigma)
    else:
        _set(dst, src.weight, src.bias)


@torch.no_grad()
def layer_norm_inputs(t: SlimBertModel, ids: torch.Tensor) -> dict:
    """For every LayerNorm of `t`: the average over tokens of its input's per-token mean and spread."""
    stats = {}

    def record(m, args):
        z = args[0].float()
        stats[m] = (z.mean(-1).mean().item(), z.var(-1, unbiased=False).add(m.eps).sqrt().mean().item())

    hooks = [m.register_forward_pre_hook(record) for m in t.modules() if isinstance(m, nn.LayerNorm)]
    try:
        t(ids)
    finally:
        for h in hooks:
            h.remove()
    return stats


def _identity(norm: nn.Module) -> None:
    norm.weight.fill_(1.0)
    norm.bias.zero_()


def _through_bottleneck(qkv: nn.Linear, bottleneck: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b with W u + b ~= qkv(x) for u = Norm(W_in x + b_in): least squares on the bottleneck's row space.
    A NoNorm is folded in exactly (g * (W_in x + b_in) + beta); a LayerNorm is taken as the identity."""
    w_in, b_in = bottleneck.dense.weight, bottleneck.dense.bias
    norm = bottleneck.LayerNorm
    g, beta = (norm.weight, norm.bias) if isinstance(norm, NoNorm) else (torch.ones_like(b_in), torch.zeros_like(b_in))
    w = qkv.weight.double() @ torch.linalg.pinv((g[:, None] * w_in).double())
    b = qkv.bias.double() - w @ (g * b_in + beta).double()
    return w.float(), b.float()


def _ffn_slots(kept: int, rank: list[int], n: int, size: int) -> list[list[int]]:
    """Positions (in the pruned FFN) for each of the student's n FFNs, in block order: the last FFN (the one
    the output bottleneck reads) takes the `size` most important neurons; the extra FFNs before it the next
    ones (cyclically when n * size exceeds what was kept)."""
    return [[rank[(size * (n - 1 - c) + j) % kept] for j in range(size)] for c in range(n)]


def copy_into_student(t: SlimBertModel, student: SlimBertModel, ffn_rank: list[list[int]], ids: torch.Tensor
                      ) -> None:
    """Copy the pruned teacher `t` (from `prune_widths`) into `student`'s encoder and embeddings; `ffn_rank`
    orders each layer's kept FFN neurons, most important first; `ids` calibrate LayerNorm -> NoNorm."""
    stats = layer_norm_inputs(t, ids)
    te, se = t.embeddings, student.embeddings
    _set(se.word_embeddings, te.word_embeddings.weight)
    rows = min(len(te.position_embeddings.weight), len(se.position_embeddings.weight))
    se.position_embeddings.weight[:rows] = te.position_embeddings.weight[:rows]
    _set(se.token_type_embeddings, te.token_type_embeddings.weight)
    _copy_norm(se.LayerNorm, te.LayerNorm, stats)
    if se.embedding_transformation is not None:
        # [next, current, previous] blocks: a 3-gram teacher into a plain student keeps the middle block; a
        # plain teacher into a 3-gram student fills it (the neighbours start at zero): exact either way. A
        # teacher without the projection (E == H) gives the identity.
        E = te.word_embeddings.weight.shape[1]
        proj = te.embedding_transformation
        w = proj.weight if proj is not None else torch.eye(E, device=te.word_embeddings.weight.device)
        if te.trigram_input and not se.trigram_input:
            w = w[:, E:2 * E]
        elif se.trigram_input and not te.trigram_input:
            w = torch.cat([torch.zeros_like(w), w, torch.zeros_like(w)], dim=1)
        _set(se.embedding_transformation, w, proj.bias if proj is not None else None)

    for tl, sl, rank in zip(t.encoder.layer, student.encoder.layer, ffn_rank):
        _set(sl.bottleneck.input.dense, tl.bottleneck.input.dense.weight, tl.bottleneck.input.dense.bias)
        _copy_norm(sl.bottleneck.input.LayerNorm, tl.bottleneck.input.LayerNorm, stats)
        if sl.bottleneck.qkv_source == "shared_bottleneck":  # its own bottleneck starts as the input one
            sl.bottleneck.attention.load_state_dict(sl.bottleneck.input.state_dict())
        ta, sa = tl.attention.self, sl.attention.self
        for name in ("query", "key", "value"):
            reads_u = (sl.bottleneck.qkv_source == "bottleneck"
                       or (sl.bottleneck.qkv_source == "shared_bottleneck" and name != "value"))
            src = getattr(ta, name)
            bottleneck = sl.bottleneck.attention if sl.bottleneck.qkv_source == "shared_bottleneck" \
                else sl.bottleneck.input
            _set(getattr(sa, name), *(_through_bottleneck(src, bottleneck) if reads_u else (src.weight, src.bias)))
        _set(sl.attention.output.dense, tl.attention.output.dense.weight, tl.attention.output.dense.bias)
        _copy_norm(sl.attention.output.LayerNorm, tl.attention.output.LayerNorm, stats)

        w1, b1 = tl.intermediate.dense.weight, tl.intermediate.dense.bias
        w2 = tl.output.dense.weight
        n, size = student.config.num_feedforward_networks, student.config.intermediate_size
        ffns = [(f.intermediate, f.output) for f in (sl.ffn or ())] + [(sl.intermediate, sl.output)]
        for c, ((inter, out), idx) in enumerate(zip(ffns, _ffn_slots(len(b1), rank, n, size))):
            _set(inter.dense, w1[idx], b1[idx])
            if c == n - 1:  # the teacher's FFN, narrowed
                _set(out.dense, w2[:, idx], tl.output.dense.bias)
                _copy_norm(out.LayerNorm, tl.output.LayerNorm, stats)
            else:  # an extra FFN: zero output and an identity norm, so it starts as a pass-through
                _set(out.dense, torch.zeros_like(out.dense.weight))
                _identity(out.LayerNorm)
        tb, sb = tl.output.bottleneck, sl.output.bottleneck
        _set(sb.dense, tb.dense.weight, tb.dense.bias)
        _copy_norm(sb.LayerNorm, tb.LayerNorm, stats)
        if sb.residual_gate is not None and tb.residual_gate is not None:
            sb.residual_gate.copy_(tb.residual_gate)


@torch.no_grad()
def fit_output_bottlenecks(student: SlimBertModel, teacher: SlimBertModel, layer_map: list[int], inter: list[int],
                           ids: torch.Tensor, ridge: float = 1e-3) -> None:
    """Layer by layer, refit each output bottleneck (W, b of y = NoNorm(W h + b + x)) by least squares so the
    student's block output, computed from the student's own lower layers, matches the teacher's feature map
    on `ids`. Copying alone cannot: the IB teacher's inter residual is a gate that starts at 0 with a PCA
    basis per layer, the student's is plain (it adds an input in another basis), and NoNorms stand in for
    LayerNorms, so errors would compound from layer to layer. A LayerNorm output norm is inverted as if it were
    its affine part alone ((y - beta) / gamma is one of its preimages up to a per-token shift and scale)."""
    target = teacher(ids, output_hidden_states=True, num_layers=max(layer_map)).hidden_states
    for l, layer in enumerate(student.encoder.layer):
        ob = layer.output.bottleneck
        seen = []
        hook = ob.register_forward_pre_hook(lambda m, args: seen.append(args))
        try:
            student(ids, num_layers=l + 1)
        finally:
            hook.remove()
        h, x = seen[0]
        y = target[layer_map[l]].reshape(len(h), -1)[:, inter]
        gate = ob.residual_gate if ob.residual_gate is not None else 1.0
        g = ob.LayerNorm.weight
        g = torch.where(g.abs() < 1e-4, torch.full_like(g, 1e-4), g)  # a dead feature: do not divide by 0
        pre = ((y - ob.LayerNorm.bias) / g - gate * x).double()  # what W h + b must give
        a = torch.cat([h, torch.ones_like(h[:, :1])], dim=1).double()
        gram = a.T @ a
        gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
        sol = torch.linalg.solve(gram, a.T @ pre).T.float()  # H x (I + 1)
        _set(ob.dense, sol[:, :-1], sol[:, -1])


# ---- the whole initialisation --------------------------------------------------------------------------------------

@dataclass
class PruneReport:
    kept: Kept
    cosine: list[float]          # per student hidden state (embedding, then each layer) vs the teacher's
    random_cosine: list[float]   # the same for the student as it was before (random init)
    notes: list[str]

    def as_dict(self) -> dict:
        return {"feature_cosine": [round(x, 4) for x in self.cosine],
                "random_init_feature_cosine": [round(x, 4) for x in self.random_cosine],
                "kept": {k: v for k, v in vars(self.kept).items() if k != "ffn_rank"}, "notes": self.notes}

    def summary(self, teacher: SlimBertConfig, student: SlimBertConfig, layer_map: list[int]) -> str:
        def mean(xs):
            return sum(xs) / len(xs)

        widths = (f"inter {teacher.hidden_size}->{student.hidden_size}, intra {teacher.true_hidden_size}->"
                  f"{student.true_hidden_size}, heads {teacher.num_attention_heads}x"
                  f"{teacher.true_hidden_size // teacher.num_attention_heads}->{student.num_attention_heads}x"
                  f"{student.true_hidden_size // student.num_attention_heads}, FFN {teacher.intermediate_size}->"
                  f"{student.num_feedforward_networks}x{student.intermediate_size}, E {teacher.embedding_size}->"
                  f"{student.embedding_size}")
        line = (f"student initialised by pruning the teacher (torch-pruning): layers {layer_map}, {widths}; "
                f"feature cosine to the teacher {mean(self.cosine[1:]):.3f} (random init "
                f"{mean(self.random_cosine[1:]):.3f})")
        return line + ("; " + "; ".join(self.notes) if self.notes else "")


@torch.no_grad()
def feature_cosine(student: SlimBertModel, teacher: SlimBertModel, layer_map: list[int], inter: list[int],
                   ids: torch.Tensor) -> list[float]:
    """Mean token cosine between each student hidden state and its teacher state (on the kept inter channels)."""
    s = student(ids, output_hidden_states=True).hidden_states
    t = teacher(ids, output_hidden_states=True, num_layers=max(layer_map)).hidden_states
    pairs = zip(s, [t[0]] + [t[j] for j in layer_map])
    return [F.cosine_similarity(a.float(), b[..., inter].float(), dim=-1).mean().item() for a, b in pairs]


def init_from_teacher(student: SlimBertModel, teacher: SlimBertModel, layer_map: list[int], ids: torch.Tensor,
                      eval_ids: torch.Tensor | None = None) -> PruneReport:
    """Overwrite `student`'s encoder and embeddings with the teacher, pruned to the student's shape.
    `ids`: a few corpus sequences for the importance and the residual fit; `eval_ids`: held-out ones for the
    fidelity figures (default `ids`)."""
    eval_ids = ids if eval_ids is None else eval_ids
    device = next(teacher.parameters()).device  # prune and fit where the models are (the student too)
    ids, eval_ids = ids.to(device), eval_ids.to(device)
    modes = teacher.training, student.training
    teacher.eval(), student.eval()  # no attention dropout in the fit and the figures
    t = select_layers(teacher, layer_map)
    kept = prune_widths(t, student.config, ids)
    before = feature_cosine(student, teacher, layer_map, kept.inter, eval_ids)
    with torch.no_grad():
        copy_into_student(t, student, kept.ffn_rank, ids)
        fit_output_bottlenecks(student, teacher, layer_map, kept.inter, ids)
    after = feature_cosine(student, teacher, layer_map, kept.inter, eval_ids)
    teacher.train(modes[0]), student.train(modes[1])
    return PruneReport(kept, after, before, _notes(teacher.config, student.config))


def _notes(teacher: SlimBertConfig, student: SlimBertConfig) -> list[str]:
    notes = []
    if teacher.normalization_type != student.normalization_type:
        how = ("LayerNorms linearised into NoNorms at the corpus' average statistics" if
               student.normalization_type == "no_norm" else "gamma/beta copied")
        notes.append(f"norms differ (teacher {teacher.normalization_type}, student {student.normalization_type}): "
                     f"{how}, function only approximately preserved")
    if teacher.hidden_act != student.hidden_act:
        notes.append(f"activation differs (teacher {teacher.hidden_act}, student {student.hidden_act})")
    if teacher.inter_residual != student.inter_residual:
        notes.append("the teacher's gated inter residual is plain in the student: output bottlenecks refit")
    return notes


class EmbeddingCopyError(ValueError):
    """student.copy_embeddings asked for tables the teacher does not have in the student's shapes."""


def copy_embeddings(teacher, student) -> None:
    """student.copy_embeddings: the teacher's word, position and token-type tables (and its embedding norm when
    it has the student's shape), all of them or none. A RoBERTa-style teacher counts positions from
    padding_idx + 1, so its rows are shifted to the student's position 0. A teacher adapter without a body
    (e.g. a plugin's) has none to copy."""
    src = getattr(teacher, "body", None)
    if src is None:
        return
    emb = getattr(src, "embeddings", None)
    if emb is None:
        raise EmbeddingCopyError(f"student.copy_embeddings: the teacher ({type(src).__name__}) has no .embeddings "
                                 "module to copy; set copy_embeddings: false")
    mine = student.slimbert.embeddings
    config = getattr(src, "config", None)
    offset = position_offset(getattr(config, "model_type", ""), getattr(config, "pad_token_id", None))
    n_pos = mine.position_embeddings.weight.shape[0]
    tables = {"word_embeddings": emb.word_embeddings.weight,
              "position_embeddings": emb.position_embeddings.weight[offset:offset + n_pos],
              "token_type_embeddings": emb.token_type_embeddings.weight}
    for name, theirs in tables.items():
        ours = getattr(mine, name).weight
        if theirs.shape != ours.shape:
            rows = f" (from row {offset}, its padding offset)" if name == "position_embeddings" and offset else ""
            raise EmbeddingCopyError(
                f"student.copy_embeddings: the teacher's {name} table is {tuple(theirs.shape)}{rows}, the "
                f"student's {tuple(ours.shape)}; copy all tables or none: set copy_embeddings: false or give the "
                "student the teacher's shapes (embedding_size = inter_size, no trigram_input for a plain BERT)")
    with torch.no_grad():
        for name, theirs in tables.items():
            getattr(mine, name).weight.copy_(theirs)
        norm = getattr(emb, "LayerNorm", None)
        if norm is not None:  # the norm is not a table: copied when its shape fits, as before
            for k, v in norm.state_dict().items():
                target = mine.LayerNorm.state_dict().get(k)
                if target is not None and target.shape == v.shape:
                    target.copy_(v)
        if getattr(emb, "embedding_transformation", None) is not None and mine.embedding_transformation is not None:
            t = emb.embedding_transformation.state_dict()
            if all(v.shape == t[k].shape for k, v in mine.embedding_transformation.state_dict().items() if k in t):
                mine.embedding_transformation.load_state_dict(t)
