"""The `slimbert` command: parse, call the API, print with rich, map user errors to exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress BERT-family encoders into MobileBERT-style students.")
console = Console()
err = Console(stderr=True)


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def recipe_errors(fn):
    """Run fn; a RecipeError becomes one line per problem on stderr and exit code 2, never a traceback."""
    from .recipe.errors import RecipeError

    try:
        return fn()
    except RecipeError as e:
        err.print(f"[bold red]{len(e.problems)} problem(s):[/]")
        for p in e.problems:
            err.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


RecipeArg = typer.Argument(..., help="Recipe YAML file, or a preset name (see `slimbert recipes list`).")
SetOpt = typer.Option(None, "--set", help="Override a recipe key: key.path=value (repeatable).")


@app.command()
def validate(recipe: str = RecipeArg, set_: list[str] = SetOpt,
             allow_plugins: bool = typer.Option(False, "--allow-plugins", help="Permit the recipe's plugins.")) -> None:
    """Check a recipe: exit 0, or exit 2 with every problem (key path and line)."""
    from .recipe import load_recipe, recipe_path

    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), set_ or [], allow_plugins))
    from .models import count as count_fn

    console.print(f"[green]ok[/] {r.file}: {len(r.recipe.transfer)} stage(s); student "
                  f"{count_fn(r.student_config).total_params / 1e6:.2f}M params", highlight=False)
    if r.balance is not None:
        console.print(f"balance: {r.balance.reason}", highlight=False)
    from .recipe.checks import advice

    for key, message in advice(r.recipe, r.source.has_mlm_head, r.source.sentence_transformers):
        console.print(f"[yellow]note[/] {key}: {message}", highlight=False)


@app.command()
def plan(recipe: str = RecipeArg, set_: list[str] = SetOpt,
         as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
         no_measure: bool = typer.Option(False, "--no-measure", help="Skip timing a few steps per stage."),
         allow_plugins: bool = typer.Option(False, "--allow-plugins")) -> None:
    """A dry run: architectures side by side, the layer map, the stage schedule and time estimates."""
    from .recipe import build_plan, load_recipe, recipe_path

    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), set_ or [], allow_plugins))
    p = build_plan(r)
    if not no_measure:
        from .engine.estimate import estimate_stages

        recipe_errors(lambda: estimate_stages(r, p))
    if as_json:
        print(json.dumps(p, indent=2, default=str))
        return
    print_plan(p)


SHORT = {"feature_map": "FMT", "feature_mean": "mean", "feature_var": "var", "attention": "AT"}


@app.command()
def run(recipe: str = RecipeArg, set_: list[str] = SetOpt,
        out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<name>-<timestamp>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
        allow_plugins: bool = typer.Option(False, "--allow-plugins")) -> None:
    """Run the recipe's stages and write the run directory."""
    from .engine.runner import TrainingError, run as run_recipe
    from .recipe import load_recipe, recipe_path

    if resume and out is None:
        fail("--resume needs --out: the run directory to continue")
    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), set_ or [], allow_plugins))
    try:
        recipe_errors(lambda: run_recipe(r, out, resume, err))
    except TrainingError as e:
        err.print(f"[bold red]training stopped:[/] {e}", soft_wrap=True)
        raise typer.Exit(3)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted:[/] the checkpoints written so far are kept; continue with --resume",
                  soft_wrap=True)
        raise typer.Exit(130)


