"""The `slimbert` command: parse, call the API, print with rich, map user errors to exit code 2."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .recipe.schema import MAX_BATCH, MAX_DEPTH, MAX_POSITIONS, MAX_RUNS, OPSETS, os_path_problem

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress BERT-family encoders into MobileBERT-style students.")
console = Console()
err = Console(stderr=True)


def show(table: Table) -> None:
    """Print a table within the console's width, never with a number or name cut short (export/terminal.py)."""
    from .export.terminal import Fitted

    console.print(Fitted(table))


@contextmanager
def libraries_quiet():
    """The libraries' own progress bars and warnings off, through their own switches, for one command; slimbert's
    output stays. They are transformers' ("Loading weights", "Writing model shards", load reports),
    huggingface_hub's, ONNX Runtime's (its C++ log, and the quantiser's advice on the root logger), NNCF's (rich
    bars on rich's global console, which slimbert never prints to) and Python warnings (slimbert raises none: it
    says what it finds on its console). transformers is not imported for it: `validate` of a broken recipe stays
    light; one imported later starts from huggingface_hub's switch and TRANSFORMERS_VERBOSITY."""
    import logging
    import os
    import sys
    import warnings

    import onnxruntime
    import rich
    from huggingface_hub import utils as hub

    hf = sys.modules.get("transformers.utils.logging")
    was = {"hub_bars": not hub.are_progress_bars_disabled(), "env": os.environ.get("TRANSFORMERS_VERBOSITY"),
           "hf": (hf.get_verbosity(), hf.is_progress_bar_enabled()) if hf else (logging.WARNING, None),
           "root": logging.getLogger().level, "own": logging.getLogger("slimbert").level,
           "console": rich.get_console().quiet}
    hub.disable_progress_bars()
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    if hf:
        hf.set_verbosity_error()
        hf.disable_progress_bar()
    onnxruntime.set_default_logger_severity(3)  # errors only
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("slimbert").setLevel(logging.WARNING)  # slimbert's own warnings (models/convert.py) still show
    rich.get_console().quiet = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if was["hub_bars"]:
            hub.enable_progress_bars()
        if was["env"] is None:
            os.environ.pop("TRANSFORMERS_VERBOSITY", None)
        else:
            os.environ["TRANSFORMERS_VERBOSITY"] = was["env"]
        hf = sys.modules.get("transformers.utils.logging")
        if hf:
            hf.set_verbosity(was["hf"][0])
            if was["hf"][1] if was["hf"][1] is not None else was["hub_bars"]:
                hf.enable_progress_bar()
        onnxruntime.set_default_logger_severity(2)  # its default: warnings
        logging.getLogger().setLevel(was["root"])
        logging.getLogger("slimbert").setLevel(was["own"])
        rich.get_console().quiet = was["console"]


def _libraries(ctx: typer.Context, verbose: bool) -> bool:
    """--verbose's callback: without it the libraries stay quiet until the command's context closes."""
    if not verbose and not ctx.resilient_parsing:
        ctx.with_resource(libraries_quiet())
    return verbose


def fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


def path_arg(value: Path | None, what: str) -> Path | None:
    """A path argument any OS can use (no NUL, no over-long name), or exit 2 naming the argument."""
    if value is not None:
        problem = os_path_problem(str(value))
        if problem:
            fail(f"{what}: {problem}")
    return value


def recipe_errors(fn, before_exit=None):
    """Run fn; a RecipeError becomes one line per problem on stderr and exit code 2, never a traceback.
    before_exit(error) may show what the failed call still measured."""
    from .recipe.errors import RecipeError

    try:
        return fn()
    except RecipeError as e:
        if before_exit is not None:
            before_exit(e)
        err.print(f"[bold red]{len(e.problems)} problem(s):[/]")
        for p in e.problems:
            err.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


class _timer:  # noqa: N801 - used like the function it stands in for
    """Times candidate shapes for a latency budget (balance.latency_ms). The export machinery is imported on first
    use, so `validate` and `plan` of recipes without a budget do not pay for it."""

    def __init__(self):
        self._timer = None

    def _get(self):
        if self._timer is None:
            from .export.shape_timer import ExportTimer

            self._timer = ExportTimer(log=lambda m: err.print(m, highlight=False, soft_wrap=True))
        return self._timer

    def __call__(self, config, spec) -> float:
        return self._get()(config, spec)

    def __getattr__(self, name):
        return getattr(self._get(), name)


