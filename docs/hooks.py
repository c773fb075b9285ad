"""mkdocs hooks (mkdocs.yml `hooks:`): pages generated from the code and the benchmarks at build time.

- `recipe-reference.md`: every recipe key, from the pydantic schema (slimbert.recipe.reference.markdown).
- `recipe.schema.json`: the recipe JSON Schema, as the package ships it (generated from the same schema).
- `results.md`: every `benchmarks/results/*.md`, included as it is now; a missing file is simply not there.

Nothing here is committed to docs/, so none of it can go stale.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# The results a reader looks for first; any other results file follows in name order.
RESULTS_ORDER = ("quality", "teacher", "progressive", "latency", "reliability")
RESULTS_INTRO = {
    "quality": "Task accuracy of compressed students against their teachers.",
    "teacher": "How faithfully an IB teacher built from a real source reproduces it, before and after adaptation.",
    "progressive": "What progressive transfer's truncated forward passes save.",
    "latency": "Export latency: the exported student against BERT_BASE and a plain export.",
    "reliability": "How runs behave under interruption, bad input and resume.",
    "throughput": "Tokens/s and MFU per stage, as every run logs them.",
    "gpu": "The GPU check: CUDA tests, the quickstart and the paper's shape on one GPU.",
}


def results_files() -> list[Path]:
    found = {p.stem: p for p in sorted(RESULTS.glob("*.md"))} if RESULTS.is_dir() else {}
    return [found[n] for n in RESULTS_ORDER if n in found] + [p for n, p in found.items() if n not in RESULTS_ORDER]


def _demote(text: str) -> str:
    """Headings one level down (each file's title becomes a section), outside fenced code."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,5} ", line):
            line = "#" + line
        out.append(line)
    return "\n".join(out)


def _neutralise_links(text: str) -> str:
    """Relative links and images in a results file point into the repository, not the site: keep their text."""
    text = re.sub(r"!\[([^\]]*)\]\((?!https?://)([^)]+)\)", r"(figure: `\2`)", text)
    return re.sub(r"(?<!!)\[([^\]]+)\]\((?!https?://|#)([^)]+)\)", r"\1 (`\2`)", text)


def results_markdown() -> str:
    files = results_files()
    lines = ["# Results", "",
             "The benchmark reports in `benchmarks/results/`, included here when the site is built (so a new "
             "report appears without editing the docs). Each names the command that produced it; the scripts are "
             "in `benchmarks/`. Figures were measured on a shared 2-core CPU machine unless a report says "
             "otherwise.", ""]
    if not files:
        lines += ["!!! note", "    No results yet: `benchmarks/results/` holds no reports in this checkout.", ""]
    else:
        lines += ["| report | what it measures |", "|---|---|"]
        for p in files:
            title = next((l[2:].strip() for l in p.read_text(encoding="utf-8").splitlines() if l.startswith("# ")),
                         p.stem)
            lines.append(f"| [{title}](#{p.stem}) | {RESULTS_INTRO.get(p.stem, f'`benchmarks/results/{p.name}`')} |")
        lines.append("")
    for p in files:
        body = _neutralise_links(_demote(p.read_text(encoding="utf-8")))
        body = re.sub(r"^## (.*)$", lambda m: f"## {m.group(1)} {{#{p.stem}}}", body, count=1, flags=re.M)
        lines += [body.rstrip(), "", f"*Source: `benchmarks/results/{p.name}`*", ""]
    return "\n".join(lines)


def on_files(files, config):
    from slimbert.recipe.reference import markdown, schema_text

    for uri, content in (("recipe-reference.md", markdown()), ("recipe.schema.json", schema_text()),
                         ("results.md", results_markdown())):
        old = files.get_file_from_path(uri)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, uri, content=content))
    return files


def on_config(config):
    # Results files are read at build time; let `mkdocs serve` rebuild when they or the schema change.
    for path in (RESULTS, REPO / "slimbert" / "recipe" / "schema.py"):
        if path.exists() and str(path) not in config.watch:
            config.watch.append(str(path))
    return config
