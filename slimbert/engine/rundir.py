"""The run directory: refuse what cannot run (preflight), choose and check the directory, take its lock, and
leave nothing half-written behind (partial writes of a killed run, a fresh run that failed before its first
checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import torch
import yaml

from ..models import count
from ..recipe.errors import Problem, RecipeError
from ..recipe.resolve import Resolved


def preflight(r: Resolved, device: torch.device | None = None) -> None:
    """Refuse, before anything is written, what this machine (or its GPU) cannot run (recipe checks live in
    load_recipe)."""
    problems = []
    need = _memory_needed(r)
    gpu = device is not None and device.type == "cuda"
    have = torch.cuda.get_device_properties(device).total_memory if gpu else _physical_memory()
    if have and need > have:
        where = f"{device} has" if gpu else "this machine has"
        problems.append(Problem("student", f"the student and teacher need about {need / 2**30:.1f} GiB (fp32 weights, "
                                           f"gradients and Adam moments) but {where} {have / 2**30:.1f} GiB; "
                                           "shrink the student (num_layers, inter_size, ffn) or use a bigger machine",
                                None, str(r.file)))
    if problems:
        raise RecipeError(problems)



def _memory_needed(r: Resolved) -> int:
    student = count(r.student_config).total_params
    teacher = count(r.teacher_config if r.teacher_config is not None else r.source.as_config()).total_params
    return 16 * student + 4 * teacher


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> str | None:
    """A process's start time (Linux), so a lock naming a pid that a new process has since reused is stale."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class RunDir:
    """The run directory's lock: created with O_EXCL (two runs cannot both take it), naming the owner's pid, start
    time and host. A lock whose process is gone, or whose pid now belongs to another process, is stale."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = path / "lock"
        self.held = False

    def _owner(self) -> dict:
        try:
            text = self.lock.read_text().strip()
        except FileNotFoundError:
            return {}
        try:
            owner = json.loads(text)
            return owner if isinstance(owner, dict) else {"pid": int(owner)}
        except (ValueError, TypeError):
            return {"pid": 0}  # unreadable (e.g. torn by a crash): nobody can hold it

    def acquire(self, warn) -> None:
        me = {"pid": os.getpid(), "start": _start_time(os.getpid()), "host": socket.gethostname()}
        for _ in range(3):
            try:
                fd = os.open(self.lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid = owner.get("pid") or 0
                if owner.get("host", me["host"]) != me["host"]:
                    raise RecipeError(Problem("--out", f"{self.path} is locked by a run on host {owner['host']} "
                                                       f"(pid {pid}); delete {self.lock} if that run is gone"))
                if self.in_use() and pid != os.getpid():
                    raise RecipeError(Problem("--out", f"{self.path} is in use by another slimbert run (pid {pid})"))
                warn(f"removing a stale lock left by a dead run (pid {pid})")
                self.lock.unlink(missing_ok=True)
                continue
            except OSError as e:  # read-only, full or forbidden: say so before anything else is written
                raise RecipeError(Problem("--out", f"cannot write to {self.path}: {e.strerror or e}")) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return
        raise RecipeError(Problem("--out", f"could not take the lock {self.lock}: another run keeps taking it"))

    def in_use(self) -> bool:
        """A live process holds the lock (a lock from another host counts as held: it cannot be checked)."""
        owner = self._owner()
        pid = owner.get("pid") or 0
        if owner.get("host", socket.gethostname()) != socket.gethostname():
            return bool(owner)
        return bool(pid) and _pid_alive(pid) and owner.get("start") in (None, _start_time(pid))

    def release(self) -> None:
        if self.held and self._owner().get("pid") == os.getpid():
            self.lock.unlink(missing_ok=True)
        self.held = False


def finished_at(run: Path) -> float | None:
    """When a run finished: its student is saved at the end of transfer, its fine-tune results after that. A run
    still going (a live process holds its lock) or that never saved a student has not finished."""
    student = run / "student" / "config.json"
    if not student.is_file() or RunDir(run).in_use():
        return None
    return max(p.stat().st_mtime for p in (student, run / "finetune" / "metrics.json") if p.is_file())


def newest_run(root: Path) -> Path | None:
    """The run directory under `root` that finished last (by the files it wrote last, not by its name)."""
    runs = [(t, d) for d in root.iterdir() if d.is_dir() and (t := finished_at(d)) is not None] \
        if root.is_dir() else []
    return max(runs)[1] if runs else None


def newest_export(root: Path) -> Path | None:
    """The most recently written model.onnx under root/*/export."""
    files = [(p.stat().st_mtime, p) for p in root.glob("*/export/model.onnx")] if root.is_dir() else []
    return max(files)[1] if files else None


def _nothing_started(out: Path) -> bool:
    """No run directory yet, or one a run was killed in before it wrote its recipe (a lock, unfinished writes)."""
    return not out.exists() or all(p.name == "lock" or p.name.startswith(".tmp") for p in out.iterdir())


def prepare_run_dir(r: Resolved, out: Path | None, resume: bool) -> tuple[Path, bool]:
    """The run directory, and whether there is a run in it to resume."""
    resolved = _what_it_is(r.recipe.model_dump(mode="json"))
    if out is None:
        out = Path("runs") / f"{r.recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RecipeError(Problem("--out", f"{out} is a file; --out names a run directory"))
    saved = out / "recipe.resolved.yaml"
    if resume:
        if not saved.is_file():
            if _nothing_started(out):  # killed during start-up: a retry loop passing --resume just starts it
                return out, False
            raise RecipeError(Problem("--resume", f"{out} is not a slimbert run directory (no recipe.resolved.yaml)"))
        before = _what_it_is(yaml.safe_load(saved.read_text()))
        if before != resolved:
            keys = sorted(_diff_keys(before, resolved))[:10]
            raise RecipeError(Problem("--resume", f"the recipe changed since the run started ({', '.join(keys)}); "
                                                  "resume with the same recipe and overrides"))
        return out, True
    if out.exists() and any(out.iterdir()):
        raise RecipeError(Problem("--out", f"{out} exists and is not empty; pass --resume to continue that run or "
                                           "choose another --out"))
    return out, False


def _what_it_is(recipe: dict) -> dict:
    """The recipe without `device`: where a run computes is not what it computes, so a GPU run resumes on a CPU
    and the other way round."""
    return {k: v for k, v in recipe.items() if k != "device"} if isinstance(recipe, dict) else recipe


def _diff_keys(a, b, prefix="") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b)):
            out |= _diff_keys(x, y, f"{prefix}{i}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}


def remove_partial_writes(out: Path, warn) -> None:
    """Temporary files a killed run left mid-write (never renamed into place, so never read); we hold the lock."""
    for p in sorted(out.rglob(".tmp*")):
        warn(f"removing {p}, a write the previous run did not finish")
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def discard(out: Path, keep_dir: bool) -> None:
    if not keep_dir:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():  # an --out that existed (empty) before the run stays, empty
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
