"""Throughput of the paper's shape on this device: IB-BERT_LARGE teacher (294M) + MobileBERT student (25.3M).

Two steps, as the engine runs them, on models built from configs (random weights: speed does not depend on
them) and random token ids drawn on the CPU and copied over like the engine's batches:
  progressive @ layer 24: student forward + backward through 24 blocks, the teacher forward (no grad) through
      24 blocks, the four layer-wise terms of layer 24 (FMT, mean, var, attention KL) in fp32, clip, optimizer;
  pretrain_distill: student forward + backward, the MLM head on the masked 15% of rows only, the teacher's
      MLM distribution on those rows (alpha 0.5), clip, optimizer.
For each batch size in turn (larger until memory runs out or a step exceeds --max-step-s): the median step time
of --steps timed steps after warm-up, tokens/s, achieved TFLOP/s and MFU, counted with
slimbert.engine.throughput (the FLOPs of models/counting.py). One JSON line per measurement on stdout and in --out.

    python benchmarks/training/gpu_paper_shape.py --out paper.jsonl                    # eager, bf16 autocast
    python benchmarks/training/gpu_paper_shape.py --compile --out paper-compiled.jsonl # torch.compile of both models
    python benchmarks/training/gpu_paper_shape.py --tiny --steps 2                     # a CPU smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from pydantic import TypeAdapter

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from slimbert.engine.device import autocast, configure, describe, synchronize, to_device  # noqa: E402
from slimbert.engine.throughput import device_peak, rates, stage_shape, step_flops  # noqa: E402
from slimbert.models import SlimBertForMaskedLM, preset  # noqa: E402
from slimbert.recipe.schema import Stage  # noqa: E402
from slimbert.teacher.adapters import IBTeacherAdapter  # noqa: E402
from slimbert.teacher.build import IBTeacher, ib_teacher_config  # noqa: E402
from slimbert.transfer import losses as L  # noqa: E402


def models(tiny: bool, device: torch.device):
    layers = 2 if tiny else 24
    student = SlimBertForMaskedLM(preset("mobilebert", num_hidden_layers=layers)).to(device).eval()
    config = ib_teacher_config(vocab_size=30522, source_width=256 if tiny else 1024, num_layers=layers,
                               intermediate_size=512 if tiny else 4096, hidden_act="gelu", type_vocab_size=2,
                               max_positions=512, layer_norm_eps=1e-12, inter=512, heads=4, embedding_size=128,
                               trigram=True)
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertOnlyMLMHead

    head = BertOnlyMLMHead(BertConfig(hidden_size=config.intra_bottleneck_size, vocab_size=30522))  # the source's
    teacher = IBTeacher(config, config.intra_bottleneck_size, head).to(device).eval().requires_grad_(False)
    return student, teacher


def optimizer(student, name: str):
    """The engine's optimizer (one parameter group per tensor, LAMB as the preset) or a fused AdamW over two groups."""
    params = dict(student.named_parameters())
    if name == "fused":
        decay = [p for p in params.values() if p.dim() > 1]
        rest = [p for p in params.values() if p.dim() <= 1]
        fused = next(params.values().__iter__()).is_cuda
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                 lr=1e-4, fused=fused)
    groups = [{"params": [p], "name": n, "weight_decay": 0.01 if p.dim() > 1 else 0.0} for n, p in params.items()]
    try:
        from pytorch_optimizer import Lamb

        return Lamb(groups, lr=1.5e-3, weight_decouple=True)
    except ImportError:
        return torch.optim.AdamW(groups, lr=1.5e-3)


