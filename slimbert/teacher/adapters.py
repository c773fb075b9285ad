"""The Teacher protocol and its adapters: what knowledge transfer reads from a teacher.

A teacher, given a batch, returns per-layer feature maps (embedding output first), per-layer attention
(pre-softmax scores, or probabilities), and optionally MLM logits. It may stop after `num_layers` blocks:
progressive transfer of layer l never needs more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .build import IBTeacher, mlm_head_of


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


def _on(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
    """The inputs on the model's device (a no-op when they are there already)."""
    device = next(model.parameters()).device
    return input_ids.to(device), None if attention_mask is None else attention_mask.to(device)


def to_device(teacher, device: torch.device):
    """Move a teacher's weights to `device`: slimbert's adapters and any teacher with a `.to`; a teacher
    without one is left where its owner put it (its inputs follow it, see _on)."""
    mover = getattr(teacher, "to", None)
    if callable(mover):
        mover(device)
    return teacher


class TeacherError(ValueError):
    """A teacher slimbert cannot read: a missing module path, an unexpected shape, no attention."""


class HFEncoderTeacher:
    """A transformers encoder of the BERT, RoBERTa, ELECTRA or DistilBERT family (a model, or a directory or
    hub id to load), frozen, in eval mode. Attention comes as probabilities from the eager implementation."""

    def __init__(self, model, with_mlm: bool = False):
        if isinstance(model, (str, Path)):
            from transformers import AutoModel, AutoModelForMaskedLM

            cls = AutoModelForMaskedLM if with_mlm else AutoModel
            model = cls.from_pretrained(str(model), attn_implementation="eager", use_safetensors=True)
        else:
            with_mlm = hasattr(model, "base_model") and model.base_model is not model and _has_mlm_logits(model)
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")  # sdpa returns no attention probabilities
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

    def to(self, device: torch.device) -> "HFEncoderTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False) -> TeacherOutput:
        input_ids, attention_mask = _on(self.model, input_ids, attention_mask)
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


def _has_mlm_logits(model) -> bool:
    return mlm_head_of(model) is not None


class IBTeacherAdapter:
    """An inverted-bottleneck teacher (teacher/build.py) as a Teacher: its d-wide feature maps, its masked
    pre-softmax scores and, when the source had an MLM head, MLM logits through it."""

    def __init__(self, ib):
        self.ib = ib
        self.body = ib.model  # for copying embeddings into the student
        c = ib.config
        self.num_layers, self.num_heads, self.hidden_size = c.num_hidden_layers, c.num_attention_heads, c.hidden_size
        self.has_mlm_head = ib.mlm_head is not None

    def to(self, device: torch.device) -> "IBTeacherAdapter":
        self.ib.to(device)
        return self

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False) -> TeacherOutput:
        input_ids, attention_mask = _on(self.ib, input_ids, attention_mask)
        self.ib.eval()
        out, logits = self.ib(input_ids, attention_mask=attention_mask, num_layers=num_layers, want_mlm=want_mlm)
        return TeacherOutput(hidden_states=list(out.hidden_states), attentions=list(out.attention_scores),
                             attentions_are_probs=False, mlm_logits=logits)


class _Stop(Exception):
    """Raised from a forward hook once the deepest layer transfer needs has run."""


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for o in output:
            if isinstance(o, torch.Tensor):
                return o
    for name in ("last_hidden_state", "hidden_states", "logits"):
        if isinstance(getattr(output, name, None), torch.Tensor):
            return getattr(output, name)
    raise TeacherError(f"the module returned {type(output).__name__}, in which no tensor was found")


def _resolve_module(root: nn.Module, path: str, what: str) -> nn.Module:
    module = root
    walked = []
    for part in path.split("."):
        children = dict(module.named_children())
        if part not in children:
            here = ".".join(walked) or type(root).__name__
            raise TeacherError(f"{what}: module path {path!r} not found: {here!r} has no child {part!r} "
                               f"(its children: {', '.join(children) or 'none'})")
        module = children[part]
        walked.append(part)
    return module


