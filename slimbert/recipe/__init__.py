"""The recipe engine: schema, YAML loading with line numbers, overrides, cross-field checks, balance, plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Problem, RecipeError
from .parse import parse_recipe

if TYPE_CHECKING:  # for type checkers and the API docs, which read the names statically
    from .plan import build_plan
    from .resolve import Resolved
    from .shape_search import Timer

# Resolving and planning pull in the models (torch, transformers): imported on first use, so that commands and
# modules that only need the schema, the errors or the preset list (`slimbert recipes`, `--help`) start fast.
_LAZY = {"build_plan": "plan", "Resolved": "resolve"}


def load_recipe(path: str | Path, overrides: list[str] | None = None, allow_plugins: bool = False,
                timer: Timer | None = None, reads_weights: bool = True) -> Resolved:
    """Read, validate and resolve a recipe: every problem at once as a RecipeError (key path, line, what was
    expected). The YAML and the schema are checked first, before torch and transformers are imported, so such
    a mistake is reported at once. `timer` times candidate shapes for a latency budget (balance.latency_ms);
    recipe/ cannot export, so the CLI and API pass one (slimbert.export.shape_timer.ExportTimer).
    reads_weights=False: the caller reads neither the source's weights nor its tokenizer (a plan without
    measuring), so a hub source the offline cache lacks is noted (Resolved.notes) instead of refused; what is
    local is checked as always."""
    parsed = parse_recipe(path, overrides)
    from .resolve import resolve_parsed

    return resolve_parsed(parsed, allow_plugins, timer, reads_weights)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

PRESET_DIR = Path(__file__).resolve().parents[2] / "recipes"


def presets() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


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


__all__ = ["Problem", "RecipeError", "Resolved", "build_plan", "load_recipe", "presets", "recipe_path"]
