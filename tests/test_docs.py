"""The docs site for recipe authors: the recipe JSON Schema and reference page stay true to the code, every preset
validates, the code in the docs runs, `mkdocs build --strict` passes, and the built site works in a real browser."""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import REPO, need

DOCS = REPO / "docs"
PRESETS = REPO / "slimbert" / "presets"
RECIPES = sorted(PRESETS.glob("*.yaml"))
COOKBOOK = ("mobilebert", "mobilebert-tiny", "quickstart", "distilbert-style", "tinybert-style", "minilm-style",
            "task-cut", "embedding-cut")
SCREENSHOTS = REPO / "build" / "docs-browser"   # ignored by git (build/)
MODELINE = "# yaml-language-server: $schema=../recipe/recipe.schema.json"


# ---- the JSON Schema and the reference page ---------------------------------------------------------------------

def test_shipped_schema_is_what_the_code_generates():
    from slimbert.recipe.reference import SCHEMA_FILE, schema_text

    assert SCHEMA_FILE.is_file(), "python -m slimbert.recipe.reference schema > slimbert/recipe/recipe.schema.json"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), (
        "slimbert/recipe/recipe.schema.json is stale; regenerate it: "
        "python -m slimbert.recipe.reference schema > slimbert/recipe/recipe.schema.json")
    from typer.testing import CliRunner

    from slimbert.cli import app

    done = CliRunner().invoke(app, ["recipes", "schema"])      # `slimbert recipes schema` prints the same
    assert done.exit_code == 0 and done.output == schema_text()


def test_schema_is_valid_and_uses_standard_keywords():
    import jsonschema

    from slimbert.recipe.reference import recipe_json_schema

    schema = recipe_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    # pydantic's names for bounds mean nothing to JSON Schema tools: they must come out as the standard keywords.
    assert not re.search(r'"(gt|ge|lt|le)":', text)
    props = schema["$defs"]["Student"]["properties"]
    assert props["num_layers"]["exclusiveMinimum"] == 0
    assert schema["$defs"]["Data"]["properties"]["mlm_probability"]["exclusiveMaximum"] == 1
    # Defaults made by a default_factory are written in, so editors show them.
    assert schema["properties"]["plugins"]["default"] == []
    assert schema["properties"]["student"]["default"]["ffn"] == {"size": 512, "stacked": 4}
    kinds = schema["properties"]["transfer"]["items"]["discriminator"]["mapping"]
    assert set(kinds) == {"progressive", "joint", "auxiliary", "pretrain_distill", "teacher_adaptation",
                          "embedding_distill"}


def test_schema_rejects_what_validate_rejects():
    """The editor's checks agree with slimbert's on typical mistakes (and accept every preset: see below)."""
    import jsonschema

    from slimbert.recipe.reference import recipe_json_schema

    v = jsonschema.Draft202012Validator(recipe_json_schema())
    good = yaml.safe_load((PRESETS / "quickstart.yaml").read_text())
    assert not list(v.iter_errors(good))
    for path, value in ((("student", "num_layers"), 0), (("student", "norm"), "batch_norm"),
                        (("data", "mlm_probability"), 1.5), (("student", "colour"), "red")):
        bad = json.loads(json.dumps(good))
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        assert list(v.iter_errors(bad)), path
    bad = json.loads(json.dumps(good))
    bad["transfer"][1]["steps"] = 5          # a key of another stage kind (progressive has steps_per_layer)
    assert list(v.iter_errors(bad))


def _all_models():
    from slimbert.recipe.reference import _models
    from slimbert.recipe.schema import Recipe

    return _models(Recipe)


def test_reference_page_has_every_key_with_type_default_and_constraints():
    from slimbert.recipe.reference import markdown

    page = markdown()
    sections = {m.group(1): m.start() for m in re.finditer(r"^## (\w+)", page, flags=re.M)}
    for name, model in _all_models().items():
        if name == "Recipe":
            continue
        assert name in sections, f"no section for {name}"
        body = page[sections[name]:].split("\n## ", 1)[0]
        for key, field in model.model_fields.items():
            row = next((line for line in body.splitlines() if line.startswith(f"| `{key}` |")), None)
            assert row is not None, f"{name}.{key} missing from the reference page"
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
            assert len(cells) == 5, row
            if field.description:
                assert cells[4] == field.description.replace("|", "\\|"), row
    # Stage kinds, the discriminator, are named; Literal enums, constraints and defaults are rendered.
    for kind in ("progressive", "joint", "auxiliary", "pretrain_distill", "teacher_adaptation", "embedding_distill"):
        assert f"kind: {kind}`" in page
    assert '| `norm` | `"no_norm"` \\| `"layer_norm"` | `"no_norm"` |' in page
    assert re.search(r"\| `transfer` \|.*\| \*\*required\*\* \| at least 1 item\(s\) \|", page)
    assert re.search(r"\| `mlm_probability` \| number \| `0.15` \| > 0, < 1 \|", page)
    assert re.search(r"\| `steps_per_layer` \| integer \| \*\*required\*\* \| > 0, <= 100000000 \|", page)  # a bound


