"""benchmarks/quality/run.py: every arm's derived recipe validates, at every scale, and equal compute holds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))
import run as Q  # noqa: E402


@pytest.mark.parametrize("scale", ["cpu", "gpu", "smoke"])
def test_every_transfer_arm_validates_at_equal_student_tokens(scale, tmp_path, shared_data):
    import yaml

    from slimbert.recipe import load_recipe

    Q.configure(scale, str(tmp_path))
    Q.corpus_file().parent.mkdir(parents=True)
    Q.corpus_file().write_text((shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text())
    tokens, embedding_steps = {}, {}
    for arm in Q.TRANSFER_ARMS:
        r = load_recipe(Q.transfer_recipe(arm))
        student = [st for st in r.recipe.transfer if st.kind != "teacher_adaptation"]
        per_layer = {"progressive": r.student_config.num_hidden_layers}
        tokens[arm] = sum(getattr(st, "steps", None) or st.steps_per_layer * per_layer[st.kind]
                          for st in student) * student[0].batch_size
        assert r.recipe.data.similarity_pairs and yaml.safe_load(Q.transfer_recipe(arm).read_text())
        embedding_steps[arm] = sum(st.steps for st in student if st.kind == "embedding_distill")
    # equal compute: every arm's student stages see the slimbert arm's sequences (rounding aside; the smoke
    # scale's 2-step floor breaks it, and its numbers mean nothing)
    # embed_long is the "more transfer tokens" lever: its embedding stage alone is EMBED_LONG_X times longer
    tokens.pop("embed_long")
    assert embedding_steps["embed_long"] == Q.EMBED_LONG_X * embedding_steps["embed"]
    # slimbert_x10 is the same lever for the whole transfer: every student stage TOKENS_X times longer
    if scale != "smoke":
        assert abs(tokens.pop("slimbert_x10") - Q.TOKENS_X * tokens["slimbert"]) <= 0.05 * Q.TOKENS_X * tokens["slimbert"]
    for arm, n in tokens.items() if scale != "smoke" else ():
        assert abs(n - tokens["slimbert"]) <= 0.05 * tokens["slimbert"], (arm, n, tokens["slimbert"])
    Q.configure("cpu")


def test_task_spec_keeps_regression_and_the_student_budget():
    Q.configure("cpu")
    Q.TASKS["stsb"] = dict(train="STS-B/train.tsv", dev="STS-B/dev.tsv", text_fields=["sentence1", "sentence2"],
                           label_field="score", seq_len=128, regression=True, max_examples=None,
                           student_max_examples=500)
    Q.S["source"]["max_epochs"]["stsb"] = 3
    Q.S["student_epochs"]["stsb"] = 2
    try:
        assert Q.task_spec("stsb", "slimbert", True).regression
        assert Q.task_spec("stsb", "slimbert", True).max_examples == 500
        assert Q.task_spec("stsb", "source", False).epochs == 3
        # the intermediate-layer KD lever differs from the slimbert arm in distill_hidden alone
        lever, main = Q.task_spec("stsb", "slimbert_hidden_kd", True), Q.task_spec("stsb", "slimbert", True)
        assert lever.distill_hidden == 1.0 and main.distill_hidden == 0.0
        assert lever.model_dump(exclude={"distill_hidden"}) == main.model_dump(exclude={"distill_hidden"})
    finally:
        Q.configure("cpu")


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_augmentation_levers_read_the_examples_they_claim(scale):
    """slimbert_augment takes the steps of 5f (its baseline: same LR), slimbert_augment_x3 three times as many;
    the copies' count is what changes, and the fine-tune differs from 5f in nothing else."""
    import math

    Q.configure(scale)
    try:
        for task in Q.TASKS:
            base = Q.task_spec(task, "slimbert_lr_high", True)
            n = 3200   # examples before copies, whole batches: steps = ceil(epochs x n x (1 + copies) / batch)
            steps = lambda s: math.ceil(s.epochs * math.ceil(n * (1 + s.augment) / s.batch_size))  # noqa: E731
            for arm, multiple in (("slimbert_augment", 1), ("slimbert_augment_x3", 3)):
                spec = Q.task_spec(task, arm, True)
                assert spec.augment == Q.AUGMENT[arm][0][task] > 0
                assert abs(steps(spec) - multiple * steps(base)) <= multiple, (task, arm)
                assert spec.model_dump(exclude={"augment", "epochs"}) == base.model_dump(exclude={"augment", "epochs"})
                if task in Q.S["ablation_tasks"] or task == "rte":   # RTE: the smallest task, where TinyBERT's gain is
                    assert arm in Q.arms_for(task)
    finally:
        Q.configure("cpu")


