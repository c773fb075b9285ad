"""OpenVINO as a second runtime: the CPU's ISA features, IRs with parity, n/a rows, best-vs-best in the report."""

import json
import subprocess
import sys

import numpy as np
import pytest

from slimbert.export import openvino as ovx
from slimbert.export.bench import best_vs_best, bench, markdown, variants
from slimbert.export.isa import CpuInfo, cpu_info, parse_cpuinfo, why_not
from slimbert.export.onnx import PARITY_TEXTS, ExportError, export
from slimbert.export.runtime import unavailable

from test_export import model_dir  # noqa: F401 - the tiny student fixture

pytest.importorskip("openvino")
pytest.importorskip("nncf")

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16
"""


def test_parse_cpuinfo_reads_model_features_and_cpus():
    model, features, cpus = parse_cpuinfo(CPUINFO)
    assert model == "Intel(R) Xeon(R) Platinum 8480+" and cpus == 2
    assert features["AMX-INT8"] and features["AVX512-BF16"] and features["AVX512-VNNI"]
    assert not features["AVX-VNNI"]


def test_what_a_cpu_lacks_is_a_reason_not_an_error():
    old = CpuInfo("old", {"AVX2": True}, 4, ("FP32", "INT8"))
    assert why_not("openvino", "bf16", old) == "n/a: CPU lacks AMX/avx512_bf16"
    assert unavailable("openvino", "int8-bf16", old) == "n/a: CPU lacks AMX/avx512_bf16"
    assert why_not("openvino", "int8", old) is None and why_not("ort", "int8", old) is None
    assert "no bf16 kernels" in why_not("ort", "bf16", old)
    assert "not installed" in why_not("openvino", "fp32", CpuInfo("x", {}, 1, None))
    assert "no int8-static variant" in unavailable("openvino", "int8-static", old)
    # the latency report's timing process gets the CPU as JSON: the same CpuInfo comes back, capabilities or none
    for cpu in (old, CpuInfo("x", {}, 1, None)):
        back = CpuInfo.from_dict(json.loads(json.dumps(cpu.as_dict())))
        assert back == cpu and back.openvino_capabilities == cpu.openvino_capabilities
    with pytest.raises(ValueError, match="unknown runtime"):
        why_not("tflite", "fp32", old)
    here = cpu_info()  # this machine: OpenVINO installed, so its capabilities are read
    assert here.openvino_capabilities is not None and "FP32" in here.openvino_capabilities


@pytest.fixture(scope="module")
def ov_export(model_dir, tmp_path_factory):  # noqa: F811
    path, _ = model_dir
    out = tmp_path_factory.mktemp("ov") / "export"
    lines = []
    result = export(path, out, quantize="int8", measure=False, openvino=True, log=lines.append)
    return out, result, lines


def test_export_writes_irs_checked_against_pytorch(ov_export, model_dir, tokenizer):  # noqa: F811
    out, result, lines = ov_export
    for f in ("openvino_model.xml", "openvino_model.bin", "openvino_model_int8.xml", "model.onnx", "model_int8.onnx"):
        assert (out / f).is_file(), f
    p = result.parity["openvino-fp32"]
    assert p.ok(10.0) and p.argmax_agreement == 1.0
    assert result.parity["openvino-int8"].cosine > 0.99
    # the int8 IR really is quantised (NNCF inserted FakeQuantize nodes) and smaller
    assert "FakeQuantize" in (out / "openvino_model_int8.xml").read_text() or \
        (out / "openvino_model_int8.bin").stat().st_size < 0.5 * (out / "openvino_model.bin").stat().st_size
    meta = json.loads((out / "slimbert_export.json").read_text())
    assert {"fp32", "int8", "openvino-fp32", "openvino-int8"} <= set(meta["parity"])
    assert meta["openvino_int8"] == {"smooth_quant": True}   # SmoothQuant kept where the parity check passes
    # the IR gives PyTorch's logits on real text
    _, model = model_dir
    enc = tokenizer(["A short sentence.", "Another, somewhat longer sentence for the model."], padding=True,
                    return_tensors="np")
    feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    import torch

    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    got = ovx.OvRunner(out / ovx.IR, "fp32", threads=1).run(feed)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # compiled per static shape (latency measurement): the same logits, one compiled model per shape seen
    static = ovx.OvRunner(out / ovx.IR, "fp32", threads=1, static_shapes=True)
    np.testing.assert_allclose(static.run(feed)[0], ref, rtol=1e-4, atol=1e-5)
    one = {k: v[:1] for k, v in feed.items()}
    np.testing.assert_allclose(static.run(one)[0], ref[:1], rtol=1e-4, atol=1e-5)
    static.run(feed)
    assert len(static._by_shape) == 2


@pytest.mark.parametrize("plain_also_drifts", [False, True])
def test_an_int8_ir_that_smoothquant_shrinks_is_made_again_without_it(model_dir, tmp_path, monkeypatch,  # noqa: F811
                                                                      plain_also_drifts):
    # A fine-tuned NoNorm student's int8 IR came out with logits 10x too small (cosine 0.93) with NNCF's
    # SmoothQuant and cosine 0.999 without it: simulate the shrink, and check the export's fallback and record.
    path, _ = model_dir
    calls, real_quantize, real_run = [], ovx.quantize_int8, ovx.OvRunner.run

    def quantize(xml, dst, items, for_timing=False, smooth_quant=True):
        calls.append(smooth_quant)
        real_quantize(xml, dst, items, for_timing=for_timing, smooth_quant=smooth_quant)

    def run(self, feed):
        out = real_run(self, feed)
        shrunk = self.xml.name == ovx.IR_INT8 and (calls[-1] or plain_also_drifts)
        return [np.concatenate([o[..., :1] * 0.1, o[..., 1:]], -1) for o in out] if shrunk else out

    monkeypatch.setattr(ovx, "quantize_int8", quantize)
    monkeypatch.setattr(ovx.OvRunner, "run", run)
    out, lines = tmp_path / "export", []
    if plain_also_drifts:
        with pytest.raises(ExportError, match="drifts too far .* \\(with NNCF's SmoothQuant and without\\)"):
            export(path, out, quantize="int8", measure=False, openvino=True, log=lines.append)
        assert calls == [True, False] and not out.exists()
        return
    result = export(path, out, quantize="int8", measure=False, openvino=True, log=lines.append)
    assert calls == [True, False]
    assert any("with NNCF's SmoothQuant; quantising again without it" in line for line in lines)
    meta = json.loads((out / "slimbert_export.json").read_text())
    assert meta["openvino_int8"]["smooth_quant"] is False and meta["openvino_int8"]["with_smooth_quant_cosine"] < 0.98
    assert result.parity["openvino-int8"].cosine > 0.99


def test_an_ir_that_does_not_match_fails_the_export_and_leaves_nothing(model_dir, tmp_path, monkeypatch):  # noqa: F811
    path, _ = model_dir
    real_run = ovx.OvRunner.run
    monkeypatch.setattr(ovx.OvRunner, "run", lambda self, feed: [o + 0.01 for o in real_run(self, feed)])
    out = tmp_path / "export"
    with pytest.raises(ExportError, match="OpenVINO IR does not match PyTorch"):
        export(path, out, measure=False, openvino=True, log=lambda m: None)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_calibration_items_from_corpus_rows_or_text(tokenizer):
    ids = np.arange(12, dtype=np.int64).reshape(3, 4)
    rows = ovx.calibration_items(sequences={"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert len(rows) == 3 and rows[1]["input_ids"].tolist() == [[4, 5, 6, 7]]
    texts = ovx.calibration_items(tokenizer)
    assert len(texts) == ovx.CALIBRATION_SENTENCES and texts[0]["input_ids"].shape[0] == 1
    assert {"input_ids", "attention_mask", "token_type_ids"} == set(texts[0])


def test_default_calibration_is_fixed_built_in_text_apart_from_the_parity_texts():
    texts = ovx.calibration_texts()
    assert texts == ovx.calibration_texts() and ovx.calibration_texts(8) == texts[:8]   # the same on every export
    assert len(set(texts)) == ovx.CALIBRATION_SENTENCES and all(t.strip() for t in texts)
    assert not set(texts) & set(PARITY_TEXTS)   # the parity check does not grade its own calibration


def test_bench_times_every_runtime_and_precision_with_na_rows(ov_export):
    out, _, _ = ov_export
    no_bf16 = CpuInfo("old", {"AVX2": True}, 2, ("FP32", "INT8"))
    entries = variants("student", out, ["ort", "openvino"], ["fp32", "bf16", "int8"], no_bf16)
    # the same export timed as if it were BERT_BASE: the headline ratio is then about 1
    entries += variants("bert_base", out, ["openvino"], ["fp32"], no_bf16)
    report = bench(entries, [1], [16], threads=1, runs=3, warmup=1, cpu=no_bf16)
    timed = {(r["group"], r["runtime"], r["precision"]) for r in report["results"]}
    assert timed == {("student", "ort", "fp32"), ("student", "ort", "int8"), ("student", "openvino", "fp32"),
                     ("student", "openvino", "int8"), ("bert_base", "openvino", "fp32")}
    reasons = {(u["runtime"], u["precision"]): u["reason"] for u in report["unavailable"]}
    assert reasons[("openvino", "bf16")] == "n/a: CPU lacks AMX/avx512_bf16" and "no bf16" in reasons[("ort", "bf16")]
    head = report["best"][0]["headline"]
    assert head["student"] == "student" and head["reference"] == "bert_base" and head["speedup"] > 0
    md = markdown(report)
    assert "Student's fastest vs BERT_BASE's fastest" in md and "n/a: CPU lacks AMX/avx512_bf16" in md
    assert "CPU: old" in md and "lacks AVX512F" in md


def test_best_vs_best_picks_each_models_fastest_variant():
    def row(group, rt, prec, p50, acc=None):
        return {"model": f"{group} {rt} {prec}", "group": group, "runtime": rt, "precision": prec, "accuracy": acc,
                "batch_size": 1, "sequence_length": 128, "latency": {"p50": p50}}

    rows = [row("student", "ort", "fp32", 0.030), row("student", "openvino", "int8", 0.012, {"accuracy": 0.9}),
            row("bert_base", "ort", "fp32", 0.090), row("bert_base", "openvino", "int8", 0.018)]
    best = best_vs_best(rows, "student")[0]
    assert best["fastest"]["student"]["precision"] == "int8" and best["fastest"]["student"]["accuracy"]
    assert best["headline"]["speedup"] == pytest.approx(0.018 / 0.012)
    assert "headline" not in best_vs_best(rows[:2], "student")[0]


def test_best_vs_best_skips_variants_that_lose_accuracy():
    # static int8 passed the output-cosine parity check yet lost 6 points on SST-2: it must not be the headline
    def row(group, prec, p50, delta):
        acc = {"accuracy": 0.80 + delta, "accuracy_delta_vs_pytorch": delta}
        return {"model": f"{group} ort {prec}", "group": group, "runtime": "ort", "precision": prec, "accuracy": acc,
                "batch_size": 1, "sequence_length": 128, "latency": {"p50": p50}}

    rows = [row("student", "fp32", 0.030, 0.0), row("student", "int8", 0.020, -0.0099),
            row("student", "int8-static", 0.010, -0.0596), row("bert_base", "fp32", 0.090, 0.0),
            row("bert_base", "int8-static", 0.030, -0.355)]
    best = best_vs_best(rows, "student")[0]
    assert best["fastest"]["student"]["precision"] == "int8"            # -0.99 points: within the 1-point limit
    assert best["fastest"]["bert_base"]["precision"] == "fp32"
    assert best["headline"]["speedup"] == pytest.approx(0.090 / 0.020)
    assert [(x["model"], round(x["accuracy_drop"], 4)) for x in best["excluded"]] == [
        ("student ort int8-static", 0.0596), ("bert_base ort int8-static", 0.355)]
    anything = best_vs_best(rows, "student", max_accuracy_drop=None)[0]
    assert anything["fastest"]["student"]["precision"] == "int8-static" and anything["excluded"] == []
    report = {"config": {"threads": 2, "runs": 1, "warmup": 1, "alternating_blocks": 5, "max_accuracy_drop": 0.01},
              "versions": {"onnxruntime": "x", "machine": "m"}, "models": {}, "results": [], "best": [best]}
    md = markdown(report)
    assert "more than 1 point below" in md and "student ort int8-static (-5.96)" in md


@pytest.mark.e2e
def test_cli_export_openvino_and_bench_runtimes(model_dir, tmp_path):  # noqa: F811
    path, _ = model_dir
    cal = tmp_path / "cal.txt"
    cal.write_text("One sentence to calibrate on.\nAnd a second, a little longer, to calibrate on too.\n")
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "export", str(path), "--openvino", "--quantize",
                           "int8", "--calibration", str(cal), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "x" / "openvino_model_int8.xml").is_file()
    bad = subprocess.run([sys.executable, "-m", "slimbert.cli", "bench", str(tmp_path / "x"), "--runtime", "tflite"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--runtime" in bad.stderr and "Traceback" not in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "slimbert.cli", "export", str(path), "--onnx", "--calibration",
                          str(cal), "--out", str(tmp_path / "y")], capture_output=True, text=True)
    assert bad.returncode == 2 and "--calibration calibrates int8" in bad.stderr
    bench_run = subprocess.run([sys.executable, "-m", "slimbert.cli", "bench", str(tmp_path / "x"), "--runtime",
                                "ort,openvino", "--precision", "fp32,int8", "--seq", "16", "--runs", "3",
                                "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert bench_run.returncode == 0, bench_run.stderr[-2000:]
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert len(report["results"]) == 4 and report["cpu"]["features"]


def test_openvino_keys_need_the_onnx_export_and_the_ir(tmp_path, tiny_source, shared_data):
    from conftest import write_recipe

    from slimbert.recipe import RecipeError, load_recipe

    path = write_recipe(tmp_path, tiny_source, shared_data,
                        export={"onnx": False, "openvino": True})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert [p.path for p in e.value.problems] == ["export.openvino"]
    path = write_recipe(tmp_path, tiny_source, shared_data,
                        export={"onnx": True, "bench": {"runtimes": ["ort", "openvino"]}})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert [p.path for p in e.value.problems] == ["export.bench.runtimes"]
    path = write_recipe(tmp_path, tiny_source, shared_data, export={"onnx": True, "bench": {"precisions": ["int8"]}})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert "precisions only apply with runtimes" in e.value.problems[0].message
    # the accuracy limit reads the variants' dev metrics: without a finetune section it would do nothing
    path = write_recipe(tmp_path, tiny_source, shared_data,
                        export={"onnx": True, "bench": {"runtimes": ["ort"], "max_accuracy_drop": 0.02}})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert [p.path for p in e.value.problems] == ["export.bench.max_accuracy_drop"]


@pytest.mark.e2e
def test_run_exports_openvino_and_benches_every_runtime(tmp_path, tiny_source, shared_data):
    from conftest import write_recipe

    transfer = [{"kind": "joint", "steps": 3, "batch_size": 4, "optimizer": {"lr": 1e-3}}]
    finetune = {"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
                "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 64, "epochs": 1, "batch_size": 16,
                "lr": 1e-3, "seq_len": 32}
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer, finetune=finetune,
                          export={"onnx": True, "openvino": True, "quantize": "int8", "calibration_sequences": 4,
                                  "bench": {"seq": [16], "compare": ["bert_base"], "runtimes": ["ort", "openvino"],
                                            "precisions": ["fp32", "int8"]}})
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out" / "export"
    assert (out / "openvino_model_int8.xml").is_file()
    metrics = json.loads((out / "task_metrics.json").read_text())
    assert {"ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8"} <= set(metrics)
    # the fp32 IR classifies the dev set as PyTorch does
    assert metrics["openvino-fp32"]["accuracy"] == pytest.approx(metrics["pytorch"]["accuracy"], abs=1 / 872 + 1e-9)
    report = json.loads((out / "bench" / "report.json").read_text())
    groups = {(r["group"], r["runtime"], r["precision"]) for r in report["results"]}
    assert ("student", "openvino", "int8") in groups and ("bert_base", "openvino", "int8") in groups
    assert report["best"][0]["headline"]["reference"] == "bert_base"
    row = next(r for r in report["results"] if r["model"] == "student openvino fp32")
    assert row["accuracy"]["accuracy"] == metrics["openvino-fp32"]["accuracy"]
