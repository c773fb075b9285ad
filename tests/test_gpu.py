"""CUDA checks: the same numbers on a GPU as on the CPU, and runs that move between them.

Marked `gpu` and skipped (with the reason) where torch sees no CUDA device, so CPU CI stays green;
benchmarks/training/gpu_check.sh runs them on a GPU machine. Tolerances: fp32 on CUDA with TF32 switched off matches
the CPU to float rounding; TF32 (fp32 matmuls, 10-bit mantissa products) and bf16 autocast (8-bit) within a
few percent of a loss.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import randomize_norms, write_recipe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device visible to torch")]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_fp32():
    """Parity tests compare true fp32; each run sets TF32 itself (engine/device.py)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


# ---- model-family parity on real text -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobilebert", "mobilebert_tiny", "mobilebert_released", "ib_bert_large"])
def test_model_family_matches_the_cpu_on_real_text(name, tokenizer, real_batch):
    from slimbert.models import SlimBertForMaskedLM, preset

    torch.manual_seed(0)
    layers = 4  # the presets' blocks at their real widths; four of them keep the test quick
    config = preset(name, vocab_size=len(tokenizer), num_hidden_layers=layers)
    model = randomize_norms(SlimBertForMaskedLM(config)).eval()
    with torch.no_grad():
        ref = model.slimbert(**real_batch, output_hidden_states=True, output_attention_scores=True)
        ref_logits = model(**real_batch).logits
        gpu = model.to(CUDA)
        batch = {k: v.to(CUDA) for k, v in real_batch.items()}
        out = gpu.slimbert(**batch, output_hidden_states=True, output_attention_scores=True)
        logits = gpu(**batch).logits
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = gpu(**batch).logits
    real = real_batch["attention_mask"].bool()
    for h_cpu, h_gpu in zip(ref.hidden_states, out.hidden_states):
        assert _rel(h_gpu.cpu()[real], h_cpu[real]) < 1e-4
    for s_cpu, s_gpu in zip(ref.attention_scores, out.attention_scores):
        finite = torch.isfinite(s_cpu)
        assert _rel(s_gpu.cpu()[finite], s_cpu[finite]) < 1e-4
    assert _rel(logits.cpu()[real], ref_logits[real]) < 1e-4
    cos = torch.nn.functional.cosine_similarity(bf16.float().cpu()[real], ref_logits[real], dim=-1)
    assert cos.min() > 0.99, f"bf16 autocast drifts: min token cosine {cos.min():.4f}"


def test_source_teacher_and_ib_teacher_built_on_cuda_match_the_cpu(tiny_source, tokenizer, shared_data):
    """The IB teacher's PCA and SVD steps on the GPU give the teacher the CPU gives (same fidelity)."""
    from transformers import AutoModelForMaskedLM

    from slimbert.data.corpus import pack, read_texts
    from slimbert.teacher.build import build_ib_teacher, fidelity

    ids = pack(read_texts([shared_data / "wikitext-2-raw" / "wiki.test.raw"]), tokenizer, 32, 80)
    reports = {}
    for device in ("cpu", "cuda"):
        source = AutoModelForMaskedLM.from_pretrained(tiny_source, attn_implementation="eager").to(device)
        teacher = build_ib_teacher(source, ids[:64], inter=48, heads=4, embedding_size=32)
        assert next(teacher.parameters()).device.type == device
        reports[device] = fidelity(source, teacher, ids[64:])
    for a, b in zip(reports["cpu"]["cosine"], reports["cuda"]["cosine"]):
        assert a == pytest.approx(b, abs=2e-3)
    for a, b in zip(reports["cpu"]["attention_kl"], reports["cuda"]["attention_kl"]):
        assert a == pytest.approx(b, rel=2e-2, abs=2e-3)


# ---- one step of every stage kind -------------------------------------------------------------------------------

IB = {"type": "inverted_bottleneck", "inter_size": 64, "num_heads": 4, "embedding_size": 32, "init_sequences": 16}
STUDENT = {"num_layers": 2, "inter_size": 64, "intra_size": 32, "num_heads": 4, "qkv_from": "shared_bottleneck",
           "ffn": {"size": 64, "stacked": 2}, "embedding": {"size": 32, "trigram": True}, "copy_embeddings": False}
KINDS = {
    "teacher_adaptation": {"kind": "teacher_adaptation", "steps": 2, "batch_size": 8},
    "progressive": {"kind": "progressive", "steps_per_layer": 1, "batch_size": 8},
    "joint": {"kind": "joint", "steps": 2, "batch_size": 8},
    "auxiliary": {"kind": "auxiliary", "steps": 2, "batch_size": 8, "alpha": 0.5},
    "pretrain_distill": {"kind": "pretrain_distill", "steps": 2, "batch_size": 8, "alpha": 0.5},
}