def test_paths_outside_the_repo_are_recorded_whole(tmp_path):
    assert Q._shown(tmp_path / "x") == str(tmp_path / "x")
    assert Q._shown(Q.ROOT / "runs" / "x") == "runs/x"


def test_a_busy_machine_is_refused_unless_forced(monkeypatch, capsys):
    monkeypatch.setattr(Q.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    monkeypatch.setattr(Q.os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit) as e:
        Q.refuse_if_busy(False)
    assert e.value.code == 2
    assert "the machine is busy: 1-min load average 9.00 on 2 cores (4.50 per core > 0.5)" in capsys.readouterr().err
    Q.refuse_if_busy(True)
    monkeypatch.setattr(Q.os, "getloadavg", lambda: (0.4, 0.4, 0.4))
    Q.refuse_if_busy(False)


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_jobs_put_whole_rows_first_and_every_teacher_before_its_students(scale):
    Q.configure(scale)
    try:
        jobs = Q.jobs()
        assert jobs[0] == ("corpus",) and len(set(jobs)) == len(jobs) - 1  # latency runs twice, nothing else
        where = {j: i for i, j in reversed(list(enumerate(jobs)))}
        first_latency = where[("latency",)]
        for task in Q.TASKS:
            for seed in Q.TASKS[task]["seeds"]:
                teacher = ("finetune", task, "source", Q.teacher_seed(task, seed))
                assert teacher in where and where[teacher] < where[("finetune", task, "slimbert", seed)]
            # seed 0 of every main arm, on every task, comes before latency and before any other seed
            for arm in ("slimbert", "embed", "random_init"):
                first = ("finetune", task, arm, Q.seeds_for(task, arm)[0])
                assert where[first] < first_latency
                assert all(where[("finetune", task, arm, s)] > first_latency for s in Q.seeds_for(task, arm)[1:])
        for arm in Q.TRANSFER_ARMS:
            assert where[("transfer", arm)] < where[("similarity", arm)]
        # a source that ran with this seed teaches it; otherwise the first source run does
        sources = Q.seeds_for("mrpc", "source")
        assert Q.teacher_seed("mrpc", sources[0]) == sources[0]
        assert Q.teacher_seed("mrpc", 99) == sources[0]
    finally:
        Q.configure("cpu")


def test_every_arm_is_timed_under_its_architectures_latency_name():
    Q.configure("cpu")
    names = {arm: Q.latency_name(arm) for task in Q.TASKS for arm in Q.arms_for(task)}
    assert names["source"] == "source"
    assert {a: names[a] for a in Q.COOKBOOK_ONLY} == {a: a for a in Q.COOKBOOK_ONLY}
    # the source-block students are another architecture, which the latency job does not time
    assert {a for a, n in names.items() if n is None} == {"pruned_source_block", "random_source_block",
                                                          "pruned_source_block_mean", "random_source_block_mean"}
    # every other student (transferred, random init, levers) has slimbert's architecture
    assert {a for a, n in names.items() if n == "student"} == set(names) - {"source", *Q.COOKBOOK_ONLY} - {
        a for a, n in names.items() if n is None}
    assert [names[a] for a in ("slimbert", "random_init", "pruned_init", "slimbert_x10", "random_init_mean")] == [
        "student"] * 5
