"""`--set key.path=value` overrides: values are parsed as YAML scalars/flows; list items are indexed by number."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from .errors import Problem, RecipeError
from .loader import TooDeep, check_nesting

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$|^[0-9]+$")
# The corpus's sources are alternatives: one given with --set replaces the one the recipe gives, so that
# --set 'data.corpus.files=[...]' points the quickstart (data.corpus.builtin) at other text, instead of failing as
# two sources.
CORPUS_SOURCES = ("files", "dataset", "builtin", "task")


def parse_override(text: str) -> tuple[list[str | int], Any]:
    if not isinstance(text, str) or "=" not in text:
        raise RecipeError(Problem("", "an override must look like key.path=value", None, f"--set {text}"))
    key, _, raw = text.partition("=")
    parts = key.strip().split(".")
    if not key.strip() or not all(_KEY.match(p) for p in parts):
        raise RecipeError(Problem(key.strip(), "the key path must be dot-separated names or list indexes, e.g. "
                                               "transfer.0.optimizer.lr", None, f"--set {text}"))
    try:
        if raw.strip():
            check_nesting(raw)  # "--set seed=[[[[..." must not reach the recursive composer
        value = yaml.safe_load(raw) if raw.strip() else None
    except TooDeep as e:
        raise RecipeError(Problem(key.strip(), f"the value has {e.problem}", None, f"--set {text}")) from None
    except yaml.YAMLError as e:
        raise RecipeError(Problem(key.strip(), f"the value is not valid YAML ({getattr(e, 'problem', e)})", None,
                                  f"--set {text}")) from None
    return [int(p) if p.isdigit() else p for p in parts], value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A copy of `data` with every override applied; all bad overrides are reported together."""
    data = copy.deepcopy(data)
    problems = []
    for text in overrides or ():
        try:
            path, value = parse_override(text)
        except RecipeError as e:
            problems += e.problems
            continue
        node = data
        for i, part in enumerate(path[:-1]):
            here = ".".join(map(str, path[: i + 1]))
            if isinstance(node, list) and isinstance(part, int):
                if part >= len(node):
                    problems.append(Problem(here, f"index {part} is out of range (the list has {len(node)} items)",
                                            None, f"--set {text}"))
                    break
                node = node[part]
            elif isinstance(node, dict) and not isinstance(part, int):
                node = node.setdefault(part, {})
                if node is None:
                    node = data_set(data, path[: i + 1], {})
            else:
                problems.append(Problem(here, f"cannot descend into {type(node).__name__} with {part!r}", None,
                                        f"--set {text}"))
                break
        else:
            last = path[-1]
            if isinstance(node, list) and isinstance(last, int) and last < len(node):
                node[last] = value
            elif isinstance(node, dict) and not isinstance(last, int):
                node[last] = value
                if path[:-1] == ["data", "corpus"] and last in CORPUS_SOURCES and value:
                    for other in set(CORPUS_SOURCES) - {last}:
                        node.pop(other, None)
            else:
                problems.append(Problem(".".join(map(str, path)), "no such key or index", None, f"--set {text}"))
    if problems:
        raise RecipeError(problems)
    return data


def data_set(data: dict, path: list, value):
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return value


TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")


def tracker_overrides(data: dict, names: str) -> list[str]:
    """`--log tensorboard,mlflow` as overrides that turn those trackers on, keeping any settings the recipe (or an
    earlier --set) already gives them. `data` is the recipe as read, overrides applied."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in TRACKERS]
    if unknown or not wanted:
        raise RecipeError(Problem("", f"expected a comma-separated list of {', '.join(TRACKERS)}, got {names!r}", None,
                                  f"--log {names}"))
    section = data.get("logging") if isinstance(data.get("logging"), dict) else {}
    return [f"logging.{n}=true" if n == "tensorboard" else f"logging.{n}={{}}" for n in wanted
            if n == "tensorboard" or not isinstance(section.get(n), dict)]
