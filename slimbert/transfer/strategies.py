"""What each kind of transfer stage is: a table from the stage kind to a small strategy (TextBrewer-presets style).

A strategy knows, for its kind of stage:
- `total_steps` and `period` (the steps the LR schedule spans: a progressive stage restarts it per layer),
- `lr_factor(st, step)`: the schedule, a pure function of the step,
- `multiplier(st, name, step)`: each parameter's LR multiplier (0 freezes it this step),
- `terms(st, inputs, step, batches, micro, n_micro)`: the loss terms of one (micro-)batch,
- `plan_row(st, num_layers)`: its rows in `slimbert plan`,
- `step_shape(st, layer_map, masked, layer, teacher_mlm)`: what one step runs, in model terms (`StepShape`: the
  MFU log and the plan's estimates count FLOPs from it),
- `problems(st, i, stages, facts)`: its own cross-field problems, as (key path, message) pairs.

Strategies are composed from the pure functions below, not derived from a base class. They see a narrow
`TransferInputs` (models, layer map, masking settings, this rank's slice), never the run's console or folder,
and the stage config by duck type (`StageConfig`): transfer/ does not import recipe/ or engine/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..data.corpus import Batches, mask_tokens, unpad
from ..models.modeling import pool
from . import losses as L

Terms = dict[str, torch.Tensor]  # loss term name -> scalar tensor, already weighted

FEATURE_TERMS = ("feature_map", "feature_mean", "feature_var")
LAYERWISE_TERMS = (*FEATURE_TERMS, "attention")


class StageConfig(Protocol):
    """The fields every stage has (recipe/schema.py's StageBase, read by duck type so that transfer/ does not
    import recipe/); each kind's strategy also reads its own fields (steps or steps_per_layer, losses, alpha...)."""

    kind: str
    name: str | None
    batch_size: int
    grad_accum: int
    optimizer: Any
    warmup_steps: int
    schedule: str
    freeze: list[str]
    lr_multipliers: dict[str, float]


@dataclass(frozen=True)
class TeacherFacts:
    """What the cross-field checks need to know about the teacher and the student, nothing more."""

    layers: int
    heads: int | None
    width: int | None              # the teacher's feature width (layer outputs compared with the student's);
                                   # None when the teacher's own section is wrong (reported there, not again)
    student_width: int             # student.inter_size
    student_heads: int
    inverted_bottleneck: bool      # the recipe builds an IB teacher
    has_mlm_head: bool
    attention: bool = True         # the teacher exposes attention maps
    origin: str = "recipe"         # "recipe", "plugin" (known at run time) or "passed_in" (Python API)
    description: str = ""          # e.g. "x is a bert without one", for messages
    student_layers: int = 0        # student.num_layers (0: not known)


@dataclass
class Shard:
    """This rank's rows of the global batch: rows [rank::size], then micro-batch `micro` of `n_micro`, on the
    device the models are on. The global batch is drawn (and masked) on the CPU, the same on every device."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def part(self, x: torch.Tensor, micro: int, n_micro: int) -> torch.Tensor:
        rows = x[self.rank::self.size].chunk(n_micro)[micro]
        if self.device.type == "cuda":  # pinned, so the copy runs without blocking the host
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)


@dataclass
class TransferInputs:
    """The models and settings a stage's loss reads (a narrow view of the run's context)."""

    student: nn.Module                    # SlimBertForMaskedLM
    teacher: Any                          # a teacher adapter (teacher/adapters.py)
    projections: nn.ModuleList | None     # student width -> teacher width, one per layer (None: equal widths)
    layer_map: list[int]                  # teacher layer (1-based) for each student layer
    tokenizer: Any
    mlm_probability: float
    whole_word_mask: bool
    shard: Shard
    ib: Any = None                        # the IB teacher being adapted (teacher_adaptation)
    source: Any = None                    # its source, the reference while adapting

    @property
    def num_layers(self) -> int:
        return len(self.layer_map)


# ---- schedules and multipliers: pure functions ---------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """1. linear warm-up from 1/(warmup+1); 2. then constant, linear to 0 or cosine to 0 over the rest."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    frac = (step - warmup) / max(1, total - warmup)
    return 1.0 - frac if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))


