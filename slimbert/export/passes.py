"""Passes that remove MobileBERT's op overhead, each exact and checked by the export's parity test.

MobileBERT on ONNX Runtime is op-overhead bound: 24 blocks of 128-wide GEMMs, each followed by element-wise
bias, residual and NoNorm (x * w + b) nodes that ORT fuses into nothing (no LayerNorm anchors). Two kinds of
pass, kept because measured faster (benchmarks/results/latency.md has the figures):

- fold_nonorm (on the model, before export): NoNorm is affine, so
  * a NoNorm right after a projection with no residual (the input bottleneck, the shared attention
    bottleneck) folds into that projection's weight and bias;
  * inside a block, the chain attention-output -> FFN 1 .. FFN N is re-parameterised: instead of the
    normalised stream h_k = s_k * U_k + t_k the graph carries U_k, where s_k is the product of the NoNorm
    scales so far and t_k the last shift. Each residual step stays one Add, U_k = A_k / s_{k-1} + U_{k-1},
    with 1 / s_{k-1} and the shifts folded into the producing and consuming projections. The output
    bottleneck's projection absorbs the last s and t. Every NoNorm of the chain disappears.
  A block is left as it is when a scale is too close to zero (|s| < 1e-4) or too large for the fold to be
  safe in fp32.
- carry_stream (on the model): the stream between blocks, x = NoNorm(W h + b + x_prev), is carried the same way,
  x = S * V + T with S the product of the output bottlenecks' scales: the next block's readers and its output
  bottleneck take S and T, and only the last block's NoNorm is left (24 Mul + 24 Add fewer in the preset; AMD
  EPYC AVX512, medians of three alternating rounds: ORT fp32 1.02-1.03x; int8 0.97-1.05x and OpenVINO fp32
  1.00-1.01x, so those are made without it: ORT_ONLY_PASSES; benchmarks/results/stream_fold_amd_avx512.md).
- residual_gemm (on the model, after fold_nonorm): each residual Add of a block's chain becomes the C input of
  the Gemm that produces it (addmm exports as one Gemm), one node fewer per step.
- fold_scale (on the ONNX file): attention's 1/sqrt(d), which torch exports as a Mul on Q and one on K in every
  layer, folds into the Q and K projections' weights and biases (any Mul by a scalar constant of a projection's
  output, through reshapes and transposes only): 48 elementwise passes fewer in the preset.
- merge_gemm (on the ONNX file): the Gemms that read one input (a block's input bottleneck, Q, K and V) become
  one wider Gemm and a Split: 4 small GEMMs a block become 1.
- ort_basic (on the ONNX file): onnxruntime's hardware-independent "basic" level, saved offline: constant
  folding, identity and dead-node elimination. The file then needs no optimisation at load time.

For the stock transformers encoders slimbert cuts from a source (BERT, RoBERTa, MiniLM):
- eager_attention (on the model, before export; a default): transformers' SDPA attention exports with an IsNaN +
  Where over every layer's attention probabilities (its guard for rows whose keys are all masked), two passes over
  heads x T x T floats a layer that ONNX Runtime does not fuse; eager attention adds its mask (made once) before
  the softmax, the same products otherwise. Medians of three rounds: ORT fp32 1.03-1.14x, dynamic int8
  1.06-1.17x, OpenVINO fp32 1.03-1.07x, static int8 1.06-1.14x but 0.87x on the 4x cut (whose int8 the pick keeps
  dynamic; benchmarks/results/eager_attention_amd_avx512.md). Its graph is also the one ORT's fusion recognises.

One more, not in the defaults (FUSED_PASSES adds it): ONNX Runtime's own transformer optimizer (what optimum's
ORTOptimizer runs) fuses each attention core, residual + LayerNorm, bias + GELU and the embeddings into its contrib
ops. Measured on an AMD EPYC with AVX512-VNNI over the eager-attention export (benchmarks/results/ort_fusion.md,
2026-12-08): ORT fp32 1.00-1.13x, dynamic int8 0.87-1.18x; earlier, against SDPA exports (eager attention's gain
included): ORT fp32 1.00-1.06x on all-MiniLM-L6-v2 and its 2x / 4x cuts and 0.98x on BERT_BASE in one run,
0.98-1.45x in a noisier second: no stable gain, for a model.onnx only ONNX Runtime runs, so it stays opt-in
(`export(..., passes=FUSED_PASSES)`).
- ort_fusion (on the ONNX file): the fusion itself. Its ops are ONNX Runtime's (com.microsoft domain), so the
  export quantises and converts to OpenVINO from the graph made without it (onnx.export).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..models.modeling import NoNorm, SlimBertModel, SlimBertPreTrainedModel

SAFE_SCALE = (1e-4, 1e4)


# ---- model passes (before export) ----------------------------------------------------------------------------------

def _is_nonorm(m) -> bool:
    return isinstance(m, NoNorm)


@torch.no_grad()
def _fold_into_output(linear: nn.Linear, w: torch.Tensor, b: torch.Tensor) -> None:
    """NoNorm(linear(x)) -> linear'(x): scale the output rows, then shift."""
    linear.weight.mul_(w[:, None])
    linear.bias.mul_(w).add_(b)


