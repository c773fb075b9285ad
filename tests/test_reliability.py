"""Faults injected into real (tiny) runs, in process: corrupted and malicious checkpoints, a full disk, a
forbidden run directory, a held and a stale lock; and plugins, the only way a recipe runs code. Every resumed
run must end with the uninterrupted run's student, bit for bit. (The SIGKILL test is in test_run.py.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import write_recipe
from test_malformed import evil_pickle
from slimbert.cli import app
from slimbert.engine import checkpoint as ckpt
from slimbert.engine.rundir import _start_time

STAGES = [{"kind": "joint", "steps": 3, "batch_size": 4, "checkpoint_every": 1, "optimizer": {"lr": 2e-3}},
          {"kind": "pretrain_distill", "steps": 3, "batch_size": 4, "alpha": 0.5, "checkpoint_every": 1,
           "optimizer": {"lr": 1e-3}}]
LAST = "stages/1-pretrain_distill"


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception!r}\n{result.output}")
    return result.exit_code, result.output


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "student" / "model.safetensors")


def assert_identical(out: Path, reference: dict[str, torch.Tensor]) -> None:
    got = weights(out)
    assert got.keys() == reference.keys()
    for k in reference:
        assert torch.equal(got[k], reference[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_source, shared_data):
    """One uninterrupted run: its recipe and its student's weights."""
    tmp = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(tmp, tiny_source, shared_data, transfer=STAGES)
    code, output = invoke("run", recipe, "--out", tmp / "out")
    assert code == 0, output
    assert sorted(p.name for p in (tmp / "out" / LAST).glob("checkpoint-*")) == \
        ["checkpoint-00000002", "checkpoint-00000003"]  # the two newest are kept
    return recipe, tmp / "out", weights(tmp / "out")


def crashed(reference, tmp_path: Path) -> Path:
    """The reference run directory as a crash would leave it after the last checkpoint: no student yet."""
    out = tmp_path / "out"
    shutil.copytree(reference[1], out)
    shutil.rmtree(out / "student")
    return out


def reseal(path: Path) -> None:
    """Recompute a checkpoint's checksums after tampering, as an attacker who edits state.json would."""
    state = json.loads((path / "state.json").read_text())
    state["sha256"] = {n: ckpt._sha256(path / n) for n in state["sha256"]}
    state["state_sha256"] = ckpt._seal(state)  # a checksum is no signature: anyone can recompute it
    (path / "state.json").write_text(json.dumps(state))