def print_plan(p: dict) -> None:
    t, s = p["teacher"], p["student"]
    arch = Table(title=f"{p['name']}: teacher ({t['kind']}) vs student, seq {p['seq_len']}")
    for col in ("component", "teacher params", "student params", "teacher GFLOPs", "student GFLOPs"):
        arch.add_column(col, justify="left" if col == "component" else "right")
    for k in t["params"]:
        if k == "encoder":
            continue
        arch.add_row(k, f"{t['params'][k]:,}", f"{s['params'][k]:,}", f"{t['flops'].get(k, 0) / 1e9:.3f}",
                     f"{s['flops'].get(k, 0) / 1e9:.3f}", style="bold" if k == "total" else None)
    arch.add_row("attention/FFN ratio", f"{t['attention_ffn_ratio']:.3f}", f"{s['attention_ffn_ratio']:.3f}", "", "")
    console.print(arch)
    c = p["compression"]
    console.print(f"compression: {c['params']}x params, {c['encoder_params']}x encoder params, {c['flops']}x FLOPs")
    if p.get("balance"):
        console.print(f"[bold]balance:[/] {p['balance']['reason']}", highlight=False)
    lm = Table(title="layer map")
    for col in ("student", "teacher", "student shape", "teacher shape", "heads t/s", "losses"):
        lm.add_column(col)
    for row in p["layer_map"]:
        shape = "x".join(map(str, row["teacher_shape"])) + (" (projected)" if row["projection"] else "")
        lm.add_row(str(row["student_layer"]), str(row["teacher_layer"]), "x".join(map(str, row["student_shape"])),
                   shape, "/".join(map(str, row["heads"])),
                   " ".join(f"{SHORT.get(k, k)}x{v:g}" for k, v in row["losses"].items() if v))
    console.print(lm)
    st = Table(title="stages")
    for col in ("#", "kind", "steps", "batch", "optimizer", "lr", "schedule", "trainable", "est. time"):
        st.add_column(col)
    for row in p["stages"]:
        est = row.get("estimate")
        est_s = f"{est['seconds']:.0f}s ({est['step_seconds'] * 1000:.0f} ms/step)" if est else "-"
        st.add_row(str(row["index"]), row["kind"], f"{row['steps']:,}", str(row["batch_size"]), row["optimizer"],
                   f"{row['lr']:g}", row["schedule"] + (f" +{row['warmup_steps']} warm-up" if row["warmup_steps"] else ""),
                   row.get("trainable", ""), est_s)
    console.print(st)
    if p.get("estimate_note"):
        console.print(f"estimates: {p['estimate_note']}", highlight=False)