@torch.no_grad()
def _scale_input(linear: nn.Linear, s: torch.Tensor, t: torch.Tensor) -> None:
    """linear(s * U + t) -> linear'(U): scale the input columns, move t W into the bias."""
    linear.bias.add_(linear.weight @ t)
    linear.weight.mul_(s[None, :])


@torch.no_grad()
def _divide_output(linear: nn.Linear, s: torch.Tensor, t: torch.Tensor) -> None:
    """(linear(f) + t) / s -> linear'(f)."""
    linear.bias.add_(t).div_(s)
    linear.weight.div_(s[:, None])


def _safe(s: torch.Tensor) -> bool:
    a = s.abs()
    return bool(a.min() >= SAFE_SCALE[0] and a.max() <= SAFE_SCALE[1])


def _body(model: nn.Module) -> SlimBertModel | None:
    """The slimbert encoder inside `model` (a head model's, or the model itself), None for any other model."""
    return next((m for m in model.modules() if isinstance(m, SlimBertModel)), None)


def _bottlenecked_copy(model: nn.Module) -> tuple[nn.Module, list]:
    """A copy in eval mode, and its blocks when it is a bottlenecked slimbert model (else none to rewrite)."""
    model = copy.deepcopy(model).eval()
    body = _body(model)
    return model, list(body.encoder.layer) if body is not None and body.config.use_bottleneck else []


def _chain(layer) -> tuple[list[nn.Module], list[nn.Linear]]:
    """A block's residual chain: the modules of its steps (attention output, the stacked FFNs, the last FFN; each
    a projection `dense`, a residual Add and a `LayerNorm`) and the projection reading each step's output."""
    owners = [layer.attention.output, *(ffn.output for ffn in layer.ffn or ()), layer.output]
    consumers = [*(ffn.intermediate.dense for ffn in layer.ffn or ()), layer.intermediate.dense,
                 layer.output.bottleneck.dense]
    return owners, consumers


def _input_readers(layer) -> list[nn.Linear]:
    """The projections that read a block's input x (Bottleneck.forward's Q/K/V sources); the output bottleneck's
    residual reads it too."""
    bn, attn = layer.bottleneck, layer.attention.self
    if bn.qkv_source == "bottleneck":
        return [bn.input.dense]
    if bn.qkv_source == "shared_bottleneck":
        return [bn.input.dense, bn.attention.dense, attn.value]
    return [bn.input.dense, attn.query, attn.key, attn.value]


