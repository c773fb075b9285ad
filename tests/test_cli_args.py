"""Bad arguments to every command: exit 2, a message naming the argument or file, no traceback, nothing written.
In process (typer's CliRunner) for speed; one subprocess check that the installed entry point agrees (e2e). A
property test throws random argument strings at every command: only exit 0 or 2 (a usage or input error) may
come out, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from conftest import write_recipe
from slimbert.cli import app


def invoke(*args, env: dict | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception!r}\n{result.output}")
    return result.exit_code, result.output


def tiny_onnx(path: Path, identity: bool = True) -> Path:
    """A valid ONNX model (input_ids -> a float output) that `slimbert export` did not make."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s"])
    graph = helper.make_graph([helper.make_node("Cast", ["input_ids"], ["last_hidden_state"], to=TensorProto.FLOAT)],
                              "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_source, shared_data) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-args")
    good = tiny_onnx(root / "plain" / "model.onnx")
    truncated = root / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = root / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot onnx at all" * 10)
    empty = root / "empty.onnx"
    empty.write_bytes(b"")
    not_model = root / "not-a-model"
    not_model.mkdir()
    (not_model / "notes.txt").write_text("hello")
    bad_config = root / "bad-config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text('{"model_type": "bert", "hidden_size": 64.5}')
    (root / "dir.yaml").mkdir()
    a_file = root / "a-file"
    a_file.write_text("x")
    busy = root / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    recipe = write_recipe(root, tiny_source, shared_data)
    return {"GOOD": good, "PLAIN_DIR": good.parent, "TRUNCATED": truncated, "GARBAGE": garbage, "EMPTY": empty,
            "NOT_MODEL": not_model, "BAD_CONFIG": bad_config, "SOURCE": tiny_source, "FILE": a_file, "BUSY": busy,
            "RECIPE": recipe, "MISSING": root / "missing", "ROOT": root,
            "DIR_YAML": root / "dir.yaml"}


NUL = "D:\0_x"
LONG = "x" * 300

# (command line with @NAME@ placeholders, words the message must hold)
CASES = {
    "export": [
        (["export", "@SOURCE@", "--onnx", "--opset", "99"], "--opset"),
        (["export", "@SOURCE@", "--onnx", "--opset", "13"], "--opset"),
        (["export", "@SOURCE@", "--onnx", "--opset", "x"], "--opset"),
        (["export", "@SOURCE@"], "--onnx"),
        (["export", "@SOURCE@", "--onnx", "--quantize", "int4"], "only int8"),
        (["export", "@SOURCE@", "--onnx", "--task", "translation"], "--task"),
        (["export", "@NOT_MODEL@", "--onnx"], "no model here"),
        (["export", "@MISSING@", "--onnx"], "no such folder"),
        (["export", "@FILE@", "--onnx"], "no such folder"),
        (["export", "@BAD_CONFIG@", "--onnx"], "config.json"),
        (["export", "@SOURCE@", "--onnx", "--out", "@BUSY@"], "not empty"),
        (["export", "@SOURCE@", "--onnx", "--out", "@FILE@"], "is a file"),
        (["export", NUL, "--onnx"], "NUL|null byte"),
        (["export", "@SOURCE@", "--onnx", "--out", f"@ROOT@/{LONG}"], "255"),
        (["export"], "say which format"),                     # no path: the newest run, but a format first
    ],
    "bench": [
        (["bench", "@TRUNCATED@"], "not a readable ONNX model"),
        (["bench", "@GARBAGE@"], "not a readable ONNX model"),
        (["bench", "@EMPTY@"], "ONNX"),
        (["bench", "@GOOD@", "--runs", "0"], "--runs"),
        (["bench", "@GOOD@", "--runs", "-3"], "--runs"),
        (["bench", "@GOOD@", "--runs", "10000000000"], "--runs"),
        (["bench", "@GOOD@", "--threads", "0"], "--threads"),
        (["bench", "@GOOD@", "--compare", "teacher"], "not made by `slimbert export`"),
        (["bench", "@GOOD@", "--compare", "gpt5"], "--compare"),
        (["bench", "@GOOD@", "--compare", "@TRUNCATED@"], "not a readable ONNX model"),
        (["bench", "@GOOD@", "--batch", "0"], "--batch"),
        (["bench", "@GOOD@", "--batch", "a,b"], "--batch"),
        (["bench", "@GOOD@", "--batch", "100000000"], "plausible bound"),
        (["bench", "@GOOD@", "--seq", "", "--runs", "1"], "--seq"),
        (["bench", "@GOOD@", "--seq", "99999999999"], "plausible bound"),
        (["bench", "@GOOD@", "--out", "@FILE@"], "is a file"),
        (["bench", "@MISSING@"], "no ONNX model"),
        (["bench", "@NOT_MODEL@"], "no ONNX model"),
        (["bench", NUL], "NUL|null byte"),
        (["bench"], "no export under"),                     # no files: the newest export, and there is none
    ],
    "count": [
        (["count", "nonsense"], "neither a preset"),
        (["count", "mobilebert", "--seq", "0"], "--seq"),
        (["count", "mobilebert", "--seq", "99999999999"], "--seq"),
        (["count", "@BAD_CONFIG@"], "not a slimbert config"),
        (["count", "@SOURCE@"], "not a slimbert config"),
        (["count", NUL], "neither a preset"),
        (["count"], "Missing argument"),
    ],
    "recipes": [
        (["recipes", "show", "nonsense"], "neither a recipe file nor a preset"),
        (["recipes", "show", "@GOOD@"], "not a readable YAML recipe"),    # a binary file (found by the fuzz test)
        (["recipes", "new", "x", "--from", "nonsense"], "neither a recipe file nor a preset"),
        (["recipes", "new", "@RECIPE@", "--from", "quickstart"], "exists"),
        (["recipes", "new", "@DIR_YAML@", "--from", "quickstart"], "is a folder"),
        (["recipes", "new", ""], "file name"),
        (["recipes", "new", NUL], "NUL|null byte"),
        (["recipes", "new", f"@ROOT@/{LONG}"], "255"),
        (["recipes", "new", "@MISSING@/sub/x"], "cannot write"),
        (["recipes", "nonsense"], "nonsense"),
    ],
    "run/validate/plan": [
        (["validate", "@MISSING@.yaml"], "not found"),
        (["validate", "nonsense"], "neither a recipe file nor a preset"),
        (["validate", "@RECIPE@", "--set", "novalue"], "key.path=value"),
        (["validate", "@RECIPE@", "--bogus"], "--bogus"),
        (["plan", "@RECIPE@", "--set", "student.num_layers=x", "--no-measure"], "valid integer"),
        (["run", "@RECIPE@", "--resume"], "--resume needs --out"),
        (["run", "@RECIPE@", "--out", "@FILE@"], "is a file"),
        (["run", "@RECIPE@", "--out", NUL], "NUL|null byte"),
        (["run", "@RECIPE@", "--out", f"@ROOT@/{LONG}"], "255"),
        (["run", "@RECIPE@", "--out", "@BUSY@"], "not empty"),
        (["run", "@RECIPE@", "--resume", "--out", "@BUSY@"], "not a slimbert run directory"),
    ],
}
TABLE = [(group, args, words) for group, rows in CASES.items() for args, words in rows]


