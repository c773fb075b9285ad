"""Atomic, checksummed checkpoints: write into a temporary folder, fsync, rename. A truncated or corrupted
checkpoint is detected by its checksums, named, and skipped in favour of the previous good one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

KEEP = 2  # checkpoints kept per stage


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


class CheckpointError(RuntimeError):
    pass


class WriteError(OSError):
    """A write that failed (a full disk, no permission, ...), whichever library raised it; nothing partial is kept."""


# What the writers raise when the filesystem refuses: safetensors wraps ENOSPC in SafetensorError, torch.save in
# RuntimeError ("PytorchStreamWriter failed writing file").
WRITE_FAILURES = (OSError, SafetensorError, RuntimeError)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """A small file written whole or not at all: temporary file, fsync, rename."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: Path):
    """A temporary folder beside `final` to write into; on success its files are fsynced and it is renamed to
    `final` in one step; on failure it is removed and the failure raised as WriteError naming `final`."""
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync(f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(final.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, WRITE_FAILURES) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {final}: {e}") from None
        raise


def _seal(state: dict) -> str:
    """A checksum of state.json's own content (the files' checksums and the step they belong to)."""
    return hashlib.sha256(json.dumps({k: v for k, v in state.items() if k != "state_sha256"},
                                     sort_keys=True).encode()).hexdigest()


def to_cpu(obj):
    """Every tensor in a (nested) state dict on the CPU: checkpoints are device-free, so a run started on a GPU
    resumes on a CPU and back (the optimizer moves its state to its parameters' device when it loads it)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def save(stage_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer: dict | None, meta: dict) -> Path:
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"checkpoint-{step:08d}"
    with atomic_dir(final) as tmp:
        # Tied weights share storage; safetensors stores each name once, so clone (on the CPU).
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()},
                  tmp / "model.safetensors")
        if optimizer is not None:
            torch.save(to_cpu(optimizer), tmp / "optimizer.pt")
        files = sorted(p.name for p in tmp.iterdir())
        state = {**meta, "step": step, "sha256": {n: _sha256(tmp / n) for n in files}}
        state["state_sha256"] = _seal(state)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    for old in sorted(stage_dir.glob("checkpoint-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> dict:
    """The checkpoint's state, or CheckpointError naming what is wrong."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable state.json ({e})") from None
    if (not isinstance(state, dict) or not isinstance(state.get("sha256"), dict)
            or "model.safetensors" not in state["sha256"]
            or not all(type(state.get(k)) is int for k in ("step", "total"))):
        raise CheckpointError(f"{path}: state.json is incomplete (no step, total or checksums)")
    if "state_sha256" in state and state["state_sha256"] != _seal(state):
        raise CheckpointError(f"{path}: state.json is corrupted (checksum mismatch)")
    for name, digest in state.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} is corrupted (checksum mismatch)")
    return state


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    """The checkpoint's state, weights and optimizer state, or CheckpointError. A checksum only proves the files
    are the ones written; the loaders below still trust nothing: safetensors holds no code, and the optimizer
    state goes through torch's weights-only unpickler, which refuses any object other than tensors and
    containers (a crafted pickle is refused here, never executed)."""
    state = verify(path)
    try:
        tensors = load_file(path / "model.safetensors")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: model.safetensors is unreadable ({e})") from None
    opt = None
    if (path / "optimizer.pt").is_file():
        try:
            # weights_only: never unpickles arbitrary objects; map_location: a GPU-written file loads anywhere.
            opt = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
            raise CheckpointError(f"{path}: optimizer.pt refused by the weights-only loader "
                                  f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
    return state, tensors, opt


def good_checkpoints(stage_dir: Path, warn=print):
    """Checkpoints that pass their checksums, newest first; each bad one is named and skipped."""
    for path in sorted(stage_dir.glob("checkpoint-*"), reverse=True):
        try:
            verify(path)
        except CheckpointError as e:
            warn(f"skipping bad checkpoint: {e}")
            continue
        yield path


def latest_good(stage_dir: Path, warn=print) -> Path | None:
    return next(good_checkpoints(stage_dir, warn), None)
