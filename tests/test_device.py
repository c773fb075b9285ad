"""Devices, precision, checkpoints that travel between devices, and throughput figures (CPU-side checks; the
CUDA ones are in test_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from slimbert.engine import checkpoint as ckpt
from slimbert.engine.throughput import (Peak, StepShape, forward_flops, matmul_precision, peak_for, rates,
                                        stage_shape, step_flops)
from slimbert.models import preset
from slimbert.models.counting import count_config
from slimbert.recipe.hardware import Facts, device_problems, precision_problems, resolve_device, resolve_precision

NO_GPU, ONE_GPU, TWO_GPUS = Facts(0, False), Facts(1, True), Facts(2, True)


def test_cuda_without_cuda_names_the_key():
    for asked in ("cuda", "cuda:0"):
        [p] = device_problems(asked, NO_GPU, key="--device")
        assert p.path == "--device" and "no CUDA device" in p.message
    [p] = device_problems("cuda:2", TWO_GPUS)
    assert p.path == "device" and "only 2 CUDA device(s)" in p.message
    assert device_problems("gpu", TWO_GPUS)[0].message.startswith("'gpu' is not a device")
    assert device_problems("auto", NO_GPU) == device_problems("cpu", NO_GPU) == []
    assert device_problems("cuda:1", TWO_GPUS) == []


def test_auto_means_the_gpu_when_there_is_one_and_torchrun_picks_local_rank():
    assert resolve_device("auto", NO_GPU) == "cpu"
    assert resolve_device("auto", ONE_GPU) == "cuda:0"
    assert resolve_device("cuda:1", TWO_GPUS) == "cuda:1"
    assert resolve_device("cpu", TWO_GPUS, local_rank=1) == "cpu"
    assert resolve_device("auto", TWO_GPUS, local_rank=1) == "cuda:1"


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_fp32_elsewhere():
    assert resolve_precision("auto", "cuda:0", ONE_GPU) == "bf16"
    assert resolve_precision("auto", "cuda:0", Facts(1, False)) == "fp32"  # e.g. a V100 or T4
    assert resolve_precision("auto", "cpu", ONE_GPU) == "fp32"
    assert resolve_precision("bf16", "cpu", NO_GPU) == "bf16"  # asked for: CPU autocast, as before
    assert resolve_precision("fp32", "cuda:0", ONE_GPU) == "fp32"
    [p] = precision_problems(["auto", "bf16"], "cuda:0", Facts(1, False))
    assert p.path == "transfer.1.precision"
    assert precision_problems(["bf16"], "cpu", NO_GPU) == []


def test_select_refuses_cuda_here_with_a_recipe_error():
    from slimbert.engine.device import select
    from slimbert.recipe.errors import RecipeError

    assert select("auto", f=NO_GPU) == torch.device("cpu")
    with pytest.raises(RecipeError) as e:
        select("cuda", key="--device", f=NO_GPU)
    assert e.value.problems[0].path == "--device"


def test_a_checkpoint_holds_cpu_tensors_and_loads_on_the_cpu(tmp_path, monkeypatch):
    """What a GPU run writes: the optimizer state is moved to the CPU, and loading maps to the CPU."""
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    seen = {}
    real_load = torch.load

    def spy(*a, **kw):
        seen.update(kw)
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    path = ckpt.save(tmp_path, 1, model.state_dict(), opt.state_dict(), {"stage": 0, "kind": "joint", "total": 2})
    state, tensors, opt_state = ckpt.load(path)
    assert seen["map_location"] == "cpu" and seen["weights_only"] is True
    assert all(t.device.type == "cpu" for t in tensors.values())
    moments = [v for s in opt_state["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert moments and all(m.device.type == "cpu" for m in moments)
    again = torch.optim.AdamW(model.parameters(), lr=1e-2)
    again.load_state_dict(opt_state)  # the optimizer moves its state onto its parameters' device
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_to_cpu_keeps_structure():
    nested = {"a": torch.ones(2), "b": [torch.zeros(1), 3], "c": (torch.ones(1),), "d": "x"}
    out = ckpt.to_cpu(nested)
    assert out["b"][1] == 3 and isinstance(out["c"], tuple) and out["d"] == "x"
    assert torch.equal(out["a"], nested["a"])


# ---- FLOPs and MFU ----------------------------------------------------------------------------------------------

def test_forward_flops_are_the_paper_counts():
    s, t = preset("mobilebert"), preset("ib_bert_large")
    assert forward_flops(s, 128) == count_config(s, 128).total_flops - count_config(s, 128).flops["pooler"]
    # one layer of 24 plus the embedding
    c = count_config(s, 128)
    one = c.flops["embedding"] + (c.flops["bottleneck"] + c.flops["attention"] + c.flops["ffn"]) / 24
    assert forward_flops(s, 128, layers=1) == pytest.approx(one)
    # the MLM head on 15% of rows costs 15% of the full head
    full = count_config(s, 128, head="mlm").flops["head"]
    assert forward_flops(s, 128, head_rows=0.15 * 128) - forward_flops(s, 128) == pytest.approx(0.15 * full)
    assert forward_flops(t, 128) > 10 * forward_flops(s, 128)


def stage(**kw):
    """A validated stage, through the recipe schema (its defaults are a recipe's)."""
    from pydantic import TypeAdapter

    from slimbert.recipe.schema import Stage

    return TypeAdapter(Stage).validate_python({"steps" if kw["kind"] != "progressive" else "steps_per_layer": 1, **kw})


def test_step_flops_count_student_three_times_and_teacher_once():
    s, t = preset("mobilebert"), preset("ib_bert_large")
    progressive = stage(kind="progressive")
    shape = stage_shape(progressive, list(range(1, 25)), 0.15, 128, layer=24)
    assert shape == StepShape(24, 24)
    assert step_flops(shape, s, t, 128, 2) == pytest.approx(2 * (3 * forward_flops(s, 128) + forward_flops(t, 128)))
    # a progressive step at layer 1 runs one block of each
    low = step_flops(stage_shape(progressive, list(range(1, 25)), 0.15, 128, layer=1), s, t, 128, 1)
    assert low == pytest.approx(3 * forward_flops(s, 128, 1) + forward_flops(t, 128, 1))
    # pre-training distillation with hard labels only runs no teacher
    hard = stage_shape(stage(kind="pretrain_distill", alpha=1.0), [1], 0.15, 128)
    assert step_flops(hard, s, t, 128, 1) == pytest.approx(3 * forward_flops(s, 128, None, 0.15 * 128))
    # with soft targets the whole teacher and its MLM head run; without a head on the teacher it cannot
    soft = stage(kind="pretrain_distill", alpha=0.5)
    assert stage_shape(soft, [1], 0.15, 128) == StepShape(None, None, 0.15 * 128, 0.15 * 128)
    assert stage_shape(soft, [1], 0.15, 128, teacher_mlm=False) == StepShape(None, 0, 0.15 * 128, 0.0)
    adapt = stage_shape(stage(kind="teacher_adaptation", mlm=0), [1], 0.15, 128)
    assert stage_shape(stage(kind="teacher_adaptation", mlm=1), [1], 0.15, 128).teacher_head_rows == 0.15 * 128
    src = preset("bert_large")
    assert step_flops(adapt, s, t, 128, 1, source=src) == pytest.approx(3 * forward_flops(t, 128)
                                                                       + forward_flops(src, 128))


def test_every_stage_kind_has_a_step_shape():
    # MFU is logged for every stage: each kind's strategy says what its step runs (transfer/strategies.py)
    from slimbert.recipe.schema import STAGE_KINDS

    for kind in STAGE_KINDS:
        assert isinstance(stage_shape(stage(kind=kind), [1, 2], 0.15, 128, layer=1), StepShape), kind
    s, t = preset("mobilebert", num_hidden_layers=2), preset("ib_bert_large", num_hidden_layers=2)
    embed = stage_shape(stage(kind="embedding_distill"), [1, 2], 0.15, 128)
    assert step_flops(embed, s, t, 128, 1) == pytest.approx(3 * forward_flops(s, 128) + forward_flops(t, 128))


def test_peaks_and_mfu():
    assert peak_for("NVIDIA H200", "bf16") == 989e12
    assert peak_for("NVIDIA H100 PCIe", "bf16") == 756e12
    assert peak_for("NVIDIA A100-SXM4-80GB", "tf32") == 156e12
    assert peak_for("Tesla V100-SXM2-16GB", "bf16") is None
    assert peak_for("Some New GPU", "bf16") is None
    assert matmul_precision("cuda", "fp32") == "tf32" and matmul_precision("cpu", "fp32") == "fp32"
    r = rates(flops=2e12, tokens=4096, seconds=0.5, peak=Peak(1e13, "test"), devices=2)
    assert r["tokens_per_s"] == 8192 and r["tflops"] == 4 and r["mfu"] == pytest.approx(0.2)
    assert rates(1e12, 10, 1.0, Peak(None, "n/a"))["mfu"] is None


# ---- launchers ----------------------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_accelerate_launch_on_two_cpu_processes_matches_one(tmp_path, tiny_source, shared_data):
    """`accelerate launch` sets the same variables as torchrun (WORLD_SIZE, RANK, LOCAL_RANK): the same losses."""
    import json
    import subprocess
    import sys

    from conftest import write_recipe

    pytest.importorskip("accelerate")
    stages = [{"kind": "progressive", "steps_per_layer": 3, "batch_size": 8, "optimizer": {"lr": 2e-3}},
              {"kind": "pretrain_distill", "steps": 3, "batch_size": 8, "alpha": 0.5, "optimizer": {"lr": 1e-3}}]
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=stages)

    def run(*launcher, out):
        done = subprocess.run([sys.executable, *launcher, "-m", "slimbert.cli", "run", str(recipe), "--out",
                               str(tmp_path / out), "--device", "cpu"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-4000:]
        return [json.loads(l) for l in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]

    one = run(out="one")
    two = run("-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29531", out="two")
    assert [(r["stage"], r["step"]) for r in one] == [(r["stage"], r["step"]) for r in two]
    for x, y in zip(one, two):
        assert y["loss"] == pytest.approx(x["loss"], rel=2e-3, abs=1e-5), (x, y)


# ---- the command line ---------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("how", ["--device", "device"])
def test_cuda_without_cuda_is_exit_2_naming_the_key_and_writes_nothing(how, tmp_path, tiny_source, shared_data):
    import subprocess
    import sys

    from conftest import write_recipe

    extra = {"device": "cuda"} if how == "device" else {}
    recipe = write_recipe(tmp_path, tiny_source, shared_data, **extra)
    flag = ["--device", "cuda:0"] if how == "--device" else []
    for command in (["run", str(recipe), "--out", str(tmp_path / "out")], ["plan", str(recipe)]):
        done = subprocess.run([sys.executable, "-m", "slimbert.cli", *command, *flag], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"{how}:" in done.stderr and "no CUDA device" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.e2e
def test_metrics_carry_tokens_per_second_and_mfu(tmp_path, tiny_source, shared_data):
    import json
    import subprocess
    import sys

    from conftest import write_recipe

    recipe = write_recipe(tmp_path, tiny_source, shared_data)
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out"),
                           "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device: cpu" in done.stderr
    rows = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"progressive", "pretrain_distill"}
    for r in rows:
        assert r["device"] == "cpu" and r["precision"] == "fp32" and r["processes"] == 1
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0 and 0 < r["mfu"] < 1, r
        assert r["peak"].startswith("measured")
    # The counted FLOPs behind them: a progressive step at layer 2 costs more than one at layer 1.
    prog = [r for r in rows if r["kind"] == "progressive"]
    per_token = {r["layer"]: r["tflops"] / r["tokens_per_s"] for r in prog}
    assert per_token[2] > per_token[1]
    assert (tmp_path / "out" / "stages" / "0-progressive" / "loss.png").is_file()
