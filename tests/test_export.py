"""ONNX export: files in optimum's layout, parity against PyTorch (and its failure), exact passes, int8, bench."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from slimbert.export import passes as P
from slimbert.export.onnx import ExportError, check_parity, export, parity_inputs, session
from slimbert.export.runtime import in_fresh_process
from slimbert.models import SlimBertConfig, SlimBertForMaskedLM, SlimBertForSequenceClassification, preset

from conftest import randomize_norms


def tiny(qkv="inter", n_ffn=3, norm="no_norm", cls=SlimBertForSequenceClassification, layers=2, **kw):
    torch.manual_seed(0)
    config = SlimBertConfig(vocab_size=30522, embedding_size=32, hidden_size=64, intra_bottleneck_size=32,
                            num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                            num_feedforward_networks=n_ffn, qkv_source=qkv, normalization_type=norm,
                            hidden_act="relu", num_labels=3, **kw)
    return randomize_norms(cls(config).eval(), scale=0.3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("student")
    model = tiny("shared_bottleneck")  # the released checkpoint's shape: stock MobileBERT can express it
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("qkv", ["inter", "shared_bottleneck", "bottleneck"])
@pytest.mark.parametrize("n_ffn", [1, 4])
def test_fold_nonorm_is_exact(qkv, n_ffn, real_batch):
    model = tiny(qkv, n_ffn)
    folded, stats = P.fold_nonorm(model)
    assert stats["chain"] == 2 * (n_ffn + 1) and stats["blocks_skipped"] == 0
    assert stats["bottleneck"] == 2 * (2 if qkv == "shared_bottleneck" else 1)
    with torch.no_grad():
        a = model(**real_batch).logits
        b = folded(**real_batch).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    # the folded copy has no NoNorm left inside its blocks' chains
    names = [n for n, m in folded.named_modules() if type(m).__name__ == "NoNorm"]
    assert all("bottleneck.LayerNorm" in n or n.endswith("embeddings.LayerNorm") for n in names), names


def _exact(model, other, batch):
    """Same logits, float64 models (folded in float64): tight enough that a lost bias or shift in any block shows,
    even where a block's scale makes the activations large."""
    assert model.dtype == other.dtype == torch.float64
    with torch.no_grad():
        a, b = model(**batch).logits, other(**batch).logits
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10 * a.abs().max().item())


@pytest.mark.parametrize("qkv", ["inter", "shared_bottleneck", "bottleneck"])
def test_carry_stream_is_exact_and_gives_the_stream_back_where_unsafe(qkv, real_batch):
    """carry_stream carries the stream from block to block without their NoNorms, before or after fold_nonorm;
    where the product of the scales leaves SAFE_SCALE it gives x back (that block keeps its NoNorm) and starts
    again; residual_gemm moves the carried blocks' biases along it. All exact."""
    model = tiny(qkv, 2, layers=5).double()
    with torch.no_grad():   # block 1's scale makes the stream's product unsafe after it: x is given back there
        model.slimbert.encoder.layer[1].output.bottleneck.LayerNorm.weight.mul_(3e4)
    carried, stats = P.carry_stream(model)
    assert stats == {"stream": 4, "changed": True}   # the embeddings' NoNorm, blocks 0, 2 and 3
    kept = [n for n, m in carried.named_modules() if type(m).__name__ == "NoNorm"
            and (n.endswith("output.bottleneck.LayerNorm") or n.endswith("embeddings.LayerNorm"))]
    assert kept == [f"slimbert.encoder.layer.{i}.output.bottleneck.LayerNorm" for i in (1, 4)], kept
    _exact(model, carried, real_batch)
    both = P.carry_stream(P.fold_nonorm(model)[0])[0]
    assert both.state_dict().keys() == P.fold_nonorm(carried)[0].state_dict().keys()
    _exact(model, both, real_batch)
    _exact(model, P.fold_nonorm(carried)[0], real_batch)   # the other order
    fused, rstats = P.residual_gemm(both)
    assert rstats == {"steps": 5 * 3, "bottleneck": 5, "blocks_skipped": 0}
    _exact(model, fused, real_batch)
    # without fold_nonorm the chains keep their NoNorms: residual_gemm leaves them, the carried biases still move
    _exact(model, P.residual_gemm(carried)[0], real_batch)


def test_the_stream_does_not_enter_gated_or_layer_norm_blocks(real_batch):
    gated = tiny("shared_bottleneck", 2, layers=3, inter_residual="gated").double()
    carried, stats = P.carry_stream(gated)
    assert stats == {"stream": 0}
    _exact(gated, P.residual_gemm(P.fold_nonorm(carried)[0])[0], real_batch)
    # LayerNorm at the bottlenecks (and embeddings), NoNorm in the chains: the chains fold, the stream stays x
    mixed = tiny("inter", 2, layers=3, bottleneck_normalization_type="layer_norm").double()
    assert P.carry_stream(mixed)[1] == {"stream": 0}
    _exact(mixed, P.residual_gemm(P.fold_nonorm(mixed)[0])[0], real_batch)
    # NoNorm at the bottlenecks, LayerNorm in the chains: the stream is carried through blocks whose chains stay
    chains = tiny("inter", 2, layers=3, norm="layer_norm", bottleneck_normalization_type="no_norm").double()
    carried, stats = P.carry_stream(chains)
    assert stats["stream"] == 3
    fused, rstats = P.residual_gemm(P.fold_nonorm(carried)[0])
    assert rstats["blocks_skipped"] == 3
    _exact(chains, fused, real_batch)