def _takes_stream(layer) -> bool:
    """Whether a block can read its input as s * V + t: every reader is a projection, and the output bottleneck
    adds x as it is (no gate) before a NoNorm (an affine map, unlike LayerNorm, commutes with the rescaling)."""
    ob = layer.output.bottleneck
    return ob is not None and ob.residual_gate is None and _is_nonorm(ob.LayerNorm)


@torch.no_grad()
def _fold_chain(layer, stats: dict) -> None:
    """The block's attention-output -> FFN chain, re-parameterised without its NoNorms (the module docstring)."""
    owners, consumers = _chain(layer)
    steps = [(owner.dense, owner) for owner in owners]
    if not all(_is_nonorm(owner.LayerNorm) for _, owner in steps):
        stats["blocks_skipped"] += 1
        return
    scales, s = [], torch.ones_like(steps[0][1].LayerNorm.weight)
    for _, owner in steps:
        s = s * owner.LayerNorm.weight
        scales.append(s)
    if not all(_safe(x) for x in scales):
        stats["blocks_skipped"] += 1
        return
    s_prev, t_prev = torch.ones_like(s), torch.zeros_like(s)
    for (dense, owner), consumer in zip(steps, consumers):
        w, b = owner.LayerNorm.weight.clone(), owner.LayerNorm.bias.clone()
        _divide_output(dense, s_prev, t_prev)  # U_k = A_k / s_{k-1} + U_{k-1} (+ t_{k-1} / s_{k-1})
        s_prev, t_prev = s_prev * w, b
        _scale_input(consumer, s_prev, t_prev)  # the next projection reads s_k * U_k + t_k
        owner.LayerNorm = nn.Identity()
        stats["chain"] += 1


@torch.no_grad()
def fold_nonorm(model: nn.Module) -> tuple[nn.Module, dict]:
    """An equivalent copy of a slimbert model with its foldable NoNorms removed; and what was folded."""
    model, layers = _bottlenecked_copy(model)
    stats = {"bottleneck": 0, "chain": 0, "blocks_skipped": 0}
    for layer in layers:
        bn = layer.bottleneck
        for part in (bn.input, getattr(bn, "attention", None)):
            if part is not None and _is_nonorm(part.LayerNorm):
                _fold_into_output(part.dense, part.LayerNorm.weight, part.LayerNorm.bias)
                part.LayerNorm = nn.Identity()
                stats["bottleneck"] += 1
        _fold_chain(layer, stats)
    return model, stats