# ---- presets and cookbook recipes --------------------------------------------------------------------------------

def test_cookbook_recipes_ship():
    assert set(COOKBOOK) <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_preset_validates_and_names_the_schema(path, docs_cwd):
    import jsonschema

    from slimbert.recipe import load_recipe
    from slimbert.recipe.reference import recipe_json_schema

    text = path.read_text()
    assert MODELINE in text.splitlines(), f"{path.name}: add the header line {MODELINE!r}"
    assert (path.parent / MODELINE.split("$schema=")[1]).resolve().is_file()
    assert text.startswith("# ") and re.search(rf"slimbert \w+ +{path.stem}\b", text.split("\nname:")[0]), \
        "the header comment names the exact command"
    errors = [e.message for e in jsonschema.Draft202012Validator(recipe_json_schema()).iter_errors(
        yaml.safe_load(text))]
    assert not errors, errors
    # what `slimbert validate` does, from docs_cwd (a preset's relative paths start from the working directory);
    # hub ids resolve offline from known configs
    r = load_recipe(path)
    assert r.student_config.num_hidden_layers == r.recipe.student.num_layers


def _resolved(name):
    from slimbert.recipe import load_recipe

    return load_recipe(PRESETS / f"{name}.yaml")


def test_cookbook_recipes_express_their_methods(docs_cwd):
    from slimbert.models import count

    # DistilBERT: half the teacher's layers at its width, started from teacher layers 2, 4, ..., soft targets at T.
    d = _resolved("distilbert-style")
    assert d.recipe.student.init == "prune_from_teacher" and d.layer_map == [2, 4, 6, 8, 10, 12]
    assert d.student_config.hidden_size == d.teacher_feature_width == 768
    (st,) = d.recipe.transfer
    assert st.kind == "auxiliary" and 0 < st.alpha < 1 and st.temperature == 2.0
    assert st.losses.feature_norm and st.losses.attention == 0
    # TinyBERT: source teacher, narrower student (projections), g(m) = 3m, hidden + attention, no MLM, task KD.
    t = _resolved("tinybert-style")
    assert t.teacher_config is None and t.student_config.hidden_size == 312 != t.teacher_feature_width
    assert t.layer_map == [3, 6, 9, 12]
    assert [s.kind for s in t.recipe.transfer] == ["joint"]
    losses = t.recipe.transfer[0].losses
    assert losses.feature_map > 0 and losses.attention > 0 and not losses.feature_norm
    assert t.recipe.finetune.distill and t.recipe.finetune.distill_alpha == 0.0
    assert abs(count(t.student_config).total_params - 14.5e6) / 14.5e6 < 0.05
    # MiniLM: the top teacher layers' attention distributions only.
    m = _resolved("minilm-style")
    assert m.layer_map == [7, 8, 9, 10, 11, 12]
    losses = m.recipe.transfer[0].losses
    assert losses.attention > 0 and losses.feature_map == losses.feature_mean == losses.feature_var == 0
    assert [s.kind for s in m.recipe.transfer] == ["joint"]
    for name in ("distilbert-style", "tinybert-style", "minilm-style", "mobilebert"):
        header = (PRESETS / f"{name}.yaml").read_text().split("\nname:")[0]
        assert re.search(r"TPU-v3-256|V100", header), f"{name}: the header states the paper-scale budget"
    for name in COOKBOOK:
        header = (PRESETS / f"{name}.yaml").read_text().split("\nname:")[0]
        assert "Costs:" in header and "Buys:" in header, f"{name}: the header says what it costs and buys"
    for name in ("distilbert-style", "tinybert-style", "minilm-style"):
        header = (PRESETS / f"{name}.yaml").read_text().split("\nname:")[0]
        assert "Not expressible" in header


# ---- the docs' code runs -----------------------------------------------------------------------------------------