@pytest.mark.parametrize("qkv", ["inter", "shared_bottleneck"])
def test_residual_gemm_is_exact_and_removes_the_adds(qkv, real_batch, tmp_path, tokenizer):
    import onnx

    model = tiny(qkv, 3)
    folded, _ = P.fold_nonorm(model)
    fused, stats = P.residual_gemm(folded)
    assert stats == {"steps": 2 * 4, "bottleneck": 2, "blocks_skipped": 0}  # attention, 2 extra FFNs, last FFN
    with torch.no_grad():
        a, b = model(**real_batch).logits, fused(**real_batch).logits
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * a.abs().max().item())
    # without fold_nonorm first the chain still has NoNorms: the pass leaves those blocks alone
    assert P.residual_gemm(model)[1]["blocks_skipped"] == 2
    path = tmp_path / "m"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    res = export(path, tmp_path / "x", passes=["fold_nonorm", "residual_gemm", "ort_basic"], measure=False,
                 log=lambda m: None)
    assert res.parity["fp32"].ok(10.0)
    graph = onnx.load(str(tmp_path / "x" / "model.onnx")).graph
    weights = {t.name for t in graph.initializer}
    # each residual step (4 per block) and each output bottleneck is one Gemm whose C input is an activation
    assert sum(n.op_type == "Gemm" and len(n.input) == 3 and n.input[2] not in weights for n in graph.node) == 10


@pytest.mark.parametrize("qkv", ["inter", "shared_bottleneck", "bottleneck"])
def test_merge_gemm_makes_one_gemm_of_the_readers_of_one_input(qkv, real_batch, tmp_path):
    """A block's Gemms that read one input (input bottleneck, Q, K, V as the Q/K/V source has them) become one
    Gemm and a Split, with PyTorch's outputs; on the ONNX file of a plain export and after the model passes."""
    import onnx

    from slimbert.export.onnx import export_onnx

    model = tiny(qkv)
    export_onnx(P.fold_nonorm(model)[0], "text-classification", tmp_path / "a.onnx")
    stats = P.merge_gemm(tmp_path / "a.onnx", tmp_path / "b.onnx")
    onnx.checker.check_model(str(tmp_path / "b.onnx"))
    gemms = [sum(n.op_type == "Gemm" for n in onnx.load(str(tmp_path / f)).graph.node) for f in ("a.onnx", "b.onnx")]
    # per block: inter, x -> (input bottleneck, Q, K, V); shared_bottleneck, x -> (input and attention
    # bottlenecks, V) and the attention bottleneck -> (Q, K); bottleneck, the input bottleneck -> (Q, K, V)
    groups, gone = {"inter": (1, 3), "shared_bottleneck": (2, 2 + 1), "bottleneck": (1, 2)}[qkv]
    assert stats == {"merged_groups": 2 * groups} and gemms[0] - gemms[1] == 2 * gone
    x = {k: v.numpy() for k, v in real_batch.items()}
    x.setdefault("token_type_ids", np.zeros_like(x["input_ids"]))
    with torch.no_grad():
        want = model(**real_batch).logits.numpy()
    for f in ("a.onnx", "b.onnx"):
        got = session(tmp_path / f).run(None, x)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def _scaled_projections(path: Path, shared_weight: bool = False) -> None:
    """Two projections of x, each reshaped to heads, transposed and multiplied by a scalar (SDPA's 1/sqrt(d) on Q
    and K): a Gemm (slimbert's 2-D blocks) and a MatMul then Add (transformers' 3-D nn.Linear, its output also read
    by a Shape node); a third whose transposed output is also a graph output must stay as it is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
             for name, shape in (("wq", (8, 16)), ("b", (16,)), ("wk", (8, 16)), ("wv", (8, 16)))]
    c = [numpy_helper.from_array(np.array(v, np.float32), f"c{i}") for i, v in enumerate((0.5, 0.25, 2.0))]
    shape = numpy_helper.from_array(np.array([6, 4, 4], np.int64), "shape")
    k_w, v_w = ("wq", "wq") if shared_weight else ("wk", "wv")   # shared: one tensor read by Q, K and V
    nodes = [
        helper.make_node("Gemm", ["x", "wq", "b"], ["q"]),
        helper.make_node("Reshape", ["q", "shape"], ["qh"]),
        helper.make_node("Transpose", ["qh"], ["qt"], perm=[1, 0, 2]),
        helper.make_node("Mul", ["qt", "c0"], ["qs"]),
        helper.make_node("MatMul", ["x", k_w], ["km"]),
        helper.make_node("Add", ["b", "km"], ["k"]),
        helper.make_node("Reshape", ["k", "shape"], ["kh"]),
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[1, 2, 0]),
        helper.make_node("Shape", ["kt"], ["kshape"]),
        helper.make_node("Mul", ["c1", "kt"], ["ks"]),
        helper.make_node("MatMul", ["qs", "ks"], ["scores"]),
        helper.make_node("Gemm", ["x", v_w, "b"], ["v"]),
        helper.make_node("Reshape", ["v", "shape"], ["vh"]),
        helper.make_node("Transpose", ["vh"], ["vt"], perm=[1, 0, 2]),
        helper.make_node("Mul", ["vt", "c2"], ["vs"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [6, 8])],
                              [helper.make_tensor_value_info(n, t, d) for n, t, d in (
                                  ("scores", f, [4, 6, 6]), ("vs", f, [4, 6, 4]), ("vt", f, [4, 6, 4]),
                                  ("kshape", TensorProto.INT64, [3]))],
                              [*inits, *c, shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("shared_weight", [False, True])
def test_fold_scale_folds_a_scalar_mul_into_the_projection_that_feeds_it(tmp_path, shared_weight):
    import onnx

    _scaled_projections(tmp_path / "a.onnx", shared_weight)
    info = P.fold_scale(tmp_path / "a.onnx", tmp_path / "b.onnx")
    onnx.checker.check_model(str(tmp_path / "b.onnx"))
    # Q's Gemm and K's MatMul + Add take their scale (a Shape reader sees no values); V's transposed output is also
    # a graph output, so its Mul stays, and a weight shared with it is copied, not scaled in place
    assert info == {"folded_muls": 2, "changed": True}
    muls = [n.input for n in onnx.load(str(tmp_path / "b.onnx")).graph.node if n.op_type == "Mul"]
    assert muls == [["vt", "c2"]]
    x = {"x": np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)}
    want, got = (session(tmp_path / f).run(None, x) for f in ("a.onnx", "b.onnx"))
    for a, b in zip(want, got):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_fold_scale_in_the_default_passes_takes_attention_scale_from_both_block_kinds(tiny_source, tmp_path):
    """slimbert's blocks and a stock BERT: 2 Muls a layer fold (Q and K), and the export still matches PyTorch."""
    import onnx

    from slimbert.export.onnx import export_onnx, load_model

    for name, (model, task) in (("slim", (tiny("shared_bottleneck"), "text-classification")),
                                ("bert", load_model(tiny_source))):
        layers = model.config.num_hidden_layers
        export_onnx(model, task, tmp_path / f"{name}.onnx")
        info = P.fold_scale(tmp_path / f"{name}.onnx", tmp_path / f"{name}-f.onnx")
        assert info["folded_muls"] == 2 * layers, name
        assert P._output_gap(tmp_path / f"{name}.onnx", tmp_path / f"{name}-f.onnx") < 1e-5
        ops = [n.op_type for n in onnx.load(str(tmp_path / f"{name}-f.onnx")).graph.node]
        assert "Softmax" in ops


