"""`student.init: prune_from_source`: the student is its source, cut down in depth and width.

What wins when the training budget is small (Minitron; sentence-transformers' layer reduction; CoFi) is to start
from the source's own weights rather than from random init or a reshaped teacher:

1. The source as slimbert's plain block, exactly (models/encoders.py): its LayerNorms, activation, attention
   and position table stay what they are, so the student is a stock model of the source's type.
2. Depth. The student's layers are source layers, in order. `layer_map: importance` chooses them by measured
   importance: remove, one at a time, the layer whose removal costs the final representation least (1 - the
   cosine between the pooled last hidden states with and without it, over corpus sequences), re-measuring after
   each removal (a layer's cost depends on which others are left). A list in the recipe keeps those layers.
3. Width, through torch-pruning (its DependencyGraph couples what must go together): the residual stream's
   channels (the embedding tables and norm, every LayerNorm, every projection writing or reading it), whole
   attention heads (and, when the student's heads are narrower, the same dims of each kept head's Q, K, V and
   output), and FFN neurons, each ranked by activation importance (|input| of the Linear layers reading the
   channel, over corpus tokens), as Minitron ranks them. Every layer keeps the same number of heads and neurons,
   so the shape stays a stock config.
4. Refit (student.refit_tokens): each kept layer's two output projections are re-solved by least squares on
   corpus tokens, so that the sums entering its LayerNorms make up for what the cut heads and neurons added.
5. The report: per kept layer, the token cosine of the student's hidden state to the source's (on the kept
   channels), and the cosine of the pooled embeddings, before any training.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..models import SlimBertConfig, SlimBertModel
from ..models.encoders import ENCODER_TYPES, from_encoder
from ..models.modeling import SlimBertPooler, additive_mask, pool
from .init import _heads, _top  # the same ranking as prune_from_teacher: whole heads, then dims inside them

INIT = "student.init: prune_from_source"


# ---- validation ---------------------------------------------------------------------------------------------------

def problems(source, student: SlimBertConfig) -> list[tuple[str, str]]:
    """(recipe key, message) for every reason `student` cannot be cut out of `source` (a SourceInfo)."""
    out = []
    if source.model_type not in ENCODER_TYPES:
        return [("student.init", f"{INIT} cuts {', '.join(ENCODER_TYPES)} encoders (its block is slimbert's plain "
                                 f"block); {source.path} is a {source.model_type}: use student.init: random")]
    if source.embedding_size != source.hidden_size:
        return [("student.init", f"{INIT}: the source's word table is {source.embedding_size} wide and its blocks "
                                 f"{source.hidden_size}; only unfactorised sources are cut")]

    def wider(key, what, s, t):
        if s > t:
            out.append((key, f"{INIT} keeps a subset of the source's {what}: the student asks for {s} ({key}), the "
                             f"source has {t}"))

    wider("student.inter_size", "width (its hidden size)", student.hidden_size, source.hidden_size)
    wider("student.num_heads", "attention heads", student.num_attention_heads, source.num_heads)
    wider("student.ffn.size", "FFN neurons", student.intermediate_size, source.intermediate_size)
    wider("student.num_layers", "layers", student.num_hidden_layers, source.num_layers)
    head = source.hidden_size // source.num_heads
    mine = student.hidden_size // student.num_attention_heads
    if student.hidden_size % student.num_attention_heads == 0 and mine > head:
        out.append(("student.num_heads", f"{INIT} keeps whole heads or narrows them: {student.num_attention_heads} "
                                         f"heads of a {student.hidden_size}-wide student are {mine} wide, the "
                                         f"source's {head}; use at least {-(-student.hidden_size // head)} heads"))
    return out


# ---- depth --------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _pooled(model: SlimBertModel, ids: torch.Tensor, layers: list[int], pooling: str, batch: int = 16
            ) -> torch.Tensor:
    """Pooled last hidden state of `model` running only `layers` (0-based, in order), over `ids` (packed rows)."""
    full = model.encoder.layer
    model.encoder.layer = nn.ModuleList(full[i] for i in layers)
    try:
        return torch.cat([pool(model(ids[i:i + batch]).last_hidden_state.float(), None, pooling)
                          for i in range(0, len(ids), batch)])
    finally:
        model.encoder.layer = full


def removal_cost(reference: torch.Tensor, pooled: torch.Tensor) -> float:
    """What a layer set costs the final representation: 1 - mean cosine of its pooled states to the source's."""
    return 1.0 - F.cosine_similarity(pooled, reference, dim=-1).mean().item()


