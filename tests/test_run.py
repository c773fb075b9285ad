"""`slimbert run` end to end through the real CLI, on a random tiny teacher and real text, with resume."""

import json
import os
import random
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_losses_fall(finished):
    _, out = finished
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    pd = [r for r in rows if r["kind"] == "pretrain_distill"]
    first_layer = [r for r in rows if r["kind"] == "progressive" and r["layer"] == 1]
    assert pd[-1]["loss"] < pd[0]["loss"]
    assert first_layer[-1]["feature_map"] < first_layer[0]["feature_map"]
    assert all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.e2e
def test_refuses_existing_out_without_resume(finished):
    recipe, out = finished
    done = run_cli(str(recipe), "--out", str(out))
    assert done.returncode == 2 and "--resume" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.e2e
def test_bad_recipe_writes_nothing(tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data, layer_map=[1, 99])
    done = run_cli(str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "layer_map.1" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_sigkill_then_resume_is_bit_identical(finished, tmp_path):
    recipe, reference = finished
    out = tmp_path / "out"
    # A random kill point (rerun one with SLIMBERT_KILL_SEED): once a random checkpoint of either stage is on
    # disk, after a random delay, so the kill can land mid-step or in the middle of writing the next checkpoint.
    seed = int(os.environ.get("SLIMBERT_KILL_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    stage, step = rng.choice([("0-progressive", s) for s in (2, 4, 6, 8, 10)] + [("1-pretrain_distill", 2)])
    delay = rng.uniform(0, 0.2)
    why = f"SLIMBERT_KILL_SEED={seed}: kill after {stage} checkpoint {step} + {delay:.3f} s"

    def reached() -> bool:
        later = stage == "0-progressive" and (out / "stages" / "1-pretrain_distill").exists()
        return later or any(int(p.name.split("-")[1]) >= step for p in (out / "stages" / stage).glob("checkpoint-*"))

    proc = subprocess.Popen([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not reached() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "student").exists(), f"the run finished before it could be killed ({why})"
    done = run_cli(str(recipe), "--out", str(out), "--resume")
    assert done.returncode == 0, (why, done.stderr[-3000:])
    assert "stale lock" in done.stderr, why
    assert not list(out.rglob(".tmp*")), f"a partial write survived the resume ({why})"
    a = load_file(reference / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (k, why)


@pytest.mark.e2e
def test_resume_refuses_a_changed_recipe(finished, tmp_path):
    recipe, out = finished
    done = run_cli(str(recipe), "--out", str(out), "--resume", "--set", "transfer.1.steps=7")
    assert done.returncode == 2 and "recipe changed" in done.stderr and "transfer.1.steps" in done.stderr