def test_bypass_dequantize_gives_unquantised_readers_the_float_tensor(tmp_path):
    """x feeds a dense MatMul (quantised: it keeps the pair) and a residual Add (not: it reads x itself); a pair only
    the Add read goes. A pair on a dense layer's own quantised output stays shared (ONNX Runtime fuses DQ -> MatMul
    -> Q only while Q is the MatMul's one reader)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    qp = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
          numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("MatMul", ["xd", "w"], ["h"]),
             helper.make_node("Add", ["h", "xd"], ["y"]),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yd"]),
             helper.make_node("Relu", ["yd"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["h2"]),
             helper.make_node("QuantizeLinear", ["h2", "s", "z"], ["h2q"]),
             helper.make_node("DequantizeLinear", ["h2q", "s", "z"], ["h2d"]),
             helper.make_node("MatMul", ["h2d", "w"], ["h3"]),
             helper.make_node("Add", ["h3", "h2d"], ["out"])]
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [4, 8])],
                              [helper.make_tensor_value_info("out", f, [4, 8])], [w, *qp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a.onnx"))
    info = P.bypass_dequantize(tmp_path / "a.onnx", tmp_path / "b.onnx", ("MatMul", "Gemm"))
    assert info == {"readers_moved": 2, "dequantize_dropped": 1}
    g = onnx.load(str(tmp_path / "b.onnx")).graph
    onnx.checker.check_model(str(tmp_path / "b.onnx"))
    reads = [(n.op_type, list(n.input)) for n in g.node if n.op_type in ("MatMul", "Add", "Relu")]
    assert reads == [("MatMul", ["xd", "w"]), ("Add", ["h", "x"]), ("Relu", ["y"]), ("MatMul", ["r", "w"]),
                     ("MatMul", ["h2d", "w"]), ("Add", ["h3", "h2d"])]
    x = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)}
    wn = numpy_helper.to_array(w)
    fq = lambda t: (np.clip(np.round(t / 0.05) + 128, 0, 255) - 128) * 0.05  # noqa: E731
    h2 = np.maximum(fq(x["x"]) @ wn + x["x"], 0) @ wn
    np.testing.assert_allclose(session(tmp_path / "b.onnx").run(None, x)[0], fq(h2) @ wn + fq(h2), rtol=1e-4,
                               atol=1e-4)


def test_int8_is_the_faster_of_dynamic_and_static_that_pass_parity(model_dir, tmp_path, monkeypatch):
    """Both ONNX Runtime int8s are made and checked; the faster on this machine becomes model_int8.onnx, and the
    export says which and why. The timing is stubbed here (speed is the benchmark's job, not a test's)."""
    import onnx

    from slimbert.export import onnx as X

    path, _ = model_dir
    ops = lambda f: {n.op_type for n in onnx.load(str(f)).graph.node}  # noqa: E731
    for fast, marker in (("static", "QuantizeLinear"), ("dynamic", "DynamicQuantizeLinear")):
        ms = [5.0, 3.0] if fast == "static" else [3.0, 5.0]   # (dynamic, static)
        monkeypatch.setattr(X, "ort_median_ms_fresh", lambda paths, *a, ms=ms, **k: ms)
        out = tmp_path / fast
        result = export(path, out, quantize="int8", measure=False, log=lambda m: None)
        meta = json.loads((out / "slimbert_export.json").read_text())["int8"]
        assert meta["picked"] == fast and set(meta["parity"]) == {"dynamic", "static"}
        assert meta["p50_ms"] == {"dynamic": ms[0], "static": ms[1]} and fast in meta["why"]
        assert marker in ops(out / "model_int8.onnx") and result.parity["int8"].cosine > 0.98
        assert not list(out.glob("*.candidate.onnx"))
    static = onnx.load(str(tmp_path / "static" / "model_int8.onnx")).graph
    static_ops = {n.op_type for n in static.node}
    assert "DynamicQuantizeLinear" not in static_ops and "Softmax" in static_ops   # dense layers only
    # quantised from the passes without residual_gemm: no dense layer is left in fp32 for taking an activation as
    # its bias, and the dense layers' outputs stay float (no QuantizeLinear reads a Gemm or MatMul)
    consts = {i.name for i in static.initializer} | {o for n in static.node if n.op_type in ("Constant",
                                                                                           "DequantizeLinear")
                                                      for o in n.output}
    assert all(len(n.input) < 3 or n.input[2] in consts for n in static.node if n.op_type == "Gemm")
    made_by = {o: n.op_type for n in static.node for o in n.output}
    assert not [n for n in static.node if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) in ("Gemm",
                                                                                                      "MatMul")]
    # attention's activation-by-activation products stay fp32: no MatMul takes a quantised activation as its B
    act_dq = {n.output[0] for n in static.node if n.op_type == "DequantizeLinear"
              and made_by.get(n.input[0]) == "QuantizeLinear"}
    assert not [n for n in static.node if n.op_type == "MatMul" and n.input[1] in act_dq]
    assert [n for n in static.node if n.op_type == "MatMul" and n.input[1] not in consts]   # (there are such)
    # the residual Adds read the fp32 stream, not the pair quantising it for the next dense layer
    assert not [n for n in static.node if n.op_type == "Add" and any(made_by.get(i) == "DequantizeLinear"
                                                                     for i in n.input)]
    assert meta["graph"].startswith("the passes without carry_stream, residual_gemm: ")
    # neither passes: the export fails loudly, naming both, and leaves nothing behind
    with pytest.raises(X.ParityError, match="no int8 model passes.*dynamic: output cosine.*static: output cosine"):
        export(path, tmp_path / "none", quantize="int8", measure=False, int8_min_cosine=1.01, log=lambda m: None)
    assert not (tmp_path / "none").exists()


def test_fold_nonorm_leaves_layer_norm_models_alone(real_batch):
    model = tiny(norm="layer_norm")
    folded, stats = P.fold_nonorm(model)
    assert stats["chain"] == 0 and stats["blocks_skipped"] == 2


def test_export_layout_parity_and_int8(model_dir, tmp_path, real_batch):
    import onnx

    path, model = model_dir
    out = tmp_path / "onnx"
    result = export(path, out, quantize="int8", measure=False, log=lambda m: None)
    assert {"model.onnx", "model_int8.onnx", "config.json", "tokenizer.json", "slimbert_export.json"} <= set(result.files)
    assert json.loads((out / "config.json").read_text())["model_type"] == "mobilebert"  # optimum can open it
    p = result.parity["fp32"]
    assert p.ok(10.0) and p.argmax_agreement == 1.0 and p.cosine > 0.999999
    assert result.parity["int8"].cosine > 0.98
    assert [s["pass"] for s in result.passes] == ["torch.onnx.export", "fold_nonorm", "carry_stream",
                                                  "residual_gemm", "eager_attention", "fold_scale", "merge_gemm",
                                                  "ort_basic"]
    # model.onnx carries the stream (one output-bottleneck NoNorm left, the last block's); int8 is quantised from
    # the graph without it (each block's NoNorm there), as carry_stream is one of the ORT-only passes
    def nonorm_muls(f):
        return sum(n.op_type == "Mul" and "output/bottleneck/LayerNorm" in n.name
                   for n in onnx.load(str(f)).graph.node)
    assert nonorm_muls(out / "model.onnx") == 1 and nonorm_muls(out / "model_int8.onnx") == 2
    assert result.int8["graph"].startswith("the passes without carry_stream, residual_gemm: ")
    result = export(path, tmp_path / "fused", quantize="int8", measure=False, passes=list(P.FUSED_PASSES),
                    log=lambda m: None)
    assert [s["pass"] for s in result.passes] == ["torch.onnx.export", "fold_nonorm", "carry_stream",
                                                  "residual_gemm", "eager_attention", "fold_scale", "merge_gemm",
                                                  "ort_basic", "ort_fusion"]
    info = {s["pass"]: s for s in result.passes}
    assert info["merge_gemm"]["merged_groups"] == 2 * 2  # shared_bottleneck: (input, attention bottleneck), (Q, K)
    # slimbert's own blocks: nothing for ORT's BERT fusion, and the graph is left exactly as it was
    assert "changed" not in info["eager_attention"] and "changed" not in info["ort_fusion"]
    assert info["ort_fusion"]["nodes"] == info["ort_basic"]["nodes"] and info["ort_fusion"]["fused"] == {}
    assert result.passes[-1]["nodes"] < result.passes[0]["nodes"]
    # dynamic axes: another batch and length run, and match PyTorch
    s = session(out / "model.onnx")
    x = {k: v.numpy() for k, v in real_batch.items()}
    x.setdefault("token_type_ids", np.zeros_like(x["input_ids"]))
    got = s.run(None, x)[0]
    with torch.no_grad():
        ref = model(**real_batch).logits.numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_export_needs_no_slimbert_to_run(model_dir, tmp_path):
    path, _ = model_dir
    out = tmp_path / "onnx"
    export(path, out, measure=False, log=lambda m: None)
    code = ("import sys, numpy as np, onnxruntime as ort\n"
            "from transformers import AutoTokenizer\n"
            f"tok = AutoTokenizer.from_pretrained({str(out)!r})\n"
            "x = dict(tok(['a plain sentence'], return_tensors='np'))\n"
            f"s = ort.InferenceSession({str(out / 'model.onnx')!r}, providers=['CPUExecutionProvider'])\n"
            "y = s.run(None, {k: v.astype(np.int64) for k, v in x.items()})[0]\n"
            "assert y.shape == (1, 3) and 'slimbert' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_wrong_export_fails_loudly_and_leaves_nothing(model_dir, tmp_path, monkeypatch):
    path, _ = model_dir

    def broken(model):  # a "pass" that changes the function: parity must catch it
        import copy

        model = copy.deepcopy(model)
        with torch.no_grad():
            model.classifier.bias.add_(1.0)
        return model, {}

    monkeypatch.setitem(P.MODEL_PASSES, "broken", broken)
    out = tmp_path / "onnx"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export(path, out, passes=["broken"], measure=False, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.e2e
def test_export_cli_from_a_run_directory_and_errors(tmp_path, model_dir):
    path, _ = model_dir
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    for f in path.iterdir():
        (run / "student" / f.name).write_bytes(f.read_bytes())
    (run / "recipe.resolved.yaml").write_text("name: x\n")
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "export", str(run), "--onnx", "--quantize", "int8"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "export" / "model_int8.onnx").is_file()
    (tmp_path / "not-a-model").mkdir()
    bad = subprocess.run([sys.executable, "-m", "slimbert.cli", "export", str(tmp_path / "not-a-model"), "--onnx"],
                         capture_output=True, text=True)
    # Bad input is exit 2; 4 means "made, but does not match PyTorch".
    assert bad.returncode == 2 and "no model here" in bad.stderr and "Traceback" not in bad.stderr
    bench = subprocess.run([sys.executable, "-m", "slimbert.cli", "bench", str(run / "export" / "model.onnx"),
                            str(run / "export" / "model_int8.onnx"), "--seq", "16,32", "--batch", "1,2", "--runs", "5",
                            "--out", str(tmp_path / "bench")], capture_output=True, text=True)
    assert bench.returncode == 0, bench.stderr[-2000:]
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    assert len(report["results"]) == 2 * 2 * 2
    lat = report["results"][0]["latency"]
    assert {"count", "mean", "p50", "p90", "p95", "p99", "stdev", "stdev_", "unit"} <= set(lat) and lat["count"] == 5
    assert report["models"]["export"]["flops_per_sequence"] > 0
    assert (tmp_path / "bench" / "report.png").is_file() and (tmp_path / "bench" / "report.md").is_file()


def fake_run(runs, name, finished, student_from=None, finetuned=None):
    """A run directory as `slimbert run` leaves it: a resolved recipe and a saved student (optionally fine-tune
    results), with file times set to when it 'finished'."""
    import os

    run = runs / name
    (run / "student").mkdir(parents=True)
    (run / "recipe.resolved.yaml").write_text("name: x\n")
    for f in (student_from.iterdir() if student_from else []):
        (run / "student" / f.name).write_bytes(f.read_bytes())
    if not student_from:
        (run / "student" / "config.json").write_text("{}")
    os.utime(run / "student" / "config.json", (finished, finished))
    if finetuned is not None:
        (run / "finetune").mkdir()
        (run / "finetune" / "metrics.json").write_text("{}")
        os.utime(run / "finetune" / "metrics.json", (finetuned, finetuned))
    return run


def test_newest_run_is_the_last_to_finish_not_the_last_by_name(tmp_path):
    import os

    from slimbert.engine.rundir import newest_export, newest_run

    runs = tmp_path / "runs"
    assert newest_run(runs) is None and newest_export(runs) is None  # no runs/ at all
    fake_run(runs, "z-early", finished=1_000)
    b = fake_run(runs, "a-late", finished=3_000)
    (runs / "b-unfinished" / "stages").mkdir(parents=True)  # no student yet: not a candidate
    assert newest_run(runs) == b
    fine = fake_run(runs, "m-finetuned", finished=2_000, finetuned=4_000)  # fine-tuning finished it last
    assert newest_run(runs) == fine
    (fine / "lock").write_text(json.dumps({"pid": os.getpid()}))  # still running (a live process holds it)
    assert newest_run(runs) == b
    (fine / "lock").write_text(json.dumps({"pid": 2 ** 22 + 7}))  # a lock a killed run left: no such process
    assert newest_run(runs) == fine
    for run, t in ((b, 5_000), (fine, 6_000)):
        (run / "export").mkdir()
        (run / "export" / "model.onnx").write_bytes(b"")
        os.utime(run / "export" / "model.onnx", (t, t))
    assert newest_export(runs) == fine / "export" / "model.onnx"


@pytest.mark.e2e
def test_export_and_bench_without_paths_take_the_newest_run(tmp_path, model_dir):
    path, _ = model_dir
    cli = lambda *a: subprocess.run([sys.executable, "-m", "slimbert.cli", *a], capture_output=True, text=True,
                                    cwd=tmp_path)  # noqa: E731
    for command, hint in ((["export", "--onnx"], "slimbert run"), (["bench"], "slimbert export --onnx")):
        none = cli(*command)
        assert none.returncode == 2 and hint in " ".join(none.stderr.split()) and "Traceback" not in none.stderr
    fake_run(tmp_path / "runs", "quickstart-20261128-101500", finished=2_000, student_from=path)
    newest = fake_run(tmp_path / "runs", "quickstart-20261128-090000", finished=9_000, student_from=path)
    done = cli("export", "--onnx")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"newest finished run: {Path('runs') / newest.name}" in " ".join(done.stderr.split())
    assert (newest / "export" / "model.onnx").is_file() and not (tmp_path / "runs" / "quickstart-20261128-101500" /
                                                                  "export").exists()
    bench = cli("bench", "--seq", "16", "--runs", "3")
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert f"newest export: {Path('runs') / newest.name / 'export' / 'model.onnx'}" in " ".join(bench.stderr.split())
    report = json.loads((newest / "export" / "bench" / "report.json").read_text())
    assert len(report["results"]) == 1 and report["results"][0]["latency"]["count"] == 3


@pytest.mark.e2e
def test_run_exports_and_benches_when_the_recipe_asks(tmp_path, tiny_source, shared_data):
    from conftest import write_recipe

    transfer = [{"kind": "joint", "steps": 3, "batch_size": 4, "optimizer": {"lr": 1e-3}}]
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer,
                          export={"onnx": True, "quantize": "int8",
                                  "bench": {"batch": [1], "seq": [16], "compare": ["teacher"]}})
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out" / "export"
    assert (out / "model.onnx").is_file() and (out / "model_int8.onnx").is_file()
    report = json.loads((out / "bench" / "report.json").read_text())
    assert set(report["models"]) == {"student", "student-int8", "teacher"}


@pytest.mark.e2e
def test_finetuned_run_exports_static_int8_and_reports_task_accuracy(tmp_path, tiny_source, shared_data):
    from conftest import write_recipe

    transfer = [{"kind": "joint", "steps": 3, "batch_size": 4, "optimizer": {"lr": 1e-3}}]
    finetune = {"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
                "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 128, "epochs": 1, "batch_size": 16,
                "lr": 1e-3, "seq_len": 32}
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer, finetune=finetune,
                          export={"onnx": True, "quantize": "int8", "static_int8": True, "calibration_sequences": 8})
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out" / "export"
    assert json.loads((out / "slimbert_export.json").read_text())["task"] == "text-classification"
    assert (out / "model_int8_static.onnx").is_file()
    report = json.loads((out / "task_metrics.json").read_text())
    # the fp32 export classifies the dev set exactly as PyTorch does
    assert report["ort-fp32"]["accuracy"] == pytest.approx(report["pytorch"]["accuracy"], abs=1 / 872 + 1e-9)
    assert "accuracy_delta_vs_pytorch" in report["ort-int8"]
    assert "accuracy_delta_vs_pytorch" in report["ort-int8-static"]


def _ops(path) -> dict[str, int]:
    import onnx
    from collections import Counter

    return Counter((n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("task", ["feature-extraction", "fill-mask"])
def test_ort_fusion_fuses_a_stock_bert_and_quantises_from_the_portable_graph(tiny_source, tmp_path, real_batch,
                                                                              task):
    """A stock BERT (what a cut student is) leaves the export with one ORT Attention op per layer, matching PyTorch
    within fp32 noise on a padded batch; int8 is quantised from the graph without the ORT-only passes, so it holds
    no contrib op the fusion made (and its parity is that graph's)."""
    out = tmp_path / "onnx"
    import importlib.util

    openvino = task == "feature-extraction" and importlib.util.find_spec("nncf") is not None
    result = export(tiny_source, out, task=task, quantize="int8", measure=False, passes=list(P.FUSED_PASSES),
                    openvino=openvino, log=lambda m: None)
    info = {s["pass"]: s for s in result.passes}
    assert info["eager_attention"]["attention"] == "sdpa -> eager"
    assert info["ort_fusion"]["fused"]["Attention"] == 4 and info["ort_fusion"]["nodes"] < info["ort_basic"]["nodes"]
    ops = _ops(out / "model.onnx")
    assert ops[("com.microsoft", "Attention")] == 4 and ops[("com.microsoft", "SkipLayerNormalization")] == 8
    assert result.parity["fp32"].ok(10.0) and result.parity["fp32"].cosine > 0.999999
    assert result.int8["graph"].startswith("the passes without residual_gemm, ort_fusion: ")   # carry_stream: a no-op
    int8_ops = _ops(out / "model_int8.onnx")
    assert not any(op in ("Attention", "SkipLayerNormalization", "EmbedLayerNormalization", "BiasGelu", "QAttention")
                   for _, op in int8_ops)
    if openvino:   # the IR is converted from the same unfused graph and matches PyTorch like the ONNX file
        assert result.parity["openvino-fp32"].ok(10.0) and "portable.onnx" not in result.files
    # the fused file runs other batch sizes and lengths (with padding) and matches PyTorch
    from transformers import AutoModel, AutoModelForMaskedLM

    model = (AutoModel if task == "feature-extraction" else AutoModelForMaskedLM).from_pretrained(tiny_source).eval()
    x = {k: v.numpy() for k, v in real_batch.items()}
    x.setdefault("token_type_ids", np.zeros_like(x["input_ids"]))
    got = session(out / "model.onnx").run(None, x)[0]
    with torch.no_grad():
        ref = model(**real_batch)[0].numpy()
    keep = real_batch["attention_mask"].numpy().astype(bool)   # padded positions are not an output anyone reads
    assert np.abs(got[keep] - ref[keep]).max() <= 1e-4 * np.abs(ref).max()


def test_default_export_of_a_stock_bert_uses_its_eager_attention(tiny_source, tmp_path, real_batch):
    """transformers' SDPA attention exports with an IsNaN + Where over every layer's attention probabilities (its
    guard for rows with every key masked); the default passes export the eager attention instead, whose graph has
    neither, and int8 is quantised from that graph. Both match PyTorch (SDPA) on a padded batch."""
    from transformers import AutoModel

    sdpa = [p for p in P.DEFAULT_PASSES if p != "eager_attention"]
    default = export(tiny_source, tmp_path / "eager", task="feature-extraction", quantize="int8", measure=False,
                     log=lambda m: None)
    plain = export(tiny_source, tmp_path / "sdpa", task="feature-extraction", passes=sdpa, measure=False,
                   log=lambda m: None)
    info = {s["pass"]: s for s in default.passes}
    assert info["eager_attention"]["attention"] == "sdpa -> eager" and info["eager_attention"]["changed"]
    ops = _ops(tmp_path / "eager" / "model.onnx")   # the mask's Wheres are made once, not per layer
    assert not any(op == "IsNaN" for _, op in ops) and ops[("ai.onnx", "Where")] <= 2
    assert default.passes[-1]["nodes"] < plain.passes[-1]["nodes"]
    assert default.int8["graph"].startswith("the passes without residual_gemm: ") and "eager_attention" in \
        default.int8["graph"]
    assert not any(op == "IsNaN" for _, op in _ops(tmp_path / "eager" / "model_int8.onnx"))
    model = AutoModel.from_pretrained(tiny_source).eval()
    assert model.config._attn_implementation == "sdpa"   # the reference is the model as users load it
    x = {k: v.numpy() for k, v in real_batch.items()}
    x.setdefault("token_type_ids", np.zeros_like(x["input_ids"]))
    with torch.no_grad():
        ref = model(**real_batch)[0].numpy()
    keep = real_batch["attention_mask"].numpy().astype(bool)
    for folder in ("eager", "sdpa"):
        got = session(tmp_path / folder / "model.onnx").run(None, x)[0]
        assert np.abs(got[keep] - ref[keep]).max() <= 1e-4 * np.abs(ref).max(), folder


def test_ort_fusion_without_an_attention_it_knows_leaves_the_graph(tmp_path, tiny_source):
    """An SDPA export (no eager_attention first) holds no attention core the fusion recognises: the pass writes the
    graph back unchanged and says so, and OpenVINO and int8 are then made from model.onnx's own graph."""
    out = tmp_path / "onnx"
    result = export(tiny_source, out, task="feature-extraction", passes=["ort_basic", "ort_fusion"], quantize="int8",
                    measure=False, log=lambda m: None)
    info = {s["pass"]: s for s in result.passes}
    assert info["ort_fusion"]["fused"] == {} and "left as it was" in info["ort_fusion"]["kept"]
    assert info["ort_fusion"]["nodes"] == info["ort_basic"]["nodes"]
    assert result.int8["graph"] == "the fp32 model's"
    assert not any(d == "com.microsoft" for d, _ in _ops(out / "model.onnx"))


def test_ort_fusion_steps_back_when_the_fused_graph_disagrees(tiny_source, tmp_path, monkeypatch):
    """The fusion is pattern matching: a fused file whose outputs differ from its input's is not kept (the pass
    writes its input back and says by how much), so a misread graph never reaches the export's parity check."""
    from transformers import AutoModel

    from slimbert.export.onnx import export_onnx

    model, info = P.eager_attention(AutoModel.from_pretrained(tiny_source).eval())
    assert info["changed"] and P.eager_attention(model)[1] == {"attention": "eager already"}
    src = tmp_path / "a.onnx"
    export_onnx(model, "feature-extraction", src)
    good = P.ort_fusion(src, tmp_path / "b.onnx", model)
    assert good["fused"]["Attention"] == 4 and good["changed"]
    assert P._output_gap(src, tmp_path / "b.onnx") < 1e-5
    monkeypatch.setattr(P, "_output_gap", lambda a, b: 0.5)
    bad = P.ort_fusion(src, tmp_path / "c.onnx", model)
    assert bad["fused"] == {} and "differ by 0.5" in bad["kept"] and "changed" not in bad
    assert (tmp_path / "c.onnx").read_bytes() == src.read_bytes()


def test_a_cached_reference_export_made_with_other_passes_is_made_again(tmp_path):
    """The BERT_BASE reference is reused from its folder only when it was exported with the passes asked for (a
    folder from before eager_attention became its pass would time the old graph)."""
    from slimbert.export import bench as B

    def folder(passes):
        d = tmp_path / "ref"
        d.mkdir(exist_ok=True)
        (d / "model.onnx").write_bytes(b"x")
        (d / "slimbert_export.json").write_text(json.dumps({"passes": [{"pass": p} for p in
                                                                      ["torch.onnx.export", *passes]]}))
        return d

    assert B._cached(folder(["eager_attention"]), False, None, ("eager_attention",))
    assert B._cached(folder(["eager_attention"]), False, None)   # no passes asked: the files decide
    d = folder([])
    assert not B._cached(d, False, None, ("eager_attention",)) and not d.exists()


def test_int8_pick_times_in_this_process_when_a_fresh_one_cannot_run(model_dir, tmp_path, monkeypatch):
    """A machine where the timing child cannot run (an embedded interpreter, a hung child) still gets its int8 pick,
    timed in the exporting process, and the log says so; the export does not fail over it."""
    from slimbert.export import onnx as X

    def broken(*a, **k):
        raise RuntimeError("the timing process failed (exit 1):\nno python here")

    monkeypatch.setattr(X, "ort_median_ms_fresh", broken)
    logs = []
    path, _ = model_dir
    export(path, tmp_path / "m", quantize="int8", measure=False, log=logs.append)
    meta = json.loads((tmp_path / "m" / "slimbert_export.json").read_text())["int8"]
    assert set(meta["p50_ms"]) == {"dynamic", "static"} and all(v > 0 for v in meta["p50_ms"].values())
    assert any("timing in a fresh process failed" in m and "no python here); timing in this process" in m
               for m in logs)


def test_ort_timing_in_a_fresh_process_returns_each_files_p50_and_reports_a_failure(model_dir, tmp_path):
    """The int8 pick's timing runs in a child process (JSON in and out): one p50 per file, in order; a file the
    child cannot load is an error that names the failure, not a hang or a silent zero."""
    from slimbert.export.runtime import ort_median_ms_fresh

    path, _ = model_dir
    export(path, tmp_path / "m", measure=False, log=lambda m: None)
    p50 = ort_median_ms_fresh([tmp_path / "m" / "model.onnx"] * 2, threads=1, seq=16, runs=3, warmup=1)
    assert len(p50) == 2 and all(ms > 0 for ms in p50)
    with pytest.raises(RuntimeError, match="timing process failed"):
        ort_median_ms_fresh([tmp_path / "missing.onnx"], runs=1, warmup=1)


def test_in_fresh_process_runs_the_call_in_another_process_and_returns_its_value():
    assert in_fresh_process(os.getpid) != os.getpid()
    assert in_fresh_process(divmod, 7, 2) == (3, 1) and in_fresh_process(int, "ff", base=16) == 255
    with pytest.raises(ValueError, match="invalid literal"):
        in_fresh_process(int, "not a number")   # its error reaches the caller
    with pytest.raises(RuntimeError, match="_exit died before it returned"):
        in_fresh_process(os._exit, 3)   # a child that dies is an error, not a wait for ever


def test_bench_times_in_a_fresh_process_with_the_same_report_and_errors(tmp_path, model_dir, monkeypatch):
    """The latency report is timed in a subprocess (the exporting/training process slowed rows unevenly); what
    comes back is the report the in-process timing gives, and a model that cannot run is the caller's ExportError."""
    from slimbert.export import bench as B

    path, _ = model_dir
    export(path, tmp_path / "x", measure=False, log=lambda m: None)
    onnx_path = tmp_path / "x" / "model.onnx"
    started = []
    real = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: (started.append(cmd) if cmd[0] == sys.executable
                                                                 else None) or real(cmd, *a, **k))
    entries = [B.Entry("a", onnx_path), B.Entry("b", onnx_path, group="a"),
               B.Entry("c", onnx_path, runtime="openvino", unavailable="n/a: not here")]
    fresh = B.bench(entries, [1], [8, 16], threads=1, runs=3, warmup=1)
    assert len(started) == 1 and "_bench_child" in started[0][2]
    here = B.bench(entries, [1], [8, 16], threads=1, runs=3, warmup=1, fresh_process=False)
    assert len(started) == 1
    assert fresh.keys() == here.keys() and fresh["models"] == json.loads(json.dumps(here["models"]))
    assert [(r["model"], r["sequence_length"]) for r in fresh["results"]] == \
        [(r["model"], r["sequence_length"]) for r in here["results"]]
    assert fresh["unavailable"] == here["unavailable"] and len(fresh["best"]) == len(here["best"])
    assert all(r["latency"]["count"] == 3 and r["latency"]["p50"] > 0 for r in fresh["results"])
    with pytest.raises(ExportError, match="a cannot run at batch 1 x seq 4096"):
        B.bench(entries[:1], [1], [4096], threads=1, runs=1, warmup=1)
