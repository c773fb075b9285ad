"""The recipe engine: presets, every problem at once with key paths and lines, overrides, balance, plan."""

import json
import subprocess
import sys

import pytest
import yaml

from slimbert.recipe import RecipeError, build_plan, load_recipe, presets
from slimbert.recipe.balance import solve
from slimbert.recipe.overrides import apply_overrides, parse_override
from slimbert.models import count, preset
from conftest import REPO, write_recipe


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "slimbert.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("name", ["mobilebert", "mobilebert-tiny", "quickstart"])
def test_presets_validate(name, minilm_path):
    assert name in presets()
    r = load_recipe(presets()[name])
    assert r.student_config.num_hidden_layers == r.recipe.student.num_layers


@pytest.mark.e2e
def test_plan_of_the_paper_preset_reports_the_papers_counts():
    done = cli("plan", "mobilebert", "--json", "--no-measure")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["student"]["params"]["total"] == 25_359_104
    # The paper's IB-BERT_LARGE, plus the residual gate (one per inter feature per layer) a teacher derived
    # from a pretrained source starts from (teacher/build.py).
    assert plan["teacher"]["params"]["total"] == 294_205_184 + 24 * 512
    assert plan["seq_len"] == 512
    assert plan["student"]["flops"]["total"] == count(preset("mobilebert"), seq_len=512).total_flops
    assert {"teacher", "student", "layer_map", "stages"} <= set(plan)
    assert len(plan["layer_map"]) == 24 and plan["layer_map"][5]["teacher_layer"] == 6
    assert plan["stages"][0]["kind"] == "teacher_adaptation"  # slimbert's replacement for IB-BERT pre-training
    prog = plan["stages"][1]
    assert (prog["kind"], prog["steps"], prog["batch_size"], prog["lr"]) == ("progressive", 240_000, 2048, 1.5e-3)
    assert plan["stages"][2]["steps"] == 500_000


