"""The Python API's top-level calls: run a recipe, optionally with your own teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def compress(recipe: str | Path, teacher: Any = None, *, out: str | Path | None = None,
             overrides: list[str] | None = None, resume: bool = False, allow_plugins: bool = False,
             console: Any = None, device: str | None = None) -> Path:
    """Run `recipe` (a YAML file or a preset name) and return the run directory.

    The Python form of `slimbert run`: the recipe is loaded and checked in full before anything runs, then its
    stages run and the run directory is written (see the docs' Getting started for its layout).

    Args:
        recipe: a recipe file, or the name of a preset (`slimbert recipes list`, e.g. "quickstart").
        teacher: replaces the recipe's teacher section. Anything `slimbert.as_teacher` accepts:
            a transformers encoder of the BERT, RoBERTa, ELECTRA or DistilBERT family (layers found
            automatically); `slimbert.ModuleTeacher(model, layers=..., attentions=...)` for any nn.Module, wired
            by module paths; or an object implementing the `slimbert.Teacher` protocol. The recipe is re-checked
            against it (layer map, attention heads, embedding copy).
        out: the run directory (default: runs/<name>-<timestamp>).
        overrides: `key.path=value` strings, as `slimbert run --set`.
        resume: continue the run in `out` from its latest good checkpoint.
        allow_plugins: permit the recipe's `plugins:` (they import Python modules).
        console: a rich Console for progress output (default: stderr).
        device: auto, cpu, cuda or cuda:N; overrides the recipe's `device` (auto: the GPU when there is one).

    Returns:
        The run directory.

    Raises:
        RecipeError: a problem with the recipe, an override, the run directory, or the recipe against the
            teacher passed in; every problem is listed with its key path and line.
        TeacherError: a teacher slimbert cannot read, naming the module path.
        TrainingError: training stopped (a non-finite loss, a full disk); the last good checkpoint is kept.
    """
    from .engine.runner import run
    from .recipe import load_recipe, recipe_path

    from .export.shape_timer import ExportTimer

    resolved = load_recipe(recipe_path(str(recipe)), list(overrides or []), allow_plugins, timer=ExportTimer())
    return run(resolved, Path(out) if out is not None else None, resume, console, teacher=teacher, device=device)
