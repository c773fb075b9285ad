"""The recipe's first stage: read the YAML (with line numbers), apply `--set` overrides and validate against the
schema, every problem with its key path and line. Nothing here imports torch or transformers, so a typo or a
schema error is reported in a fraction of a second; resolve.py does the rest (sources, architectures, files).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from .errors import Problem, RecipeError
from .keys import annotation_at, key_kind, key_path, known_keys, markers_at, render_key, suggest, tuple_length
from .loader import LineMap, read_recipe_file
from .overrides import apply_overrides, parse_override
from .presets import recipe_base
from .schema import STAGE_KINDS, Plausible, Recipe


class Collector:
    def __init__(self, lines: LineMap, file: str, overrides: list[str] | None = None):
        self.lines, self.file, self.problems = lines, file, []
        self.frontier: dict | None = None  # the shapes a latency search timed when none fitted
        # A value set with --set is blamed on the override, not on the recipe line it replaced.
        self.overridden = {tuple(parse_override(o)[0]): o for o in overrides or ()}

    def add(self, loc: tuple | str, message: str) -> None:
        if isinstance(loc, str):  # "transfer.0.steps": list indexes are ASCII digits ("²".isdigit() too)
            loc = tuple(int(x) if x.isascii() and x.isdigit() else x for x in loc.split("."))
        loc = tuple(loc)
        override = next((o for k, o in self.overridden.items() if loc[:len(k)] == k), None)
        if override is not None:
            self.problems.append(Problem(key_path(loc), message, None, f"--set {override}"))
        else:
            self.problems.append(Problem(key_path(loc), message, self.lines.line(loc), self.file))

    def extend(self, problems: list[tuple[str, str]]) -> None:
        for loc, message in problems:
            self.add(loc, message)

    def raise_if_any(self) -> None:
        if self.problems:
            raise RecipeError(self.problems, frontier=self.frontier)


def _data_loc(data, loc: tuple) -> tuple:
    """The part of a pydantic error location that names keys and indexes in the user's data. pydantic adds the
    union member it tried (a stage kind, 'literal[...]', 'list[...]'); the user never wrote those."""
    out, node = [], data
    for x in loc:
        if isinstance(node, dict) and x in node:
            out.append(x)
            node = node[x]
        elif isinstance(node, list) and isinstance(x, int) and 0 <= x < len(node):
            out.append(x)
            node = node[x]
        elif isinstance(node, dict) and isinstance(x, str) and any(repr(k) == x for k in node):
            key = next(k for k in node if repr(k) == x)  # pydantic names a non-string key by its Python repr
            out.append(key)
            node = node[key]
        elif isinstance(node, dict) and isinstance(x, str) and x not in STAGE_KINDS and not node_is_tagged(x):
            out.append(x)  # a missing key: name it
            node = None
    return tuple(out)


def _node_at(data, loc: tuple):
    node = data
    for part in loc:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def node_is_tagged(x: str) -> bool:
    # pydantic's union member tags (schema.py's Tag names)
    return "[" in x or x in ("names", "list", "pairs file", "builtin pairs")


_REPR = reprlib.Repr()  # bounded: a value in a message never floods the terminal (Python 3.11 has no kwargs)
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 4, 2


def _short(value) -> str:
    return _REPR.repr(value)


def _unknown_key(loc: tuple, data: dict) -> str:
    """'unknown key', with what was probably meant: a dotted name written as one key, a typo or a look-alike."""
    key = loc[-1] if loc else None
    known = known_keys(Recipe, loc[:-1], data)
    if isinstance(key, str) and "." in key and key.split(".")[0] in known:
        head, _, rest = key.partition(".")
        return (f"unknown key: a dotted name is one key in YAML, not a key path; nest it under {head}: "
                f"({head}: {{{rest}: ...}})")
    msg = "unknown key"
    if isinstance(key, str) and not key.isascii():
        odd = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in dict.fromkeys(c for c in key if not c.isascii()))
        msg += f" (it holds non-ASCII characters that look like letters: {odd})"
    hint = suggest(key, known)
    return msg + (f"; did you mean `{hint}`?" if hint else "")


def _schema_problems(e: ValidationError, data: dict, out: Collector) -> None:
    seen = set()
    for err in e.errors():
        loc = _data_loc(data, err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = _unknown_key(loc, data)
        elif err["type"] == "invalid_key":
            key = loc[-1] if loc else None
            msg = (f"{render_key(key)} is read by YAML as {key_kind(key)}, but a key must be a name"
                   + ("" if not known_keys(Recipe, loc[:-1], data) else
                      f" (here: {', '.join(known_keys(Recipe, loc[:-1], data))})"))
        elif err["type"] == "missing" and isinstance(err["loc"][-1], int):
            n = tuple_length(annotation_at(Recipe, loc, data))
            got = _node_at(data, loc)
            msg = (f"expected {n} values" if n else "too few values") + f", got {len(got) if isinstance(got, list) else 0}"
            if isinstance(got, list):
                msg += f" ({_short(got)})"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "too_long" and (err.get("ctx") or {}).get("field_type") == "Tuple":
            n = err["ctx"]["max_length"]
            msg = f"expected {n} values, got {err['ctx'].get('actual_length')} ({_short(err['input'])})"
        elif err["type"] == "less_than_equal" and markers_at(Recipe, loc, data, Plausible):
            msg = (f"{_short(err['input'])} is beyond the plausible bound {err['ctx']['le']:,}: "
                   f"{markers_at(Recipe, loc, data, Plausible)[0].reason}")
        elif err["type"] == "union_tag_invalid":
            loc = loc + ("kind",)  # the kind is what is wrong (and what a --set may have changed)
            msg = f"unknown stage kind {_short(err['input'].get('kind'))}; expected one of {', '.join(STAGE_KINDS)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"each stage needs a kind: one of {', '.join(STAGE_KINDS)}"
        elif err["type"] == "string_pattern_mismatch":
            field = Recipe.model_fields.get(str(loc[-1])) if len(loc) == 1 else None
            msg = f"{_short(err['input'])} is not allowed" + (f": {field.description}" if field else "")
        elif "input" in err and err["type"] not in ("value_error",):
            msg += f" (got {_short(err['input'])})"
        if loc in seen and len(err["loc"]) != len(loc):
            continue  # one message per key when several union members reject it
        seen.add(loc)
        out.add(loc, msg.replace("Value error, ", ""))


@dataclass
class Parsed:
    """A recipe that passed the schema, with what the later checks need to point at its lines."""

    recipe: Recipe
    data: dict          # the YAML as read, overrides applied
    lines: LineMap
    file: Path
    base: Path          # where its relative paths start (presets.recipe_base)
    out: Collector      # where the later stages add their problems


def parse_recipe(path: str | Path, overrides: list[str] | None = None) -> Parsed:
    """Read, override and schema-validate a recipe file; a RecipeError lists every problem found."""
    data, lines, file = read_recipe_file(path)
    data = apply_overrides(data, overrides or [])
    out = Collector(lines, str(path), overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        _schema_problems(e, data, out)
        out.raise_if_any()
    return Parsed(recipe=recipe, data=data, lines=lines, file=file, base=recipe_base(file), out=out)
