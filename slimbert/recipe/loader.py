"""YAML in, plain data out, with the line number of every key path (safe loader only: no tags, no code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, RecipeError


class LineMap:
    """Maps key paths (tuples of str/int) to 1-based YAML line numbers."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {}

    def line(self, loc: tuple) -> int | None:
        loc = tuple(loc)
        while loc:  # a missing key reports the line of its nearest existing parent
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def add(self, node: yaml.Node, loc: tuple = ()) -> None:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = loc + (key.value,)
                self.add(value, child)
                self.lines[child] = key.start_mark.line + 1  # a key's own line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.add(item, loc + (i,))


def parse_yaml(text: str, file: str = "recipe") -> tuple[Any, LineMap]:
    lines = LineMap()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(Problem("", f"invalid YAML: {reason}", line, file)) from None
    if node is not None:
        lines.add(node)
    return data, lines


def read_recipe_file(path: str | Path) -> tuple[dict, LineMap, Path]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(Problem("", f"recipe file not found: {path}", None, str(path)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(Problem("", f"cannot read the recipe: {e}", None, str(path))) from None
    data, lines = parse_yaml(text, str(path))
    if data is None:
        raise RecipeError(Problem("", "the recipe is empty; expected a mapping with at least "
                                      "source, student and transfer", None, str(path)))
    if not isinstance(data, dict):
        raise RecipeError(Problem("", f"expected a mapping of sections at the top level, got "
                                      f"{type(data).__name__}", lines.line(()), str(path)))
    return data, lines, path.resolve()