@torch.no_grad()
def carry_stream(model: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of a slimbert model whose stream between blocks is carried without the output bottlenecks' NoNorms:
    block k's output x = NoNorm(W h + b + x_prev) = S * V + T, where the graph carries V = W' h + V_prev and S, T
    fold into the next block's readers (_scale_input) and its output bottleneck (W' = W / S, the NoNorm's scale
    times S). The embeddings' NoNorm starts the stream; the last block's NoNorm (or the one before a block the
    stream cannot enter: a gated residual, a LayerNorm; or where S would leave SAFE_SCALE) gives the exact x back.
    Only what reads the last block's output stays as it was (the model's outputs, its pooler and heads): the
    hidden states in between are V, not x. Independent of fold_nonorm (the two change disjoint parts, in either
    order)."""
    model, layers = _bottlenecked_copy(model)
    stats = {"stream": 0}
    if not layers:
        return model, stats
    emb = _body(model).embeddings
    stream = None   # (S, T): the block's input is S * V + T and the graph carries V; None: the graph carries x
    if _is_nonorm(emb.LayerNorm) and _takes_stream(layers[0]) and _safe(emb.LayerNorm.weight):
        stream = emb.LayerNorm.weight.clone(), emb.LayerNorm.bias.clone()
        emb.LayerNorm = nn.Identity()
        stats["stream"] += 1
    for k, layer in enumerate(layers):
        if stream is not None:   # the block reads S * V + T: its readers take S and T
            for reader in _input_readers(layer):
                _scale_input(reader, *stream)
        if not _takes_stream(layer):   # the stream never enters such a block: x is exact here
            stream = None
            continue
        ob = layer.output.bottleneck
        if stream is not None:   # W h + b + S V + T = S * ((W h + b + T) / S + V): the NoNorm scales by w * S
            _divide_output(ob.dense, *stream)
            ob.LayerNorm.weight.mul_(stream[0])
        w, b = ob.LayerNorm.weight, ob.LayerNorm.bias
        nxt = layers[k + 1] if k + 1 < len(layers) else None
        if nxt is not None and _takes_stream(nxt) and _safe(w):
            # x = w * (W h + b + V) + t = w * (W h + V) + (w * b + t): the bias joins T, so the residual step
            # stays one Gemm with V as its C input (residual_gemm)
            stream = w.clone(), w * ob.dense.bias + b
            ob.dense.bias.zero_()
            ob.LayerNorm = nn.Identity()
            stats["stream"] += 1
        else:
            stream = None
    return model, {**stats, **({"changed": True} if stats["stream"] else {})}


# ---- residual_gemm: the residual Add into the producing Gemm (C input) -------------------------------------------

def _fused(cls: type, forward) -> type:
    """A subclass of `cls` whose forward is `forward`: same parameters and state dict, another graph."""
    return type(f"ResidualGemm{cls.__name__}", (cls,), {"forward": forward})


def _self_output(self, ctx, residual):  # addmm exports as one Gemm whose C input is the residual
    return self.LayerNorm(torch.addmm(residual, ctx, self.dense.weight.t()))


def _ffn_output(self, f, residual):
    return self.LayerNorm(torch.addmm(residual, f, self.dense.weight.t()))


def _last_output(self, f, h, x):
    h = self.LayerNorm(torch.addmm(h, f, self.dense.weight.t()))
    return h if self.bottleneck is None else self.bottleneck(h, x)


def _bottleneck_output(self, h, x):
    return self.LayerNorm(torch.addmm(x, h, self.dense.weight.t()))


@torch.no_grad()
def residual_gemm(model: nn.Module) -> tuple[nn.Module, dict]:
    """An equivalent copy (for inference: dropout is dropped) in which each residual step y = W f + b + r is one
    Gemm with r as its C input, saving an Add per step. The bias has to go somewhere: along a block's chain
    (after fold_nonorm removed its NoNorms) the stream carries U_k - S_k, S_k the sum of the biases so far, and
    the projections reading it add W S_k to their bias; the output bottleneck's bias moves into its NoNorm's
    shift (w * b), or, where carry_stream carries the stream between blocks (no NoNorm there), on along the stream
    the same way: the next block's readers add W b and its output bottleneck takes b. Blocks whose chain still
    has a norm, or whose bottleneck has a LayerNorm or a gate, keep those steps as they are."""
    model, layers = _bottlenecked_copy(model)
    stats = {"steps": 0, "bottleneck": 0, "blocks_skipped": 0}
    deficit = None   # the stream between blocks carries V - deficit
    for layer in layers:
        ob = layer.output.bottleneck
        if deficit is not None:   # readers of V - d add W d; the output bottleneck's residual adds d back
            for reader in _input_readers(layer):
                reader.bias.add_(reader.weight @ deficit)
            ob.dense.bias.add_(deficit)
            deficit = None
        owners, consumers = _chain(layer)
        steps = [(owners[0], _self_output), *((o, _ffn_output) for o in owners[1:-1]), (owners[-1], _last_output)]
        if not all(isinstance(owner.LayerNorm, nn.Identity) for owner, _ in steps):
            stats["blocks_skipped"] += 1  # NoNorm(U - S) != NoNorm(U) - anything: run fold_nonorm first
            continue
        shift = torch.zeros_like(layer.attention.output.dense.bias)
        for (owner, forward), consumer in zip(steps, consumers):
            shift = shift + owner.dense.bias
            consumer.bias.add_(consumer.weight @ shift)
            owner.dense.register_parameter("bias", None)
            owner.__class__ = _fused(type(owner), forward)
            stats["steps"] += 1
        carried = isinstance(ob.LayerNorm, nn.Identity)   # carry_stream left the block without its NoNorm
        if (carried or _is_nonorm(ob.LayerNorm)) and ob.residual_gate is None:
            if carried:
                deficit = ob.dense.bias.clone()
            else:
                ob.LayerNorm.bias.add_(ob.LayerNorm.weight * ob.dense.bias)
            ob.dense.register_parameter("bias", None)
            ob.__class__ = _fused(type(ob), _bottleneck_output)
            stats["bottleneck"] += 1
    if deficit is not None:   # carry_stream always gives x back at the last block; anything else lost a bias here
        raise ValueError("residual_gemm: the last block's output bottleneck has no NoNorm to take the carried bias")
    return model, stats


def eager_attention(model: nn.Module) -> tuple[nn.Module, dict]:
    """A copy of a transformers model with its eager attention (no per-layer NaN guard in the graph; the pattern
    ort_fusion recognises); slimbert's own models and models without an attention switch are left as they are."""
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if isinstance(model, SlimBertPreTrainedModel) or not hasattr(model, "set_attn_implementation"):
        return model, {"attention": "left as it is (not a transformers attention with a switch)"}
    if current == "eager":
        return model, {"attention": "eager already"}
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model, {"attention": f"{current} -> eager", "changed": True}