def _first_rows(tmp_path, tiny_source, shared_data, kind, device, precision):
    from slimbert.api import compress

    stage = {**KINDS[kind], "precision": precision, "optimizer": {"lr": 1e-3}}
    folder = tmp_path / f"{kind}-{device}-{precision}"
    folder.mkdir()
    # The student's stages learn from the source itself: an IB teacher's d-wide states depend on the signs its
    # PCA/SVD solvers pick, which differ between CPU and CUDA (its function in the source's width does not).
    teacher = IB if kind == "teacher_adaptation" else {"type": "source"}
    recipe = write_recipe(folder, tiny_source, shared_data, teacher=teacher, student=STUDENT, transfer=[stage])
    out = compress(recipe, out=folder / "run", device=device)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return rows[0]


@pytest.mark.e2e
@pytest.mark.parametrize("kind", list(KINDS))
def test_one_step_of_every_stage_kind_matches_the_cpu_loss(kind, tmp_path, tiny_source, shared_data):
    """Step 0's loss terms (before any update: the same weights, batch and masks) on CUDA in fp32 (TF32 matmuls)
    and bf16 autocast, against the CPU's fp32."""
    cpu = _first_rows(tmp_path, tiny_source, shared_data, kind, "cpu", "fp32")
    for precision, tol in (("fp32", 1e-2), ("bf16", 5e-2)):
        gpu = _first_rows(tmp_path, tiny_source, shared_data, kind, "cuda", precision)
        assert gpu["device"].startswith("cuda") and gpu["precision"] == precision
        terms = [k for k in cpu if k in ("loss", "feature_map", "feature_mean", "feature_var", "attention", "mlm",
                                        "hidden")]
        for term in terms:
            assert gpu[term] == pytest.approx(cpu[term], rel=tol, abs=tol * 1e-2 * abs(cpu["loss"])), \
                (kind, precision, term, cpu[term], gpu[term])


# ---- resume on CUDA, and on the CPU after CUDA ----------------------------------------------------------------

RESUME_STAGES = [
    {"kind": "progressive", "steps_per_layer": 6, "batch_size": 8, "warmup_steps": 1, "optimizer": {"lr": 2e-3},
     "checkpoint_every": 2},
    {"kind": "pretrain_distill", "steps": 6, "batch_size": 8, "alpha": 0.5, "optimizer": {"lr": 1e-3},
     "checkpoint_every": 2},
]
# Bit-identical CUDA runs need deterministic kernels (cuBLAS workspace, no atomics in index backward).
DETERMINISTIC = {**os.environ, "SLIMBERT_DETERMINISTIC": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "slimbert.cli", "run", *args], capture_output=True, text=True,
                          env=DETERMINISTIC, **kw)


def _killed_then_resumed(recipe, out, resume_on: str) -> None:
    """Run on CUDA, SIGKILL it once progressive checkpoint 4 is on disk, resume it on `resume_on`."""
    proc = subprocess.Popen([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(out),
                             "--device", "cuda"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=DETERMINISTIC)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not list(
            (out / "stages" / "0-progressive").glob("checkpoint-00000004")):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "student").exists(), "the run finished before it could be killed"
    done = _cli(str(recipe), "--out", str(out), "--resume", "--device", resume_on)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def cuda_reference(tmp_path_factory, tiny_source, shared_data):
    tmp = tmp_path_factory.mktemp("cuda-ref")
    recipe = write_recipe(tmp, tiny_source, shared_data, transfer=RESUME_STAGES)
    done = _cli(str(recipe), "--out", str(tmp / "ref"), "--device", "cuda")
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe, tmp / "ref"


@pytest.mark.e2e
def test_sigkill_then_resume_on_cuda_is_bit_identical(cuda_reference, tmp_path):
    recipe, reference = cuda_reference
    out = tmp_path / "out"
    _killed_then_resumed(recipe, out, "cuda")
    a = load_file(reference / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ after resume, e.g. {differ[:3]}"


@pytest.mark.e2e
def test_a_cuda_checkpoint_resumes_on_the_cpu(cuda_reference, tmp_path):
    recipe, reference = cuda_reference
    out = tmp_path / "out"
    _killed_then_resumed(recipe, out, "cpu")
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if l.strip()]
    assert {r["device"] for r in rows} == {"cuda:0", "cpu"}
    ref = {(r["stage"], r["step"]): r for r in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())}
    for r in rows:
        if r["device"] == "cpu":  # the resumed steps follow the CUDA run (TF32 there: not bit for bit)
            assert r["loss"] == pytest.approx(ref[(r["stage"], r["step"])]["loss"], rel=5e-2)
    a = load_file(reference / "student" / "model.safetensors")
    b = load_file(out / "student" / "model.safetensors")
    assert a.keys() == b.keys()
