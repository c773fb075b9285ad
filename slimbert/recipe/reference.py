"""The recipe language, generated from the schema: a JSON Schema for editors and a Markdown reference page.

Both come from `Recipe.model_json_schema()`, so they cannot drift from the code. The JSON Schema ships in the
package (`slimbert/recipe/recipe.schema.json`, checked against the code by tests/test_docs.py); regenerate it with

    python -m slimbert.recipe.reference schema > slimbert/recipe/recipe.schema.json

(or `slimbert recipes schema`). The docs site renders the Markdown page at build time (docs/hooks.py);
`python -m slimbert.recipe.reference markdown` prints it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .schema import Recipe

SCHEMA_FILE = Path(__file__).with_name("recipe.schema.json")


def recipe_json_schema() -> dict:
    """The recipe's JSON Schema (draft 2020-12), as pydantic writes it, with a title and the dialect."""
    schema = Recipe.model_json_schema()
    _add_factory_defaults(schema, Recipe)
    _standard_keywords(schema)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "slimbert recipe",
              **{k: v for k, v in schema.items() if k != "title"}}
    return schema


def _models(root) -> dict[str, type]:
    """Every pydantic model reachable from `root`, by class name (the $defs key pydantic uses)."""
    import typing

    from pydantic import BaseModel

    found: dict[str, type] = {}

    def visit(tp):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp.__name__ not in found:
                found[tp.__name__] = tp
                for f in tp.model_fields.values():
                    visit(f.annotation)
            return
        for arg in typing.get_args(tp):
            visit(arg)

    visit(root)
    return found


def _add_factory_defaults(schema: dict, root) -> None:
    """pydantic leaves out defaults made by a default_factory; write them in, as the model would fill them."""
    from pydantic_core import to_jsonable_python

    for name, model in _models(root).items():
        node = schema if model is root else schema.get("$defs", {}).get(name)
        if node is None:
            continue
        for key, f in model.model_fields.items():
            prop = node.get("properties", {}).get(f.alias or key)
            if prop is not None and f.default_factory is not None and "default" not in prop:
                prop["default"] = to_jsonable_python(f.get_default(call_default_factory=True))


PYDANTIC_KEYWORDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum",
                     "min_length": "minLength", "max_length": "maxLength"}


def _standard_keywords(node) -> None:
    """Constraints that pydantic cannot place on a validator-wrapped type come out under their Python names
    (`gt: 0`); JSON Schema tools ignore those, so rename them to the standard keywords."""
    if isinstance(node, dict):
        if node.get("type") in ("integer", "number", "string", "array"):
            for py, std in PYDANTIC_KEYWORDS.items():
                if py in node and std not in node:
                    value = node.pop(py)
                    if std in ("minLength", "maxLength") and node.get("type") == "array":
                        std = "minItems" if std == "minLength" else "maxItems"
                    node[std] = value
        for value in node.values():
            _standard_keywords(value)
    elif isinstance(node, list):
        for value in node:
            _standard_keywords(value)


def schema_text() -> str:
    """The exact text of recipe.schema.json."""
    return json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"


# ---- Markdown --------------------------------------------------------------------------------------------------

CONSTRAINTS = (("exclusiveMinimum", "> {}"), ("minimum", ">= {}"), ("exclusiveMaximum", "< {}"),
               ("maximum", "<= {}"), ("minItems", "at least {} item(s)"), ("maxItems", "at most {} item(s)"),
               ("minLength", "at least {} character(s)"), ("maxLength", "at most {} character(s)"),
               ("pattern", "matches `{}`"))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(name: str) -> str:
    return name.lower()


def _literal(v) -> str:
    return json.dumps(v)