MODEL_PASSES = {"fold_nonorm": fold_nonorm, "carry_stream": carry_stream, "residual_gemm": residual_gemm,
                "eager_attention": eager_attention}
# eager_attention is a default since 2026-12-08 (benchmarks/results/eager_attention_amd_avx512.md); ort_fusion is not:
# no stable ORT fp32 gain on an AMD EPYC with AVX512-VNNI (1.00-1.06x, BERT_BASE 0.98x; ort_fusion.md), for a
# model.onnx only ONNX Runtime runs.
DEFAULT_PASSES = ("fold_nonorm", "carry_stream", "residual_gemm", "eager_attention", "fold_scale", "merge_gemm",
                  "ort_basic")
FUSED_PASSES = (*DEFAULT_PASSES, "ort_fusion")
# Passes kept to model.onnx, ONNX Runtime's fp32 graph: int8 and OpenVINO start without them. ort_fusion's contrib
# ops run nowhere else; carry_stream's rescaled stream (V = (x - T) / S, channels scaled apart by up to SAFE_SCALE)
# is not what a quantiser's per-tensor activation scales should read, and gained nothing stable under int8 or
# OpenVINO (0.97-1.05x, 1.00-1.01x; benchmarks/results/stream_fold_amd_avx512.md).
ORT_ONLY_PASSES = ("carry_stream", "ort_fusion")
# BERT_BASE as the latency reports' reference, at its best: its eager attention (against the defaults without it,
# 1.03-1.06x under ORT fp32, int8 and OpenVINO, eager_attention_amd_avx512.md; against a plain export 1.01-1.07x in
# a probe). The other defaults were mixed for it in that probe (ORT fp32 1-3 % faster, int8 1-7 % slower).
REFERENCE_PASSES = ("eager_attention",)


# ---- ONNX passes ---------------------------------------------------------------------------------------------------

def ort_basic(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])


