"""Helpers of benchmarks/training/gpu_check.sh.

    python benchmarks/training/gpu_helpers.py source DIR       # a random MiniLM-shaped BERT with the real tokenizer
    python benchmarks/training/gpu_helpers.py report OUT [MD]  # gpu.md and the summary table from the logs in OUT
    python benchmarks/training/gpu_helpers.py best-batch FILE KIND  # the batch of KIND's fastest row (tokens/s), or 256
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path


def source(path: str) -> None:
    """all-MiniLM-L6-v2's shape (6 layers, width 384, 12 heads, FFN 1536) with random weights and its real
    tokenizer: the quickstart's source without carrying 90 MB of weights to the GPU machine."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(os.environ["SLIMBERT_TOKENIZER"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"random MiniLM-shaped source in {path}")


def _tests(text: str) -> str:
    """pytest's final line, e.g. '12 passed, 1 failed in 80.1s'."""
    lines = [l.strip("= ") for l in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", l)]
    return lines[-1] if lines else "no result (timed out or did not start)"


def _pct(mfu: float | None) -> str:
    return "n/a" if mfu is None else f"{100 * mfu:.1f}%"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def report(out: str, md: str | None = None) -> None:
    out = Path(out)
    env = _read(out / "env.log")
    tests = _tests(_read(out / "tests.log"))
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", _read(out / "tests.log"), flags=re.M)
    qs = re.search(r"quickstart wall: ([\d.]+) s \(rc (\d+)\)", _read(out / "quickstart.log"))
    rows = _rows(out / "paper.jsonl")

    def best(kind):
        mine = [r for r in rows if r["kind"] == kind]
        return max(mine, key=lambda r: r["tokens_per_s"]) if mine else None

    lines = ["# GPU check", "", "Command: `bash benchmarks/training/gpu_check.sh` (the device tool runs it; see the script's "
             "header for the carry list).", "", "```", env.strip() or "(no env.log)", "```", "",
             f"**Tests marked gpu:** {tests}" + (f"; failed: {', '.join(failed)}" if failed else ""), "",
             f"**Quickstart on the device:** " + (f"{qs.group(1)} s wall (exit {qs.group(2)}), start-up and IB-teacher "
                                                  "build included" if qs else "no result"), "",
             "## Paper shape: IB-BERT_LARGE teacher + MobileBERT student, seq 128", "",
             "| step | batch | precision | compile | optimizer | step s | tokens/s | TFLOP/s | MFU | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['batch']} | {r['precision']} | {r['compile']} | {r['optimizer']} | "
                     f"{r['step_s']} | {r['tokens_per_s']:,} | {r['tflops']} | {_pct(r['mfu'])} | {r['max_mem_gib']} |")
    peaks = sorted({r["peak"] for r in rows})
    lines += ["", f"MFU against: {'; '.join(peaks) or 'n/a'}. FLOPs counted by slimbert.engine.throughput "
              "(teacher forward + 3x student forward over the layers run; MLM head on masked rows only).", "",
              "What bounds MFU in this shape (to read against the rows above): the student's matmuls are narrow "
              "(intra width 128, 4 heads of 32: little work per kernel launch and per byte moved); attention "
              "transfer needs the pre-softmax scores, so attention runs the explicit path (scores materialised) "
              "instead of a fused kernel; NoNorm and the bottleneck residuals are elementwise kernels of their "
              "own in eager mode (torch.compile fuses them: the compile row); the engine's optimizer keeps one "
              "parameter group per tensor for per-layer LR multipliers (the fused-AdamW row shows that cost).", ""]
    text = "\n".join(lines)
    (out / "gpu.md").write_text(text)
    if md:
        Path(md).write_text(text)
    # The summary table, printed last.
    summary = [("tests (gpu)", tests), ("quickstart", f"{qs.group(1)} s (rc {qs.group(2)})" if qs else "no result")]
    for kind in ("progressive", "pretrain_distill"):
        b = best(kind)
        summary.append((f"paper {kind}", "no result" if b is None else
                        f"batch {b['batch']}{' compiled' if b['compile'] else ''} {b['optimizer']}: "
                        f"{b['tokens_per_s']:,} tok/s, {b['tflops']} TFLOP/s, MFU {_pct(b['mfu'])}"))
    width = max(len(k) for k, _ in summary)
    print("\n" + "=" * 20 + " SUMMARY " + "=" * 20)
    for k, v in summary:
        print(f"{k:<{width}}  {v}")
    print(f"host {platform.node()}; report: {out / 'gpu.md'}")


def _rows(path: Path) -> list[dict]:
    rows = []
    for line in _read(path).splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if "step_s" in r]


def best_batch(path: str, kind: str) -> None:
    mine = [r for r in _rows(Path(path)) if r["kind"] == kind]
    print(max(mine, key=lambda r: r["tokens_per_s"])["batch"] if mine else 256)


if __name__ == "__main__":
    {"source": source, "report": report, "best-batch": best_batch}[sys.argv[1]](*sys.argv[2:])