def choose_layers(model: SlimBertModel, n: int, ids: torch.Tensor, pooling: str) -> tuple[list[int], list[dict]]:
    """The `n` layers (0-based) to keep: greedily drop the layer whose removal costs least, re-measured after each
    drop. Returns them and the trace (per round: each candidate's cost)."""
    kept = list(range(len(model.encoder.layer)))
    reference = _pooled(model, ids, kept, pooling)
    trace = []
    while len(kept) > n:
        costs = {j: removal_cost(reference, _pooled(model, ids, [i for i in kept if i != j], pooling)) for j in kept}
        drop = min(costs, key=costs.get)
        trace.append({"kept": list(kept), "cost_of_removing": {j + 1: round(c, 5) for j, c in costs.items()},
                      "removed": drop + 1})
        kept.remove(drop)
    return kept, trace


# ---- width --------------------------------------------------------------------------------------------------------

@dataclass
class Kept:
    """Source indices each coupled group kept (ascending)."""

    layers: list[int]                                         # 0-based source layers
    hidden: list[int]
    heads: list[list[int]] = field(default_factory=list)      # per kept layer: Q/K/V output channels kept
    ffn: list[list[int]] = field(default_factory=list)        # per kept layer: FFN neurons kept


def prune_widths(t: SlimBertModel, student: SlimBertConfig, ids: torch.Tensor, layers: list[int]) -> Kept:
    """Prune `t` (the source's kept layers, no pooler) in place to the student's widths with torch-pruning."""
    import torch_pruning as tp

    DG = tp.DependencyGraph().build_dependency(t, example_inputs=ids[:2], forward_fn=lambda m, x: m(x).last_hidden_state,
                                               verbose=False)
    imp = tp.importance.ActivationImportance()
    with imp.compute_importance(t), torch.no_grad():
        t(ids)
    tc = t.config
    head_dim = student.hidden_size // student.num_attention_heads
    root = t.encoder.layer[-1].output.dense
    plan = [(DG.get_pruning_group(root, tp.prune_linear_out_channels, list(range(tc.hidden_size))),
             student.hidden_size, "hidden")]
    for layer in t.encoder.layer:
        plan += [(DG.get_pruning_group(layer.attention.self.query, tp.prune_linear_out_channels,
                                       list(range(tc.hidden_size))), None, "heads"),
                 (DG.get_pruning_group(layer.intermediate.dense, tp.prune_linear_out_channels,
                                       list(range(tc.intermediate_size))), student.intermediate_size, "ffn")]
    kept = Kept(layers=layers, hidden=[])
    chosen = []
    # Every group's importance first, on the unpruned copy: the groups are disjoint, so pruning one does not
    # renumber another.
    for g, k, what in plan:
        scores = imp(g)
        if what == "heads":
            idx = _heads(scores, tc.num_attention_heads, student.num_attention_heads, head_dim)
            kept.heads.append(idx)
        else:
            idx = _top(scores, k)
            kept.hidden = idx if what == "hidden" else kept.hidden
            if what == "ffn":
                kept.ffn.append(idx)
        chosen.append((g, idx))
    for g, idx in chosen:
        r = g[0].dep
        drop = sorted(set(range(len(g[0].idxs))) - set(idx))
        if drop:
            DG.get_pruning_group(r.target.module, r.handler, drop).prune()
    for layer in t.encoder.layer:  # the head split is not a tensor shape torch-pruning can see
        layer.attention.self.num_heads, layer.attention.self.head_size = student.num_attention_heads, head_dim
    for m in t.modules():
        m.__dict__.pop("_importance", None)
    return kept


