"""No dead knobs: every field of the recipe schema is read by some code outside the schema itself. A field that
nothing reads would be accepted, documented, and silently do nothing (as transfer[].losses.mask_padding once did)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


# ---- plausibility bounds: each key's message is written for that key ---------------------------------------------

SEMANTIC_BOUNDS = {"Export.opset"}  # a real range (14-20), not a plausibility bound: pydantic's own message


def test_every_count_bound_carries_its_own_reason():
    """Every upper bound on a count or size names why, in words for its own keys (schema.Plausible): the reason
    is a property of the type, so two kinds of count that share a limit (layers and processes, 1,024) cannot
    borrow each other's reason as they once did."""
    import annotated_types

    from slimbert.recipe.keys import field_markers
    from slimbert.recipe.schema import Plausible

    bare, reasons = [], {}
    for name, model in models().items():
        for field_name, f in model.model_fields.items():
            key = f"{name}.{field_name}"
            bounds = [b.le for b in field_markers(f, annotated_types.Le)]
            fraction = bounds and max(bounds) <= 2  # alpha, probabilities, accuracy drops: a range, not a count
            if bounds and not fraction and key not in SEMANTIC_BOUNDS:
                marks = field_markers(f, Plausible)
                if len(marks) != 1:
                    bare.append(key)
                else:
                    reasons.setdefault(marks[0].reason, []).append(key)
    assert not bare, f"bounds without a Plausible reason: {bare}"
    assert len(reasons) >= 15, reasons


@pytest.mark.parametrize("override, words", [
    ("data.num_proc=5000", "tokenising processes"),
    ("student.num_layers=5000", "layers"),
    ("student.num_heads=5000", "attention heads"),
    ("student.ffn.stacked=5000", "FFNs per block"),
    ("export.bench.threads=5000", "threads"),
    ("data.similarity_max_pairs=2000000000", "sentence pairs"),
    ("data.eval_sequences=2000000000", "sequences"),
    ("transfer.0.warmup_steps=200000000", "optimizer steps"),
    ("data.seq_len=1000000", "tokens"),
    ("transfer.0.grad_accum=100000", "micro-batches"),
])
def test_a_bound_names_its_own_key_reason(override, words, tmp_path):
    from slimbert.recipe import RecipeError
    from slimbert.recipe.parse import parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text((Path(__file__).parent / "malformed" / "zero_layers.yaml").read_text()
                      .replace("num_layers: 0", "num_layers: 2"))
    with pytest.raises(RecipeError) as e:
        parse_recipe(recipe, [override])
    (p,) = e.value.problems
    assert p.path == override.split("=")[0] and "plausible bound" in p.message, p
    assert p.message.split(": ", 1)[1].startswith("more " + words), p  # the reason, after "bound N:"