def type_of(node: dict, defs: dict) -> str:
    """A short, readable type for a schema node (Markdown; sections link to their own table)."""
    if "$ref" in node:
        name = _ref_name(node["$ref"])
        return f"[{name}](#{_anchor(name)})"
    if "const" in node:
        return f"`{_literal(node['const'])}`"
    if "enum" in node:
        return " \\| ".join(f"`{_literal(v)}`" for v in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            return " \\| ".join(type_of(n, defs) for n in node[key])
    t = node.get("type")
    if t == "array":
        if "prefixItems" in node:
            return "[" + ", ".join(type_of(n, defs) for n in node["prefixItems"]) + "]"
        return f"list[{type_of(node.get('items', {}), defs)}]"
    if t == "object":
        extra = node.get("additionalProperties")
        return f"map[string, {type_of(extra, defs)}]" if isinstance(extra, dict) else "mapping"
    if t is None:
        return "any"
    return t


def constraints_of(node: dict) -> list[str]:
    """Numeric, length and item constraints of a node and of its branches / items."""
    out = [fmt.format(node[k]) for k, fmt in CONSTRAINTS if k in node]
    for key in ("anyOf", "oneOf"):
        for branch in node.get(key, []):
            out += constraints_of(branch)
    if isinstance(node.get("items"), dict):
        out += [f"each {c}" for c in constraints_of(node["items"]) if not c.startswith("each")]
    if isinstance(node.get("additionalProperties"), dict):
        out += [f"each value {c}" for c in constraints_of(node["additionalProperties"])]
    for item in node.get("prefixItems", []):
        out += constraints_of(item)
    return out


def _default(prop: dict, required: bool) -> str:
    if required:
        return "**required**"
    if "default" not in prop:
        return "(none)"
    text = json.dumps(prop["default"])
    if isinstance(prop["default"], dict) and prop["default"]:
        return "its section's defaults"
    return f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _section_order(schema: dict) -> list[tuple[str, dict]]:
    """Sections in the order a reader meets them: depth first from the root, in field order."""
    defs = schema.get("$defs", {})
    order: list[str] = []

    def visit(node):
        if isinstance(node, dict):
            if "$ref" in node:
                name = _ref_name(node["$ref"])
                if name not in order:
                    order.append(name)
                    visit(defs[name])
                return
            for key in ("properties",):
                for prop in node.get(key, {}).values():
                    visit(prop)
            for key in ("anyOf", "oneOf", "prefixItems"):
                for n in node.get(key, []):
                    visit(n)
            for key in ("items", "additionalProperties"):
                if isinstance(node.get(key), dict):
                    visit(node[key])

    visit(schema)
    order += [n for n in defs if n not in order]
    return [(n, defs[n]) for n in order]


def section_table(node: dict, defs: dict) -> list[str]:
    rows = ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
    required = set(node.get("required", []))
    for key, prop in node.get("properties", {}).items():
        cons = constraints_of(prop)
        rows.append(f"| `{key}` | {type_of(prop, defs)} | {_cell(_default(prop, key in required))} | "
                    f"{_cell(', '.join(cons)) or ''} | {_cell(prop.get('description', ''))} |")
    return rows


def _stage_kinds(schema: dict) -> dict[str, str]:
    """Section name -> stage kind, from the transfer list's discriminator."""
    items = schema["properties"]["transfer"].get("items", {})
    mapping = items.get("discriminator", {}).get("mapping", {})
    kinds = {_ref_name(ref): kind for kind, ref in mapping.items()}
    order = [_ref_name(n["$ref"]) for n in items.get("oneOf", []) if "$ref" in n]
    return {name: kinds[name] for name in order + [n for n in kinds if n not in order] if name in kinds}


def markdown() -> str:
    """The recipe reference page (Markdown), every key with its type, default, constraints and description."""
    schema = recipe_json_schema()
    defs = schema.get("$defs", {})
    kinds = _stage_kinds(schema)
    lines = [
        "# Recipe reference",
        "",
        "<!-- Generated from slimbert/recipe/schema.py by slimbert.recipe.reference at docs build time; "
        "do not edit. -->",
        "",
        "Every key a recipe may hold, generated from the pydantic schema (`slimbert/recipe/schema.py`) when the "
        "site is built, so it always matches the code. Unknown keys are errors; every key not marked "
        "**required** has the default shown. `null` means the key may be set to `null` (YAML `~` or `null`). "
        "The same schema, as a [JSON Schema](recipe.schema.json), gives editors completion and validation "
        "(see [JSON Schema for recipes](schema.md)).",
        "",
        "Checks that involve several keys (equal widths for feature-map transfer, equal head counts for "
        "attention transfer, layer maps that fit the teacher, ...) run when the recipe is loaded; "
        "[Troubleshooting](troubleshooting.md) lists them.",
        "",
        "## Recipe (top level)",
        "",
        *section_table(schema, defs),
        "",
    ]
    if kinds:
        lines += ["`transfer` is a list of stages; each stage's `kind` selects its keys: "
                  + ", ".join(f"[`{k}`](#{_anchor(name)})" for name, k in kinds.items()) + ".", ""]
    for name, node in _section_order(schema):
        title = f"{name} (transfer stage `kind: {kinds[name]}`)" if name in kinds else name
        lines += [f"## {title} {{#{_anchor(name)}}}", ""]
        if node.get("description"):
            lines += [node["description"].strip(), ""]
        if node.get("properties"):
            lines += [*section_table(node, defs), ""]
        elif "enum" in node:
            lines += ["One of " + ", ".join(f"`{_literal(v)}`" for v in node["enum"]) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv[0] if argv else "schema"
    if what == "schema":
        sys.stdout.write(schema_text())
    elif what == "markdown":
        sys.stdout.write(markdown() + "\n")
    elif what == "check":
        ok = SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text(encoding="utf-8") == schema_text()
        print("recipe.schema.json is up to date" if ok else
              "recipe.schema.json is stale: python -m slimbert.recipe.reference schema > "
              "slimbert/recipe/recipe.schema.json")
        return 0 if ok else 1
    else:
        print("usage: python -m slimbert.recipe.reference [schema|markdown|check]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