# ---- least-squares refit ------------------------------------------------------------------------------------------

def _inputs(model: SlimBertModel, ids: torch.Tensor, modules: list[nn.Module], num_layers: int,
            keep: torch.Tensor | None = None) -> list[tuple[torch.Tensor, ...]]:
    """The positional tensor inputs each of `modules` receives in `model(ids)` run through its first `num_layers`
    blocks, flattened to (tokens, features); with `keep`, only those feature columns (the kept channels)."""
    seen: list[list[list[torch.Tensor]]] = [[] for _ in modules]

    def hook(k):
        def grab(m, args):
            ts = [a.reshape(-1, a.shape[-1]) for a in args if torch.is_tensor(a)]
            seen[k].append([t[:, keep] if keep is not None else t for t in ts])
        return grab

    handles = [m.register_forward_pre_hook(hook(k)) for k, m in enumerate(modules)]
    try:
        with torch.no_grad():
            for chunk in ids.split(32):
                model(chunk, num_layers=num_layers)
    finally:
        for handle in handles:
            handle.remove()
    return [tuple(torch.cat(parts) for parts in zip(*chunks)) for chunks in seen]


def _solve(x: torch.Tensor, y: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W, b minimising |x W^T + b - y|^2 + ridge * mean(diag(x^T x)) * |W|^2 (float64 normal equations)."""
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1).double()
    a = x1.T @ x1
    reg = ridge * a.diagonal()[:-1].mean()
    a[:-1, :-1] += reg * torch.eye(x.shape[1], dtype=a.dtype, device=a.device)
    wb = torch.linalg.solve(a, x1.T @ y.double())  # (features + 1, out)
    return wb[:-1].T.float(), wb[-1].float()


def _layer_inputs(layer: nn.Module, states: list[tuple[torch.Tensor, torch.Tensor | None, int]],
                  module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run `layer` on each cached (hidden state, additive mask, length) chunk and return the (tokens, features)
    inputs `module` receives inside it (its first two positional tensors), and the layer's outputs."""
    seen: list[list[torch.Tensor]] = []
    handle = module.register_forward_pre_hook(
        lambda m, args: seen.append([a.reshape(-1, a.shape[-1]) for a in args if torch.is_tensor(a)][:2]))
    outs = []
    try:
        for x, mask, t in states:
            outs.append(layer(x, mask, t)[0])
    finally:
        handle.remove()
    return [torch.cat(parts) for parts in zip(*seen)], outs


def _refitted(model: SlimBertModel) -> list[nn.Linear]:
    """The projections the refit re-solves: each layer's attention output and FFN output."""
    return [m for layer in model.encoder.layer for m in (layer.attention.output.dense, layer.output.dense)]


@torch.no_grad()
def refit(student: SlimBertModel, source: SlimBertModel, kept: Kept, ids: torch.Tensor, ridge: float = 1e-3
          ) -> None:
    """Re-solve, layer by layer, each cut layer's two output projections (attention output, FFN output) by least
    squares, so that the sums they feed into the LayerNorms match the source's on the kept channels.

    Cutting heads and neurons removes their share of each sum; the rest of the projection was never asked to make
    it up. Given the cut student's own inputs (earlier layers already refitted), the best remaining projection is a
    linear solve (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers", mask tuning): the
    target is the source's pre-LayerNorm sum minus the student's residual. A layer kept whole and fed the source's
    own inputs is left as it is (its solve returns its weights, up to the ridge).

    Cost: one pass of the source, and three passes of each student block (attention inputs, FFN inputs after the
    attention refit, the refitted block's output for the next): the hidden state entering each layer is kept, so
    the cost grows with depth, not depth squared (a 24-layer source's cut is as cheap per layer as a 6-layer one)."""
    h = torch.tensor(kept.hidden, device=ids.device)
    # The source's pre-LayerNorm sums at every kept layer, in one pass (kept channels only).
    norms = [m for j in kept.layers for m in (source.encoder.layer[j].attention.output.LayerNorm,
                                              source.encoder.layer[j].output.LayerNorm)]
    targets = [t for (t,) in _inputs(source, ids, norms, max(kept.layers) + 1, keep=h)]
    # the student's token-major hidden state entering layer 0 (its embeddings), per chunk, as its forward makes it
    states = []
    for chunk in ids.split(32):
        e = student.embeddings(chunk, None, None)
        states.append((e.reshape(-1, e.shape[-1]), additive_mask(None, e.dtype), chunk.shape[1]))
    for i in range(len(kept.layers)):
        s_layer = student.encoder.layer[i]
        u_t, s_t = targets[2 * i], targets[2 * i + 1]
        # attention: LayerNorm(dense(ctx) + residual)
        (ctx, residual), _ = _layer_inputs(s_layer, states, s_layer.attention.output)
        w, b = _solve(ctx, u_t - residual, ridge)
        s_layer.attention.output.dense.weight.copy_(w)
        s_layer.attention.output.dense.bias.copy_(b)
        del ctx, residual
        # FFN: LayerNorm(dense(act(...)) + h), with the attention just refitted
        (f, hid), _ = _layer_inputs(s_layer, states, s_layer.output)
        w, b = _solve(f, s_t - hid, ridge)
        s_layer.output.dense.weight.copy_(w)
        s_layer.output.dense.bias.copy_(b)
        del f, hid
        if i + 1 < len(kept.layers):  # the refitted layer's output enters the next
            _, outs = _layer_inputs(s_layer, states, s_layer.output)
            states = [(x, mask, t) for x, (_, mask, t) in zip(outs, states)]
        targets[2 * i] = targets[2 * i + 1] = None  # free as we go


# ---- the whole initialisation --------------------------------------------------------------------------------------

@dataclass
class SourceInitReport:
    kept: Kept
    layer_cosine: list[float]          # per student hidden state (embedding, then each layer) vs the source's
    pooled_cosine: float               # pooled last hidden states vs the source's
    trace: list[dict]                  # the depth search, when the layers were chosen by importance
    pooling: str
    before_refit: dict | None = None   # the same fidelity before the least-squares refit, its tokens, and
                                       # whether the refit was kept (not when it lowered the pooled cosine)

    def as_dict(self) -> dict:
        k = self.kept
        return {"layers": [j + 1 for j in k.layers], "layer_cosine": [round(x, 4) for x in self.layer_cosine],
                "pooled_cosine": round(self.pooled_cosine, 4), "pooling": self.pooling, "depth_search": self.trace,
                "kept": {"hidden": k.hidden, "heads": k.heads, "ffn": k.ffn}, "before_refit": self.before_refit}

    def summary(self, source, student: SlimBertConfig) -> str:
        """One line: what was kept of `source` (a SourceInfo) and how close the cut student starts."""
        how = ("all of them" if len(self.kept.layers) == source.num_layers else "chosen by importance" if self.trace
               else "from the recipe")
        widths = (f"width {source.hidden_size}->{student.hidden_size}, heads {source.num_heads}x"
                  f"{source.hidden_size // source.num_heads}->{student.num_attention_heads}x"
                  f"{student.hidden_size // student.num_attention_heads}, FFN {source.intermediate_size}->"
                  f"{student.intermediate_size}")
        per_layer = ", ".join(f"{c:.3f}" for c in self.layer_cosine[1:])
        b = self.before_refit
        refit = ("" if b is None else
                 f" (least-squares refit on {b['tokens']:,} tokens; before it, last layer "
                 f"{b['layer_cosine'][-1]:.3f}, pooled {b['pooled_cosine']:.3f})" if b.get("kept", True) else
                 f" (the least-squares refit on {b['tokens']:,} tokens lowered the held-out pooled cosine to "
                 f"{b['pooled_cosine_refitted']:.3f}: not kept; more student.refit_tokens fit more text)")
        return (f"student cut from the source (torch-pruning, activation importance): layers "
                f"{[j + 1 for j in self.kept.layers]} ({how}), {widths}; before training, token cosine to the "
                f"source per layer {per_layer}, pooled ({self.pooling}) embedding cosine {self.pooled_cosine:.3f}"
                f"{refit}")


@torch.no_grad()
def fidelity(student: SlimBertModel, source: SlimBertModel, kept: Kept, ids: torch.Tensor, pooling: str
             ) -> tuple[list[float], float]:
    """Token cosine of each student hidden state to its source state (kept channels), and pooled cosine."""
    s = student(ids, output_hidden_states=True).hidden_states
    t = source(ids, output_hidden_states=True).hidden_states
    pairs = zip(s, [t[0]] + [t[j + 1] for j in kept.layers])
    per_layer = [F.cosine_similarity(a.float(), b[..., kept.hidden].float(), dim=-1).mean().item() for a, b in pairs]
    pooled = F.cosine_similarity(pool(s[-1].float(), None, pooling), pool(t[-1].float(), None, pooling)[:, kept.hidden],
                                 dim=-1).mean().item()
    return per_layer, pooled


def source_as_slimbert(source_model: nn.Module) -> SlimBertModel:
    """The source (bare or with its MLM head) as slimbert's plain block, float32, with its pooler when it has one."""
    m = from_encoder(source_model, with_mlm=False)
    return m.float().eval()


def init_from_source(student, source_model: nn.Module, layers: list[int] | None, ids: torch.Tensor,
                     eval_ids: torch.Tensor | None = None, pooling: str = "mean",
                     refit_ids: torch.Tensor | None = None) -> SourceInitReport:
    """Overwrite `student` (a SlimBertForMaskedLM or SlimBertModel of the plain block) with the source cut to its
    shape. `layers`: 0-based source layers to keep, or None to choose them by importance; `ids`: corpus rows for
    the importance; `eval_ids`: held-out rows for the report (default `ids`); `refit_ids`: corpus rows for the
    least-squares refit of the cut layers' output projections (None: no refit). The source's MLM head, when it has
    one, is cut with the word table; its pooler with the hidden channels."""
    config = student.config
    eval_ids = ids if eval_ids is None else eval_ids
    device = next(student.parameters()).device
    full = source_as_slimbert(source_model).to(device)
    ids, eval_ids = ids.to(device), eval_ids.to(device)
    trace = []
    if layers is None:
        layers, trace = choose_layers(full, config.num_hidden_layers, ids, pooling)
    t = copy.deepcopy(full)
    t.encoder.layer = nn.ModuleList(copy.deepcopy(full.encoder.layer[j]) for j in layers)
    pooler, t.pooler = t.pooler, None  # not on the traced path: cut by hand below
    t.requires_grad_(True)
    kept = prune_widths(t, config, ids, layers)
    before = None
    if refit_ids is not None and len(refit_ids):
        t.eval()
        per_layer, pooled = fidelity(t, full, kept, eval_ids, pooling)
        before = {"tokens": refit_ids.numel(), "layer_cosine": [round(x, 4) for x in per_layer],
                  "pooled_cosine": round(pooled, 4), "kept": True}
        cut = [{k: v.clone() for k, v in m.state_dict().items()} for m in _refitted(t)]  # to restore
        refit(t, full, kept, refit_ids.to(device))
        # Too few refit tokens can fit the corpus rows and miss held-out text (a 3-layer MiniLM cut on 4,096
        # tokens: pooled cosine 0.430 -> 0.265; on 65,536: 0.748): a refit that lowers the held-out pooled cosine
        # is not kept, and the report says so.
        _, refitted = fidelity(t, full, kept, eval_ids, pooling)
        if refitted < pooled:
            for m, state in zip(_refitted(t), cut):
                m.load_state_dict(state)
            before.update(kept=False, pooled_cosine_refitted=round(refitted, 4))
        del cut
    body = getattr(student, "slimbert", student)
    h = torch.tensor(kept.hidden, device=device)
    with torch.no_grad():
        state = {k: v for k, v in t.state_dict().items()}
        if pooler is not None and getattr(body, "pooler", None) is not None and body.pooler.dense is not None:
            state["pooler.dense.weight"] = pooler.dense.weight[h][:, h]
            state["pooler.dense.bias"] = pooler.dense.bias[h]
        missing, unexpected = body.load_state_dict(state, strict=False)
        bad = [k for k in missing if not k.startswith("pooler.") and not k.endswith("position_ids")] + unexpected
        if bad:
            raise ValueError(f"{INIT}: the cut source does not fit the student ({bad[:4]})")
        head = _mlm_head(source_model)
        if head is not None and hasattr(student, "cls"):
            _cut_mlm_head(student, head, h)
    student.eval()
    per_layer, pooled = fidelity(body, full, kept, eval_ids, pooling)
    return SourceInitReport(kept, per_layer, pooled, trace, pooling, before)


def _mlm_head(source_model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The source's MLM head in slimbert's names (cls.predictions...), or None."""
    m = from_encoder(source_model) if _has_mlm(source_model) else None
    if m is None or not hasattr(m, "cls"):
        return None
    return {k: v for k, v in m.state_dict().items() if k.startswith("cls.") and "decoder.weight" not in k}


def _has_mlm(model: nn.Module) -> bool:
    return any(k.startswith(("cls.predictions", "lm_head.")) for k, _ in model.named_parameters())


def _cut_mlm_head(student, head: dict[str, torch.Tensor], h: torch.Tensor) -> None:
    """The transform reads and writes the residual stream's channels; the decoder is tied to the (cut) table."""
    cut = {}
    for k, v in head.items():
        v = v.to(h.device)
        if k.endswith("transform.dense.weight"):
            v = v[h][:, h]
        elif k.endswith(("transform.dense.bias", "transform.LayerNorm.weight", "transform.LayerNorm.bias")):
            v = v[h]
        cut[k] = v
    student.load_state_dict(cut, strict=False)
    student.tie_weights()


def cut_classifier(head: dict[str, torch.Tensor], kept_hidden: list[int]) -> dict[str, torch.Tensor]:
    """A task head (models.encoders.classifier_head: pooler and classifier) restricted to the kept hidden
    channels: the pooler reads and writes the residual stream's channels, the classifier reads them."""
    cut = {}
    for k, v in head.items():
        h = torch.tensor(kept_hidden, device=v.device)
        if k == "slimbert.pooler.dense.weight":
            v = v[h][:, h]
        elif k == "slimbert.pooler.dense.bias":
            v = v[h]
        elif k == "classifier.weight":
            v = v[:, h]
        cut[k] = v.clone()
    return cut


def attach_pooler(student, config: SlimBertConfig) -> None:
    """A plain-block MLM student carries its source's pooler, so that it saves as the source's bare model whole."""
    if config.classifier_activation and getattr(student.slimbert, "pooler", None) is None:
        student.slimbert.pooler = SlimBertPooler(config).to(next(student.parameters()).device)


def selection(kept_hidden: list[int], width: int) -> torch.Tensor:
    """width x len(kept) matrix putting the student's channel j at the source's channel kept[j]: the projection a
    cut student's features start from (teacher = selection @ student on the kept channels)."""
    w = torch.zeros(width, len(kept_hidden))
    w[torch.tensor(kept_hidden), torch.arange(len(kept_hidden))] = 1.0
    return w