def fenced_blocks(page: Path, langs: tuple[str, ...]) -> list[tuple[int, str, bool]]:
    """(line, code, runnable) for each fenced block in those languages; `<!-- no-run: why -->` on the line
    before a block marks it as not runnable."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w+)", lines[i])
        if m:
            start, lang = i, m.group(1)
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            if lang in langs:
                prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
                blocks.append((start + 1, "\n".join(lines[start + 1:j]), not prev.startswith("<!-- no-run")))
            i = j
        i += 1
    return blocks


PY_PAGES = [p for p in sorted(DOCS.glob("*.md")) if any(r for *_, r in fenced_blocks(p, ("python",)))]


@pytest.fixture
def docs_cwd(tmp_path, shared_data, minilm_path, monkeypatch):
    """A working directory laid out like the repository root, with ../shared/data beside it."""
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("page", PY_PAGES, ids=[p.name for p in PY_PAGES])
def test_python_snippets_run(page, docs_cwd, capsys):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    ran = 0
    for line, code, runnable in fenced_blocks(page, ("python",)):
        if not runnable:
            continue
        try:
            exec(compile(code, f"{page.name}:{line}", "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"{page.name}, the python block at line {line} fails: {e!r}") from e
        ran += 1
    assert ran
    if page.name == "api.md":
        out = capsys.readouterr().out
        assert "3 4 48" in out and "['pretrain_distill', 'progressive'] True" in out
        assert "transfer.0.losses.attention" in out and "blocks.3" in out
        assert (docs_cwd / "runs" / "my-teacher" / "student" / "config.json").is_file()


def test_api_snippets_cover_the_main_calls():
    code = "\n".join(c for _, c, r in fenced_blocks(DOCS / "api.md", ("python",)) if r)
    for call in ("slimbert.count(", "slimbert.to_transformers(", "load_recipe(", "build_plan(",
                 "slimbert.ModuleTeacher(", "slimbert.compress("):
        assert call in code, call


RUNNABLE_SHELL = re.compile(r"^slimbert (validate|count|recipes (list|show)|plan .*--no-measure)\b")


def shell_commands() -> list[tuple[str, int, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for line, code, runnable in fenced_blocks(page, ("bash", "console", "shell")):
            for cmd in code.splitlines():
                cmd = cmd.split("  #")[0].strip()
                if runnable and RUNNABLE_SHELL.match(cmd):
                    found.append((page.name, line, cmd))
    return found


def test_shell_snippets_run(docs_cwd):
    """Every `slimbert validate / plan --no-measure / count / recipes` line in the docs' shell blocks runs."""
    from typer.testing import CliRunner

    from slimbert.cli import app

    commands = shell_commands()
    assert len(commands) >= 6, commands
    runner = CliRunner()
    for page, line, cmd in commands:
        result = runner.invoke(app, shlex.split(cmd)[1:])
        assert result.exit_code == 0, f"{page}:{line}: `{cmd}` exited {result.exit_code}: {result.output[-2000:]}"


def test_getting_started_has_the_readmes_two_commands():
    readme = re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())
    page = (DOCS / "getting-started.md").read_text()
    for command in readme:
        assert f"```bash\n{command}\n```" in page


# ---- troubleshooting ----------------------------------------------------------------------------------------------

def test_troubleshooting_names_every_error_class_and_exit_code():
    page = (DOCS / "troubleshooting.md").read_text()
    classes, codes = set(), set()
    for f in (REPO / "slimbert").rglob("*.py"):
        text = f.read_text()
        classes |= set(re.findall(r"^class (\w+Error)\(", text, flags=re.M))
        codes |= {int(c) for c in re.findall(r"typer\.Exit\((\d+)\)", text)}
    assert {"RecipeError", "TrainingError", "CheckpointError", "ExportError", "TeacherError"} <= classes
    missing = sorted(c for c in classes if c not in page)
    assert not missing, f"docs/troubleshooting.md does not explain {missing}"
    table = page.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for code in codes | {0, 1}:
        assert re.search(rf"^\| {code} \|", table, flags=re.M), f"exit code {code} is not in the table"


# ---- the site: mkdocs build --strict, then a real browser ---------------------------------------------------------

