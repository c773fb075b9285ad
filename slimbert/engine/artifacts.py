"""What a run leaves besides checkpoints: the student and the IB teacher as model directories, the teacher's
fidelity report, and each stage's loss curve."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.corpus import mask_tokens
from ..models import SlimBertModel
from ..models.encoders import save_as_encoder
from ..models.remote import save_pretrained_portable, save_pretrained_standalone
from ..teacher.build import IBTeacher, fidelity
from . import checkpoint as ckpt
from .cards import fidelity_rows, write_card
from .checkpoint import TrainingError
from .metrics import NOT_LOSSES, read_rows


def save_model(model, tokenizer, final: Path, as_source: tuple[str, bool] | None = None) -> Path:
    """Atomically, in a form stock transformers opens: with `as_source` (the source's model_type, whether it has
    an MLM head), a model cut from its source is saved as a stock model of that type when its shape is one; else
    stock MobileBERT when the shape is expressible, else slimbert's format with its own code (models/remote.py)."""
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).to("cpu")  # saved from the CPU; the caller's model stays put
    with ckpt.atomic_dir(final) as tmp:
        if as_source is None or not save_as_encoder(model, tmp, *as_source):
            save_pretrained_portable(model, tmp)
        tokenizer.save_pretrained(tmp)
    return final


def save_student(student, tokenizer, out: Path, as_source: tuple[str, bool] | None = None) -> Path:
    """<out>/student, with its model card (cards.py)."""
    path = save_model(student, tokenizer, out / "student", as_source)
    write_card(out, path, "student")
    return path


# ---- the IB teacher: its saved copy and its fidelity to the source ----------------------------------------------

def save_teacher(ib: IBTeacher, out: Path) -> Path:
    """The IB teacher as a slimbert model directory (loads with AutoModel), plus its readouts."""
    final = out / "teacher" / "model"
    with ckpt.atomic_dir(final) as tmp:
        save_pretrained_standalone(ib.model, tmp)  # opens without slimbert too
        save_file({k: v.contiguous() for k, v in ib.readout.state_dict().items()}, str(tmp / "readouts.safetensors"))
    return final


def load_teacher(ib: IBTeacher, out: Path) -> None:
    path = out / "teacher" / "model"
    if not (path / "readouts.safetensors").is_file():
        raise TrainingError(f"cannot resume: the adapted teacher is missing from {path}")
    ib.model.load_state_dict(SlimBertModel.from_pretrained(path).state_dict())
    ib.readout.load_state_dict(load_file(str(path / "readouts.safetensors")))


def teacher_fidelity(ib: IBTeacher, source_model, held_out: torch.Tensor, tokenizer, data, seed: int) -> dict:
    """Per-layer cosine and attention KL (and MLM loss/accuracy) of the IB teacher against its source, on the
    held-out sequences, masked with a fixed seed so that 'before' and 'after' compare the same tokens."""
    mlm = None
    if ib.mlm_head is not None:
        mlm = mask_tokens(held_out, tokenizer, data.mlm_probability, torch.Generator().manual_seed(seed + 7919),
                          data.whole_word_mask)
    ib.eval()
    return fidelity(source_model, ib, held_out, mlm)


def write_fidelity(out: Path, when: str, report: dict, held_out_sequences: int) -> dict:
    path = out / "teacher" / "fidelity.json"
    path.parent.mkdir(exist_ok=True)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[when] = report
    data["held_out_sequences"] = held_out_sequences
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    return data


def print_fidelity(console, data: dict) -> None:
    from rich.table import Table

    table = Table(title=f"IB teacher vs source on {data['held_out_sequences']} held-out sequences "
                        "(before / after adaptation)")
    header, rows = fidelity_rows(data)   # the same table as the model card's
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if i else "left")
    for row in rows:
        table.add_row(*row)
    console.print(table)


# ---- plots ----------------------------------------------------------------------------------------------------------

def plot_stage(out: Path, k: int, name: str) -> None:
    """stages/<k>-<kind>/loss.png: every loss term of stage k against the step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(out / "metrics.jsonl", k)
    if not rows:
        return
    steps = sorted(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = [key for key in rows[steps[0]] if key not in NOT_LOSSES]
    for key in keys:
        ax.plot(steps, [rows[s].get(key, float("nan")) for s in steps], label=key)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(name)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "stages" / f"{k}-{rows[steps[0]]['kind']}" / "loss.png", dpi=90)
    plt.close(fig)
