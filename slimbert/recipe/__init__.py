"""The recipe engine: schema, YAML loading with line numbers, overrides, cross-field checks, balance, plan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Problem, RecipeError
from .parse import parse_recipe
from .presets import PRESET_DIR, presets, recipe_base, recipe_path

if TYPE_CHECKING:  # for type checkers and the API docs, which read the names statically
    from .plan import build_plan
    from .resolve import Resolved
    from .shape_search import Timer

# Resolving and planning pull in the models (torch, transformers): imported on first use, so that commands and
# modules that only need the schema, the errors or the preset list (`slimbert recipes`, `--help`) start fast.
_LAZY = {"build_plan": "plan", "Resolved": "resolve"}


def load_recipe(path: str | Path, overrides: list[str] | None = None, allow_plugins: bool = False,
                timer: Timer | None = None, reads_weights: bool = True) -> Resolved:
    """Read, validate and resolve a recipe (a file, or a preset's name): every problem at once as a RecipeError
    (key path, line, what was expected). The YAML and the schema are checked first, before torch and transformers
    are imported, so such a mistake is reported at once. `timer` times candidate shapes for a latency budget
    (balance.latency_ms); recipe/ cannot export, so the CLI and API pass one
    (slimbert.export.shape_timer.ExportTimer). reads_weights=False: the caller reads neither the source's weights
    nor its tokenizer (a plan without measuring), so a hub source the offline cache lacks is noted
    (Resolved.notes) instead of refused; what is local is checked as always."""
    parsed = parse_recipe(path if isinstance(path, Path) else recipe_path(path), overrides)
    from .resolve import resolve_parsed

    return resolve_parsed(parsed, allow_plugins, timer, reads_weights)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Problem", "RecipeError", "Resolved", "build_plan", "load_recipe", "presets", "recipe_base", "recipe_path"]
