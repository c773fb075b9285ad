"""Custom components from Python: a plugin is a module that registers them when imported.

A recipe may list plugin modules under `plugins:`; importing one runs its code, so slimbert refuses the list
unless the user passes --allow-plugins (or allow_plugins=True). Nothing else in a recipe can import or run code.
Components can also be registered directly from Python, with no recipe involvement at all.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Callable

_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# name -> factory(resolved recipe) -> a teacher (anything slimbert.as_teacher accepts)
TEACHERS: dict[str, Callable] = {}


def register_teacher(name: str, factory: Callable) -> None:
    """Make `teacher: {plugin: NAME}` in a recipe build its teacher with factory(resolved_recipe)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a teacher plugin needs a non-empty name")
    TEACHERS[name] = factory


class PluginError(ImportError):
    """A plugin module could not be imported; `index` is its position in the recipe's list."""

    def __init__(self, index: int, message: str):
        self.index = index
        super().__init__(message)


def load_plugins(modules: list[str], base: Path) -> None:
    """Import each module (names only, never paths; the recipe's folder is searched first, so a plugin can sit
    beside its recipe). Raises PluginError naming the first module that fails."""
    for i, name in enumerate(modules):
        if not _MODULE.match(name):
            raise PluginError(i, f"{name!r} is not a Python module name (e.g. my_plugins.teachers)")
        sys.path.insert(0, str(base))
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a plugin's own error, reported against its entry
            raise PluginError(i, f"importing {name!r} failed: {type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(base))