def test_plan_without_measuring_needs_no_tokenizer_offline(tmp_path, monkeypatch):
    """The paper preset names a hub id (bert-large-uncased): offline with an empty cache, a plan that does not
    measure reads no tokenizer and no weights, so it plans and notes what it left unchecked; validate and a
    measured plan, which read them, still refuse. Nothing may reach a network."""
    import socket

    from huggingface_hub import constants
    from typer.testing import CliRunner

    from slimbert.cli import app

    def no_network(*args, **kwargs):
        raise AssertionError("planning reached for the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    recipe = str(REPO / "slimbert" / "presets" / "mobilebert.yaml")
    runner = CliRunner()
    done = runner.invoke(app, ["plan", recipe, "--no-measure", "--json"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    (note,) = plan["notes"]
    assert note.startswith("source.model: 'bert-large-uncased' is a hub id") and "not checked" in note, note
    assert plan["student"]["params"]["total"] == 25_359_104
    done = runner.invoke(app, ["plan", recipe, "--no-measure"])
    assert done.exit_code == 0, done.output
    assert [l for l in done.stdout.splitlines() if l.startswith("note ")] == [f"note {note}"], done.stdout
    for args in (["validate", recipe], ["plan", recipe]):
        done = runner.invoke(app, args)
        assert done.exit_code == 2 and "HF_HUB_OFFLINE" in done.output and "Traceback" not in done.output, done.output


def test_plan_without_measuring_still_checks_a_local_source(tmp_path, tiny_source, shared_data):
    """reads_weights=False relaxes only what cannot be checked offline: a local source without weights is refused
    as by validate, and a sound one plans without notes."""
    import shutil

    path = write_recipe(tmp_path, tiny_source, shared_data)
    assert load_recipe(path, reads_weights=False).notes == []
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_source, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(RecipeError, match="has no weights"):
        load_recipe(path, [f"source.model={broken}"], reads_weights=False)


def test_every_problem_is_listed_with_key_path_and_line(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data)
    text = path.read_text().replace("seq_len: 32", "seq_len: 32\n  colour: blue")
    text = text.replace("steps_per_layer: 6", "steps_per_layer: -6")
    text = text.replace("alpha: 0.5", "alpha: 1.5")
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    got = {p.path: p for p in e.value.problems}
    assert set(got) == {"data.colour", "transfer.0.steps_per_layer", "transfer.1.alpha"}
    lines = text.splitlines()
    for p in got.values():
        assert p.line is not None and p.path.split(".")[-1] in lines[p.line - 1]
    assert "unknown key" in got["data.colour"].message
    assert "greater than 0" in got["transfer.0.steps_per_layer"].message


@pytest.mark.parametrize("edit, path, words", [
    (lambda r: r["student"].update(num_heads=5), "student.num_heads", "divisible"),
    (lambda r: r["student"].update(num_heads=8, intra_size=32), "transfer.0.losses.attention", "equal head counts"),
    (lambda r: r.update(layer_map=[1, 9]), "layer_map.1", "out of range"),
    (lambda r: r.update(layer_map=[1]), "layer_map", "one teacher layer per student layer"),
    (lambda r: r["transfer"][1].update(temperature=0), "transfer.1.temperature", "greater than 0"),
    (lambda r: r["transfer"][0].update(kind="telepathy"), "transfer.0.kind", "unknown stage kind"),
    (lambda r: r["transfer"].insert(0, {"kind": "teacher_adaptation", "steps": 3}), "transfer.0.kind", "nothing to adapt"),
    (lambda r: r["transfer"][0].update(warmup_steps=50), "transfer.0.warmup_steps", "longer than the stage"),
    (lambda r: r["data"]["corpus"].update(files=["nowhere/*.txt"]), "data.corpus.files.0", "no file matches"),
    (lambda r: r["source"].update(model="./no-such-model"), "source.model", "model directory not found"),
    (lambda r: r["student"].update(copy_embeddings=True), "student.copy_embeddings", "compatible vocab"),
    (lambda r: r.update(balance={"mha_ffn_ratio": 0.5, "max_params": 10}), "student.intra_size", "conflicts with balance"),
    (lambda r: r.update(plugins=["my.module"]), "plugins", "--allow-plugins"),
    (lambda r: r["student"].update(embedding={"size": 128}), "student.embedding.size", "must be <="),
])
def test_cross_field_and_schema_checks(tmp_path, tiny_source, shared_data, edit, path, words):
    recipe_path = write_recipe(tmp_path, tiny_source, shared_data)
    data = yaml.safe_load(recipe_path.read_text())
    edit(data)
    recipe_path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe_path)
    assert any(p.path == path and words in p.message for p in e.value.problems), e.value.problems


def test_teacher_without_mlm_head_needs_alpha_one(tmp_path, minilm_path, shared_data):
    path = write_recipe(tmp_path, minilm_path, shared_data,
                        student={"num_layers": 2, "inter_size": 384, "intra_size": 96, "num_heads": 12,
                                 "copy_embeddings": False})
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert [p.path for p in e.value.problems] == ["transfer.1.alpha"]
    assert "no MLM head" in e.value.problems[0].message


@pytest.mark.e2e
def test_yaml_syntax_error_and_empty_file_via_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstudent: {num_layers: 2\n")
    done = cli("validate", str(bad))
    assert done.returncode == 2 and "invalid YAML" in done.stderr and "Traceback" not in done.stderr
    assert "bad.yaml:3" in done.stderr
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    done = cli("validate", str(empty))
    assert done.returncode == 2 and "empty" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.e2e
def test_overrides(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data)
    r = load_recipe(path, ["transfer.0.optimizer.lr=5e-4", "student.num_layers=3", "layer_map=last",
                           "data.corpus.files=[" + str(shared_data / "gutenberg" / "*.txt") + "]"])
    assert r.recipe.transfer[0].optimizer.lr == 5e-4
    assert r.layer_map == [2, 3, 4]
    assert len(r.corpus_files) == 2
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    for bad, words in [("novalue", "key.path=value"), ("a..b=1", "dot-separated"), ("transfer.7.steps=1", "out of range"),
                       ("name.x=1", "no such key")]:
        with pytest.raises(RecipeError, match=words):
            apply_overrides({"name": "n", "transfer": [{}]}, [bad])
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["student.num_layers=zero"])
    assert e.value.problems[0].path == "student.num_layers"
    done = cli("validate", str(path), "--set", "transfer.0.batch_size=-1", "--set", "oops")
    assert done.returncode == 2 and "oops" in done.stderr and "Traceback" not in done.stderr


def test_balance_solves_within_ratio_and_budget(tmp_path, tiny_source, shared_data):
    base = preset("mobilebert")
    best = solve(base, ratio=0.5, tolerance=0.1, max_params=25.4e6, max_flops=None, stacked=[1, 2, 4, 8], seq_len=128)
    assert abs(best.ratio - 0.5) <= 0.1 and best.params <= 25.4e6 and best.feasible >= 1
    config = preset("mobilebert", intra_bottleneck_size=best.intra_size, num_feedforward_networks=best.stacked,
                    intermediate_size=best.ffn_size)
    assert count(config).total_params == best.params  # the solver counts with the same formulas
    assert "largest of" in best.reason and f"I={best.intra_size}" in best.reason
    with pytest.raises(ValueError, match="no intra width"):
        solve(base, ratio=0.5, tolerance=0.05, max_params=1e6, max_flops=None, stacked=[1, 2], seq_len=128)
    # Through a recipe: the plan shows what was chosen and why.
    path = write_recipe(tmp_path, tiny_source, shared_data,
                        student={"num_layers": 2, "inter_size": 64, "intra_size": None, "ffn": None, "num_heads": 4,
                                 "embedding": {"size": 32}, "copy_embeddings": False},
                        balance={"mha_ffn_ratio": 0.5, "tolerance": 0.15, "max_params": 2.2e6})
    r = load_recipe(path)
    plan = build_plan(r)
    assert plan["balance"]["params"] <= 2.2e6 and plan["student"]["params"]["total"] == plan["balance"]["params"]
    impossible = write_recipe(tmp_path, tiny_source, shared_data,
                              student={"num_layers": 2, "inter_size": 64, "intra_size": None, "ffn": None,
                                       "num_heads": 4, "embedding": {"size": 32}, "copy_embeddings": False},
                              balance={"max_params": 1000})
    with pytest.raises(RecipeError, match="impossible balance"):
        load_recipe(impossible)


@pytest.mark.e2e
def test_recipes_commands(tmp_path):
    assert "quickstart" in cli("recipes", "list").stdout
    assert cli("recipes", "show", "mobilebert").stdout.startswith("# MobileBERT")
    done = cli("recipes", "new", "mine", "--from", "mobilebert-tiny", cwd=tmp_path)
    assert done.returncode == 0
    assert "name: mine" in (tmp_path / "mine.yaml").read_text()
    assert cli("recipes", "new", "mine", cwd=tmp_path).returncode == 2  # no silent overwrite


@pytest.mark.e2e
def test_plan_measures_stage_times(tmp_path, tiny_source, shared_data):
    path = write_recipe(tmp_path, tiny_source, shared_data)
    done = cli("plan", str(path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    stages = json.loads(done.stdout)["stages"]
    for row in stages:
        assert row["estimate"]["step_seconds"] > 0
        assert row["estimate"]["seconds"] == pytest.approx(row["estimate"]["step_seconds"] * row["steps"], abs=0.06)  # rounded to 0.1 s
        assert row["estimate"]["tokens_per_s"] > 0 and 0 < row["estimate"]["mfu"] < 1
        assert row["estimate"]["gpus"] == 8 and row["estimate"]["seconds_on_gpus"] >= 0
        assert "H100 SXM at 35% MFU (assumed)" in row["estimate"]["gpus_basis"]  # on paper, from a CPU
    shown = cli("plan", str(path), "--gpus", "4", "--device", "cpu")
    assert shown.returncode == 0, shown.stderr[-2000:]
    text = " ".join(shown.stdout.split())  # rich wraps at the terminal's width
    assert "whole run:" in text and "on paper" in text and "4 x H100 SXM" in text
    assert not any(tmp_path.glob("runs*")), "plan must not write a run directory"
