"""YAML in, plain data out, with the line number of every key path (safe loader only: no tags, no code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, RecipeError
from .keys import key_path


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

    def add(self, node: yaml.Node, loc: tuple = (), problems: list | None = None, _open: set | None = None,
            _done: set | None = None) -> None:
        """Record lines under `node`; duplicate keys go to `problems`. An alias shares its anchor's node: it is
        walked once (`_done`), so nested aliases cannot blow up ("billion laughs"), and `_open` (the nodes being
        walked) catches an alias that refers to itself."""
        _open = set() if _open is None else _open
        _done = set() if _done is None else _done
        if id(node) in _open:
            if problems is not None:
                problems.append(Problem(_dotted(loc), "a YAML alias refers to itself (a cyclic structure)",
                                        node.start_mark.line + 1))
            return
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if id(node) in _done:
            return
        _open.add(id(node))
        _done.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # the constructor reports unhashable keys
                name = _key_value(key)
                child = loc + (name,)
                if name in seen and problems is not None and key.tag != "tag:yaml.org,2002:merge":
                    problems.append(Problem(_dotted(child), f"duplicate key (first given on line {seen[key.value]}); "
                                                            "a later value would silently replace the first",
                                            key.start_mark.line + 1))
                seen.setdefault(name, key.start_mark.line + 1)
                self.add(value, child, problems, _open, _done)
                self.lines[child] = key.start_mark.line + 1  # a key's own line, not its value's
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.add(item, loc + (i,), problems, _open, _done)
        _open.discard(id(node))


def _dotted(loc: tuple) -> str:
    return key_path(loc)


def _key_value(key: yaml.ScalarNode):
    """The key as the safe loader builds it (1 -> int, 2024-01-01 -> date), so the line of a key that is not a
    string is found under the same key the data holds."""
    if key.tag == "tag:yaml.org,2002:str":
        return key.value
    try:
        value = yaml.constructor.SafeConstructor().construct_object(key)
    except yaml.YAMLError:
        return key.value
    try:
        hash(value)
    except TypeError:
        return key.value
    return value


# A recipe is a few levels deep. PyYAML's composer recurses once per level (so do LineMap.add, deepcopy and the
# schema after it): nesting is measured on the parser's event stream, which is iterative, before any of them run.
MAX_NESTING = 100


class TooDeep(yaml.MarkedYAMLError):
    """YAML nested deeper than MAX_NESTING (aliases counted as the depth of what they repeat)."""


def check_nesting(text: str) -> None:
    """Raise TooDeep at the first collection (or alias) deeper than MAX_NESTING; stops reading there, so 10,000
    `[` cost no more than 100. An alias adds the depth of its anchor's node: chained aliases cannot build deep
    data out of shallow text."""
    open_: list[list] = []          # per open collection: [anchor, levels of its deepest part so far]
    depth_of: dict[str, int] = {}   # anchor -> levels of its node (0 for a scalar)
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_.append([event.anchor, 1])
            deepest = len(open_)
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, levels = open_.pop()
            if anchor is not None:
                depth_of[anchor] = levels
            if open_:
                open_[-1][1] = max(open_[-1][1], levels + 1)
            continue
        elif isinstance(event, yaml.AliasEvent):
            levels = depth_of.get(event.anchor, 0)  # unknown: still open (a cycle, LineMap names it) or undefined
            if open_:
                open_[-1][1] = max(open_[-1][1], levels + 1)
            deepest = len(open_) + levels
        else:
            continue
        if deepest > MAX_NESTING:
            raise TooDeep(problem=f"collections nested more than {MAX_NESTING} levels deep; a recipe is a few levels "
                                  "deep (section, key, list)", problem_mark=event.start_mark)


def parse_yaml(text: str, file: str = "recipe") -> tuple[Any, LineMap]:
    """The data and the line of every key path; a RecipeError names what is wrong (and where)."""
    lines = LineMap()
    try:
        check_nesting(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise RecipeError(Problem("", reason if isinstance(e, TooDeep) else f"invalid YAML: {reason}", line,
                                  file)) from None
    if node is not None:
        problems: list[Problem] = []
        lines.add(node, problems=problems)
        if problems:
            raise RecipeError([Problem(p.path, p.message, p.line, file) for p in problems])
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
