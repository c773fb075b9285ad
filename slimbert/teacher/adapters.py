"""The Teacher protocol and its adapters: what knowledge transfer reads from a teacher.

A teacher, given a batch, returns per-layer feature maps (embedding output first), per-layer attention
(pre-softmax scores, or probabilities), and optionally MLM logits. It may stop after `num_layers` blocks:
progressive transfer of layer l never needs more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TeacherOutput:
    hidden_states: list[torch.Tensor]             # L' + 1 tensors, B x T x H_t
    attentions: list[torch.Tensor] | None         # L' tensors, B x A x T x T
    attentions_are_probs: bool                    # True: softmax probabilities; False: masked scores
    mlm_logits: torch.Tensor | None = None


@runtime_checkable
class Teacher(Protocol):
    num_layers: int
    num_heads: int
    hidden_size: int
    has_mlm_head: bool

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 num_layers: int | None = None, want_mlm: bool = False) -> TeacherOutput: ...


def _layer_list(model: nn.Module) -> tuple[nn.Module, str]:
    for owner_path in ("encoder", "transformer"):
        owner = getattr(model, owner_path, None)
        if owner is not None and isinstance(getattr(owner, "layer", None), nn.ModuleList):
            return owner, "layer"
    raise ValueError(f"{type(model).__name__}: no encoder.layer / transformer.layer list found")


class HFEncoderTeacher:
    """A transformers encoder of the BERT, RoBERTa, ELECTRA or DistilBERT family, frozen, in eval mode."""

    def __init__(self, path, with_mlm: bool = False):
        from transformers import AutoModel, AutoModelForMaskedLM

        cls = AutoModelForMaskedLM if with_mlm else AutoModel
        model = cls.from_pretrained(str(path), attn_implementation="eager")
        model.eval().requires_grad_(False)
        self.model = model
        self.body = model.base_model
        self.owner, self.attr = _layer_list(self.body)
        c = model.config
        self.num_layers = len(getattr(self.owner, self.attr))
        self.num_heads = getattr(c, "num_attention_heads", getattr(c, "n_heads", None))
        self.hidden_size = getattr(c, "hidden_size", getattr(c, "dim", None))
        self.has_mlm_head = with_mlm
        # transformers installs its output recorders on the first forward, on the layers present then:
        # run once with every layer before any truncated call.
        with torch.no_grad():
            self.model(input_ids=torch.ones(1, 2, dtype=torch.long), output_hidden_states=True,
                       output_attentions=True)

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False) -> TeacherOutput:
        full = getattr(self.owner, self.attr)
        if num_layers is not None and num_layers < len(full) and not want_mlm:
            setattr(self.owner, self.attr, full[:num_layers])  # run only the layers transfer needs
        try:
            model = self.model if want_mlm else self.body
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        output_attentions=True, return_dict=True)
        finally:
            setattr(self.owner, self.attr, full)
        return TeacherOutput(hidden_states=list(out.hidden_states), attentions=list(out.attentions),
                             attentions_are_probs=True,
                             mlm_logits=out.logits if want_mlm and hasattr(out, "logits") else None)
