"""What the CLI prints, as a user's terminal shows it: every table within 80 columns (the width of most terminals
and CI logs) with no number or name cut short, and no third-party progress bars or warnings unless --verbose."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

import slimbert.cli as cli

WIDTH = 80


@pytest.fixture
def terminal(monkeypatch):
    """The CLI's console as an 80-column terminal; returns what it printed."""
    console = Console(width=WIDTH, record=True, file=open(os.devnull, "w"))
    monkeypatch.setattr(cli, "console", console)
    return lambda: console.export_text()


def readable(text: str, *wanted: str) -> None:
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH, "\n".join(l for l in lines if len(l) > WIDTH)
    assert "…" not in text, text
    for w in wanted:  # each number and name whole, on one line
        assert any(w in line for line in lines), f"{w!r} is not on any line:\n{text}"


def mobilebert_plan() -> dict:
    """The paper preset's plan, with time estimates and a latency frontier as a measured plan of a recipe with a
    latency budget has them (large figures: many digits)."""
    from slimbert.recipe import build_plan, load_recipe, recipe_path

    p = build_plan(load_recipe(recipe_path("mobilebert")))
    for i, row in enumerate(p["stages"]):
        row["estimate"] = {"step_seconds": 12.3456 * (i + 1), "seconds": 9.87e7 * (i + 1), "tokens_per_s": 1234567.8,
                           "mfu": None if i == 1 else 0.4321, "gpus": 8, "seconds_on_gpus": 123456.7,
                           "gpus_basis": "8 x H100 SXM at 35% MFU (assumed), from counted FLOPs"}
    p["estimate_device"] = "cuda:0 (NVIDIA H200)"
    shape = {"layers": 24, "inter_size": 512, "intra_size": 128, "heads": 4, "stacked": 4, "ffn_size": 512,
             "qkv_from": "shared_bottleneck", "params": 25_359_104, "ratio": 0.405, "ms": 12.3456, "fits": True}
    p["balance"] = {"reason": "the largest shape within 15 ms at batch 1 x seq 128 on ort int8-bf16 "
                              "(2 threads)", "budget_ms": 15.0,
                    "spec": {"runtime": "ort", "precision": "int8-bf16", "batch": 1, "seq": 128, "threads": 2},
                    "frontier": [dict(shape, chosen=True), dict(shape, layers=12, params=13_002_112, chosen=False,
                                                                fits=False, ms=123.4567)],
                    "references": [{"name": "bert_base", "params": 109_482_240, "ms": 1234.5678, "runtime": "openvino",
                                    "precision": "int8-bf16"}]}
    return p


def test_plan_fits_80_columns(terminal):
    cli.print_plan(mobilebert_plan())
    readable(terminal(), "teacher_adaptation", "pretrain_distill", "500,000", "240,000", "294,217,472",
             "1,234,568", "43.2%", "12,346 ms", "25.36M", "123.46", "1234.57", "shared_bottleneck",
             "bert_base", "109.48M", "layers < l x0.3")


def test_bench_fits_80_columns(terminal):
    from slimbert.export.bench import terminal_view

    acc = {"accuracy": 0.912345, "accuracy_delta_vs_pytorch": -0.0012}
    results, models = [], {}
    for name in ("student", "student-int8-static", "bert_base-int8"):
        models[name] = {"file_mb": 123.45, "onnx_nodes": 1234, "initializer_params": 109_482_240,
                        "flops_per_sequence": 22.5e9}
        for rt, prec in (("ort", "fp32"), ("openvino", "int8-bf16")):
            lat = {"mean": 1.23456, "p50": 1.23456, "p90": 2.34567, "p95": 2.5, "p99": 3.45678, "stdev_": 12.3}
            results.append({"model": name, "runtime": rt, "precision": prec, "batch_size": 32, "sequence_length": 384,
                            "latency": lat, "throughput": {"value": 12345.6}, "p50_vs_student": 1.0, "accuracy": acc})
    report = {"config": {"threads": 2, "runs": 30, "alternating_blocks": 5, "warmup": 5, "max_accuracy_drop": 0.01},
              "versions": {"onnxruntime": "1.32.0", "openvino": "2026.0", "machine": "x86_64"},
              "models": models, "results": results, "best": [],
              "unavailable": [{"model": "student", "runtime": "openvino", "precision": "int8-static",
                               "reason": "OpenVINO has no static int8 variant of this export"}]}
    cli.console.print(terminal_view(report))  # what `slimbert bench` and a run's export step print
    readable(terminal(), "student-int8-static", "openvino", "int8-bf16", "32x384", "1,234.6", "3,456.8",
             "12,345.6", "109,482,240", "22.50", "123.45", "accuracy 0.9123")


@pytest.mark.parametrize("width", [50, 40])
def test_a_table_too_wide_for_the_terminal_is_stacked_not_cut(monkeypatch, width):
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    monkeypatch.setattr(cli, "console", console)
    cli.print_plan(mobilebert_plan())
    text = console.export_text()
    assert max(map(len, text.splitlines())) <= width and "…" not in text
    assert re.search(r"^steps\s+500,000\s*$", text, re.M), text  # the stages, one `column  value` line each


def test_a_table_without_rows_still_prints_its_header(terminal):
    from rich.table import Table

    t = Table(title="latency")
    for col in ("model", "p50 ms"):
        t.add_column(col)
    cli.show(t)  # every variant unavailable: a report with no timed rows
    readable(terminal(), "latency", "model")


def test_other_commands_fit_80_columns(terminal, shared_data):
    runner = CliRunner()
    for args in (["count", "mobilebert"], ["count", "bert_base", "--seq", "512"], ["recipes", "list"],
                 ["validate", "quickstart"]):
        done = runner.invoke(cli.app, args)
        assert done.exit_code == 0, (args, done.output)
    readable(terminal(), "25,359,104", "attention/FFN parameter ratio", "mobilebert", "quickstart")


@pytest.mark.e2e
def test_plan_at_80_columns_through_the_cli(shared_data):
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "plan", "quickstart", "--no-measure"],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": str(WIDTH)}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    readable(done.stdout, "teacher_adaptation", "embedding_distill", "16,685,184")


NOISE = ("Loading weights", "Writing model shards", "LOAD REPORT", "pre-processing before quantization", "https://",
         "it/s]", "WARNING:")


@pytest.mark.e2e
def test_third_party_noise_only_with_verbose(tmp_path, tiny_source, shared_data):
    """A run that loads a model with transformers, saves one and exports it to int8 ONNX: without --verbose its
    output is slimbert's own; with it, the libraries' bars and warnings are back."""
    from conftest import write_recipe

    recipe = write_recipe(tmp_path, tiny_source, shared_data, export={"onnx": True, "quantize": "int8"},
                          transfer=[{"kind": "joint", "steps": 2, "batch_size": 4, "optimizer": {"lr": 1e-3}}])
    output = {}
    for flags in ((), ("--verbose",)):
        done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out",
                               str(tmp_path / f"out{len(flags)}"), *flags], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        output[flags] = done.stdout + done.stderr
    quiet, verbose = output[()], output[("--verbose",)]
    assert "parity int8" in quiet and "done: student" in quiet  # slimbert's own lines stay
    assert not [n for n in NOISE if n in quiet], quiet
    assert any(n in verbose for n in NOISE[:4]), verbose  # which of them a library prints is its own business