RecipeArg = typer.Argument(..., help="Recipe YAML file, or a preset name (see `slimbert recipes list`).")
SetOpt = typer.Option(None, "--set", help="Override a recipe key: key.path=value (repeatable).")
VerboseOpt = typer.Option(False, "--verbose", "-v", callback=_libraries,
                          help="Also show the libraries' own progress bars and warnings (transformers, ONNX Runtime, "
                               "NNCF), hidden by default.")
DeviceOpt = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: the recipe's `device`, auto: "
                                                "the GPU when there is one).")


@app.command()
def validate(recipe: str = RecipeArg, set_: list[str] = SetOpt,
             allow_plugins: bool = typer.Option(False, "--allow-plugins", help="Permit the recipe's plugins."),
             verbose: bool = VerboseOpt) -> None:
    """Check a recipe: exit 0, or exit 2 with every problem (key path and line)."""
    from .recipe import load_recipe, recipe_path

    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), set_ or [], allow_plugins, timer=_timer()))
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
         gpus: int = typer.Option(8, "--gpus", min=1, help="Also estimate wall time on this many GPUs, on paper: "
                                                           "the measured step shared linearly when timed on a GPU, "
                                                           "counted FLOPs at 35% of an H100 when timed on a CPU."),
         device: str = DeviceOpt, allow_plugins: bool = typer.Option(False, "--allow-plugins"),
         verbose: bool = VerboseOpt) -> None:
    """A dry run: architectures side by side, the layer map, the stage schedule and time estimates."""
    from .recipe import build_plan, load_recipe, recipe_path

    timer = _timer()

    def show_timed(e) -> None:  # no shape met the latency budget: the shapes timed still say how close it came
        if e.frontier is None:
            return
        from .export.shape_timer import frontier_chart

        b, spec = dict(e.frontier), e.frontier["spec"]
        name = f"frontier-{Path(recipe).stem}-{spec['runtime']}-{spec['precision']}-none-fits.png"
        b["frontier_png"] = str(frontier_chart(b, [], timer.file.parent / name))
        if as_json:
            print(json.dumps({"balance": b}, indent=2, default=str))
        else:
            print_frontier(b)

    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), set_ or [], allow_plugins, timer=timer,
                                          reads_weights=not no_measure), show_timed)
    p = build_plan(r)
    if not no_measure:
        from .engine.estimate import estimate_stages

        recipe_errors(lambda: estimate_stages(r, p, device, gpus))
    if r.balance is not None and r.balance.frontier is not None:
        from .export.shape_timer import frontier_chart, reference_marks
        from .recipe.shape_search import LatencySpec

        marks = [] if no_measure else reference_marks(timer, r.source_path, LatencySpec(**r.balance.spec))
        p["balance"]["references"] = marks
        name = f"frontier-{r.recipe.name}-{r.balance.spec['runtime']}-{r.balance.spec['precision']}.png"
        p["balance"]["frontier_png"] = str(frontier_chart(p["balance"], marks, timer.file.parent / name))
    if as_json:
        print(json.dumps(p, indent=2, default=str))
        return
    print_plan(p)
    for note in p["notes"]:
        console.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)