def layer_of(name: str) -> int | None:
    """1-based student layer of a parameter (projections.k counts as layer k + 1); None outside the layers."""
    parts = name.split(".")
    if "layer" in parts:
        return int(parts[parts.index("layer") + 1]) + 1
    if parts[0] == "projections":
        return int(parts[1]) + 1
    return None


def prefix_multiplier(st: StageConfig, name: str) -> float:
    """`freeze` (0) and `lr_multipliers` (a product) by module prefix, with or without the 'student.' part."""
    short = name.split(".", 1)[1]
    if any(short.startswith(p) or name.startswith(p) for p in st.freeze):
        return 0.0
    m = 1.0
    for prefix, value in st.lr_multipliers.items():
        if short.startswith(prefix) or name.startswith(prefix):
            m *= value
    return m


def _is_mlm_head(name: str) -> bool:
    return ".cls." in f".{name.split('.', 1)[1]}"


# ---- loss terms --------------------------------------------------------------------------------------------------

def layerwise_terms(x: TransferInputs, weights, layers: list[int], batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feature-map, statistics and attention terms for the given student layers (1-based), averaged, unweighted."""
    t_layers = [x.layer_map[l - 1] for l in layers]
    s = x.student.slimbert(batch, output_hidden_states=True, output_attention_scores=True, num_layers=max(layers))
    t = x.teacher(batch, num_layers=max(t_layers))
    # mask_padding: padding positions (pad token id) leave the feature terms and the attention rows and columns.
    pad = getattr(x.tokenizer, "pad_token_id", None)
    mask = (batch != pad).long() if weights.mask_padding and pad is not None else None
    terms = {k: torch.zeros((), device=batch.device) for k in LAYERWISE_TERMS}
    for l, tl in zip(layers, t_layers):
        hs = s.hidden_states[l]
        if x.projections is not None:
            hs = x.projections[l - 1](hs)
        hs, ht = hs.float(), t.hidden_states[tl].float()  # losses in fp32 under bf16 autocast
        if weights.feature_map:
            terms["feature_map"] = terms["feature_map"] + L.feature_map_loss(ht, hs, mask,
                                                                             normalize=weights.feature_norm)
        if weights.feature_mean:
            terms["feature_mean"] = terms["feature_mean"] + L.feature_mean_loss(ht, hs, mask)
        if weights.feature_var:
            terms["feature_var"] = terms["feature_var"] + L.feature_var_loss(ht, hs, mask)
        if weights.attention:
            terms["attention"] = terms["attention"] + L.attention_loss(
                t.attentions[tl - 1], s.attention_scores[l - 1], mask, teacher_is_probs=t.attentions_are_probs)
    n = len(layers)
    return {k: v / n for k, v in terms.items() if getattr(weights, k)}


def require_terms(terms: Terms, what: str) -> Terms:
    """A backstop: validate refuses a stage without loss terms (no_terms_problems); an empty dict would fail later
    as `sum({}).backward()`, far from its cause."""
    if not terms:
        raise ValueError(f"the {what} stage has no loss term to train on (every weight is 0, or the only term "
                         "needs an MLM head the teacher lacks)")
    return terms


def weighted(weights, terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: getattr(weights, k) * v for k, v in terms.items()}


def token_share(labels_global: torch.Tensor, labels: torch.Tensor, world_size: int, n_micro: int) -> float:
    """Scale for a loss averaged over this shard's masked tokens, so that the mean over ranks and micro-batches
    equals the average over the global batch's masked tokens (shards hold different counts)."""
    n_global = int((labels_global != -100).sum())
    return (int((labels != -100).sum()) * world_size * n_micro / n_global) if n_global else 1.0


def _mask(x: TransferInputs, batch: torch.Tensor, batches: Batches, step: int):
    # Drawn on the global batch, so every process count sees the same masks.
    return mask_tokens(batch, x.tokenizer, x.mlm_probability, batches.generator(step, 1), x.whole_word_mask)


def distill_terms(x: TransferInputs, st: StageConfig, step: int, batches: Batches, batch: torch.Tensor, micro: int,
                  n_micro: int) -> dict[str, torch.Tensor]:
    inputs, labels_global = _mask(x, batch, batches, step)
    inputs, labels = x.shard.part(inputs, micro, n_micro), x.shard.part(labels_global, micro, n_micro)
    # The loss reads masked positions only, so the vocabulary-wide head runs on those rows alone (about 7x
    # less head work at a 15% masking rate; the head dominates a narrow student's step).
    keep = labels != -100
    logits = x.student.cls(x.student.slimbert(inputs).last_hidden_state[keep])
    teacher_logits = None
    if st.alpha < 1.0:
        teacher_logits = x.teacher(inputs, want_mlm=True).mlm_logits[keep]
    loss = L.pretrain_distill_loss(logits, labels[keep], teacher_logits, st.alpha, st.temperature)
    return {"mlm": loss * token_share(labels_global, labels, x.shard.size, n_micro)}


# ---- checks shared by several kinds --------------------------------------------------------------------------------

Problems = list[tuple[str, str]]


def common_problems(st: StageConfig, i: int, period: int) -> Problems:
    out = []
    if any(not p.strip() for p in st.freeze):
        out.append((f"transfer.{i}.freeze", "empty module prefix (it would freeze everything)"))
    if st.batch_size % st.grad_accum:
        out.append((f"transfer.{i}.grad_accum", f"batch_size {st.batch_size} does not split into {st.grad_accum} "
                                                "equal micro-batches"))
    if st.warmup_steps > period:
        out.append((f"transfer.{i}.warmup_steps", f"warm-up ({st.warmup_steps}) is longer than the stage "
                                                  f"({period} steps)"))
    for prefix in st.freeze:
        if prefix in st.lr_multipliers:
            out.append((f"transfer.{i}.freeze", f"{prefix!r} is both frozen and given an LR multiplier"))
    return out


def layerwise_problems(st: StageConfig, i: int, f: TeacherFacts) -> Problems:
    """Feature-map terms need equal widths (IB teacher), attention terms equal head counts (and attention maps)."""
    out, w = [], st.losses
    if f.origin == "plugin":
        return out  # known only when the run builds it; checked again then (origin passed_in)
    if f.origin == "passed_in":
        if w.attention and not f.attention:
            out.append((f"transfer.{i}.losses.attention", "the teacher passed in gives no attention (name its "
                                                          "attention modules, e.g. ModuleTeacher(..., attentions=...)), "
                                                          "so attention transfer is impossible; set attention: 0"))
        elif w.attention and f.heads != f.student_heads:
            out.append((f"transfer.{i}.losses.attention", f"attention transfer needs equal head counts: the teacher "
                                                          f"passed in has {f.heads}, student.num_heads is "
                                                          f"{f.student_heads}; make them equal or set attention: 0"))
        return out
    if (any(getattr(w, k) > 0 for k in FEATURE_TERMS) and f.inverted_bottleneck and f.width is not None
            and f.width != f.student_width):
        out.append((f"transfer.{i}.losses.feature_map",
                    f"feature-map transfer needs equal widths: the teacher's feature map is {f.width} "
                    f"wide (teacher.inter_size) and the student's {f.student_width} (student.inter_size); set "
                    "them equal, or use teacher.type: source, which learns a projection"))
    if w.attention > 0 and f.heads is not None and f.heads != f.student_heads:
        out.append((f"transfer.{i}.losses.attention",
                    f"attention transfer needs equal head counts per layer pair: teacher {f.heads}, "
                    f"student {f.student_heads}; set student.num_heads (and teacher.num_heads) equal, or "
                    "attention: 0"))
    return out


def no_terms_problems(st: StageConfig, i: int) -> Problems:
    """A progressive or joint stage whose every layer-wise weight is 0 has nothing to train on."""
    if any(getattr(st.losses, k) for k in LAYERWISE_TERMS):
        return []
    return [(f"transfer.{i}.losses", f"every loss weight is 0 ({', '.join(LAYERWISE_TERMS)}): the stage would have "
                                     "nothing to train on; give one a weight, or remove the stage")]


def distill_problems(st: StageConfig, i: int, f: TeacherFacts) -> Problems:
    if f.origin == "recipe" and st.alpha < 1 and not f.has_mlm_head:
        return [(f"transfer.{i}.alpha", f"the teacher has no MLM head ({f.description}), so there are no teacher "
                                        "logits to distil; set alpha: 1.0 (hard MLM labels only)")]
    return []


def _losses_row(st: StageConfig) -> dict:
    return st.losses.model_dump()


@dataclass(frozen=True)
class StepShape:
    """What one optimizer step of a stage runs, in model terms (engine/throughput.py counts its FLOPs)."""
    student_layers: int | None          # student blocks run forward and backward (None: all)
    teacher_layers: int | None          # teacher blocks run forward (None: all; 0: no teacher)
    student_head_rows: float = 0.0      # MLM-head rows per sequence, student (masked positions)
    teacher_head_rows: float = 0.0      # teacher's MLM-head rows per sequence
    teacher_trains: bool = False        # teacher adaptation: the IB teacher runs forward and backward


def _distill_shape(st: StageConfig, teacher_layers: int, masked: float, teacher_mlm: bool) -> StepShape:
    """The student's MLM head on the masked rows; with soft targets (alpha < 1) the whole teacher and its head."""
    soft = st.alpha < 1.0 and teacher_mlm
    return StepShape(None, None if soft else teacher_layers, masked, masked if soft else 0.0)

# ---- the strategies ------------------------------------------------------------------------------------------------

class Progressive:
    """MobileBERT's progressive knowledge transfer: layer l trains for steps_per_layer steps (x current_lr), lower
    layers at x lower_lr (0 freezes), higher ones do not run; the LR schedule restarts for every layer."""

    kind, trains = "progressive", "student"

    def total_steps(self, st: StageConfig, num_layers: int) -> int:
        return st.steps_per_layer * num_layers

    def period(self, st: StageConfig) -> int:
        return st.steps_per_layer

    def typical_step(self, st: StageConfig, total: int) -> int:
        return total // 2  # the stage gets deeper as it goes: the middle layer's step costs the average

    def current_layer(self, st: StageConfig, step: int) -> int:
        return step // st.steps_per_layer + 1

    def lr_factor(self, st: StageConfig, step: int) -> float:
        return lr_factor(step % st.steps_per_layer, st.steps_per_layer, st.warmup_steps, st.schedule)

    def multiplier(self, st: StageConfig, name: str, step: int) -> float:
        m = prefix_multiplier(st, name)
        if m == 0.0:
            return 0.0
        layer, current = layer_of(name), self.current_layer(st, step)
        if layer is None:  # heads and (by default) embeddings frozen
            embeddings = ".embeddings." in f".{name.split('.', 1)[1]}"
            return m * (1.0 if embeddings and st.train_embeddings else 0.0)
        if layer == current:
            return m * st.current_lr
        if layer < current:
            return m * st.lower_lr
        return 0.0

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        batch = x.shard.part(batches.batch(step), micro, n_micro)
        return require_terms(weighted(st.losses, layerwise_terms(x, st.losses, [self.current_layer(st, step)], batch)),
                             st.kind)

    def log_fields(self, st: StageConfig, step: int) -> dict:
        return {"layer": self.current_layer(st, step)}

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        lower = "frozen" if st.lower_lr == 0 else f"x{st.lower_lr}"
        return {"steps": self.total_steps(st, num_layers), "steps_per_layer": st.steps_per_layer,
                "trainable": (f"layer l at x{st.current_lr}, layers < l {lower}, layers > l not run; "
                              f"embeddings {'trained' if st.train_embeddings else 'frozen'}; heads frozen"),
                "losses": _losses_row(st)}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return StepShape(layer, layer_map[(layer or len(layer_map)) - 1])  # the student and teacher up to layer

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        out = no_terms_problems(st, i) + layerwise_problems(st, i, f)
        if any(k in st.lr_multipliers for k in ("current", "lower")) and f.origin != "passed_in":
            out.append((f"transfer.{i}.lr_multipliers", "use current_lr / lower_lr for progressive stages; "
                                                        "lr_multipliers keys are module prefixes"))
        return out


# Stages of `steps` optimizer steps with one LR schedule over them: the parts the kinds below share.

def _fixed_total(st: StageConfig, num_layers: int) -> int:
    return st.steps


def _fixed_period(st: StageConfig) -> int:
    return st.steps


def _fixed_lr_factor(st: StageConfig, step: int) -> float:
    return lr_factor(step, st.steps, st.warmup_steps, st.schedule)


def _no_log_fields(st: StageConfig, step: int) -> dict:
    return {}


def _first_step(st: StageConfig, total: int) -> int:
    return 0  # every step costs the same


def _body_multiplier(st: StageConfig, name: str, step: int) -> float:
    """The whole student body at the stage's prefix multipliers; the MLM head gets no gradient."""
    return 0.0 if _is_mlm_head(name) else prefix_multiplier(st, name)


class Joint:
    """All student layers at once on the layer-wise terms; the MLM head gets no gradient from them."""

    kind, trains = "joint", "student"
    total_steps, period = staticmethod(_fixed_total), staticmethod(_fixed_period)
    lr_factor = staticmethod(_fixed_lr_factor)
    log_fields, typical_step = staticmethod(_no_log_fields), staticmethod(_first_step)
    multiplier = staticmethod(_body_multiplier)

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        batch = x.shard.part(batches.batch(step), micro, n_micro)
        return require_terms(weighted(st.losses, layerwise_terms(x, st.losses, list(range(1, x.num_layers + 1)),
                                                                 batch)), st.kind)

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        return {"steps": st.steps, "trainable": "student: all parameters", "losses": _losses_row(st)}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return StepShape(None, max(layer_map))

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        return no_terms_problems(st, i) + layerwise_problems(st, i, f)


class Auxiliary:
    """The layer-wise terms of every layer plus pre-training distillation (MobileBERT's auxiliary KT)."""

    kind, trains = "auxiliary", "student"
    total_steps, period = staticmethod(_fixed_total), staticmethod(_fixed_period)
    lr_factor = staticmethod(_fixed_lr_factor)
    log_fields, typical_step = staticmethod(_no_log_fields), staticmethod(_first_step)

    def multiplier(self, st: StageConfig, name: str, step: int) -> float:
        return prefix_multiplier(st, name)

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        batch = batches.batch(step)
        out = weighted(st.losses, layerwise_terms(x, st.losses, list(range(1, x.num_layers + 1)),
                                                  x.shard.part(batch, micro, n_micro)))
        out.update(distill_terms(x, st, step, batches, batch, micro, n_micro))
        return out

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        return {"steps": st.steps, "trainable": "student: all parameters", "losses": _losses_row(st)}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return _distill_shape(st, max(layer_map), masked, teacher_mlm)

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        return layerwise_problems(st, i, f) + distill_problems(st, i, f)


class PretrainDistill:
    """MLM on hard labels mixed with the teacher's MLM distribution: alpha * one-hot + (1 - alpha) * teacher."""

    kind, trains = "pretrain_distill", "student"
    total_steps, period = staticmethod(_fixed_total), staticmethod(_fixed_period)
    lr_factor = staticmethod(_fixed_lr_factor)
    log_fields, typical_step = staticmethod(_no_log_fields), staticmethod(_first_step)

    def multiplier(self, st: StageConfig, name: str, step: int) -> float:
        return prefix_multiplier(st, name)

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        return distill_terms(x, st, step, batches, batches.batch(step), micro, n_micro)

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        return {"steps": st.steps, "trainable": "student: all parameters",
                "losses": {"alpha": st.alpha, "temperature": st.temperature}}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return _distill_shape(st, 0, masked, teacher_mlm)  # hard labels only: no teacher

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        return distill_problems(st, i, f)


class TeacherAdaptation:
    """The IB teacher learns to reproduce its source: every hidden state read out in the source's width
    (MSE relative to the state's mean square, so each layer counts alike), every layer's attention
    (KL(source || teacher)) and, with an MLM head, the source's MLM distribution on masked tokens."""

    kind, trains = "teacher_adaptation", "teacher"
    total_steps, period = staticmethod(_fixed_total), staticmethod(_fixed_period)
    lr_factor = staticmethod(_fixed_lr_factor)
    log_fields, typical_step = staticmethod(_no_log_fields), staticmethod(_first_step)

    def multiplier(self, st: StageConfig, name: str, step: int) -> float:
        return prefix_multiplier(st, name)

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        batch, labels, share = batches.batch(step), None, None
        if st.mlm and x.ib.mlm_head is not None:
            batch, labels_global = _mask(x, batch, batches, step)
            labels = x.shard.part(labels_global, micro, n_micro)
            share = token_share(labels_global, labels, x.shard.size, n_micro)
        batch = x.shard.part(batch, micro, n_micro)
        s = x.source(batch, want_mlm=labels is not None)
        t, logits = x.ib(batch, want_mlm=labels is not None)
        terms = {}
        if st.hidden:
            # fp32 under autocast: the source's states may come out in bf16.
            mse = [F.mse_loss(x.ib.readout[j](h).float(), s.hidden_states[j].float())
                   / s.hidden_states[j].float().pow(2).mean() for j, h in enumerate(t.hidden_states)]
            terms["hidden"] = st.hidden * torch.stack(mse).mean()
        if st.attention:
            kl = [L.attention_loss(p, scores.float(), teacher_is_probs=True)
                  for p, scores in zip(s.attentions, t.attention_scores)]
            terms["attention"] = st.attention * torch.stack(kl).mean()
        if labels is not None:
            terms["mlm"] = st.mlm * share * L.pretrain_distill_loss(logits, labels, s.mlm_logits, alpha=0.0)
        return require_terms(terms, "teacher_adaptation")

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        return {"steps": st.steps, "trainable": "IB teacher: all parameters (source frozen)",
                "losses": {k: getattr(st, k) for k in ("hidden", "attention", "mlm")}}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return StepShape(None, None, 0.0, masked if st.mlm and teacher_mlm else 0.0, teacher_trains=True)

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        if f.origin == "passed_in":
            return [(f"transfer.{i}.kind", "teacher_adaptation adapts the IB teacher the recipe builds; with a "
                                           "teacher passed in there is nothing to adapt: remove this stage")]
        out = []
        if not (st.hidden or st.attention or (st.mlm and f.has_mlm_head)):
            out.append((f"transfer.{i}", "no loss term to train on: hidden and attention are 0, and "
                                         + (f"mlm needs an MLM head, which the source lacks ({f.description})"
                                            if st.mlm else "so is mlm") + "; give hidden or attention a weight"))
        if not f.inverted_bottleneck:
            out.append((f"transfer.{i}.kind", "teacher_adaptation adapts an inverted-bottleneck teacher, but "
                                              "teacher.type is source: there is nothing to adapt"))
        if any(x.kind != "teacher_adaptation" for x in earlier):
            out.append((f"transfer.{i}.kind", "teacher_adaptation must come before the student's stages"))
        return out


def embedding_projection(x: TransferInputs, width: int, target: int) -> nn.Module:
    """Student embedding (width) -> the reference's (target): none when equal; else the TinyBERT-style learned
    projection of the student's last layer (teacher.type: source, or a teacher passed in), or the IB teacher's
    readout of its last layer into the source's width (the student's features imitate the IB teacher's)."""
    if width == target:
        return nn.Identity()
    if x.projections is not None and x.projections[-1].out_features == target:
        return x.projections[-1]
    if x.ib is not None and x.ib.readout[-1].in_features == width and x.ib.readout[-1].out_features == target:
        return x.ib.readout[-1]
    raise ValueError(f"embedding_distill: no projection from the student's width {width} to the source's {target}")


class EmbeddingDistill:
    """The source's pooled sentence embedding (its own pooling) distilled into the student's: MSE and cosine
    through a projection when the widths differ (sentence-transformers' MSELoss distillation), and the in-batch
    cosine-similarity matrix. The reference is the source (through the IB teacher's run: its source), the model
    whose embeddings users search with."""

    kind, trains = "embedding_distill", "student"
    total_steps, period = staticmethod(_fixed_total), staticmethod(_fixed_period)
    lr_factor = staticmethod(_fixed_lr_factor)
    log_fields, typical_step = staticmethod(_no_log_fields), staticmethod(_first_step)
    multiplier = staticmethod(_body_multiplier)

    def terms(self, st: StageConfig, x: TransferInputs, step: int, batches: Batches, micro: int = 0,
              n_micro: int = 1) -> Terms:
        batch = x.shard.part(batches.batch(step), micro, n_micro)
        mask = None
        if corpus_layout(st) == "texts":  # one padded text per row: pool over its real tokens only
            batch, mask = unpad(batch, getattr(x.tokenizer, "pad_token_id", None))
        mode = "mean" if st.pooling == "auto" else st.pooling  # resolve.py fills in the source's; mean otherwise
        reference = x.source if x.source is not None else x.teacher
        with torch.no_grad():
            ref = reference(batch, mask).hidden_states
            last = ref[-1].float()
            target = pool(last, mask, mode)
        out = x.student.slimbert(batch, attention_mask=mask, output_hidden_states=bool(st.hidden))
        hidden = out.last_hidden_state
        mine = pool(hidden, mask, mode)
        terms = {}
        if st.tokens:  # every token's last hidden state, not only their pool: far more signal per sentence
            project = embedding_projection(x, hidden.shape[-1], last.shape[-1])
            terms["tokens"] = st.tokens * L.feature_map_loss(last, project(hidden).float(), mask, normalize=False)
        if st.hidden and x.num_layers > 1:  # the layers below the last, each against the source layer it maps to
            inner = []
            for l in range(1, x.num_layers):  # 1-based student layers; hidden_states[0] is the embedding output
                h = out.hidden_states[l] if x.projections is None else x.projections[l - 1](out.hidden_states[l])
                inner.append(L.feature_map_loss(ref[x.layer_map[l - 1]].float(), h.float(), mask, normalize=False))
            terms["hidden"] = st.hidden * torch.stack(inner).mean()
        if st.mse or st.cosine:
            projected = embedding_projection(x, mine.shape[-1], target.shape[-1])(mine).float()
            if st.mse:
                terms["mse"] = st.mse * L.embedding_mse_loss(target, projected)
            if st.cosine:
                terms["cosine"] = st.cosine * L.embedding_cosine_loss(target, projected)
        if st.similarity:
            terms["similarity"] = st.similarity * L.similarity_matrix_loss(target, mine.float())
        return terms

    def plan_row(self, st: StageConfig, num_layers: int) -> dict:
        return {"steps": st.steps, "trainable": "student: all but the MLM head",
                "losses": {k: getattr(st, k) for k in ("mse", "cosine", "similarity", "tokens", "hidden")},
                "pooling": st.pooling,
                "inputs": st.inputs}

    def step_shape(self, st: StageConfig, layer_map: list[int], masked: float, layer: int | None,
                   teacher_mlm: bool) -> StepShape:
        return StepShape(None, None)  # both whole encoders (the pooled embedding reads the last layer), no MLM head

    def problems(self, st: StageConfig, i: int, earlier: list, f: TeacherFacts) -> Problems:
        if not (st.mse or st.cosine or st.similarity or st.tokens or st.hidden):
            return [(f"transfer.{i}.mse", "every embedding term is 0 (mse, cosine, similarity, tokens, hidden): the "
                                          "stage would train nothing; give one a weight")]
        if st.hidden and f.student_layers == 1:
            return [(f"transfer.{i}.hidden", "hidden distils the student's layers below its last, and a one-layer "
                                             "student has none: use tokens for its only layer, or hidden: 0")]
        if st.hidden and f.inverted_bottleneck:
            return [(f"transfer.{i}.hidden", "hidden maps each student layer to a layer of the source, but the layer "
                                             "map and the feature widths follow the IB teacher here: use "
                                             "teacher.type: source (or a progressive/joint stage for the IB "
                                             "teacher's layers), or hidden: 0")]
        if st.similarity and st.batch_size < 2:
            return [(f"transfer.{i}.batch_size", "the similarity term compares sentences within a batch: use "
                                                 "batch_size >= 2 or similarity: 0")]
        return []


def corpus_layout(st: StageConfig) -> str:
    """The corpus rows a stage reads: "texts" (one padded text per row, data/cache.py) where the stage asks for
    them (embedding_distill's `inputs`), else the packed sequences every other stage reads."""
    return getattr(st, "inputs", "packed")


Strategy = Progressive | Joint | Auxiliary | PretrainDistill | TeacherAdaptation | EmbeddingDistill

STRATEGIES: dict[str, Strategy] = {s.kind: s for s in (Progressive(), Joint(), Auxiliary(), PretrainDistill(),
                                                        TeacherAdaptation(), EmbeddingDistill())}


def strategy(st: StageConfig) -> Strategy:
    return STRATEGIES[st.kind]


def stage_problems(stages: list[StageConfig], f: TeacherFacts) -> Problems:
    """Every stage's own problems and the checks all kinds share, in stage order."""
    out = []
    for i, st in enumerate(stages):
        s = strategy(st)
        out += s.problems(st, i, stages[:i], f)
        if f.origin != "passed_in":
            out += common_problems(st, i, s.period(st))
    return out

