"""The presets: recipes that ship inside the package (slimbert/presets/*.yaml), found by name."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from .errors import Problem, RecipeError

# The presets are package data (slimbert/presets/*.yaml), so an installed wheel has them as a checkout does.
# setuptools installs package data as plain files: the folder is a real path, which the YAML loader reads.
PRESET_DIR = Path(str(files("slimbert") / "presets"))


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def recipe_base(file: Path) -> Path:
    """The folder a recipe's relative paths start from: the recipe's own, except for a preset, whose folder is
    inside the installed package; its paths (and --set paths) start from the working directory instead."""
    return Path.cwd() if file.resolve().parent == PRESET_DIR.resolve() else file.parent


def recipe_path(name_or_path: str) -> Path:
    """A recipe file path, or the path of the preset with that name."""
    p = Path(name_or_path)
    if p.is_file() or p.suffix in (".yaml", ".yml"):
        return p
    found = presets()
    if name_or_path in found:
        return found[name_or_path]
    raise RecipeError(Problem("", f"{name_or_path!r} is neither a recipe file nor a preset "
                                  f"({', '.join(found) or 'none found'})"))