def print_frontier(b: dict) -> None:
    spec = b["spec"]
    ft = Table(title=f"latency frontier: {spec['runtime']} {spec['precision']}, batch {spec['batch']} x seq "
                     f"{spec['seq']}, {spec['threads']} threads, budget {b['budget_ms']:g} ms")
    # a student cut from its source keeps its block: only depth and widths vary (no I, N, Q/K/V source or band)
    cut = any(r.get("cut") for r in b["frontier"])
    shape = (("layers", "layers"), ("H", "inter_size"), ("heads", "heads"), ("F", "ffn_size")) if cut else \
        (("layers", "layers"), ("H", "inter_size"), ("I", "intra_size"), ("heads", "heads"), ("N", "stacked"),
         ("F", "ffn_size"), ("qkv", "qkv_from"))
    tail = ("params", "ms", "") if cut else ("params", "ratio", "ms", "")
    for col in (*(c for c, _ in shape), *tail):
        ft.add_column(col, justify="left" if col in ("qkv", "") else "right")
    for r in sorted(b["frontier"], key=lambda r: -r["params"]):
        ft.add_row(*(str(r[k]) for _, k in shape), f"{r['params'] / 1e6:.2f}M",
                   *(() if cut else (f"{r['ratio']:.3f}",)), f"{r['ms']:.2f}",
                   "chosen" if r["chosen"] else ("fits" if r["fits"] else ""),
                   style="bold" if r["chosen"] else None)
    for m in b.get("references", []):
        ft.add_row(m["name"], *[""] * (len(shape) - 1), f"{m['params'] / 1e6:.2f}M" if m["params"] else "?",
                   *(() if cut else ("",)), f"{m['ms']:.2f}", f"best: {m['runtime']} {m['precision']}")
    show(ft)
    if b.get("frontier_png"):
        console.print(f"frontier plot: {b['frontier_png']}", highlight=False)


SHORT = {"feature_map": "FMT", "feature_mean": "mean", "feature_var": "var", "attention": "AT"}


@app.command()
def run(recipe: str = RecipeArg, set_: list[str] = SetOpt,
        out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<name>-<timestamp>)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
        log: str = typer.Option(None, "--log", help="Experiment trackers to turn on, e.g. tensorboard,mlflow "
                                                    "(also wandb, trackio); settings from the recipe's logging."),
        device: str = DeviceOpt, allow_plugins: bool = typer.Option(False, "--allow-plugins"),
        verbose: bool = VerboseOpt) -> None:
    """Run the recipe's stages and write the run directory (one process, or one per GPU under torchrun)."""
    from .engine.runner import TrainingError, run as run_recipe
    from .recipe import load_recipe, recipe_path
    from .recipe.loader import read_recipe_file
    from .recipe.overrides import apply_overrides, tracker_overrides

    path_arg(out, "--out")
    if resume and out is None:
        fail("--resume needs --out: the run directory to continue")
    overrides = list(set_ or [])
    if log is not None:
        overrides += recipe_errors(lambda: tracker_overrides(
            apply_overrides(read_recipe_file(recipe_path(recipe))[0], overrides), log))
    r = recipe_errors(lambda: load_recipe(recipe_path(recipe), overrides, allow_plugins, timer=_timer()))
    try:
        recipe_errors(lambda: run_recipe(r, out, resume, err, device=device))
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
    show(arch)
    c = p["compression"]
    console.print(f"compression: {c['params']}x params, {c['encoder_params']}x encoder params, {c['flops']}x FLOPs")
    if p.get("balance"):
        console.print(f"[bold]balance:[/] {p['balance']['reason']}", highlight=False)
        if p["balance"].get("frontier"):
            print_frontier(p["balance"])
    lm = Table(title="layer map")
    for col in ("student", "teacher", "student shape", "teacher shape", "heads t/s", "losses"):
        lm.add_column(col)
    for row in p["layer_map"]:
        shape = "x".join(map(str, row["teacher_shape"])) + (" (projected)" if row["projection"] else "")
        lm.add_row(str(row["student_layer"]), str(row["teacher_layer"]), "x".join(map(str, row["student_shape"])),
                   shape, "/".join(map(str, row["heads"])),
                   " ".join(f"{SHORT.get(k, k)}x{v:g}" for k, v in row["losses"].items() if v))
    show(lm)
    # Two tables and the trainable parameters under them, not one table of eleven columns: 80 columns wide.
    st = Table(title="stages")
    for col in ("#", "kind", "steps", "batch", "optimizer", "lr", "schedule"):
        st.add_column(col, justify="right" if col in ("steps", "batch", "lr") else "left")
    for row in p["stages"]:
        st.add_row(str(row["index"]), row["kind"], f"{row['steps']:,}", str(row["batch_size"]), row["optimizer"],
                   f"{row['lr']:g}", row["schedule"] + (f" +{row['warmup_steps']:,} warm-up" if row["warmup_steps"]
                                                        else ""))
    show(st)
    trains = Table.grid(padding=(0, 2))  # long explanations, under the table: a wrapped line keeps its indent
    trains.add_column(justify="right", no_wrap=True)
    trains.add_column()
    for row in p["stages"]:
        if row.get("trainable"):
            trains.add_row(str(row["index"]), row["trainable"])
    if trains.row_count:
        console.print("trainable parameters, by stage:")
        console.print(trains, highlight=False)
    ests = [row.get("estimate") for row in p["stages"]]
    if any(ests):
        gpus = next(e["gpus"] for e in ests if e)
        et = Table(title="time estimates" + (f" (timed on {p['estimate_device']})" if p.get("estimate_device") else ""))
        for col in ("#", "kind", "here", "per step", "tokens/s", "MFU", f"on {gpus} GPUs"):
            et.add_column(col, justify="left" if col in ("#", "kind") else "right")
        for row, est in zip(p["stages"], ests):
            if not est:
                et.add_row(str(row["index"]), row["kind"], "-", "-", "-", "-", "-")
                continue
            et.add_row(str(row["index"]), row["kind"], _duration(est["seconds"]),
                       f"{est['step_seconds'] * 1000:,.0f} ms", f"{est['tokens_per_s']:,.0f}",
                       "n/a" if est.get("mfu") is None else f"{100 * est['mfu']:.1f}%",
                       "-" if est.get("seconds_on_gpus") is None else _duration(est["seconds_on_gpus"]))
        show(et)
    basis = next((e["gpus_basis"] for e in ests if e), None)
    if basis:
        total = sum(e["seconds"] for e in ests if e)
        paper = [e["seconds_on_gpus"] for e in ests if e and e.get("seconds_on_gpus") is not None]
        console.print(f"whole run: {_duration(total)} here" + (f"; on paper {_duration(sum(paper))} on {basis}"
                                                              if paper else ""), highlight=False)
    if p.get("estimate_note"):
        console.print(f"estimates: {p['estimate_note']}", highlight=False)


