"""The stage strategies (slimbert/transfer/strategies.py) as pure functions: step counts, LR schedules with their
per-layer restarts, per-parameter multipliers (frozen layers, heads, prefixes), plan rows and the checks each
kind owns. No CLI, no subprocess, no model: stages are the recipe schema's own objects."""

from __future__ import annotations

import math

import pytest
import torch

from slimbert.data.corpus import Batches
from slimbert.models import SlimBertConfig, SlimBertForMaskedLM
from pydantic import TypeAdapter

from slimbert.recipe.schema import STAGE_KINDS, Stage
from slimbert.teacher.adapters import TeacherOutput
from slimbert.transfer.strategies import (STRATEGIES, Shard, StepShape, TeacherFacts, TransferInputs, layer_of, lr_factor,
                                          stage_problems, strategy)


STAGE = TypeAdapter(Stage)


def stage(**kw):
    """A validated stage, through the schema (so defaults are the recipe's)."""
    return STAGE.validate_python(kw)


def facts(**kw) -> TeacherFacts:
    base = dict(layers=4, heads=4, width=64, student_width=64, student_heads=4, inverted_bottleneck=True,
                has_mlm_head=True, description="src is a bert without one")
    return TeacherFacts(**{**base, **kw})


def test_every_stage_kind_has_a_strategy():
    assert tuple(STRATEGIES) == STAGE_KINDS
    for kind, s in STRATEGIES.items():
        assert s.kind == kind


def test_every_strategy_says_what_its_step_runs():
    # engine/throughput.py counts a step's FLOPs (the MFU log, the plan's estimates) from the strategy's StepShape
    for kind, s in STRATEGIES.items():
        st = stage(kind=kind, **({"steps_per_layer": 2} if kind == "progressive" else {"steps": 2}))
        for layer in (1, 2):
            shape = s.step_shape(st, [1, 2], 0.15 * 32, layer, True)
            assert isinstance(shape, StepShape), kind
            assert shape.student_layers in (None, layer) and shape.teacher_layers in (None, 0, 1, 2), (kind, shape)


# ---- lengths and schedules -------------------------------------------------------------------------------------------

def test_step_counts_and_periods():
    p = stage(kind="progressive", steps_per_layer=7)
    assert strategy(p).total_steps(p, 3) == 21 and strategy(p).period(p) == 7
    for kind in ("joint", "auxiliary", "pretrain_distill", "teacher_adaptation"):
        st = stage(kind=kind, steps=11)
        assert strategy(st).total_steps(st, 3) == 11 and strategy(st).period(st) == 11


