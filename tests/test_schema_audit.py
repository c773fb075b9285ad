"""No dead knobs: every field of the recipe schema is read by some code outside the schema itself. A field that
nothing reads would be accepted, documented, and silently do nothing (as transfer[].losses.mask_padding once did)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from slimbert.recipe.keys import _strip
from slimbert.recipe.schema import Recipe

PACKAGE = Path(__file__).resolve().parents[1] / "slimbert"
# Files that only declare or document fields: a mention there is not a read.
DECLARING = {PACKAGE / "recipe" / "schema.py", PACKAGE / "recipe" / "reference.py"}

# "Model.field": why a field that no code reads still does something (documentation-only fields). Empty today:
# every field is read. A name-based check: a generic name (name, size) read anywhere counts, so it catches a
# knob nobody wired up rather than proving each one is wired to the right place (the malformed suite does that).
ALLOWED: dict[str, str] = {}


def models(root: type[BaseModel] = Recipe) -> dict[str, type[BaseModel]]:
    """Every section model reachable from the recipe, by class name."""
    found: dict[str, type[BaseModel]] = {}

    def visit(tp):
        inner = _strip(tp)
        for t in inner if isinstance(inner, list) else [inner]:
            if isinstance(t, type) and issubclass(t, BaseModel):
                if t.__name__ not in found:
                    found[t.__name__] = t
                    for f in t.model_fields.values():
                        visit(f.annotation)
            elif t is not None and getattr(t, "__args__", None):
                for a in t.__args__:
                    visit(a)

    visit(root)
    return found


def package_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if p not in DECLARING)


def is_read(name: str, source: str) -> bool:
    """An attribute read (`.name`), a key read (`["name"]`, `get("name")`), or a getattr by name."""
    pattern = rf"\.{name}\b(?!\s*=[^=])|\[\s*['\"]{name}['\"]\s*\]|get\(\s*['\"]{name}['\"]|getattr\([^)]*['\"]{name}['\"]"
    return re.search(pattern, source) is not None


def test_the_walk_sees_every_section():
    found = models()
    assert {"Recipe", "Source", "Teacher", "Student", "FFNSpec", "Data", "Corpus", "Optimizer", "Losses",
            "ProgressiveStage", "JointStage", "AuxiliaryStage", "PretrainDistillStage", "TeacherAdaptationStage",
            "Finetune", "Export", "Bench", "Balance"} <= set(found), sorted(found)
    assert sum(len(m.model_fields) for m in found.values()) > 100


def test_every_schema_field_is_read_by_code():
    source = package_source()
    unread = sorted(f"{m.__name__}.{name}" for m in models().values() for name in m.model_fields
                    if f"{m.__name__}.{name}" not in ALLOWED and not is_read(name, source))
    assert not unread, f"fields no code reads (dead knobs; implement or remove them): {unread}"


def test_the_audit_can_fail():
    assert not is_read("surely_no_such_field_xyz", package_source())
    assert is_read("steps_per_layer", package_source())
