"""Atomic, checksummed checkpoints: write into a temporary folder, fsync, rename. A truncated or corrupted
checkpoint is detected by its checksums, named, and skipped in favour of the previous good one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

KEEP = 2  # checkpoints kept per stage


class CheckpointError(RuntimeError):
    pass


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


def save(stage_dir: Path, step: int, tensors: dict[str, torch.Tensor], optimizer: dict | None, meta: dict) -> Path:
    stage_dir.mkdir(parents=True, exist_ok=True)
    final = stage_dir / f"checkpoint-{step:08d}"
    tmp = stage_dir / f".tmp-checkpoint-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        # Tied weights share storage; safetensors stores each name once, so clone.
        save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, tmp / "model.safetensors")
        if optimizer is not None:
            torch.save(optimizer, tmp / "optimizer.pt")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            _fsync(tmp / name)
        state = {**meta, "step": step, "sha256": {n: _sha256(tmp / n) for n in files}}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        _fsync(tmp / "state.json")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(stage_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(stage_dir.glob("checkpoint-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> dict:
    """The checkpoint's state, or CheckpointError naming what is wrong."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable state.json ({e})") from None
    for name, digest in state.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} is corrupted (checksum mismatch)")
    return state


def load(path: Path) -> tuple[dict, dict[str, torch.Tensor], dict | None]:
    state = verify(path)
    tensors = load_file(path / "model.safetensors")
    opt = None
    if (path / "optimizer.pt").is_file():
        opt = torch.load(path / "optimizer.pt", weights_only=True)  # never unpickles arbitrary objects
    return state, tensors, opt


def latest_good(stage_dir: Path, warn=print) -> Path | None:
    for path in sorted(stage_dir.glob("checkpoint-*"), reverse=True):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            warn(f"skipping bad checkpoint: {e}")
    return None