def test_lr_factor_is_warmup_then_schedule():
    assert lr_factor(0, 10, 4, "linear") == pytest.approx(1 / 5)
    assert lr_factor(3, 10, 4, "linear") == pytest.approx(4 / 5)
    assert lr_factor(4, 10, 4, "linear") == 1.0
    assert lr_factor(7, 10, 4, "linear") == pytest.approx(0.5)
    assert lr_factor(7, 10, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(9, 10, 0, "constant") == 1.0


def test_progressive_lr_restarts_for_every_layer():
    st = stage(kind="progressive", steps_per_layer=4, warmup_steps=2, schedule="linear")
    s = strategy(st)
    per_layer = [s.lr_factor(st, i) for i in range(4)]
    assert per_layer == [pytest.approx(1 / 3), pytest.approx(2 / 3), 1.0, 0.5]
    assert [s.lr_factor(st, 4 + i) for i in range(4)] == per_layer  # layer 2 starts the schedule again
    joint = stage(kind="joint", steps=8, warmup_steps=2, schedule="linear")
    assert strategy(joint).lr_factor(joint, 4) != per_layer[0]  # one schedule over the whole stage


# ---- multipliers -------------------------------------------------------------------------------------------------------

def test_layer_of_parameter_names():
    assert layer_of("student.slimbert.encoder.layer.0.attention.self.query.weight") == 1
    assert layer_of("projections.2.weight") == 3
    assert layer_of("student.slimbert.embeddings.word_embeddings.weight") is None


L1 = "student.slimbert.encoder.layer.0.ffn.0.intermediate.dense.weight"
L2 = "student.slimbert.encoder.layer.1.ffn.0.intermediate.dense.weight"
EMB = "student.slimbert.embeddings.word_embeddings.weight"
HEAD = "student.cls.predictions.transform.dense.weight"


def test_progressive_multipliers_follow_the_current_layer():
    st = stage(kind="progressive", steps_per_layer=10, current_lr=3.0, lower_lr=0.3)
    s = strategy(st)
    assert s.multiplier(st, L1, 0) == 3.0 and s.multiplier(st, L2, 0) == 0.0  # higher layers do not run
    assert s.multiplier(st, L1, 10) == pytest.approx(0.3) and s.multiplier(st, L2, 10) == 3.0
    assert s.multiplier(st, "projections.1.weight", 10) == 3.0
    assert s.multiplier(st, EMB, 0) == 0.0 and s.multiplier(st, HEAD, 15) == 0.0  # frozen by default
    trained = stage(kind="progressive", steps_per_layer=10, train_embeddings=True)
    assert strategy(trained).multiplier(trained, EMB, 0) == 1.0
    frozen_lower = stage(kind="progressive", steps_per_layer=10, lower_lr=0.0)
    assert strategy(frozen_lower).multiplier(frozen_lower, L1, 10) == 0.0
    assert s.log_fields(st, 25) == {"layer": 3}


def test_freeze_and_prefix_multipliers():
    st = stage(kind="joint", steps=5, freeze=["slimbert.embeddings"], lr_multipliers={"slimbert.encoder.layer.1": 0.5})
    s = strategy(st)
    assert s.multiplier(st, EMB, 0) == 0.0
    assert s.multiplier(st, L2, 0) == 0.5 and s.multiplier(st, L1, 0) == 1.0
    assert s.multiplier(st, HEAD, 0) == 0.0  # joint: no gradient reaches the MLM head from layer-wise terms
    pd = stage(kind="pretrain_distill", steps=5, freeze=["student.slimbert.encoder.layer.0"])
    assert strategy(pd).multiplier(pd, L1, 0) == 0.0 and strategy(pd).multiplier(pd, HEAD, 0) == 1.0


# ---- plan rows and checks -----------------------------------------------------------------------------------------------

def test_plan_rows():
    p = stage(kind="progressive", steps_per_layer=5, lower_lr=0.0)
    row = strategy(p).plan_row(p, 4)
    assert row["steps"] == 20 and row["steps_per_layer"] == 5 and "layers < l frozen" in row["trainable"]
    assert set(row["losses"]) >= {"feature_map", "attention"}
    pd = stage(kind="pretrain_distill", steps=3, alpha=0.25)
    assert strategy(pd).plan_row(pd, 4) == {"steps": 3, "trainable": "student: all parameters",
                                            "losses": {"alpha": 0.25, "temperature": 1.0}}
    ta = stage(kind="teacher_adaptation", steps=2)
    assert strategy(ta).plan_row(ta, 4)["trainable"].startswith("IB teacher")


def test_each_kind_reports_its_own_problems():
    stages = [stage(kind="joint", steps=5, warmup_steps=9, batch_size=6, grad_accum=4),
              stage(kind="teacher_adaptation", steps=2),
              stage(kind="pretrain_distill", steps=3, alpha=0.5)]
    found = dict(stage_problems(stages, facts(has_mlm_head=False, heads=2)))
    assert "transfer.0.warmup_steps" in found and "transfer.0.grad_accum" in found
    assert "head counts" in found["transfer.0.losses.attention"]
    assert "before the student's stages" in found["transfer.1.kind"]
    assert "no MLM head (src is a bert without one)" in found["transfer.2.alpha"]
    progressive = stage(kind="progressive", steps_per_layer=4, warmup_steps=4)
    assert stage_problems([progressive], facts()) == []  # warm-up is checked against one layer's steps
    passed_in = dict(stage_problems([stage(kind="teacher_adaptation", steps=2)], facts(origin="passed_in")))
    assert "nothing to adapt" in passed_in["transfer.0.kind"]


# ---- loss terms on a tiny model ---------------------------------------------------------------------------------------

def tiny(layers: int = 2) -> SlimBertForMaskedLM:
    torch.manual_seed(0)
    return SlimBertForMaskedLM(SlimBertConfig(vocab_size=50, embedding_size=16, hidden_size=16,
                                              intra_bottleneck_size=16, num_hidden_layers=layers,
                                              num_attention_heads=2, intermediate_size=32,
                                              num_feedforward_networks=1, max_position_embeddings=16))


class SlimTeacher:
    """A slimbert model as a teacher (the Teacher protocol's call)."""

    def __init__(self, model: SlimBertForMaskedLM):
        self.model = model

    def __call__(self, input_ids, attention_mask=None, num_layers=None, want_mlm=False) -> TeacherOutput:
        out = self.model.slimbert(input_ids, attention_mask, output_hidden_states=True,
                                  output_attention_scores=True, num_layers=num_layers)
        return TeacherOutput(list(out.hidden_states), list(out.attention_scores), False)


def test_progressive_terms_read_only_the_current_layer():
    student, teacher = tiny(), tiny()
    x = TransferInputs(student, SlimTeacher(teacher), None, [1, 2], None, 0.15, False, Shard())
    st = stage(kind="progressive", steps_per_layer=2, losses={"feature_map": 1.0, "attention": 0.0,
                                                               "feature_mean": 0.0, "feature_var": 0.0})
    batches = Batches(torch.randint(5, 50, (8, 12)), 4, 0, 0)
    first = strategy(st).terms(st, x, 0, batches)
    assert set(first) == {"feature_map"} and first["feature_map"] > 0
    first["feature_map"].backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert any("layer.0." in n for n in grads) and not any("layer.1." in n for n in grads)
    student.load_state_dict(teacher.state_dict())  # the student equal to its teacher: nothing left to transfer
    assert strategy(st).terms(st, x, 2, batches)["feature_map"].item() == pytest.approx(0.0, abs=1e-6)