def _duration(seconds: float) -> str:
    """Seconds as the largest sensible unit: 42 s, 12.5 min, 3.2 h, 41.7 days, 3.1 years."""
    for unit, size in (("years", 365 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"


recipes_app = typer.Typer(no_args_is_help=True, help="The preset recipes shipped with slimbert.")
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list() -> None:
    """List the presets."""
    from .recipe import presets

    grid = Table.grid(padding=(0, 2))  # a wrapped description keeps its indent
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    for name, path in presets().items():
        grid.add_row(name, path.read_text().splitlines()[0].lstrip("# "))
    console.print(grid, highlight=False)


@recipes_app.command("show")
def recipes_show(name: str) -> None:
    """Print a preset's YAML."""
    from .recipe import recipe_path

    path = recipe_errors(lambda: recipe_path(name))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # a binary file, a folder named *.yaml: bad input, named
        fail(f"{path}: not a readable YAML recipe ({e.__class__.__name__}: {getattr(e, 'strerror', None) or e})")
    print(text, end="")


@recipes_app.command("new")
def recipes_new(name: str, from_: str = typer.Option("quickstart", "--from", help="Preset to start from."),
                force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Write a commented starter recipe NAME.yaml (a copy of a preset, renamed)."""
    from .recipe import recipe_path

    src = recipe_errors(lambda: recipe_path(from_))
    if not name.strip() or name.strip() in (".", ".."):
        fail(f"NAME {name!r}: give a file name for the new recipe, e.g. my-recipe")
    out = path_arg(Path(name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"), "NAME")
    if out.is_dir():
        fail(f"{out} is a folder; NAME names the recipe file to write")
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite")
    stem = out.stem
    text = src.read_text().replace(f"name: {src.stem}", f"name: {stem}", 1)
    # The header's commands name the preset; the copy's name its file.
    text = re.sub(rf"(slimbert \w+ +){re.escape(src.stem)}(?![\w.-])", lambda m: m.group(1) + str(out), text)
    from .recipe.reference import SCHEMA_FILE

    # The presets name the schema relative to their folder; the copy names the installed file, so editors find it.
    text = re.sub(r"(# yaml-language-server: \$schema=)\S+", lambda m: m.group(1) + SCHEMA_FILE.as_uri(), text)
    try:
        out.write_text(text)
    except OSError as e:
        fail(f"cannot write {out}: {e.strerror or e}")
    console.print(f"wrote {out} (from {src.name}); next: slimbert validate {out}")


@recipes_app.command("schema")
def recipes_schema() -> None:
    """Print the recipe JSON Schema (for editors; the package ships it as slimbert/recipe/recipe.schema.json)."""
    from .recipe.reference import schema_text

    print(schema_text(), end="")


RUNS = Path("runs")  # where `slimbert run` puts run directories without --out


@app.command("export")
def export_cmd(path: Path = typer.Argument(None, help="A run directory (its fine-tuned or pre-trained student) or a "
                                                     "model directory (default: the newest finished run under "
                                                     "./runs)."),
               onnx: bool = typer.Option(False, "--onnx", help="Export to ONNX (the only format so far)."),
               quantize: str = typer.Option(None, "--quantize", help="Also write an int8 model: int8 (ONNX Runtime: "
                                            "dynamic or static, whichever passes parity and runs faster here)."),
               opset: int = typer.Option(17, "--opset", min=OPSETS[0], max=OPSETS[-1],
                                         help=f"ONNX opset, {OPSETS[0]}-{OPSETS[-1]} (as the recipe's export.opset)."),
               task: str = typer.Option(None, "--task", help="feature-extraction, fill-mask, text-classification or "
                                                             "question-answering (default: from the model's head)."),
               out: Path = typer.Option(None, "--out", help="Output folder (default: PATH/export, or PATH-onnx)."),
               no_passes: bool = typer.Option(False, "--no-passes", help="Plain torch.onnx export, no graph passes."),
               openvino: bool = typer.Option(False, "--openvino", help="Also write OpenVINO IRs beside the ONNX files "
                                             "(fp32; NNCF int8 with --quantize int8), each checked against PyTorch."),
               calibration: Path = typer.Option(None, "--calibration", help="Text file, one sentence a line, to "
                                                "calibrate static int8 on (ONNX Runtime and OpenVINO; default: "
                                                "128 sentences of the built-in Gutenberg text)."),
               device: str = typer.Option("cpu", "--device", help="Where PyTorch computes the parity reference: "
                                                                  "cpu (default), auto, cuda or cuda:N."),
               verbose: bool = VerboseOpt) -> None:
    """Export to ONNX in optimum's ORTModel layout (and OpenVINO IRs), checked against PyTorch (exit 4 when it
    does not match)."""
    from .engine.device import select
    from .engine.rundir import newest_run
    from .export.onnx import TASKS, ExportError, ParityError, export

    if not onnx and not openvino:
        fail("say which format: --onnx and/or --openvino (the IR is converted from the ONNX file, so both are "
             "written)")
    texts = None
    if calibration is not None:
        if quantize != "int8":
            fail("--calibration calibrates int8: give it with --quantize int8")
        try:
            texts = [t.strip() for t in calibration.read_text(encoding="utf-8").splitlines() if t.strip()]
        except (OSError, UnicodeDecodeError) as e:
            fail(f"--calibration {calibration}: cannot read it ({e})")
        if not texts:
            fail(f"--calibration {calibration}: no text in it (expected one sentence a line)")
    if quantize not in (None, "int8"):
        fail(f"--quantize {quantize!r}: only int8 is available")
    if task is not None and task not in TASKS:
        fail(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    path_arg(out, "--out")
    if path is None:
        path = newest_run(RUNS)
        if path is None:
            fail(f"no finished run under ./{RUNS} to export; run one first (slimbert run quickstart) "
                 "or give a run or model directory")
        err.print(f"exporting the newest finished run: {path}", highlight=False, soft_wrap=True)
    path_arg(path, "PATH")
    if not path.is_dir():
        fail(f"{path}: no such folder (PATH is a run directory or a model directory)")
    if out is None:
        path = path.resolve()  # "." has no name to derive PATH-onnx from
        out = path / "export" if (path / "recipe.resolved.yaml").is_file() else path.with_name(path.name + "-onnx")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; it names the export folder")
    where = recipe_errors(lambda: select(device, key="--device"))
    try:
        result = export(path, out, task=task, opset=opset, quantize=quantize, passes=[] if no_passes else None,
                        openvino=openvino, calibration_texts=texts,
                        log=lambda m: err.print(m, highlight=False, soft_wrap=True), device=where)
    except ParityError as e:
        err.print(f"[bold red]export failed:[/] {e}", soft_wrap=True)
        raise typer.Exit(4)
    except ExportError as e:  # bad input: no model or tokenizer there, an --out in use
        fail(f"export: {e}")
    except OSError as e:
        fail(f"export: cannot write {e.filename or out}: {e.strerror or e}")
    if (path / "recipe.resolved.yaml").is_file():
        from .engine.cards import write_card

        write_card(path, result.out, "export")   # exported from a run directory: the export's model card
    console.print(f"[green]exported[/] {result.task} model to {result.out}: {', '.join(result.files)}",
                  highlight=False)


def _ints(text: str, what: str, bound: int) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{what} {text!r}: expected comma-separated integers, e.g. 1,8")
    if not values or any(v <= 0 for v in values):
        fail(f"{what} {text!r}: expected positive integers")
    if any(v > bound for v in values):
        fail(f"{what} {text!r}: {max(values):,} is beyond the plausible bound {bound:,}")
    return values


@app.command()
def bench(models: list[Path] = typer.Argument(None, help="ONNX files (or export folders) to time side by side "
                                                         "(default: the newest model.onnx under ./runs/*/export)."),
          batch: str = typer.Option("1", "--batch", help="Batch sizes, e.g. 1,8."),
          seq: str = typer.Option("128", "--seq", help="Sequence lengths, e.g. 32,128,384."),
          threads: int = typer.Option(2, "--threads", min=1, max=MAX_DEPTH, help="Intra-op threads."),
          runs: int = typer.Option(30, "--runs", min=1, max=MAX_RUNS,
                                   help="Timed runs per model and shape (alternating models)."),
          compare: list[str] = typer.Option(None, "--compare", help="bert_base, teacher, or another ONNX file."),
          runtime: str = typer.Option(None, "--runtime", help="Runtimes to time each export folder on: ort, "
                                      "openvino (comma-separated). With it, every folder and baseline is timed on "
                                      "every runtime and precision, and the report leads with best vs best."),
          precision: str = typer.Option("fp32", "--precision", help="With --runtime: fp32, bf16, int8, int8-bf16, "
                                        "int8-static (comma-separated); one this CPU or runtime lacks is reported "
                                        "n/a."),
          max_accuracy_drop: float = typer.Option(
              0.01, "--max-accuracy-drop", min=0.0, max=2.0,
              help="A variant whose task dev metric (export/task_metrics.json) falls more than this below its "
                   "PyTorch model's (0.01 = one point) is timed but cannot be a model's fastest in best vs best; 2 "
                   "counts every variant."),
          out: Path = typer.Option(None, "--out", help="Report folder (default: beside the first model)."),
          verbose: bool = VerboseOpt) -> None:
    """Latency report (JSON, Markdown, PNG): the models and baselines, alternating runs in one fresh process."""
    from .export.bench import (Entry, bench as run_bench, bert_base_reference, check_onnx, export_task,
                               teacher_reference, terminal_view, variants, write_report)
    from .export.isa import cpu_info
    from .export.onnx import ExportError
    from .export.runtime import RUNTIMES

    batches, seqs = _ints(batch, "--batch", MAX_BATCH), _ints(seq, "--seq", MAX_POSITIONS)
    path_arg(out, "--out")
    if out is not None and out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; it names the report folder")
    for c in compare or []:
        if c not in ("bert_base", "teacher") and not (not os_path_problem(c) and Path(c).is_file()):
            fail(f"--compare {c!r}: expected bert_base, teacher or an ONNX file")
    rts = [r.strip() for r in runtime.split(",") if r.strip()] if runtime else None
    precs = [p.strip() for p in precision.split(",") if p.strip()]
    if rts is not None:
        bad = [r for r in rts if r not in RUNTIMES]
        if bad or not rts:
            fail(f"--runtime {runtime!r}: expected runtimes from {', '.join(RUNTIMES)}")
        known = sorted({p for rt in RUNTIMES.values() for p in rt.files})
        if not precs or any(p not in known for p in precs):
            fail(f"--precision {precision!r}: expected precisions from {', '.join(known)}")
    elif precision != "fp32":
        fail("--precision needs --runtime (e.g. --runtime ort,openvino --precision fp32,int8)")
    if not models:
        from .engine.rundir import newest_export

        newest = newest_export(RUNS)
        if newest is None:
            fail(f"no export under ./{RUNS}/*/export to time; export a run first (slimbert export --onnx) or give "
                 "ONNX files")
        err.print(f"timing the newest export: {newest}", highlight=False, soft_wrap=True)
        models = [newest]
    cpu = cpu_info()
    entries = []
    try:
        for m in models:
            path_arg(m, "MODELS")
            p = m / "model.onnx" if m.is_dir() else m
            if not p.is_file():
                fail(f"{m}: no ONNX model there")
            check_onnx(p)
            name = p.parent.name if p.name == "model.onnx" else p.stem
            entries += variants(name, p.parent, rts, precs, cpu) if rts else [Entry(name, p)]
        first = Path(models[0]) / "model.onnx" if models[0].is_dir() else models[0]
        task = export_task(first)
        cache = (out or first.parent) / "baselines"
        want = {"openvino": bool(rts) and "openvino" in rts,
                "quantize": "int8" if any("int8" in p for p in precs) else None}
        for c in compare or []:
            if c == "bert_base":
                ref = bert_base_reference(task, cache / f"bert_base-{task}", first.parent, **want)
            elif c == "teacher":
                ref = teacher_reference(first.parent, cache / "teacher", **want)
            else:
                check_onnx(Path(c))
                entries.append(Entry(Path(c).stem, Path(c)))
                continue
            entries += variants(c, ref.parent, rts, precs, cpu) if rts else [Entry(c, ref)]
        report = run_bench(entries, batches, seqs, threads, runs, cpu=cpu, max_accuracy_drop=max_accuracy_drop)
        files = write_report(report, out or first.parent / "bench")
    except ExportError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {e.filename or out}: {e.strerror or e}")
    console.print(terminal_view(report))
    console.print(f"written: {', '.join(str(f) for f in files)}", highlight=False)


@app.command()
def version() -> None:
    """Print the slimbert version."""
    console.print(f"slimbert {__version__}")


@app.command()
def count(
    model: str = typer.Argument(..., help="A preset name (e.g. mobilebert, bert_base) or a saved model directory."),
    seq: int = typer.Option(128, "--seq", min=1, max=MAX_POSITIONS, help="Sequence length for FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Parameters and FLOPs per component, and the attention/FFN parameter ratio."""
    from .models import PRESETS, SlimBertConfig, count as count_fn, preset

    if model in PRESETS:
        config = preset(model)
    elif not os_path_problem(model) and (Path(model) / "config.json").is_file():
        try:
            raw = json.loads((Path(model) / "config.json").read_text())
            if not isinstance(raw, dict) or raw.get("model_type") not in (None, "slimbert"):
                raise ValueError(f"it describes a {raw.get('model_type') if isinstance(raw, dict) else raw!r} model")
            config = SlimBertConfig.from_pretrained(model)
        except Exception as e:  # noqa: BLE001 - bad JSON, wrongly typed fields (strict configs): the file's fault
            fail(f"{model}/config.json is not a slimbert config: {(str(e).strip().splitlines() or [''])[-1]}")
    else:
        fail(f"{model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a directory with config.json")
    try:
        c = count_fn(config, seq_len=seq)
    except (ValueError, ZeroDivisionError, TypeError) as e:
        fail(f"{model}: cannot count it: {e}")
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
    show(table)
    console.print(f"attention/FFN parameter ratio: {c.attention_ffn_ratio:.3f} (paper's best range 0.4-0.6)")


if __name__ == "__main__":
    app()