def _attr(node, name: str, default):
    import onnx

    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def merge_gemm(src: Path, dst: Path) -> dict:
    """Gemms that read the same input with constant weights (a block's input bottleneck, Q, K and V) become one
    Gemm over the concatenated weights and biases, then a Split into the original outputs: the same products,
    fewer and wider GEMMs, which is what a graph bound by per-op overhead pays for. Only plain Gemms (alpha = beta
    = 1, no transposed input, a weight and a 1-D or absent bias that are initializers) are merged."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    consts = const_tensors(g)
    groups: dict[tuple, list] = {}
    for node in g.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0 or _attr(node, "transA", 0):
            continue
        if len(node.input) > 2 and node.input[2] and (node.input[2] not in consts
                                                      or len(consts[node.input[2]].dims) != 1):
            continue
        groups.setdefault((node.input[0], _attr(node, "transB", 0)), []).append(node)
    merged = 0
    replace: dict[str, list] = {}   # a group's first node's output -> the nodes that stand in its place
    drop: set[str] = set()
    for (a, trans_b), nodes in groups.items():
        if len(nodes) < 2:
            continue
        weights = [numpy_helper.to_array(consts[n.input[1]]) for n in nodes]
        widths = [w.shape[0] if trans_b else w.shape[1] for w in weights]
        biases = [numpy_helper.to_array(consts[n.input[2]]) if len(n.input) > 2 and n.input[2]
                  else np.zeros(k, weights[0].dtype) for n, k in zip(nodes, widths)]
        stem = f"merge_gemm_{merged}"
        w = numpy_helper.from_array(np.concatenate(weights, axis=0 if trans_b else 1), f"{stem}.weight")
        b = numpy_helper.from_array(np.concatenate(biases), f"{stem}.bias")
        g.initializer.extend([w, b])
        gemm = onnx.helper.make_node("Gemm", [a, w.name, b.name], [f"{stem}.out"], name=stem, transB=trans_b)
        outs = [n.output[0] for n in nodes]
        if opset >= 13:  # the sizes became an input at opset 13
            split = numpy_helper.from_array(np.array(widths, np.int64), f"{stem}.split")
            g.initializer.append(split)
            cut = onnx.helper.make_node("Split", [f"{stem}.out", split.name], outs, name=f"{stem}.split", axis=1)
        else:
            cut = onnx.helper.make_node("Split", [f"{stem}.out"], outs, name=f"{stem}.split", axis=1, split=widths)
        replace[nodes[0].output[0]] = [gemm, cut]   # where the first reader was: its input exists there already
        drop.update(n.output[0] for n in nodes)
        merged += 1
    if merged:
        key = lambda n: n.output[0] if n.op_type == "Gemm" else None  # noqa: E731 - a Gemm has one output
        order = [m for n in g.node for m in (replace.get(key(n)) or ([] if key(n) in drop else [n]))]
        del g.node[:]
        g.node.extend(order)
        _drop_dead_constants(g)   # the merged weights' old tensors (and the Identity nodes that only fed them)
    onnx.save(model, str(dst))
    return {"merged_groups": merged}


def const_tensors(g) -> dict:
    """Constant tensors by name: initializers, and what torch.onnx shares through Identity and Constant nodes."""
    consts = {t.name: t for t in g.initializer}
    for node in g.node:  # torch.onnx shares equal tensors (zero biases) through Identity and Constant nodes
        if node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif node.op_type == "Constant" and _attr(node, "value", None) is not None:
            consts[node.output[0]] = _attr(node, "value", None)
    return consts


def _drop_dead_constants(g, op_types: tuple[str, ...] = ("Identity", "Constant")) -> None:
    """Nodes of `op_types` (one output each) nothing reads any more, then initializers nothing reads."""
    live = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    nodes = [n for n in g.node if n.op_type not in op_types or n.output[0] in live]
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def fold_scale(src: Path, dst: Path) -> dict:
    """A Mul by a scalar constant on a projection's output, reached through Reshape and Transpose nodes only, folds
    into the projection's weight and bias: the same products, one node fewer each. torch exports attention's
    1/sqrt(d) (SDPA, slimbert's blocks and transformers' BERT alike) as two such Muls a layer, one on Q and one on K,
    each a full pass over an activation; under static int8 each also sits between a projection and its
    QuantizeLinear. A projection is a Gemm with a constant weight (and bias), or MatMul by a constant then Add of a
    constant (transformers' 3-D nn.Linear); every tensor on the way must have that one reader (Shape nodes aside),
    so nothing else sees the scaled values."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    consts = const_tensors(g)
    prod = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}   # a Shape node reads no values: the scaled tensor may have those as well
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + (n.op_type != "Shape")
    outputs = {o.name for o in g.output}

    def scalar(name):
        if name not in consts:
            return None
        a = numpy_helper.to_array(consts[name])
        return float(a.reshape(())) if a.size == 1 and a.dtype.kind == "f" else None

    def only_reader(t):
        return readers.get(t, 0) == 1 and t not in outputs

    def projection(t):
        """The (node, input index) pairs holding the weight and bias of the projection making t, or None."""
        n = prod.get(t)
        if n is None or not only_reader(t):
            return None
        if n.op_type == "Gemm" and len(n.input) > 1 and n.input[1] in consts:
            if len(n.input) > 2 and n.input[2] and n.input[2] not in consts:
                return None
            return [(n, 1)] + ([(n, 2)] if len(n.input) > 2 and n.input[2] else [])
        if n.op_type == "Add":
            for b, x in ((0, 1), (1, 0)):
                mm = prod.get(n.input[x])
                if (n.input[b] in consts and mm is not None and mm.op_type == "MatMul" and only_reader(n.input[x])
                        and mm.input[1] in consts):
                    return [(mm, 1), (n, b)]
        return None

    folded, drop = 0, set()
    renamed: dict[str, str] = {}   # a removed Mul's output -> the tensor its readers take instead
    for mul in g.node:
        if mul.op_type != "Mul" or len(mul.input) != 2 or mul.output[0] in outputs:
            continue
        for c, x in ((1, 0), (0, 1)):
            s = scalar(mul.input[c])
            if s is None or mul.input[x] in consts:
                continue
            t = mul.input[x]
            if not only_reader(t):
                break
            while t in prod and prod[t].op_type in ("Reshape", "Transpose") and only_reader(t):
                t = prod[t].input[0]
            targets = projection(t)
            if targets is None:
                break
            for node, k in targets:   # a fresh tensor each: the old one may be shared (torch.onnx dedups them)
                a = numpy_helper.to_array(consts[node.input[k]])
                scaled = numpy_helper.from_array((a * np.asarray(s, a.dtype)).astype(a.dtype),
                                                 f"fold_scale_{folded}_{k}")
                g.initializer.append(scaled)
                consts[scaled.name] = scaled
                node.input[k] = scaled.name
            renamed[mul.output[0]] = mul.input[x]
            drop.add(id(mul))
            folded += 1
            break
    if folded:
        nodes = [n for n in g.node if id(n) not in drop]
        for n in nodes:
            for k, i in enumerate(n.input):
                if i in renamed:
                    n.input[k] = renamed[i]
        del g.node[:]
        g.node.extend(nodes)
        _drop_dead_constants(g)
    onnx.save(model, str(dst))
    return {"folded_muls": folded, **({"changed": True} if folded else {})}


