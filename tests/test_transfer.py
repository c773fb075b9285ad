"""Transfer strategies end to end through the CLI (random tiny teacher, real text), and the NaN guard."""

import json
import subprocess
import sys

import pytest

from conftest import write_recipe


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "slimbert.cli", "run", *args], capture_output=True, text=True)


def rows_of(out, kind):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if json.loads(l)["kind"] == kind]


STAGES = {
    "joint": [{"kind": "joint", "steps": 25, "batch_size": 4, "warmup_steps": 2, "optimizer": {"lr": 2e-3}},
              {"kind": "pretrain_distill", "steps": 10, "batch_size": 4, "alpha": 0.5, "optimizer": {"lr": 1e-3}}],
    "auxiliary": [{"kind": "auxiliary", "steps": 25, "batch_size": 4, "warmup_steps": 2, "alpha": 0.5,
                   "optimizer": {"name": "lamb", "lr": 1e-2}}],
}


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", sorted(STAGES))
def test_strategy_runs_and_its_loss_falls(strategy, tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=STAGES[strategy])
    done = run_cli(str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path / "out", strategy)
    first, last = rows[0], rows[-1]
    assert last["feature_map"] < first["feature_map"], (first, last)
    assert last["loss"] < first["loss"], (first, last)
    if strategy == "auxiliary":
        assert {"feature_map", "attention", "mlm"} <= set(first)  # KT terms and pre-training distillation together
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()


@pytest.mark.e2e
def test_nan_stops_the_run_and_names_stage_step_and_term(tmp_path, tiny_source, shared_data):
    # An absurd learning rate blows the student up within a few steps.
    transfer = [{"kind": "joint", "steps": 30, "batch_size": 4, "optimizer": {"name": "sgd", "lr": 1e12},
                 "grad_clip": 0, "checkpoint_every": 1,
                 "losses": {"feature_map": 1, "feature_mean": 0, "feature_var": 0, "attention": 1}}]
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer)
    done = run_cli(str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    message = " ".join(done.stderr.split())
    assert "stage 0" in message and "step" in message and "loss term" in message, message
    assert "nan" in message.lower() or "inf" in message.lower()
    stage = tmp_path / "out" / "stages" / "0-joint"
    assert any(stage.glob("checkpoint-*")), "the last good checkpoint is kept"
    assert not (tmp_path / "out" / "student").exists()


DDP_STAGES = [
    {"kind": "progressive", "steps_per_layer": 5, "batch_size": 8, "warmup_steps": 1, "optimizer": {"lr": 2e-3}},
    {"kind": "pretrain_distill", "steps": 6, "batch_size": 8, "alpha": 0.5, "grad_accum": 2,
     "optimizer": {"lr": 1e-3}},
]


@pytest.mark.e2e
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, tiny_source, shared_data):
    """torchrun with 2 CPU processes (gloo, DDP): every logged loss matches the single-process run's."""
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=DDP_STAGES)
    one = run_cli(str(recipe), "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29517", "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-4000:]
    a = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in a] == [(r["stage"], r["step"]) for r in b]
    for x, y in zip(a, b):
        for term in ("loss", "feature_map", "attention", "mlm"):
            if term in x:
                assert y[term] == pytest.approx(x[term], rel=2e-3, abs=1e-5), (term, x, y)
    assert (tmp_path / "two" / "student" / "model.safetensors").is_file()
    assert not (tmp_path / "two" / "lock").exists()


@pytest.mark.e2e
def test_bf16_autocast_and_gradient_accumulation_run(tmp_path, tiny_source, shared_data):
    transfer = [{"kind": "joint", "steps": 20, "batch_size": 8, "grad_accum": 2, "precision": "bf16",
                 "optimizer": {"lr": 2e-3}}]
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer)
    done = run_cli(str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = rows_of(tmp_path / "out", "joint")
    assert rows[-1]["feature_map"] < rows[0]["feature_map"]
