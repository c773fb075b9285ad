"""benchmarks/quality/run.py: every arm's derived recipe validates, at every scale, and equal compute holds;
round 2's arms derive exactly what they were measured with; round 3 and the frontier report."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality"))
import arms as A  # noqa: E402
import report as QR  # noqa: E402
import run as Q  # noqa: E402

ROUND2 = Path(__file__).with_name("quality_round2_arms.json")


def _digest(x) -> str:
    return hashlib.sha256(json.dumps(x, sort_keys=True).encode()).hexdigest()[:16]


# Finetune keys added after round 2, at the default that does what round 2 did: left out of the spec digest.
LATER_DEFAULTS = {"cut_from": "source"}


def _spec(task: str, arm: str) -> dict:
    spec = json.loads(json.dumps(Q.task_spec(task, arm).model_dump()))
    return {k: v for k, v in spec.items() if LATER_DEFAULTS.get(k, object()) != v}


def snapshot(work: Path) -> dict:
    """Every arm's derived recipe (text, digested), fine-tuning spec (digested), seeds, latency name, student and
    the job order, at every scale: what tests/quality_round2_arms.json recorded from the code round 2 ran."""
    out = {}
    for scale in ("cpu", "gpu", "smoke"):
        A.configure(scale, str(work))
        norm = lambda t: t.replace(str(A.WORK), "<WORK>").replace(str(A.DATA), "<DATA>")  # noqa: E731
        arms = sorted({a for t in A.TASKS for a in A.arms_for(t)})
        out[scale] = {
            "recipes": {a: hashlib.sha256(norm(A.transfer_recipe(a).read_text()).encode()).hexdigest()[:16]
                        for a in A.TRANSFER_ARMS},
            "arms_for": {t: A.arms_for(t) for t in A.TASKS},
            "seeds": {t: {a: A.seeds_for(t, a) for a in A.arms_for(t)} for t in A.TASKS},
            "specs": {t: {a: _digest(_spec(t, a)) for a in A.arms_for(t)}
                      for t in A.TASKS},
            "latency_name": {a: A.latency_name(a) for a in arms},
            "student": {a: ["random" if A.ARMS[a].random_init else "transfer", A.transfer_arm(a)]
                        for a in arms if a != "source"},
            "jobs": [list(j) for j in Q.jobs()],
        }
    A.configure("cpu")
    return out


def test_round2_arms_derive_what_they_were_measured_with(tmp_path):
    """The arm table reproduces round 2 byte for byte: every recipe, fine-tuning spec, seed list, latency name,
    student and job (round 3 only adds arms after round 2's, and jobs after its last one)."""
    want, got = json.loads(ROUND2.read_text()), snapshot(tmp_path)
    for scale, g in got.items():
        w = want[scale]
        for key in ("recipes", "latency_name", "student"):
            assert {a: g[key][a] for a in w[key]} == w[key], (scale, key)
        for key in ("seeds", "specs"):
            for task, arms in w[key].items():
                assert {a: g[key][task][a] for a in arms} == arms, (scale, key, task)
        for task, arms in w["arms_for"].items():
            assert g["arms_for"][task][:len(arms)] == arms, (scale, task)
            assert all(A.ARMS[a].round == 3 for a in g["arms_for"][task][len(arms):])
        assert g["jobs"][:len(w["jobs"])] == w["jobs"], scale
        new = [j for j in g["jobs"][len(w["jobs"]):] if len(j) > 1]
        assert new and all(A.ARMS[j[-1] if j[0] != "finetune" else j[2]].round == 3 for j in new), scale
    assert {a: lr for a, lr in QR.STUDENT_LR.items() if A.ARMS[a].round == 2} == want["student_lr"]
    assert QR.COOKBOOK == want["cookbook"]


@pytest.mark.parametrize("scale", ["cpu", "gpu", "smoke"])
def test_every_transfer_arm_validates_at_equal_student_tokens(scale, tmp_path, shared_data):
    import yaml

    from slimbert.recipe import load_recipe

    Q.configure(scale, str(tmp_path))
    Q.corpus_file().parent.mkdir(parents=True)
    Q.corpus_file().write_text((shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text())
    tokens, embedding_steps = {}, {}
    for arm in (a for a in Q.TRANSFER_ARMS if A.ARMS[a].round == 2):  # round 3 starts from the source
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
    assert embedding_steps["embed_long"] == A.EMBED_LONG_X * embedding_steps["embed"]
    # slimbert_x10 is the same lever for the whole transfer: every student stage TOKENS_X times longer
    if scale != "smoke":
        assert abs(tokens.pop("slimbert_x10") - A.TOKENS_X * tokens["slimbert"]) <= 0.05 * A.TOKENS_X * tokens["slimbert"]
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
        assert Q.task_spec("stsb", "slimbert").regression
        assert Q.task_spec("stsb", "slimbert").max_examples == 500
        assert Q.task_spec("stsb", "source").epochs == 3
        # the intermediate-layer KD lever differs from the slimbert arm in distill_hidden alone
        lever, main = Q.task_spec("stsb", "slimbert_hidden_kd"), Q.task_spec("stsb", "slimbert")
        assert lever.distill_hidden == 1.0 and main.distill_hidden == 0.0
        assert lever.model_dump(exclude={"distill_hidden"}) == main.model_dump(exclude={"distill_hidden"})
    finally:
        Q.configure("cpu")


def finetune_steps(spec, n: int) -> int:
    """A fine-tune's optimiser steps on n examples before copies: whole batches, ceil(epochs x n x (1 + copies) /
    batch)."""
    return math.ceil(spec.epochs * math.ceil(n * (1 + spec.augment) / spec.batch_size))


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_augmentation_levers_read_the_examples_they_claim(scale):
    """slimbert_augment takes the steps of 5f (its baseline: same LR), slimbert_augment_x3 three times as many;
    the copies' count is what changes, and the fine-tune differs from 5f in nothing else."""
    Q.configure(scale)
    try:
        for task in Q.TASKS:
            base = Q.task_spec(task, "slimbert_lr_high")
            n = 3200   # examples before copies
            for arm, multiple in (("slimbert_augment", 1), ("slimbert_augment_x3", 3)):
                spec = Q.task_spec(task, arm)
                assert spec.augment == A.ARMS[arm].augment[0][task] > 0
                assert abs(finetune_steps(spec, n) - multiple * finetune_steps(base, n)) <= multiple, (task, arm)
                assert spec.model_dump(exclude={"augment", "epochs"}) == base.model_dump(exclude={"augment", "epochs"})
                if task in Q.S["ablation_tasks"] or task == "rte":   # RTE: the smallest task, where TinyBERT's gain is
                    assert arm in A.arms_for(task)
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
        # latency runs after round 2's seed 0, after round 2 and after round 3; nothing else runs twice
        assert jobs[0] == ("corpus",) and len(set(jobs)) == len(jobs) - 2
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


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_task_cut_levers_take_3x_the_baselines_steps_and_change_one_thing(scale):
    """7f (more epochs) and 7g (teacher-labelled copies) spend 3x 7e's fine-tuning steps, each in its own way, and
    their recipes differ from 7e's in that alone; they run 3 seeds on the round-3 tasks, by hand."""
    Q.configure(scale)
    try:
        for task in (t for t in Q.TASKS if t in A.ROUND3_TASKS):
            base = Q.task_spec(task, "task_cut_4x")
            n = 3200
            for arm, changed in (("task_cut_4x_long", {"epochs"}), ("task_cut_4x_augment", {"augment"})):
                spec = Q.task_spec(task, arm)
                assert abs(finetune_steps(spec, n) - 3 * finetune_steps(base, n)) <= 3, (task, arm)
                assert {k for k, v in spec.model_dump().items() if base.model_dump()[k] != v} == changed
                assert A.ARMS[arm].task_cut == A.ARMS["task_cut_4x"].task_cut
                assert arm in A.arms_for(task) and len(A.seeds_for(task, arm)) == 3
                assert ("finetune", task, arm, 0) not in Q.jobs(3)
    finally:
        Q.configure("cpu")


def test_every_arm_is_timed_under_its_architectures_latency_name():
    Q.configure("cpu")
    names = {arm: A.latency_name(arm) for task in Q.TASKS for arm in A.arms_for(task)}
    assert names["source"] == "source"
    assert {a: names[a] for a in A.COOKBOOK_ONLY} == {a: a for a in A.COOKBOOK_ONLY}
    # the source-block students are another architecture, which the latency job does not time
    assert {a for a, n in names.items() if n is None} == {"pruned_source_block", "random_source_block",
                                                          "pruned_source_block_mean", "random_source_block_mean"}
    # every other student (transferred, random init, levers) has slimbert's architecture
    assert {a for a, n in names.items() if n == "student"} == set(names) - {"source", *A.COOKBOOK_ONLY} - {
        a for a, n in names.items() if n is None} - set(A.round3_arms())
    # the students cut from the source are timed as their own shapes; the random-init control shares its shape
    assert [names[a] for a in ("cut_2x", "cut_4x", "random_cut_4x")] == ["cut_2x", "cut_4x", "cut_4x"]
    assert [names[a] for a in ("slimbert", "random_init", "pruned_init", "slimbert_x10", "random_init_mean")] == [
        "student"] * 5


@pytest.mark.parametrize("scale", ["cpu", "smoke"])
def test_round3_arms_cut_the_source_to_their_shapes(scale, tmp_path, shared_data):
    """The students cut from the source validate as prune_from_source recipes of the goals' sizes, take
    CUT_STAGES, run in one `--round 3` command, and their random-init control has the 4x student's shape."""
    from slimbert.models.modeling import SlimBertModel
    from slimbert.recipe import load_recipe
    from slimbert.recipe.schema import Recipe

    A.configure(scale, str(tmp_path))
    try:
        A.corpus_file().parent.mkdir(parents=True)
        A.corpus_file().write_text((shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text())
        encoder = {}
        for arm in ("cut_2x", "cut_4x"):
            r = load_recipe(A.transfer_recipe(arm))
            assert r.recipe.student.init == "prune_from_source" and r.recipe.layer_map == "importance"
            assert [st.kind for st in r.recipe.transfer] == [st["kind"] for st in A.CUT_STAGES]
            model = SlimBertModel(r.student_config)
            encoder[arm] = sum(p.numel() for n, p in model.named_parameters() if n.startswith("encoder."))
        assert 10.65e6 / encoder["cut_2x"] >= 2 and 10.65e6 / encoder["cut_4x"] >= 4, encoder
        assert A.transfer_arm("random_cut_4x") == "cut_4x" and A.ARMS["random_cut_4x"].random_init
        jobs = Q.jobs(3)
        assert ("finetune", "sst2", "source", 0) in jobs and jobs[-1] == ("latency",)
        assert {j[2] for j in jobs if j[0] == "finetune"} == {"source", *A.group("round3")}
        assert [A.ARMS[a].family for a in A.group("round3")] == [A.CUT, A.CUT, A.CUT, A.CUT, A.CUT_CONTROL]
        # the task cuts: the task teacher cut to the same shapes on the task's sentences, task KD in the same run
        for arm, shape in (("task_cut_2x", "cut_2x"), ("task_cut_4x", "cut_4x")):
            teacher = tmp_path / "finetuned" / "mrpc-source-0"
            spec = {**Q.task_spec("mrpc", arm).model_dump(exclude_defaults=True), "distill": True,
                    "train": str(shared_data / "MRPC" / "train.tsv"), "dev": str(shared_data / "MRPC" / "dev.tsv")}
            raw = yaml.safe_load(A.task_cut_recipe("mrpc", arm, 1, teacher, spec).read_text())
            Recipe.model_validate(raw)   # the schema's checks (the paths are checked when it runs)
            assert raw["seed"] == 1 and raw["source"]["model"] == str(teacher)
            assert raw["data"]["corpus"]["files"] == [str(A.task_corpus_file("mrpc"))]
            assert raw["finetune"]["distill_hidden"] == 1.0 and raw["finetune"].get("pooling", "cls") == "cls"
            s = A.CUT_SHAPES[shape]
            assert {k: raw["student"][k] for k in ("num_layers", "inter_size", "num_heads")} == {
                k: s[k] for k in ("num_layers", "inter_size", "num_heads")} and raw["student"]["ffn"]["size"] == s["ffn"]
            assert [st["kind"] for st in raw["transfer"]] == [st["kind"] for st in A.TASK_CUT_STAGES]
            assert A.latency_name(arm) == shape
    finally:
        A.configure("cpu")


def test_the_frontier_renders_from_whatever_results_exist(tmp_path):
    """Each arm at its fastest variant within a point of its fp32 quality; the source's int8 variants as points
    of their own; what is missing is listed, not invented."""
    latency = {"arms": ["source", "cut_4x", "source-embedding"],
               "p50_ms": {"source-fp32": 20.0, "source-int8": 9.0, "source-openvino-int8": 7.0,
                          "cut_4x-fp32": 6.0, "cut_4x-int8": 3.0, "source-embedding-fp32": 19.0,
                          "source-embedding-int8": 8.0},
               "quality": {"source-fp32": 0.86, "source-int8": 0.845, "source-openvino-int8": 0.857,
                           "cut_4x-fp32": 0.82, "cut_4x-int8": 0.819,
                           "source-embedding-fp32": {"mrpc": 1.0, "rte": 1.0},
                           "source-embedding-int8": {"mrpc": 0.98, "rte": 0.97}}}
    sst2 = {"source": {"accuracy": 0.86}, "cut_4x": {"accuracy": 0.815}, "random_cut_4x": {"accuracy": 0.78},
            "pruned_source_block": {"accuracy": 0.7}}
    f = QR.frontier(latency, {"sst2": sst2}, {"cut_2x": {"mrpc": 0.9, "rte": 0.9}})
    rows = {(r["kind"], r["point"]): r for r in f["points"]}
    assert rows[("task", "cut_4x")]["runtime"] == "ort int8" and rows[("task", "cut_4x")]["p50_ms"] == 3.0
    assert rows[("task", "random_cut_4x")]["p50_ms"] == 3.0   # its shape's timing
    # the source at its best: OpenVINO int8 is within a point; ORT int8 (-1.5) is a point of its own
    assert rows[("task", "source")]["runtime"] == "openvino int8"
    assert rows[("task", "source, ort int8, no training")]["quality"] == pytest.approx(0.845)
    assert rows[("embedding", "source, ort int8, no training")]["quality"] == pytest.approx(0.975)
    assert any("pruned_source_block" in m for m in f["missing"]) and any("cut_2x" in m for m in f["missing"])
    QR.frontier_chart(f, tmp_path)
    assert (tmp_path / "quality_frontier.png").is_file()
    assert "| cut_4x |" in "\n".join(QR.frontier_markdown(f))


def test_a_round3_report_carries_the_earlier_runs_rows_as_measured():
    """`all --round 3` in a fresh workspace: round 2's rows, similarity, transfers and goals stay in the report as
    their run measured them (marked), this run's rows replace theirs, and carrying twice names the first run."""
    A.configure("cpu")
    row = lambda acc, **kw: {"accuracy": acc, "accuracy_std": 0.0, "accuracy_se": 0.0, "seeds": [0],  # noqa: E731
                             **kw}
    before = {"scale": "cpu", "machine": {"cpu": "old CPU", "git": "abc"}, "elapsed_seconds": 3600.0,
              "sessions": [{}, {}],
              "tasks": {"sst2": {"source": row(0.86), "slimbert": row(0.80, kept_fraction=0.93),
                                 "random_init": row(0.79)}},
              "embedding": {"embed": {"mrpc": 0.7, "rte": 0.6}}, "transfer": {"embed": {"seconds": 9}},
              "cookbook": {"slimbert": {"recipe": "mobilebert"}},
              "goals": {"sst2_kept_fraction": {"measured": 0.93, "target": 0.97, "reached": False},
                        "total_wall_hours": {"measured": 1.0, "target": 2.0}}}
    now = {"scale": "cpu", "tasks": {"sst2": {"source": row(0.87), "cut_4x": row(0.85, kept_fraction=0.977)}},
           "embedding": {"cut_4x": {"mrpc": 0.9, "rte": 0.85}}, "transfer": {}, "cookbook": {},
           "goals": {"total_wall_hours": {"measured": 1.5, "target": 2.0}}}
    q = QR.carry_over(json.loads(json.dumps(now)), before)
    sst2 = q["tasks"]["sst2"]
    assert list(sst2) == ["source", "slimbert", "random_init", "cut_4x"]   # the arm table's order
    assert sst2["source"]["accuracy"] == 0.87 and "carried" not in sst2["source"]   # this run's row wins
    assert sst2["slimbert"]["carried"] and sst2["slimbert"]["kept_fraction"] == 0.93   # as measured
    assert set(q["embedding"]) == {"embed", "cut_4x"} and "embed" in q["transfer"] and "slimbert" in q["cookbook"]
    assert q["goals"]["sst2_kept_fraction"]["carried"] and q["goals"]["total_wall_hours"]["measured"] == 1.5
    assert q["carried"]["from"]["machine"]["cpu"] == "old CPU"
    again = QR.carry_over(json.loads(json.dumps(now)), {**q, "machine": {"cpu": "new CPU"}})
    assert again["carried"]["from"]["machine"]["cpu"] == "old CPU"   # the run that measured them
    assert QR.carry_over(json.loads(json.dumps(now)), {**before, "scale": "gpu"}) == now   # never across scales


def test_cut_latency_judges_each_cut_by_the_goal_its_parameter_cut_reaches():
    import cut_latency as CL

    def row(model, ms):
        rt, prec = model.split()[1:]
        return {"model": model, "runtime": rt, "precision": prec, "latency": {"p50": ms / 1e3}}

    rows = [row("m openvino bf16", 2.0), row("m openvino int8", 1.5), row("m ort fp32", 4.0)]
    fid = {"m openvino bf16": {"MRPC": 0.96, "RTE": 0.95}, "m openvino int8": {"MRPC": 0.96, "RTE": 0.94},
           "m ort fp32": {"MRPC": 0.97, "RTE": 0.96}}
    # 2x: the fastest variant at >= 0.95 on both tasks (int8 misses RTE), its speed-up over the source's 4 ms
    # (p50s are in seconds, as bench() reports them)
    assert CL.goal_row("m", 2.0, 1.9, rows, fid, rows[1], 4e-3) == (
        "| m | 2.000x | >= 0.95 on both, >= 1.8x | openvino bf16 (0.960 / 0.950) | 2.00x | 1.90x |")
    # 4x fewer is judged at 0.90 and 3x: int8 is the fastest that holds it
    assert "| >= 0.9 on both, >= 3.0x | openvino int8 (0.960 / 0.940) | 2.67x |" in CL.goal_row(
        "m", 4.01, 3.8, rows, fid, rows[1], 4e-3)
    # a hair short of 2x is shown, with no goal, at its best variant: not dropped from the table
    assert CL.goal_row("m", 1.999, 1.9, rows, fid, rows[0], 4e-3) == (
        "| m | 1.999x | none: under 2x fewer | its best: openvino bf16 (0.960 / 0.950) | 2.00x | 1.90x |")
    # no variant at the goal's fidelity: the best fidelity reached on each task is reported
    low = {k: {"MRPC": 0.9, "RTE": v["RTE"] - 0.1} for k, v in fid.items()}
    assert "none: best fidelity 0.900 / 0.860 | - |" in CL.goal_row("m", 2.0, 1.9, rows, low, rows[1], 4e-3)