# ---- corrupted and malicious checkpoints ------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("damage, named", [
    ("truncate", "model.safetensors is corrupted (checksum mismatch)"),
    ("flip", "optimizer.pt is corrupted (checksum mismatch)"),
])
def test_corrupted_checkpoint_is_named_and_skipped(reference, tmp_path, damage, named):
    out = crashed(reference, tmp_path)
    newest = out / LAST / "checkpoint-00000003"
    if damage == "truncate":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        data = bytearray((newest / "optimizer.pt").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (newest / "optimizer.pt").write_bytes(bytes(data))
    older = out / LAST / "checkpoint-00000002"
    if damage == "flip":
        (older / "state.json").write_text('{"step": 2, "sha')  # torn as by a crash: no good one left here
    code, output = invoke("run", reference[0], "--out", out, "--resume")
    assert code == 0, output
    text = " ".join(output.split())
    assert "skipping bad checkpoint" in text and f"{newest}: {named}" in text, text
    # truncate: step 3 is redone from checkpoint 2; flip: both of the stage's checkpoints are bad, so the stage
    # is rerun in full from the end of the stage before.
    assert (f"{older}: unreadable state.json" in text) == (damage == "flip"), text
    assert_identical(out, reference[2])


@pytest.mark.e2e
def test_malicious_pickle_checkpoint_is_refused(reference, tmp_path):
    out = crashed(reference, tmp_path)
    marker = tmp_path / "PWNED"
    newest = out / LAST / "checkpoint-00000003"
    (newest / "optimizer.pt").write_bytes(evil_pickle(marker))
    reseal(newest)  # the checksums match: only the loader stands between the pickle and os.system
    with pytest.raises(ckpt.CheckpointError, match="refused by the weights-only loader"):
        ckpt.load(newest)
    code, output = invoke("run", reference[0], "--out", out, "--resume")
    assert code == 0, output
    assert "refused by the weights-only loader" in " ".join(output.split())
    assert not marker.exists(), "the pickle was executed"
    assert_identical(out, reference[2])


# ---- a full disk, a forbidden directory ------------------------------------------------------------------------------

def fail_checkpoint_write(monkeypatch, at_call: int, error: Exception) -> None:
    """The at_call-th checkpoint write gets part of a file onto disk, then the disk is full."""
    real, calls = ckpt.save_file, []

    def save_file(tensors, path, *args, **kw):
        calls.append(path)
        if len(calls) == at_call:
            Path(path).write_bytes(b"\0" * 512)
            raise error
        return real(tensors, path, *args, **kw)

    monkeypatch.setattr(ckpt, "save_file", save_file)


@pytest.mark.e2e
def test_disk_full_mid_run_keeps_good_checkpoints_then_resumes(reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    # What safetensors really raises on a full disk (seen on a 30 MB tmpfs; benchmarks/results/reliability.md).
    fail_checkpoint_write(monkeypatch, 3, SafetensorError("Error while serializing: I/O error: No space left on "
                                                          "device (os error 28)"))
    code, output = invoke("run", reference[0], "--out", out)
    assert code == 3, output
    text = " ".join(output.split())
    assert "No space left on device" in text and "checkpoint-00000003" in text, text
    assert not list(out.rglob(".tmp*")), "a partial checkpoint was left behind"
    kept = sorted((out / "stages" / "0-joint").glob("checkpoint-*"))
    assert [p.name for p in kept] == ["checkpoint-00000001", "checkpoint-00000002"]
    for p in kept:
        ckpt.verify(p)
    assert not (out / "lock").exists() and not (out / "student").exists()
    monkeypatch.undo()
    code, output = invoke("run", reference[0], "--out", out, "--resume")
    assert code == 0, output
    assert_identical(out, reference[2])


@pytest.mark.e2e
def test_disk_full_before_the_first_checkpoint_leaves_nothing(reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fail_checkpoint_write(monkeypatch, 1, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    code, output = invoke("run", reference[0], "--out", out)
    assert code == 3 and "No space left on device" in output, output
    assert not out.exists(), "a run that kept nothing must leave no directory"


@pytest.mark.e2e
def test_unwritable_out_is_refused_and_nothing_is_created(reference, tmp_path, monkeypatch):
    # Root ignores file modes, so the refusal the filesystem would give is injected: mkdir raises EACCES.
    out = tmp_path / "forbidden" / "out"
    real = Path.mkdir

    def mkdir(self, *args, **kw):
        if self == out:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, output = invoke("run", reference[0], "--out", out)
    assert code == 2 and "--out" in output and "Permission denied" in output, output
    assert not out.exists()


@pytest.mark.e2e
def test_read_only_out_is_refused_at_the_lock(reference, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()  # exists and is empty, but nothing can be created in it (EROFS on the first write: the lock)
    real = os.open

    def open_(path, flags, *args, **kw):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_)
    code, output = invoke("run", reference[0], "--out", out)
    monkeypatch.undo()
    assert code == 2 and "Read-only file system" in output, output
    assert list(out.iterdir()) == []


@pytest.mark.e2e
def test_out_that_is_a_file_is_refused(reference, tmp_path):
    f = tmp_path / "file"
    f.write_text("mine")
    for extra in ([], ["--resume"]):
        code, output = invoke("run", reference[0], "--out", f, *extra)
        assert code == 2 and "--out:" in output and "is a file" in output, output
    assert f.read_text() == "mine"


@pytest.mark.e2e
def test_ctrl_c_is_a_message_not_a_traceback(reference, tmp_path, monkeypatch):
    from slimbert.engine import runner

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "build_context", interrupted)
    code, output = invoke("run", reference[0], "--out", tmp_path / "out")
    assert code == 130 and "interrupted" in output and "--resume" in output, output
    assert not (tmp_path / "out" / "lock").exists()


# ---- the run directory's lock ----------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_lock_held_by_a_live_run_refuses_and_a_reused_pid_is_stale(reference, tmp_path):
    out = crashed(reference, tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        owner = {"pid": other.pid, "start": _start_time(other.pid), "host": socket.gethostname()}
        (out / "lock").write_text(json.dumps(owner))
        code, output = invoke("run", reference[0], "--out", out, "--resume")
        assert code == 2 and f"in use by another slimbert run (pid {other.pid})" in output, output
        assert json.loads((out / "lock").read_text()) == owner and not (out / "student").exists()
        # The same pid, but a process that started at another time: the pid was reused, the lock is stale.
        (out / "lock").write_text(json.dumps({**owner, "start": "1"}))
        code, output = invoke("run", reference[0], "--out", out, "--resume")
        assert code == 0 and "stale lock" in output, output
        assert not (out / "lock").exists()
    finally:
        other.kill()
        other.wait()
    assert_identical(out, reference[2])


@pytest.mark.e2e
def test_a_run_killed_during_start_up_can_be_resumed(reference, tmp_path):
    """Killed before it wrote its recipe, a run leaves only its lock (and maybe a temporary file): a retry with
    --resume starts it from the beginning instead of refusing the directory forever."""
    from slimbert.engine.rundir import prepare_run_dir
    from slimbert.recipe import RecipeError, load_recipe

    r = load_recipe(reference[0])
    out = tmp_path / "out"
    assert prepare_run_dir(r, out, resume=True) == (out, False)  # nothing there yet
    out.mkdir()
    (out / "lock").write_text(json.dumps({"pid": 2 ** 22 + 1, "start": None, "host": socket.gethostname()}))
    (out / ".tmp-recipe.resolved.yaml-123").write_text("name: ti")
    assert prepare_run_dir(r, out, resume=True) == (out, False)
    (out / "notes.txt").write_text("mine")  # something else: not a run slimbert started, so not its to reuse
    with pytest.raises(RecipeError, match="not a slimbert run directory"):
        prepare_run_dir(r, out, resume=True)
    assert prepare_run_dir(r, reference[1], resume=True) == (reference[1], True)


def test_lock_is_exclusive(tmp_path):
    from slimbert.engine.rundir import RunDir
    from slimbert.recipe import RecipeError

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "lock").write_text(json.dumps({"pid": other.pid, "start": _start_time(other.pid),
                                                   "host": socket.gethostname()}))
        with pytest.raises(RecipeError, match="in use"):
            RunDir(tmp_path).acquire(print)
    finally:
        other.kill()
        other.wait()
    warnings = []
    RunDir(tmp_path).acquire(warnings.append)  # the owner is dead now
    assert warnings and "stale lock" in warnings[0]
    assert json.loads((tmp_path / "lock").read_text())["pid"] == os.getpid()


# ---- plugins: the only way a recipe runs code ------------------------------------------------------------------------

PLUGIN = '''
import pathlib

import slimbert
from transformers import AutoModel

pathlib.Path(__file__).with_name("imported").touch()
CALLS = []


def build(resolved):
    CALLS.append(resolved.recipe.name)
    return AutoModel.from_pretrained(str(resolved.source_path), use_safetensors=True)


slimbert.register_teacher("{name}", build)
'''


@pytest.mark.e2e
def test_plugins_refused_without_the_flag_and_used_with_it(tmp_path, tiny_source, shared_data):
    module, name = f"teachers_{tmp_path.name.replace('-', '_')}", "tiny-bert-from-plugin"
    (tmp_path / f"{module}.py").write_text(PLUGIN.replace("{name}", name))
    recipe = write_recipe(tmp_path, tiny_source, shared_data, plugins=[module], teacher={"plugin": name},
                          transfer=[{"kind": "joint", "steps": 1, "batch_size": 4}])
    for command in (["validate", recipe], ["run", recipe, "--out", tmp_path / "out"]):
        code, output = invoke(*command)
        assert code == 2 and "plugins:" in output and "--allow-plugins" in output, output
        assert "teacher.plugin" in output  # nothing registered it, since nothing was imported
        assert not (tmp_path / "imported").exists(), "a refused plugin was imported"
        assert not (tmp_path / "out").exists()
    code, output = invoke("run", recipe, "--out", tmp_path / "out", "--allow-plugins")
    assert code == 0, output
    assert (tmp_path / "imported").exists()
    assert sys.modules[module].CALLS == ["tiny"]  # the plugin's teacher was built once, for this run
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()
    # A module that fails to import is named against its entry.
    data = yaml.safe_load(recipe.read_text())
    data["plugins"] = [module, "no_such_plugin_module"]
    recipe.write_text(yaml.safe_dump(data))
    code, output = invoke("validate", recipe, "--allow-plugins")
    assert code == 2 and "plugins.1" in output and "No module named 'no_such_plugin_module'" in output, output


def test_no_unsafe_loader_in_the_package():
    """Static guard: no pickle, no unsafe YAML, and every torch.load is weights-only."""
    import re

    package = Path(__file__).resolve().parents[1] / "slimbert"
    for f in package.rglob("*.py"):
        text = f.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (f, call)
        for bad in ("import pickle", "yaml.load(", "unsafe_load", "yaml.Loader", "FullLoader", "UnsafeLoader"):
            assert bad not in text, (f, bad)