recipes_app = typer.Typer(no_args_is_help=True, help="The preset recipes shipped with slimbert.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list() -> None:
    """List the presets."""
    from .recipe import presets

    for name, path in presets().items():
        first = path.read_text().splitlines()[0].lstrip("# ")
        console.print(f"[bold]{name}[/]  {first}", highlight=False)


@recipes_app.command("show")
def recipes_show(name: str) -> None:
    """Print a preset's YAML."""
    from .recipe import recipe_path

    path = recipe_errors(lambda: recipe_path(name))
    print(path.read_text(), end="")


@recipes_app.command("new")
def recipes_new(name: str, from_: str = typer.Option("quickstart", "--from", help="Preset to start from."),
                force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Write a commented starter recipe NAME.yaml (a copy of a preset, renamed)."""
    from .recipe import recipe_path

    src = recipe_errors(lambda: recipe_path(from_))
    out = Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite")
    stem = out.stem
    text = src.read_text().replace(f"name: {src.stem}", f"name: {stem}", 1)
    text = text.replace(f"recipes/{src.name}", str(out))
    from .recipe.reference import SCHEMA_FILE

    # The presets name the schema relative to recipes/; the copy names the installed file, so editors find it.
    text = re.sub(r"(# yaml-language-server: \$schema=)\S+", lambda m: m.group(1) + SCHEMA_FILE.as_uri(), text)
    out.write_text(text)
    console.print(f"wrote {out} (from {src.name}); next: slimbert validate {out}")


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the recipe JSON Schema (for editors; the package ships it as slimbert/recipe/recipe.schema.json)."""
    from .recipe.reference import schema_text

    print(schema_text(), end="")


@app.command("export")
def export_cmd(path: Path = typer.Argument(..., help="A run directory (its fine-tuned or pre-trained student) or a "
                                                    "model directory."),
               onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the only format so far)."),
               quantize: str = typer.Option(None, "--quantize", help="Also write a dynamic-int8 model: int8."),
               opset: int = typer.Option(17, "--opset", help="ONNX opset."),
               task: str = typer.Option(None, "--task", help="feature-extraction, fill-mask, text-classification or "
                                                             "question-answering (default: from the model's head)."),
               out: Path = typer.Option(None, "--out", help="Output folder (default: PATH/export, or PATH-onnx)."),
               no_passes: bool = typer.Option(False, "--no-passes", help="Plain torch.onnx export, no graph passes."),
               ) -> None:
    """Export to ONNX in optimum's ORTModel layout, checked against PyTorch (exit 4 when it does not match)."""
    from .export.onnx import ExportError, export

    if not onnx:
        fail("say which format: --onnx")
    if quantize not in (None, "int8"):
        fail(f"--quantize {quantize!r}: only int8 is available")
    if out is None:
        out = path / "export" if (path / "recipe.resolved.yaml").is_file() else path.with_name(path.name + "-onnx")
    try:
        result = export(path, out, task=task, opset=opset, quantize=quantize, passes=[] if no_passes else None,
                        log=lambda m: err.print(m, highlight=False, soft_wrap=True))
    except ExportError as e:
        err.print(f"[bold red]export failed:[/] {e}", soft_wrap=True)
        raise typer.Exit(4)
    console.print(f"[green]exported[/] {result.task} model to {result.out}: {', '.join(result.files)}",
                  highlight=False)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{what} {text!r}: expected comma-separated integers, e.g. 1,8")
    if not values or any(v <= 0 for v in values):
        fail(f"{what} {text!r}: expected positive integers")
    return values


@app.command()
def bench(models: list[Path] = typer.Argument(..., help="ONNX files (or export folders) to time side by side."),
          batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8."),
          seq: str = typer.Option("128", "--seq", help="Sequence lengths, e.g. 32,128,384."),
          threads: int = typer.Option(2, "--threads", help="Intra-op threads."),
          runs: int = typer.Option(30, "--runs", help="Timed runs per model and shape (alternating models)."),
          compare: list[str] = typer.Option(None, "--compare", help="bert_base, teacher, or another ONNX file."),
          out: Path = typer.Option(None, "--out", help="Report folder (default: beside the first model)."),
          ) -> None:
    """Latency report (JSON, Markdown, PNG): the models and baselines, alternating runs in one process."""
    from .export.bench import Entry, bench as run_bench, bert_base_reference, teacher_reference, write_report
    from .export.onnx import ExportError

    entries = []
    for m in models:
        p = m / "model.onnx" if m.is_dir() else m
        if not p.is_file():
            fail(f"{m}: no ONNX model there")
        entries.append(Entry(p.parent.name if p.name == "model.onnx" else p.stem, p))
    first = entries[0].path
    meta = first.parent / "slimbert_export.json"
    task = json.loads(meta.read_text())["task"] if meta.is_file() else "feature-extraction"
    cache = (out or first.parent) / "baselines"
    try:
        for c in compare or []:
            if c == "bert_base":
                entries.append(Entry("bert_base", bert_base_reference(task, cache / f"bert_base-{task}", first.parent)))
            elif c == "teacher":
                entries.append(Entry("teacher", teacher_reference(first.parent, cache / "teacher")))
            elif Path(c).is_file():
                entries.append(Entry(Path(c).stem, Path(c)))
            else:
                fail(f"--compare {c!r}: expected bert_base, teacher or an ONNX file")
    except ExportError as e:
        fail(str(e))
    report = run_bench(entries, _ints(batch, "--batch"), _ints(seq, "--seq"), threads, runs)
    files = write_report(report, out or first.parent / "bench")
    console.print((files[1]).read_text(), highlight=False)
    console.print(f"written: {', '.join(str(f) for f in files)}", highlight=False)


@app.command()
def version() -> None:
    """Print the slimbert version."""
    console.print(f"slimbert {__version__}")


@app.command()
def count(
    model: str = typer.Argument(..., help="A preset name (e.g. mobilebert, bert_base) or a saved model directory."),
    seq: int = typer.Option(128, "--seq", min=1, help="Sequence length for FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameters and FLOPs per component, and the attention/FFN parameter ratio."""
    from .models import PRESETS, SlimBertConfig, count as count_fn, preset

    if model in PRESETS:
        config = preset(model)
    elif (Path(model) / "config.json").is_file():
        try:
            config = SlimBertConfig.from_pretrained(model)
        except (ValueError, OSError) as e:
            fail(f"{model}/config.json is not a slimbert config: {e}")
    else:
        fail(f"{model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a directory with config.json")
    c = count_fn(config, seq_len=seq)
    if as_json:
        print(json.dumps(c.as_dict(), indent=2))
        return
    table = Table(title=f"{model} @ seq {seq}")
    table.add_column("component")
    table.add_column("params", justify="right")
    table.add_column("GFLOPs", justify="right")
    for k in c.params:
        table.add_row(k, f"{c.params[k]:,}", f"{c.flops[k] / 1e9:.3f}")
    table.add_row("total", f"{c.total_params:,}", f"{c.total_flops / 1e9:.3f}", style="bold")
    console.print(table)
    console.print(f"attention/FFN parameter ratio: {c.attention_ffn_ratio:.3f} (paper's best range 0.4-0.6)")


if __name__ == "__main__":
    app()