def step_fn(kind, student, opt, device, precision, forward_s, forward_t):
    layer = student.config.num_hidden_layers

    def step(batch_cpu: torch.Tensor, keep_cpu: torch.Tensor):
        batch = to_device(batch_cpu, device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            if kind == "progressive":
                s = forward_s(batch, output_hidden_states=True, output_attention_scores=True, num_layers=layer)
                with torch.no_grad():
                    t = forward_t(batch, num_layers=layer)
                hs, ht = s.hidden_states[layer].float(), t.hidden_states[layer].float()
                loss = (100 * L.feature_map_loss(ht, hs) + 5000 * L.feature_mean_loss(ht, hs)
                        + 5 * L.feature_var_loss(ht, hs)
                        + L.attention_loss(t.attentions[layer - 1].float(), s.attention_scores[layer - 1].float()))
            else:
                keep = to_device(keep_cpu, device)
                logits = student.cls(forward_s(batch).last_hidden_state[keep])
                with torch.no_grad():
                    t_logits = forward_t(batch, want_mlm=True).mlm_logits[keep]
                loss = L.pretrain_distill_loss(logits, batch[keep], t_logits, 0.5)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in student.parameters() if p.grad is not None], 1.0)
        opt.step()
        return loss

    return step


def measure(args, kind: str, batch: int, student, teacher, device, precision, compiled) -> dict:
    opt = optimizer(student, args.optimizer)
    step = step_fn(kind, student, opt, device, precision, *compiled)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (batch, args.seq), generator=g)
    keep = torch.rand(batch, args.seq, generator=g) < 0.15
    for _ in range(args.warmup):
        step(ids, keep)
    synchronize(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step(ids, keep)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    per = statistics.median(times)
    layers = student.config.num_hidden_layers
    fields = {"steps_per_layer": 1} if kind == "progressive" else {"steps": 1}
    if kind in ("pretrain_distill", "auxiliary"):
        fields["alpha"] = 0.5  # soft targets: the teacher's MLM head runs
    st = TypeAdapter(Stage).validate_python({"kind": kind, **fields})
    shape = stage_shape(st, list(range(1, layers + 1)), 0.15, args.seq, layer=layers)
    flops = step_flops(shape, student.config, teacher.config, args.seq, batch)
    peak = device_peak(device, precision)
    r = rates(flops, batch * args.seq, per, peak)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"kind": kind, "batch": batch, "seq": args.seq, "precision": precision, "compile": args.compile,
            "optimizer": args.optimizer, "step_s": round(per, 4), "tokens_per_s": round(r["tokens_per_s"]),
            "tflops": round(r["tflops"], 1), "mfu": None if r["mfu"] is None else round(r["mfu"], 4),
            "peak": peak.source, "max_mem_gib": None if mem is None else round(mem, 1), "device": describe(device),
            "loss_finite": bool(torch.isfinite(loss))}  # random weights: speed holds either way


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--kinds", default="progressive,pretrain_distill")
    ap.add_argument("--batches", default="256,512,1024,2048,4096", help="tried in order, up to the first OOM")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--max-step-s", type=float, default=4.0, help="stop growing the batch past this step time")
    ap.add_argument("--precision", default=None, help="bf16 or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--optimizer", default="engine", choices=["engine", "fused"])
    ap.add_argument("--compile", action="store_true", help="torch.compile both models' forward")
    ap.add_argument("--tiny", action="store_true", help="2 layers and small widths (a smoke test)")
    ap.add_argument("--out", default=None, help="append JSON lines here")
    args = ap.parse_args()
    device = torch.device(args.device)
    configure(device)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    torch.manual_seed(0)
    student, teacher = models(args.tiny, device)
    forward_s, forward_t = student.slimbert, IBTeacherAdapter(teacher)
    if args.compile:
        forward_s = torch.compile(student.slimbert)
        compiled_teacher = torch.compile(teacher)
        forward_t = IBTeacherAdapter(teacher)
        forward_t.ib = compiled_teacher
    print(f"device {describe(device)}, precision {precision}, compile {args.compile}, optimizer {args.optimizer}",
          flush=True)
    for kind in args.kinds.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                row = measure(args, kind, batch, student, teacher, device, precision, (forward_s, forward_t))
            except torch.OutOfMemoryError:
                print(json.dumps({"kind": kind, "batch": batch, "oom": True}), flush=True)
                break
            finally:
                student.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
            if row["step_s"] > args.max_step_s:
                break


if __name__ == "__main__":
    main()