@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_mkdocs_build_strict_with_generated_pages(site):
    from slimbert.recipe.reference import SCHEMA_FILE

    for page in ("getting-started", "concepts", "recipe-reference", "schema", "cookbook", "api", "export",
                 "results", "troubleshooting", "teachers", "models", "model-cards"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "recipe.schema.json").read_text() == SCHEMA_FILE.read_text()
    reference = (site / "recipe-reference" / "index.html").read_text()
    assert "steps_per_layer" in reference and "teacher_adaptation" in reference
    results = (site / "results" / "index.html").read_text()
    for report in sorted((REPO / "benchmarks" / "results").glob("*.md")):
        title = next(l[2:] for l in report.read_text().splitlines() if l.startswith("# "))
        assert title.split(":")[0] in results, report.name
    api = (site / "api" / "index.html").read_text()
    assert 'id="slimbert.api.compress"' in api and "Run <code>recipe</code>" in api   # mkdocstrings, from the docstring


def test_results_page_without_reports_and_with_repository_links(tmp_path, monkeypatch):
    sys.path.insert(0, str(DOCS))
    try:
        import hooks
    finally:
        sys.path.remove(str(DOCS))
    monkeypatch.setattr(hooks, "RESULTS", tmp_path / "absent")
    assert "No results yet" in hooks.results_markdown()
    monkeypatch.setattr(hooks, "RESULTS", tmp_path)
    (tmp_path / "quality.md").write_text("# Quality: students vs teachers\n\n## Setup\n\nSee [the script](../q.py) "
                                        "and ![plot](plot.png); [paper](https://arxiv.org/abs/2004.02984).\n")
    page = hooks.results_markdown()
    assert "## Quality: students vs teachers {#quality}" in page and "### Setup" in page
    assert "](../q.py)" not in page and "plot.png" in page and "](https://arxiv.org/abs/2004.02984)" in page


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def served(site):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]


def test_site_in_a_real_browser(served, tmp_path):
    """Debian's chromium, driven by playwright: headings render, navigation works, search finds 'progressive'."""
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if chromium is None:
        need("chromium (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright (pip install -c constraints.txt -e '.[dev]')")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.set_default_timeout(20_000)
            errors, failed = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # The site loads nothing it does not serve (requests cut short by navigating away do not count).
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}")
                    if "ERR_ABORTED" not in (r.failure or "") else None)
            pages = {"": "slimbert", "getting-started/": "Getting started", "concepts/": "Concepts",
                     "recipe-reference/": "Recipe reference", "schema/": "JSON Schema for recipes",
                     "cookbook/": "Cookbook", "api/": "Python API", "export/": "Export and latency",
                     "results/": "Results", "troubleshooting/": "Troubleshooting"}
            for path, heading in pages.items():
                page.goto(f"{served}/{path}")
                h1 = page.locator("article h1").first
                assert h1.inner_text().strip().rstrip("¶").strip() == heading, path
            # The concepts page's diagrams load and have a size.
            page.goto(f"{served}/concepts/")
            sizes = page.eval_on_selector_all("article img[src$='.svg']", "imgs => imgs.map(i => i.naturalWidth)")
            assert len(sizes) == 2 and all(w > 100 for w in sizes), sizes
            page.screenshot(path=str(SCREENSHOTS / "concepts.png"), full_page=False)
            # The generated reference renders its tables.
            page.goto(f"{served}/recipe-reference/")
            assert page.locator("article table").count() > 10
            assert page.locator("article h2", has_text="ProgressiveStage").count() == 1
            # Navigation: from the home page, click through the sidebar.
            page.goto(f"{served}/")
            page.locator("nav.md-nav--primary a.md-nav__link", has_text="Troubleshooting").first.click()
            page.wait_for_url(re.compile(r"/troubleshooting/$"))
            assert page.locator("article h1").first.inner_text().startswith("Troubleshooting")
            page.locator("nav.md-nav--primary a.md-nav__link", has_text="Cookbook").first.click()
            page.wait_for_url(re.compile(r"/cookbook/$"))
            assert page.locator("article h2", has_text="TinyBERT-style").count() == 1
            # Search: the index loads in a worker; typing shows results that mention the word.
            page.goto(f"{served}/")
            page.locator("label.md-search__icon, .md-search__input").first.click()
            page.locator("input.md-search__input").press_sequentially("progressive", delay=30)  # as a user types
            results = page.locator(".md-search-result__item")
            results.first.wait_for(state="visible")
            assert results.count() >= 2
            assert "progressive" in page.locator(".md-search-result").inner_text().lower()
            page.screenshot(path=str(SCREENSHOTS / "search-progressive.png"), full_page=False)
            assert not errors, errors
            assert not failed, failed
        finally:
            browser.close()
