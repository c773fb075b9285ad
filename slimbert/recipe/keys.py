"""Key paths as the user wrote them: rendered YAML-ish (never a Python repr), odd keys quoted and escaped, and
the keys the schema knows at a place (for "did you mean ...?")."""

from __future__ import annotations

import datetime
import difflib
import json
import re
import types
import typing
from typing import Any

from pydantic import BaseModel

_PLAIN = re.compile(r"^[A-Za-z0-9_-]+$")


def render_key(key: Any) -> str:
    """One key or index as YAML would show it: 2024-01-01, 1, true; a key holding dots, spaces or non-ASCII
    characters quoted with escapes, so a Cyrillic 'е' (\\u0435) never passes for a Latin 'e'."""
    if isinstance(key, bool):
        return str(key).lower()
    if isinstance(key, (int, float)):
        return str(key)
    if isinstance(key, (datetime.date, datetime.datetime)):
        return key.isoformat()
    if key is None:
        return "null"
    text = str(key)
    return text if _PLAIN.match(text) else json.dumps(text)


def key_path(loc: tuple | list) -> str:
    return ".".join(render_key(k) for k in loc)


def key_kind(key: Any) -> str:
    """What YAML read a non-string key as, in words."""
    if isinstance(key, bool):
        return "a boolean"
    if isinstance(key, int):
        return "an integer"
    if isinstance(key, float):
        return "a number"
    if isinstance(key, datetime.datetime):
        return "a timestamp"
    if isinstance(key, datetime.date):
        return "a date"
    if key is None:
        return "null"
    return type(key).__name__


def _strip(annotation):
    """The model or list inside Optional[...] / Annotated[...] (None for scalars)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(annotation) if a is not type(None)]
            models = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
            lists = [a for a in inner if typing.get_origin(a) in (list, tuple)]
            if len(inner) == 1:
                annotation = inner[0]
            elif models:
                return models  # a union of models (the stage kinds): chosen by the data
            elif lists:
                annotation = lists[0]
            else:
                return None
        else:
            return annotation


def _pick(candidates, node):
    """The union member a mapping validates as (stages: by their kind)."""
    if not isinstance(candidates, list):
        return candidates
    kind = node.get("kind") if isinstance(node, dict) else None
    for m in candidates:
        field = m.model_fields.get("kind")
        if field is not None and kind in typing.get_args(field.annotation):
            return m
    return None


def annotation_at(root: type[BaseModel], loc: tuple, data: Any):
    """The schema's type at key path `loc` of `data` (a model class, a list/tuple type, or a scalar type), or None."""
    current: Any = root
    node = data
    for part in loc:
        current = _pick(current, node)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            current = _strip(field.annotation)
            node = node.get(part) if isinstance(node, dict) else None
        elif typing.get_origin(current) in (list, tuple) and isinstance(part, int):
            args = [a for a in typing.get_args(current) if a is not Ellipsis]
            current = _strip(args[min(part, len(args) - 1)]) if args else None
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
        else:
            return None
    return _pick(current, node)


def known_keys(root: type[BaseModel], loc: tuple, data: Any) -> list[str]:
    """The keys the schema allows in the mapping at `loc`."""
    model = annotation_at(root, loc, data)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def suggest(key: Any, known: list[str]) -> str | None:
    """The known key `key` was probably meant to be (a typo, or a look-alike character)."""
    if not isinstance(key, str) or not known:
        return None
    ascii_key = key.encode("ascii", "replace").decode()  # a look-alike letter becomes '?', one edit away
    hit = difflib.get_close_matches(ascii_key.lower(), known, n=1, cutoff=0.6)
    return hit[0] if hit else None


def tuple_length(annotation) -> int | None:
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        return None if Ellipsis in args else len(args)
    return None



def field_markers(field, kind: type) -> list:
    """The metadata objects of type `kind` on a pydantic field, in an Optional, a list's items or a tuple's too
    (e.g. schema.Plausible, or annotated_types.Le for the bound itself)."""
    from pydantic.fields import FieldInfo

    found, todo = [], [*field.metadata, field.annotation]
    while todo:  # Annotated/Optional/list nest a few levels deep at most
        a = todo.pop()
        if isinstance(a, kind):
            found.append(a)
        elif isinstance(a, FieldInfo):
            todo += a.metadata
        elif typing.get_origin(a) is typing.Annotated:
            todo += [*a.__metadata__, typing.get_args(a)[0]]
        else:
            todo += [x for x in typing.get_args(a) if not isinstance(x, (str, int, float, bool))]
    return found


def markers_at(root: type[BaseModel], loc: tuple, data: Any, kind: type) -> list:
    """field_markers of the field at key path `loc` of `data` (its last key, or the list that holds it)."""
    i = max((n for n, part in enumerate(loc) if isinstance(part, str)), default=None)
    model = annotation_at(root, loc[:i], data) if i is not None else None
    field = model.model_fields.get(loc[i]) if isinstance(model, type) and issubclass(model, BaseModel) else None
    return field_markers(field, kind) if field is not None else []
