"""`slimbert run` end to end through the real CLI, on a random tiny teacher and real text, with resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM

from conftest import write_recipe


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "slimbert.cli", "run", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_source, shared_data):
    """One uninterrupted run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("run")
    recipe = write_recipe(tmp, tiny_source, shared_data)
    done = run_cli(str(recipe), "--out", str(tmp / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe, tmp / "out"


def test_run_directory_and_student(finished, tokenizer):
    _, out = finished
    for name in ("recipe.resolved.yaml", "plan.json", "metrics.jsonl", "stages/0-progressive/loss.png",
                 "stages/1-pretrain_distill/loss.png", "student/config.json", "student/model.safetensors",
                 "student/tokenizer.json"):
        assert (out / name).is_file(), name
    assert not (out / "lock").exists()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["student"]["shape"]["intra"] == 32
    # The student is a stock transformers MobileBERT (shared_bottleneck is expressible).
    student = AutoModelForMaskedLM.from_pretrained(out / "student")
    assert type(student).__name__ == "MobileBertForMaskedLM"
    ids = tokenizer(["the quick brown fox"], return_tensors="pt")
    assert student(**ids).logits.shape[-1] == len(tokenizer)


def test_losses_fall(finished):
    _, out = finished
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    pd = [r for r in rows if r["kind"] == "pretrain_distill"]
    first_layer = [r for r in rows if r["kind"] == "progressive" and r["layer"] == 1]
    assert pd[-1]["loss"] < pd[0]["loss"]
    assert first_layer[-1]["feature_map"] < first_layer[0]["feature_map"]
    assert all(r["tokens_per_s"] > 0 for r in rows)


def test_refuses_existing_out_without_resume(finished):
    recipe, out = finished
    done = run_cli(str(recipe), "--out", str(out))
    assert done.returncode == 2 and "--resume" in done.stderr and "Traceback" not in done.stderr


def test_bad_recipe_writes_nothing(tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data, layer_map=[1, 99])
    done = run_cli(str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "layer_map.1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_sigkill_then_resume_is_bit_identical(finished, tmp_path):
    recipe, reference = finished
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it hard once it is mid-way through the first stage (a checkpoint exists, the stage is not over).
    deadline = time.time() + 300
    target = out / "stages" / "0-progressive" / "checkpoint-00000004"
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "student").exists(), "the run finished before it could be killed"
    done = run_cli(str(recipe), "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stale lock" in done.stderr
    a = load_file(reference / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_changed_recipe(finished, tmp_path):
    recipe, out = finished
    done = run_cli(str(recipe), "--out", str(out), "--resume", "--set", "transfer.1.steps=7")
    assert done.returncode == 2 and "recipe changed" in done.stderr and "transfer.1.steps" in done.stderr