def bypass_dequantize(src: Path, dst: Path, quantized: tuple[str, ...] = ("MatMul", "Gemm")) -> dict:
    """After static QDQ quantisation: readers of a QuantizeLinear -> DequantizeLinear pair that are not themselves
    quantised (`quantized`: the op types ONNX Runtime fuses with the pair into an integer kernel) read the float
    tensor the pair was made from. onnxruntime's quantiser shares one pair among all readers of a tensor, so a
    residual stream feeding a dense layer reached its float residual Add through the pair too: a DequantizeLinear
    per residual (120 in the MobileBERT preset) and an int8 rounding of the residual that the fp32 model never had.
    Those readers now get the fp32 values: fewer nodes, and closer to the fp32 model, not further. A pair on a dense
    layer's own output (layouts that quantise those) is left shared: its fusion needs the QuantizeLinear to be the
    layer's only reader."""
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    consts = const_tensors(g)
    prod = {o: n for n in g.node for o in n.output}
    moved = 0
    for n in g.node:
        if n.op_type in quantized:
            continue
        for k, t in enumerate(n.input):
            dq = prod.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in consts:
                continue
            made_by = prod.get(q.input[0])
            if made_by is not None and made_by.op_type in quantized:
                # a dense layer's quantised output: ONNX Runtime fuses DQ -> Gemm -> Q only while Q is the Gemm's one
                # reader, so a reader moved to the Gemm's float output would keep the whole layer in fp32
                continue
            n.input[k] = q.input[0]
            moved += 1
    before = len(g.node)
    _drop_dead_constants(g, ("DequantizeLinear",))
    dropped = before - len(g.node)
    onnx.save(model, str(dst))
    return {"readers_moved": moved, "dequantize_dropped": dropped}