def _expand(paths, what: str) -> list[str]:
    """A list of module paths, or one pattern with {i} and a count: ("blocks.{i}", 12)."""
    if isinstance(paths, tuple) and len(paths) == 2 and isinstance(paths[1], int):
        pattern, n = paths
        if "{i}" not in pattern:
            raise TeacherError(f"{what}: the pattern {pattern!r} has no {{i}}")
        return [pattern.format(i=i) for i in range(n)]
    if isinstance(paths, str):
        return [paths]
    return list(paths)


class ModuleTeacher:
    """Any nn.Module as a teacher, wired by module paths and read through forward hooks.

    layers: the modules whose outputs are the per-layer feature maps, in order (a list of paths, or
        ("encoder.blocks.{i}", n)). The first layer's input is the embedding feature map.
    attentions: modules whose output is that layer's attention (B x heads x T x T), probabilities unless
        attentions_are_probs=False (then pre-softmax scores); None when the teacher exposes none.
    mlm_logits: a module whose output is the MLM logits (B x T x vocab), if any.
    forward: how to call the model, forward(model, input_ids, attention_mask); default model(input_ids,
        attention_mask=attention_mask).
    Transfer of layer l stops the forward pass after layer l (a hook raises), so progressive stages never
    pay for the layers above.
    """

    def __init__(self, model: nn.Module, layers, attentions=None, mlm_logits: str | None = None,
                 num_heads: int | None = None, attentions_are_probs: bool = True, forward=None):
        self.model = model.eval().requires_grad_(False)
        self.layer_paths = _expand(layers, "layers")
        if not self.layer_paths:
            raise TeacherError("layers: name at least one module")
        self.layers = [_resolve_module(model, p, "layers") for p in self.layer_paths]
        self.attention_paths = _expand(attentions, "attentions") if attentions is not None else None
        if self.attention_paths is not None and len(self.attention_paths) != len(self.layer_paths):
            raise TeacherError(f"attentions: {len(self.attention_paths)} modules for {len(self.layer_paths)} layers; "
                               "name one per layer")
        self.attentions = ([_resolve_module(model, p, "attentions") for p in self.attention_paths]
                           if self.attention_paths else None)
        self.mlm_module = _resolve_module(model, mlm_logits, "mlm_logits") if mlm_logits else None
        self.attentions_are_probs = attentions_are_probs
        self.forward = forward or (lambda m, ids, mask: m(ids, attention_mask=mask))
        self.num_layers = len(self.layers)
        self.has_mlm_head = self.mlm_module is not None
        probe = self(torch.ones(1, 4, dtype=torch.long))  # learn the widths, and fail now on a bad wiring
        widths = {h.shape[-1] for h in probe.hidden_states}
        if len(widths) != 1:
            raise TeacherError(f"layers: feature maps of different widths {sorted(widths)} (embedding input, then "
                               f"{', '.join(self.layer_paths)}); each must be B x T x H with one H")
        self.hidden_size = widths.pop()
        self.num_heads = num_heads
        if probe.attentions is not None:
            heads = {a.shape[1] for a in probe.attentions}
            if len(heads) != 1:
                raise TeacherError(f"attentions: different head counts {sorted(heads)} across layers")
            self.num_heads = heads.pop()

    def to(self, device: torch.device) -> "ModuleTeacher":
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False) -> TeacherOutput:
        if any(True for _ in self.model.parameters()):
            input_ids, attention_mask = _on(self.model, input_ids, attention_mask)
        deepest = self.num_layers if (num_layers is None or want_mlm) else min(num_layers, self.num_layers)
        feats, atts, logits = [None] * (deepest + 1), [None] * deepest, []
        handles = []

        def grab_input(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()), None)
            feats[0] = _first_tensor(x)

        def grab(i):
            def hook(module, args, output):
                feats[i + 1] = _checked(_first_tensor(output), self.layer_paths[i], input_ids)
                if i + 1 == deepest and not want_mlm:
                    raise _Stop
            return hook

        def grab_attention(i):
            def hook(module, args, output):
                atts[i] = _first_tensor(output)
            return hook

        try:
            handles.append(self.layers[0].register_forward_pre_hook(grab_input, with_kwargs=True))
            for i in range(deepest):
                handles.append(self.layers[i].register_forward_hook(grab(i)))
                if self.attentions:
                    handles.append(self.attentions[i].register_forward_hook(grab_attention(i)))
            if want_mlm and self.mlm_module is not None:
                handles.append(self.mlm_module.register_forward_hook(lambda m, a, o: logits.append(_first_tensor(o))))
            try:
                self.forward(self.model, input_ids, attention_mask)
            except _Stop:
                pass
        finally:
            for h in handles:
                h.remove()
        for i, f in enumerate(feats):
            if f is None:
                what = "the input of " + self.layer_paths[0] if i == 0 else self.layer_paths[i - 1]
                raise TeacherError(f"layers: {what} did not run in the forward pass")
        if self.attentions:
            for i, a in enumerate(atts):
                if a is None or a.dim() != 4 or a.shape[-1] != input_ids.shape[1]:
                    got = "nothing" if a is None else f"shape {tuple(a.shape)}"
                    raise TeacherError(f"attentions: {self.attention_paths[i]} gave {got}; expected B x heads x "
                                       f"{input_ids.shape[1]} x {input_ids.shape[1]}")
        return TeacherOutput(hidden_states=feats, attentions=atts if self.attentions else None,
                             attentions_are_probs=self.attentions_are_probs,
                             mlm_logits=logits[-1] if logits else None)


