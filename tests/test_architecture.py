"""Static guard on the package's shape (docs/architecture.md): imports go one way between the rooms, and
slimbert's own modules are imported at module top, where the dependency graph can be read."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "slimbert"

# room -> the rooms it may import ("" is slimbert/__init__.py, for __version__). cli.py and api.py sit on top.
ALLOWED = {
    "models": {""},
    "data": {""},
    "plugins": {""},
    "teacher": {"", "models"},
    "transfer": {"", "models", "teacher", "data"},
    "recipe": {"", "models", "teacher", "transfer", "data", "plugins"},
    "export": {"", "models", "teacher", "data"},
    "engine": {"", "models", "teacher", "transfer", "data", "plugins", "recipe", "export"},
}

# Function-level imports of slimbert modules that are there on purpose, with the reason.
LAZY_OK = {
    # `slimbert --help` and `slimbert validate` stay fast: the commands' modules import torch.
    "cli.py": "each command imports what it runs; the package's modules import torch and transformers",
    "api.py": "`import slimbert` stays light; compress() imports the runner, which imports torch",
    "recipe/__init__.py": "load_recipe reports YAML and schema problems (parse.py) before resolve.py imports torch",
}


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem if rel.stem != "__init__" else ""


def _imports(path: Path):
    """(imported slimbert module as 'slimbert.x.y', at module level?, line) for each import of the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = ["slimbert", *path.relative_to(PACKAGE).parent.parts]
    top = {id(n) for n in tree.body}
    for parent in ast.walk(tree):
        for node in ast.iter_child_nodes(parent):
            at_top = id(node) in top or (isinstance(parent, (ast.If, ast.Try)) and id(parent) in top)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "slimbert":
                        yield alias.name, at_top, node.lineno
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    name = ".".join(base + ([node.module] if node.module else []))
                else:
                    name = node.module or ""
                if name.split(".")[0] != "slimbert":
                    continue
                folder = PACKAGE.parent.joinpath(*name.split("."))
                for alias in node.names:  # `from .x import y`: module x.y when y is a module, else x
                    sub = folder / alias.name
                    yield (f"{name}.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").is_file() else name,
                           at_top, node.lineno)


def _target_room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _files():
    return sorted(PACKAGE.rglob("*.py"))


def test_imports_go_one_way():
    wrong = []
    for f in _files():
        room = _room(f)
        if room not in ALLOWED:
            continue  # cli.py, api.py: on top of everything
        for module, _, line in _imports(f):
            target = _target_room(module)
            if target != room and target not in ALLOWED[room]:
                wrong.append(f"{f.relative_to(PACKAGE.parent)}:{line} ({room}/) imports {module}")
    assert not wrong, "imports against the direction in docs/architecture.md:\n" + "\n".join(wrong)


def test_own_modules_are_imported_at_module_top():
    hidden = []
    for f in _files():
        rel = str(f.relative_to(PACKAGE))
        if rel in LAZY_OK:
            continue
        for module, at_top, line in _imports(f):
            if not at_top:
                hidden.append(f"slimbert/{rel}:{line} imports {module} inside a function")
    assert not hidden, "import slimbert's own modules at module top:\n" + "\n".join(hidden)


def test_no_import_cycle():
    """The graph of module-level imports between slimbert's modules has no cycle."""
    graph: dict[str, set[str]] = {}
    for f in _files():
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        me = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[me] = {m for m, at_top, _ in _imports(f) if at_top and m != me}
    for me in graph:
        for m in list(graph[me]):  # `from .x import y` names module x, or y in package x
            if m not in graph and m.rsplit(".", 1)[0] in graph:
                graph[me].discard(m)
                graph[me].add(m.rsplit(".", 1)[0])
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph or nxt == "slimbert":
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_guard_can_fail(tmp_path, monkeypatch):
    """A wrong-way import and a function-level one are both caught (so a green run means something)."""
    fake = tmp_path / "slimbert"
    (fake / "models").mkdir(parents=True)
    (fake / "models" / "bad.py").write_text("from ..engine import runner\n\ndef f():\n    from ..data import corpus\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert ("slimbert.engine", True, 1) in list(_imports(fake / "models" / "bad.py"))
    with pytest.raises(AssertionError, match="models/bad.py:1 .models/. imports slimbert.engine"):
        test_imports_go_one_way()
    with pytest.raises(AssertionError, match="bad.py:4 imports slimbert.data inside a function"):
        test_own_modules_are_imported_at_module_top()


def test_a_schema_mistake_is_reported_before_torch_is_imported(tmp_path):
    """`slimbert validate` on a broken YAML file or a schema error answers from parse.py alone: no torch, no
    transformers loaded (they cost seconds per call)."""
    import subprocess
    import sys

    (tmp_path / "yaml.yaml").write_text("name: [\n")
    (tmp_path / "schema.yaml").write_text("name: x\nseed: -1\n")
    probe = ("import sys\nfrom typer.testing import CliRunner\nfrom slimbert.cli import app\n"
             "for f in sys.argv[1:]:\n"
             "    r = CliRunner().invoke(app, ['validate', f])\n"
             "    assert r.exit_code == 2, r.output\n"
             "    print(f, 'problem(s)' in r.output)\n"
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "yaml.yaml"), str(tmp_path / "schema.yaml")],
                          capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[:2] == [f"{tmp_path / 'yaml.yaml'} True", f"{tmp_path / 'schema.yaml'} True"]
    assert lines[-1] == "[]"
