"""benchmarks/latency/latency_ceiling.py: the dense chain stands for exactly the model's dense layers, and the ceilings
divide as documented."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "latency"))
import latency_ceiling as C  # noqa: E402

from slimbert.models import SlimBertForSequenceClassification, preset  # noqa: E402


def test_dense_chain_runs_every_linear_once_in_call_order_on_the_rows_it_sees():
    torch.manual_seed(0)
    model = SlimBertForSequenceClassification(preset("mobilebert", num_labels=2, num_hidden_layers=2)).eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    chain = C.DenseChain(model, 16)
    assert len(chain.layers) == len(linears)                            # each once, in call order below
    # the model's own weights, each layer times one positive scalar (its output at unit RMS: no denormals)
    by_shape = {}
    for m in linears:
        by_shape.setdefault(m.weight.shape, []).append(m.weight)
    for lin in chain.layers:
        ratios = [(lin.weight / w) for w in by_shape[lin.weight.shape] if (lin.weight * w).sum() > 0]
        assert any(torch.allclose(r, r.flatten()[0].expand_as(r), rtol=1e-4) for r in ratios)
    assert chain.rows[-1] == 1 and set(chain.rows[:-1]) == {16}       # the classifier reads one row per sequence
    expected = sum(2.0 * r * m.in_features * m.out_features for m, r in zip(chain.layers, chain.rows))
    assert chain.flops() == expected
    # counted from the model's own forward: the same FLOPs its Linear layers do
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append(2.0 * a[0].numel() * m.out_features))
             for m in linears]
    with torch.no_grad():
        ids = torch.full((1, 16), 1000)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
    for h in hooks:
        h.remove()
    assert sum(seen) == pytest.approx(expected)
    out = chain(torch.randn(16, chain.width))
    assert out.shape == (1, 2) and 0.1 < out.pow(2).mean().sqrt() < 10   # unit scale at the end of the chain
    # a deep chain keeps normal floats: no denormals, no zeros
    deep = C.DenseChain(SlimBertForSequenceClassification(preset("mobilebert", num_labels=2)).eval(), 16)
    assert len(deep.layers) > 200
    assert 0.1 < deep(torch.randn(16, deep.width)).pow(2).mean().sqrt() < 10


def test_ceilings_divide_bert_base_by_the_students_dense_chain():
    def row(model, rt, prec, p50, chain):
        return {"model": model, "runtime": rt, "precision": prec, "p50_ms": p50, "chain_p50_ms": chain}

    rows = {f"{m} {rt} {p}": row(m, rt, p, p50, ch) for m, rt, p, p50, ch in (
        ("mobilebert", "ort", "fp32", 40.0, 36.0), ("mobilebert", "ort", "int8", 20.0, 16.0),
        ("mobilebert", "openvino", "int8", 15.0, 13.5),
        ("bert_base", "ort", "fp32", 140.0, 130.0), ("bert_base", "ort", "int8", 60.0, 42.0),
        ("bert_base", "openvino", "int8", 36.0, 30.0))}
    rows["mobilebert ort int8"]["int8"] = {"picked": "static"}
    a, mb_share, bb_share, fp32, int8 = C.ceilings(rows)
    assert a["measured"] == pytest.approx(36.0 / 15.0) and a["ceiling"] == pytest.approx(36.0 / 13.5)
    assert fp32["ceiling"] == pytest.approx(140.0 / 36.0) and int8["ceiling"] == pytest.approx(60.0 / 16.0)
    assert (a["target"], fp32["target"], int8["target"]) == (3.5, 3.7, 2.5)   # int8: issue 31's goal
    # issue 31: each model's ORT int8 against its own dense chain, naming the int8 the export picked
    assert mb_share["measured"] == pytest.approx(16.0 / 20.0) and "(static)" in mb_share["goal"]
    assert bb_share["measured"] == pytest.approx(42.0 / 60.0) and "(dynamic)" in bb_share["goal"]


def test_the_ort_profile_splits_the_time_outside_the_dense_layers_by_op_type(tmp_path):
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.fc, self.norm = torch.nn.Embedding(2000, 16), torch.nn.Linear(16, 16), torch.nn.LayerNorm(16)

        def forward(self, input_ids):
            return self.norm(torch.nn.functional.gelu(self.fc(self.emb(input_ids))))

    path = tmp_path / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), (torch.ones(1, C.SEQ, dtype=torch.long),), str(path), input_names=["input_ids"],
                      output_names=["out"], dynamo=False)
    prof = C.profile_files([("ort", str(path), "fp32")], 1, str(tmp_path))[0]
    assert prof["dense_nodes"] == 1 and prof["other_ms"] > 0 and prof["dense_ms"] > 0
    assert sum(prof["other_by_op_ms"].values()) == pytest.approx(prof["other_ms"])
    assert "Gather" in prof["other_by_op_ms"] and not {"MatMul", "Gemm"} & set(prof["other_by_op_ms"])
    assert list(prof["other_by_op_ms"].values()) == sorted(prof["other_by_op_ms"].values(), reverse=True)