def _checked(h: torch.Tensor, path: str, input_ids: torch.Tensor) -> torch.Tensor:
    if h.dim() != 3 or h.shape[:2] != input_ids.shape:
        raise TeacherError(f"layers: {path} gave shape {tuple(h.shape)}; expected a feature map "
                           f"{tuple(input_ids.shape)} x H (batch x tokens x width)")
    return h


def as_teacher(teacher) -> Teacher:
    """Find the adapter for `teacher`: a Teacher as it is; an IB teacher; a transformers encoder of the BERT,
    RoBERTa, ELECTRA or DistilBERT families (or a directory holding one). A plain nn.Module needs its layers
    named: ModuleTeacher(model, layers=...)."""
    if isinstance(teacher, (HFEncoderTeacher, IBTeacherAdapter, ModuleTeacher)):
        return teacher
    if isinstance(teacher, IBTeacher):
        return IBTeacherAdapter(teacher)
    if isinstance(teacher, (str, Path)):
        return HFEncoderTeacher(teacher, with_mlm=True)
    if isinstance(teacher, nn.Module):
        body = getattr(teacher, "base_model", None)
        if body is not None:
            try:
                _layer_list(body)
                return HFEncoderTeacher(teacher)
            except ValueError:
                pass
        raise TeacherError(f"{type(teacher).__name__}: slimbert cannot find its layers; wrap it as "
                           "slimbert.ModuleTeacher(model, layers=[...module paths...], attentions=[...])")
    if isinstance(teacher, Teacher):
        return teacher
    raise TeacherError(f"{type(teacher).__name__} is not a teacher: pass an nn.Module, a model directory, or an "
                       "object with num_layers, num_heads, hidden_size, has_mlm_head and __call__ (slimbert.Teacher)")


def teacher_has_attention(teacher: Teacher) -> bool:
    """Whether a teacher gives attention maps (a ModuleTeacher without named attention modules does not)."""
    out = teacher(torch.ones(1, 4, dtype=torch.long), num_layers=1)
    return bool(out.attentions)
