"""The Python API's top-level calls: run a recipe, optionally with your own teacher."""

from __future__ import annotations

from pathlib import Path


def compress(recipe: str | Path, teacher=None, *, out: str | Path | None = None, overrides: list[str] | None = None,
             resume: bool = False, allow_plugins: bool = False, console=None) -> Path:
    """Run `recipe` (a YAML file or a preset name) and return the run directory.

    teacher: replaces the recipe's teacher section. Anything `slimbert.as_teacher` accepts:
      - a transformers encoder of the BERT, RoBERTa, ELECTRA or DistilBERT family (layers found automatically);
      - `slimbert.ModuleTeacher(model, layers=[...], attentions=[...])` for any nn.Module, wired by module paths;
      - an object implementing the `slimbert.Teacher` protocol.
    The recipe is re-checked against it (layer map, attention heads) and a mismatch raises RecipeError naming
    the recipe key; a teacher slimbert cannot read raises TeacherError naming the module path.
    overrides: `key.path=value` strings, as `slimbert run --set`.
    """
    from .engine.runner import run
    from .recipe import load_recipe, recipe_path

    resolved = load_recipe(recipe_path(str(recipe)), list(overrides or []), allow_plugins)
    return run(resolved, Path(out) if out is not None else None, resume, console, teacher=teacher)