def fill(args: list[str], files: dict[str, Path]) -> list[str]:
    out = []
    for a in args:
        for k, v in files.items():
            a = a.replace(f"@{k}@", str(v))
        out.append(a)
    return out


def test_every_command_has_bad_arguments_in_the_table():
    commands = {c.name or c.callback.__name__ for c in app.registered_commands} - {"version"}
    covered = {args[0] for _, args, _ in TABLE}
    assert commands | {"recipes"} <= covered | {"export_cmd"}, sorted(commands - covered)
    assert len(TABLE) >= 50


@pytest.mark.parametrize("group, args, words", TABLE, ids=[f"{g}:{' '.join(a)[:60]}" for g, a, _ in TABLE])
def test_bad_argument_exits_2_with_a_message(group, args, words, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in files["ROOT"].iterdir())
    code, output = invoke(*fill(args, files))
    assert code == 2, output
    assert "Traceback" not in output, output
    assert any(w in output for w in words.split("|")), output  # typer's own Path check says "null byte"
    assert output.strip(), "an exit 2 must say why"
    assert sorted(p.name for p in files["ROOT"].iterdir()) == before, "a refused command wrote something"
    assert not list(tmp_path.iterdir()), "a refused command wrote something"


@pytest.mark.e2e
def test_the_installed_entry_point_exits_2_too(files):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for args in (["bench", str(files["TRUNCATED"])], ["export", str(files["NOT_MODEL"]), "--onnx"],
                 ["bench", str(files["GOOD"]), "--compare", "teacher"]):
        done = subprocess.run([sys.executable, "-m", "slimbert.cli", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and done.stderr.strip()


# ---- property-based: random argument strings ------------------------------------------------------------------------

COMMANDS = [["validate"], ["plan", "--no-measure"], ["count"], ["recipes", "show"], ["bench"], ["export", "--onnx"],
            ["recipes", "new"]]
FLAGS = ["--set", "--out", "--opset", "--runs", "--batch", "--seq", "--threads", "--compare", "--task", "--json",
         "--quantize", "--from", "--force", "--resume"]
argument = st.one_of(st.text(max_size=30), st.sampled_from(FLAGS), st.integers(-10 ** 12, 10 ** 12).map(str),
                     # no real model to export and no bert_base baseline: a fuzz case must stay quick
                     st.sampled_from(["@GOOD@", "@TRUNCATED@", "@NOT_MODEL@", "@RECIPE@", "@FILE@", "@BAD_CONFIG@",
                                      "mobilebert", "quickstart", "teacher", "0", "-1", "1,2,x"]))


@settings(max_examples=int(os.environ.get("SLIMBERT_FUZZ_EXAMPLES", 60)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(COMMANDS), rest=st.lists(argument, max_size=4))
def test_fuzz_cli_arguments(command, rest, files, tmp_path_factory):
    where = tmp_path_factory.mktemp("fuzz-cwd")
    args = fill(command + rest, files)
    cwd = os.getcwd()
    os.chdir(where)
    try:
        code, output = invoke(*args, env={"HF_HUB_OFFLINE": "1"})
    finally:
        os.chdir(cwd)
    assert code in (0, 2), f"{args}: exit {code}\n{output}"
    assert "Traceback" not in output
    if code == 2:
        assert output.strip()