def ort_fusion(src: Path, dst: Path, model: nn.Module | None = None) -> dict:
    """ONNX Runtime's transformer optimizer (model type "bert"; heads and width from `model`'s config, else read
    from the graph, which fails once ort_basic has folded the reshapes' shapes): each attention core becomes one
    Attention op, residual + LayerNorm SkipLayerNormalization, bias + GELU BiasGelu, the embeddings
    EmbedLayerNormalization. Kept only when it fused an attention core: a graph it does not
    recognise (slimbert's MobileBERT blocks, SDPA exports) is written back unchanged, and the info says so."""
    import logging
    import shutil

    try:
        from onnxruntime.transformers import optimizer
    except ImportError as e:   # the optimizer ships with onnxruntime but imports more than its runtime needs
        shutil.copyfile(src, dst)
        return {"fused": {}, "kept": f"onnxruntime.transformers does not import ({e}): graph left as it was"}

    log = logging.getLogger("onnxruntime.transformers")   # it logs every fusion it tries at WARNING/INFO
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        config = getattr(model, "config", None)
        opt = optimizer.optimize_model(str(src), model_type="bert",
                                       num_heads=getattr(config, "num_attention_heads", 0) or 0,
                                       hidden_size=getattr(config, "hidden_size", 0) or 0)
    finally:
        log.setLevel(level)
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    if not fused.get("Attention"):
        shutil.copyfile(src, dst)
        return {"fused": {}, "kept": "no attention core it recognises: graph left as it was"}
    opt.save_model_to_file(str(dst))
    # Pattern matching can misread a graph it was not written for (another embedding or mask scheme): the fused
    # file must give the same outputs as its input on a padded batch, or the pass steps back rather than fail the
    # export's parity check.
    gap = _output_gap(src, dst)
    if gap > 1e-4:
        shutil.copyfile(src, dst)
        return {"fused": {}, "kept": f"the fused graph's outputs differ by {gap:.2g} of their scale: graph left "
                                      "as it was"}
    return {"fused": fused, "changed": True}


def _output_gap(a: Path, b: Path) -> float:
    """Largest |a - b| over both graphs' outputs, relative to a's largest magnitude, on a padded batch of 2 x 24
    random tokens (int inputs: ids below 100, the mask's second row padded, zeros for the rest)."""
    import numpy as np
    import onnxruntime as ort

    runs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b)]
    rng, feed = np.random.default_rng(0), {}
    for i in runs[0].get_inputs():
        if "mask" in i.name:
            feed[i.name] = np.ones((2, 24), np.int64)
            feed[i.name][1, 17:] = 0
        elif "input_ids" in i.name:
            feed[i.name] = rng.integers(1, 100, (2, 24), dtype=np.int64)
        else:
            feed[i.name] = np.zeros((2, 24), np.int64)
    outs = [r.run(None, feed) for r in runs]
    return max(float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)) for x, y in zip(*outs))


ONNX_PASSES = {"fold_scale": fold_scale, "merge_gemm": merge_gemm, "ort_basic": ort_basic,
               "ort_fusion": ort_fusion}
READS_MODEL = ("ort_fusion",)   # ONNX passes that also take the exported model (its config)


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)
