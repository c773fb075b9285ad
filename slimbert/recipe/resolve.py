"""Resolve a recipe: (parse.py: YAML -> overrides -> schema) -> paths and source -> architectures -> cross-field
checks. `slimbert.recipe.load_recipe` runs both stages.

Everything a run needs to know is decided here, before any training, and every problem found is
reported at once (each with its key path and line) through one RecipeError.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from ..data.builtin import corpus_files as builtin_corpus, pairs_path
from ..data.cache import cache_dir_problem, default_cache_dir
from ..data.corpus import count_sequences, dataset_problem
from ..data.pairs import read_pairs
from ..data.qa import read_squad
from ..data.tasks import DatasetUnavailable, TaskDataError, read_task_split
from ..models import SlimBertConfig
from ..models.encoders import encoder_config
from ..plugins import TEACHERS, PluginError, load_plugins
from ..teacher.build import ib_teacher_config
from ..teacher.source import (NotCached, SourceError, SourceInfo, check_hub_tokenizer, check_tokenizer_files,
                              check_weights, describe_source, resolve_model_path)
from ..transfer.strategies import TeacherFacts
from . import balance as balance_solver
from . import checks, shape_search
from .errors import RecipeError
from .loader import LineMap, read_recipe_file
from .parse import Collector, Parsed
from .schema import Recipe


@dataclass
class Resolved:
    """A validated recipe with everything derived from it."""

    recipe: Recipe
    file: Path
    base: Path                                # where the recipe's relative paths start
    raw: dict
    source: SourceInfo
    source_path: Path | str
    tokenizer_path: Path | str
    teacher_config: SlimBertConfig | None     # None when the source itself is the teacher
    student_config: SlimBertConfig
    layer_map: list[int]                      # teacher layer (1-based) for each student layer
    corpus_files: list[Path] = field(default_factory=list)
    balance: balance_solver.BalanceResult | None = None
    notes: list[str] = field(default_factory=list)  # "key: what was not checked, and why" (load_recipe's reads_weights)
    task_teacher: Path | str | None = None    # finetune.cut_from: task_teacher: the model the student is cut from
                                              # (set by the run once it exists; with_task_teacher)

    @property
    def cut_source(self) -> Path | str:
        """The model the transfer stages' teacher and a prune_from_source cut read: the task teacher once there
        is one (finetune.cut_from: task_teacher), else the source."""
        return self.task_teacher or self.source_path

    @property
    def teacher_layers(self) -> int:
        return self.source.num_layers

    @property
    def teacher_heads(self) -> int:
        return self.teacher_config.num_attention_heads if self.teacher_config else self.source.num_heads

    @property
    def teacher_feature_width(self) -> int:
        return self.teacher_config.hidden_size if self.teacher_config else self.source.hidden_size


def resolve_parsed(parsed: Parsed, allow_plugins: bool = False, timer: shape_search.Timer | None = None,
                   reads_weights: bool = True) -> Resolved:
    """The second stage of `slimbert.recipe.load_recipe`, after the schema: the source, the architectures, the
    cross-field checks and the files. `timer` times candidate shapes for a latency budget (balance.latency_ms);
    recipe/ cannot export, so the CLI and API pass one (slimbert.export.shape_timer.ExportTimer). It is handed a
    SlimBertConfig for a bottleneck student and the stock config of the source's type (BertConfig, RobertaConfig)
    for a student cut from its source (shape_search.Timer).
    reads_weights: as load_recipe's."""
    recipe, data, lines, file, out = parsed.recipe, parsed.data, parsed.lines, parsed.file, parsed.out
    base = parsed.base
    if recipe.plugins and not allow_plugins:
        out.add("plugins", "plugins run Python code; they are refused unless you pass --allow-plugins")
    elif recipe.plugins:
        try:
            load_plugins(recipe.plugins, base)
        except PluginError as e:
            out.add(("plugins", e.index), str(e))
    plugin_teacher = recipe.teacher.plugin
    if plugin_teacher is not None and plugin_teacher not in TEACHERS:
        out.add("teacher.plugin", f"no teacher is registered as {plugin_teacher!r} (registered: "
                                  f"{', '.join(sorted(TEACHERS)) or 'none'}); list the module that registers it under "
                                  "plugins: and pass --allow-plugins, or call slimbert.register_teacher from Python")

    # Source and tokenizer ------------------------------------------------------------------------------
    try:
        source_path = resolve_model_path(recipe.source.model, base)
        source = describe_source(source_path)
        check_weights(source_path, source)
    except SourceError as e:
        out.add("source.model", str(e))
        out.raise_if_any()
    tokenizer_path = source_path
    if recipe.source.tokenizer:
        try:
            tokenizer_path = resolve_model_path(recipe.source.tokenizer, base)
        except SourceError as e:
            out.add("source.tokenizer", str(e))
            tokenizer_path = None
    tokenizer, notes = None, []
    if tokenizer_path is not None:
        key = "source.tokenizer" if recipe.source.tokenizer else "source.model"
        try:
            tokenizer = _check_tokenizer(tokenizer_path, source, out, key)
        except NotCached as e:
            if reads_weights:
                out.add(key, str(e))
            else:  # a plan reads neither: say what was left unchecked, once, instead of refusing
                what = "its tokenizer and weights are" if key == "source.model" else "the tokenizer is"
                notes.append(f"{key}: {tokenizer_path!r} is a hub id, and the hub is offline (HF_HUB_OFFLINE) with no "
                             f"tokenizer of it cached: {what} not checked (this plan reads neither; validate, run "
                             "and a measured plan do)")

    # Architectures -----------------------------------------------------------------------------------
    t = recipe.teacher
    balance = None
    out.extend(checks.widths_or_balance(recipe))
    student_config = _student_config(recipe, source, balance_result=None, out=out)
    if recipe.balance is not None and student_config is not None and not out.problems:
        b = recipe.balance
        try:
            if b.latency_ms is not None and recipe.student.init == "prune_from_source":
                # A source that cannot be cut is refused (by the checks, below) before anything is timed.
                uncuttable = any(k == "student.init" for k, _ in checks.cut_problems(source, student_config))
                balance = None if uncuttable else _cut_latency_balance(recipe, student_config, source, timer, out)
                if balance is not None:  # the search chose the cut's depth and widths: the rest of the recipe sees them
                    recipe = recipe.model_copy(update={"student": recipe.student.model_copy(update={
                        "num_layers": balance.layers, "inter_size": balance.inter_size, "num_heads": balance.heads})})
            elif b.latency_ms is not None:
                balance = _latency_balance(recipe, student_config, source, timer, out)
                if balance is not None:  # the search also chose these: the rest of the recipe sees them
                    recipe = recipe.model_copy(update={"student": recipe.student.model_copy(update={
                        "num_layers": balance.layers, "inter_size": balance.inter_size, "num_heads": balance.heads,
                        "qkv_from": balance.qkv_from})})
            else:
                balance = balance_solver.solve(student_config, ratio=b.mha_ffn_ratio, tolerance=b.tolerance,
                                               max_params=b.max_params, max_flops=b.max_flops, stacked=b.stacked,
                                               seq_len=recipe.data.seq_len)
            if balance is not None:
                student_config = _student_config(recipe, source, balance, out)
        except ValueError as e:
            out.add("balance", f"impossible balance: {e}")
            if isinstance(e, shape_search.NoShapeFits):
                out.frontier = {"spec": e.spec, "budget_ms": e.budget_ms, "frontier": e.frontier}
    # A student cut from its source has no IB teacher (checks.source_cut says so once, not the IB's own checks).
    ib = t.type == "inverted_bottleneck" and plugin_teacher is None and recipe.student.init != "prune_from_source"
    teacher_config = _teacher_config(recipe, source, out) if ib else None

    # Layer map -----------------------------------------------------------------------------------------
    # A plugin's teacher is only known when the run builds it; the run re-checks the recipe against it then.
    layer_map = _layer_map(recipe, source.num_layers, out if plugin_teacher is None else Collector(lines, ""))

    # Cross-field checks, before any training -----------------------------------------------------------
    out.extend(checks.run_checks(recipe, _facts(recipe, source, teacher_config, student_config)))

    # Data and task files ---------------------------------------------------------------------------------
    corpus_files = _corpus_files(recipe, base, out)
    if corpus_files and tokenizer is not None and not any(p.path.startswith("data.") for p in out.problems):
        _check_corpus_tokens(recipe, corpus_files, tokenizer, out)
    _check_data_files(recipe, base, out)
    recipe = _with_source_pooling(recipe, source.pooling)
    if recipe.finetune is not None:
        _check_task(recipe.finetune, base, out, source.num_layers)
    for key, message in logging_problems(recipe.logging, base):
        out.add(key, message)
    out.raise_if_any()
    return Resolved(recipe=recipe, file=file, base=base, raw=data, source=source, source_path=source_path,
                    tokenizer_path=tokenizer_path, teacher_config=teacher_config, student_config=student_config,
                    layer_map=layer_map, corpus_files=corpus_files, balance=balance, notes=notes)


def with_task_teacher(r: Resolved, path: Path | str) -> Resolved:
    """finetune.cut_from: task_teacher, once the task teacher exists at `path`: the cut and the transfer stages
    read it, a classifier without the source's MLM head."""
    return dataclasses.replace(r, task_teacher=path, source=dataclasses.replace(r.source, has_mlm_head=False))


def with_teacher(r: Resolved, num_layers: int, num_heads: int | None, hidden_size: int,
                 attention: bool = True) -> Resolved:
    """The recipe re-checked against a teacher given through the Python API or built by a plugin (it replaces
    the recipe's teacher section): the layer map and the same cross-field checks as load_recipe."""
    try:
        lines = read_recipe_file(r.file)[1]
    except RecipeError:
        lines = LineMap()
    out = Collector(lines, str(r.file))
    layer_map = _layer_map(r.recipe, num_layers, out)
    s = r.recipe.student
    teacher = TeacherFacts(layers=num_layers, heads=num_heads, width=hidden_size, student_width=s.inter_size,
                           student_heads=s.num_heads, inverted_bottleneck=False, has_mlm_head=False,
                           attention=attention, origin="passed_in", student_layers=s.num_layers)
    out.extend(checks.run_checks(r.recipe, checks.Facts(teacher, r.student_config, None, r.source.max_positions)))
    out.raise_if_any()
    return dataclasses.replace(r, teacher_config=None, layer_map=layer_map)


# pip names of what each tracker imports
TRACKER_PACKAGES = {"tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "wandb": ["wandb"], "trackio": ["trackio"]}
MLFLOW_SCHEMES = ("sqlite", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def logging_problems(spec, base: Path) -> list[tuple[str, str]]:
    """Trackers the recipe turns on that could not start: not installed, or an MLflow URI MLflow cannot use.
    Checked here so that a run never fails on its logging after hours of training."""
    problems = []
    wanted = {"tensorboard": spec.tensorboard, "mlflow": spec.mlflow, "wandb": spec.wandb, "trackio": spec.trackio}
    for name, on in wanted.items():
        missing = [m for m in TRACKER_PACKAGES[name] if on and importlib.util.find_spec(m) is None]
        if missing:
            extra = "pip install 'slimbert[tracking]'" if name == "mlflow" else f"pip install {name}"
            problems.append((f"logging.{name}", f"needs the {', '.join(missing)} package, which is not installed "
                                                f"({extra})"))
    uri = spec.mlflow.tracking_uri if spec.mlflow is not None else None
    if uri is not None:
        try:
            scheme = urlparse(uri).scheme
        except ValueError:  # e.g. an unbalanced [ in the host
            scheme = "?"
        if scheme not in MLFLOW_SCHEMES:
            problems.append(("logging.mlflow.tracking_uri",
                             f"{uri!r}: expected a URI such as sqlite:///mlflow.db, http(s)://host:5000 or databricks"
                             + (" (MLflow's file store is deprecated: use a sqlite:/// path)"
                                if scheme in ("", "file") else "")))
        elif scheme in ("http", "https") and not urlparse(uri).netloc:
            problems.append(("logging.mlflow.tracking_uri", f"{uri!r}: no host"))
        elif scheme == "sqlite":
            path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
            folder = (base / path).parent if path else None
            if folder is None:
                problems.append(("logging.mlflow.tracking_uri", f"{uri!r}: expected sqlite:///path/to/mlflow.db"))
            elif not folder.is_dir():
                problems.append(("logging.mlflow.tracking_uri", f"{uri!r}: folder {folder} does not exist"))
        if scheme in ("sqlite", "postgresql", "mysql", "mssql"):
            missing = [m for m in ("sqlalchemy", "alembic") if importlib.util.find_spec(m) is None]
            if missing:
                problems.append(("logging.mlflow.tracking_uri", f"a database store needs {', '.join(missing)} "
                                                                "(pip install 'slimbert[tracking]')"))
    elif spec.mlflow is not None and any(importlib.util.find_spec(m) is None for m in ("sqlalchemy", "alembic")):
        problems.append(("logging.mlflow", "the default store (sqlite in the run directory) needs sqlalchemy and "
                                           "alembic (pip install 'slimbert[tracking]')"))
    return problems


def _check_task(ft, base: Path, out: Collector, source_layers: int | None = None) -> None:
    """The task files or dataset splits exist and hold the named columns (and, for regression, numbers) before
    any training."""
    names = None
    for key in ("train", "dev"):
        name = ft.split(key)
        p = base / name
        if ft.dataset is None and not p.is_file():
            out.add(f"finetune.{key}", f"file not found: {p}")
            continue
        try:
            if ft.format == "squad":
                read_squad(p, ft.max_examples if key == "train" else None)
            else:
                names = read_task_split(base, name, ft.text_fields, ft.label_field, ft.regression,
                                        dataset=ft.dataset, config=ft.dataset_config, columns=ft.columns,
                                        label_names=names,
                                        max_examples=ft.max_examples if key == "train" else None).label_names
        except DatasetUnavailable as e:
            out.add("finetune.dataset", str(e))
            break
        except TaskDataError as e:
            blame = f"finetune.{e.key or key}"  # real-valued labels: regression is the key to change, once
            if not (e.key and any(p.path == blame for p in out.problems)):
                out.add(blame, str(e))
        except Exception as e:  # noqa: BLE001 - binary or odd files: whatever the parser raised, it is the file
            out.add(f"finetune.{key}", _unreadable(p if ft.dataset is None else name, f"{ft.format} data", e))
    if ft.columns is not None and ft.format == "squad":
        out.add("finetune.columns", "names the columns of headerless CSV/TSV task files; squad reads JSON")
    if ft.format == "squad" and 2 * ft.doc_stride >= ft.seq_len:
        out.add("finetune.doc_stride", f"{ft.doc_stride} must be under half of finetune.seq_len ({ft.seq_len}): "
                                       "each window also holds the question")
    if not 1 <= len(ft.text_fields) <= 2:
        out.add("finetune.text_fields", f"give one column (single sentence) or two (pairs), not {len(ft.text_fields)}")
    if ft.teacher_model is not None and not ft.distill:
        out.add("finetune.teacher_model", "is set but finetune.distill is false; set distill: true or remove it")
    if ft.teacher_model is not None and not (base / ft.teacher_model).is_dir():
        out.add("finetune.teacher_model", f"directory not found: {base / ft.teacher_model}")
    elif ft.teacher_model is not None:
        try:
            check_weights((base / ft.teacher_model).resolve())
        except SourceError as e:
            out.add("finetune.teacher_model", str(e))
        else:
            _check_hidden_teacher(ft, base / ft.teacher_model, source_layers, out)


def _unreadable(where, what: str, e: Exception) -> str:
    return f"{where}: cannot read it as {what} ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"


def _check_data_files(recipe: Recipe, base: Path, out: Collector) -> None:
    """The similarity-pairs files read as the run reads them at its end (read_pairs), and the corpus cache folder,
    so that neither fails a run after its training."""
    d = recipe.data
    for i, pairs in enumerate(d.similarity_pairs):
        p = pairs_path(pairs, base)  # a path, or a built-in corpus's pairs
        if not p.is_file():
            out.add(("data", "similarity_pairs", i), f"file not found: {p}")
            continue
        try:
            read_pairs(p, d.similarity_max_pairs, recipe.seed)
        except TaskDataError as e:
            out.add(("data", "similarity_pairs", i), str(e))
        except Exception as e:  # noqa: BLE001 - binary or odd files: whatever the parser raised, it is the file
            out.add(("data", "similarity_pairs", i), _unreadable(p, "sentence pairs", e))
    root = Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_dir()
    problem = cache_dir_problem(root if root.is_absolute() else base / root)
    if problem:
        out.add("data.cache_dir", problem if d.cache_dir else f"the default corpus cache: {problem} (from "
                                                               "$SLIMBERT_CACHE or ~/.cache); set data.cache_dir")


def _check_hidden_teacher(ft, folder: Path, source_layers: int | None, out: Collector) -> None:
    """distill_hidden pairs student layers with teacher layers by layer_map, which counts the source's layers: a
    task teacher of another depth would be paired wrongly (or fail on its first batch)."""
    if ft.distill_hidden <= 0 or source_layers is None:
        return
    try:
        layers = json.loads((folder / "config.json").read_text()).get("num_hidden_layers")
    except (OSError, ValueError):
        return  # check_weights has judged the folder; a config the teacher cannot load fails there by name
    if isinstance(layers, int) and layers != source_layers:
        out.add("finetune.distill_hidden", f"pairs the student's layers with the source's {source_layers} (layer_map), "
                                           f"but finetune.teacher_model has {layers} layers; use a teacher fine-tuned "
                                           "from the source, or distill_hidden: 0")


def _check_tokenizer(path, source: SourceInfo, out: Collector, key: str):
    """The tokenizer, loaded and matched against the source (None when it is a hub id or has problems)."""
    from transformers import AutoTokenizer

    if not isinstance(path, Path):
        try:  # a hub id: its form, and its presence in the cache when offline (validate never touches the network)
            check_hub_tokenizer(path)
        except NotCached:
            raise  # the caller decides: a problem, or a note when it reads no tokenizer
        except SourceError as e:
            out.add(key, str(e))
        return None

    try:
        check_tokenizer_files(path)
        tok = AutoTokenizer.from_pretrained(str(path))
    except SourceError as e:
        out.add(key, str(e))
        return
    except Exception as e:  # noqa: BLE001 - tokenizer loaders raise many types for a broken directory
        out.add(key, f"cannot load a tokenizer from {path}: {type(e).__name__}: "
                                    f"{(str(e).splitlines() or [''])[0]}")
        return None
    if len(tok) > source.vocab_size:
        out.add(key, f"tokenizer mismatch: the tokenizer at {path} has {len(tok)} tokens but the "
                                    f"source model's vocabulary has {source.vocab_size} rows")
    elif None not in (tok.pad_token_id, source.pad_token_id) and tok.pad_token_id != source.pad_token_id:
        out.add(key, f"tokenizer mismatch: the tokenizer at {path} pads with id {tok.pad_token_id}, "
                                    f"the source model with {source.pad_token_id}: they come from different models")
    else:
        return tok
    return None


def _can_time(seq: int, positions: int, timer: shape_search.Timer | None, out: Collector) -> bool:
    """A latency search can run: a timer to measure with, and a timed length the student has positions for."""
    if timer is None:
        out.add("balance.latency_ms", "a latency budget needs candidate shapes timed on this machine, which this "
                                      "caller cannot do: use slimbert validate/plan/run or slimbert.api, or pass "
                                      "timer= to load_recipe")
        return False
    if seq > positions:
        out.add("balance.seq", f"{seq} exceeds the student's {positions} positions")
        return False
    return True


def _latency_balance(recipe: Recipe, base: SlimBertConfig, source: SourceInfo, timer: shape_search.Timer | None,
                     out: Collector) -> balance_solver.BalanceResult | None:
    b, s = recipe.balance, recipe.student
    if not _can_time(b.seq, source.max_positions, timer, out):
        return None
    axes = shape_search.Axes(layers=tuple(b.layers or [s.num_layers]),
                             inter_sizes=tuple(b.inter_sizes or [s.inter_size]), heads=tuple(b.heads or [s.num_heads]),
                             qkv_from=tuple(b.qkv_from or [s.qkv_from]), stacked=tuple(b.stacked))
    spec = shape_search.LatencySpec(b.runtime, b.precision, b.batch, b.seq, b.threads)
    return shape_search.solve_latency(base, axes, spec, timer, budget_ms=b.latency_ms, ratio=b.mha_ffn_ratio,
                                      tolerance=b.tolerance, max_params=b.max_params, max_flops=b.max_flops,
                                      seq_len=recipe.data.seq_len, sample=b.sample, max_timed=b.max_timed,
                                      min_params=b.min_params)


def _cut_latency_balance(recipe: Recipe, base: SlimBertConfig, source: SourceInfo,
                         timer: shape_search.Timer | None, out: Collector) -> balance_solver.BalanceResult | None:
    """balance.latency_ms for a student cut from its source: its depth, width, heads and FFN width, each at most the
    source's, timed as the stock model of the source's type it is saved as."""
    b, s = recipe.balance, recipe.student
    if not _can_time(b.seq, source.max_positions - source.position_offset, timer, out):
        return None
    given = s.model_fields_set
    head_dim = source.hidden_size // max(1, source.num_heads)
    axes = shape_search.CutAxes(
        layers=tuple(b.layers or [s.num_layers]),
        inter_sizes=tuple(b.inter_sizes or [s.inter_size if "inter_size" in given else source.hidden_size]),
        heads=tuple(b.heads) if b.heads else ((s.num_heads,) if "num_heads" in given else None),
        ffn_sizes=tuple(b.ffn_sizes or sorted({*range(64, source.intermediate_size + 1, 64),
                                               source.intermediate_size})),
        head_dim=head_dim, max_heads=source.num_heads)
    # (axis, its values, the source's, what it is, the student key it defaults to)
    limits = (("layers", axes.layers, source.num_layers, "layers", "num_layers"),
              ("inter_sizes", axes.inter_sizes, source.hidden_size, "hidden width", "inter_size"),
              ("heads", axes.heads or (), source.num_heads, "heads", "num_heads"),
              ("ffn_sizes", axes.ffn_sizes, source.intermediate_size, "FFN width", None))
    for key, values, most, what, default in limits:
        over = sorted(v for v in values if v > most)
        if over:
            out.add(f"balance.{key}" if getattr(b, key) else f"student.{default}",
                    f"{', '.join(map(str, over))} exceeds the source's {what} ({most}): a student cut from its "
                    "source can only be smaller")
    if out.problems:
        return None
    # Before anything is timed: a width no head count can cut, and a head count no width takes (it would do nothing).
    fits = {inter: shape_search.cut_heads(inter, axes) for inter in axes.inter_sizes}
    heads_key = "balance.heads" if b.heads else "student.num_heads"
    for inter, heads in fits.items():
        if not heads:
            key, which = ((heads_key, f"{list(axes.heads)} heads") if axes.heads else
                          ("balance.inter_sizes", "any head count"))
            out.add(key, f"width {inter} cannot be cut with {which}: a cut keeps whole heads or narrows them, so "
                         f"heads must divide the width, be at most the source's {source.num_heads}, and be at most "
                         f"{head_dim} wide (the source's head width)")
    unused = [h for h in axes.heads or () if not any(h in heads for heads in fits.values())]
    if unused and not out.problems:
        out.add(heads_key, f"{', '.join(map(str, unused))} heads cut none of the widths {list(axes.inter_sizes)}: "
                           f"heads must divide a width and be at most {head_dim} wide (the source's head width); "
                           "remove them")
    if out.problems:
        return None
    spec = shape_search.LatencySpec(b.runtime, b.precision, b.batch, b.seq, b.threads)
    timed = lambda cfg, sp: timer(encoder_config(cfg, source.model_type), sp)  # noqa: E731
    return shape_search.solve_cut_latency(base, axes, spec, timed, budget_ms=b.latency_ms, max_params=b.max_params,
                                          max_flops=b.max_flops, seq_len=recipe.data.seq_len, sample=b.sample,
                                          max_timed=b.max_timed, min_params=b.min_params,
                                          source_shape=(source.num_layers, source.hidden_size, source.num_heads,
                                                        source.intermediate_size))


def _student_config(recipe: Recipe, source: SourceInfo, balance_result, out: Collector) -> SlimBertConfig | None:
    s = recipe.student
    if s.init == "prune_from_source":
        return _source_block_student(recipe, source, out, balance_result)
    intra = balance_result.intra_size if balance_result else s.intra_size
    ffn_size = balance_result.ffn_size if balance_result else (s.ffn.size if s.ffn else None)
    stacked = balance_result.stacked if balance_result else (s.ffn.stacked if s.ffn else None)
    if intra is None:  # to be solved by balance: count with a placeholder that satisfies the checks
        intra, ffn_size, stacked = s.num_heads, 4 * s.num_heads, 1
    if intra % s.num_heads:
        out.add("student.num_heads", f"student.intra_size ({intra}) must be divisible by student.num_heads "
                                     f"({s.num_heads})")
        return None
    if s.embedding.size > s.inter_size:
        out.add("student.embedding.size", f"{s.embedding.size} must be <= student.inter_size ({s.inter_size}): "
                                          "the MLM head splits the output matrix into the word table and "
                                          "inter_size - embedding.size extra columns")
        return None
    try:
        return SlimBertConfig(
            vocab_size=source.vocab_size, embedding_size=s.embedding.size, trigram_input=s.embedding.trigram,
            hidden_size=s.inter_size, use_bottleneck=True, intra_bottleneck_size=intra, qkv_source=s.qkv_from,
            num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, intermediate_size=ffn_size,
            num_feedforward_networks=stacked, normalization_type=s.norm, hidden_act=s.activation,
            hidden_dropout_prob=s.dropout, attention_probs_dropout_prob=0.1,
            max_position_embeddings=source.max_positions, type_vocab_size=max(1, source.type_vocab_size),
            classifier_activation=False)
    except ValueError as e:
        out.add("student", str(e))
        return None


def _source_block_student(recipe: Recipe, source: SourceInfo, out: Collector,
                          balance_result: balance_solver.BalanceResult | None = None) -> SlimBertConfig | None:
    """student.init: prune_from_source: the source's own block (LayerNorm, its activation, one FFN, Q/K/V from the
    block input, an unfactorised word table) at the student's depth and widths. Unset widths are the source's."""
    s = recipe.student
    given = s.model_fields_set
    why = ("student.init: prune_from_source keeps the source's block (its norm and activation, one FFN, Q/K/V "
           "from the block input, a word table as wide as the blocks): remove it")
    for key in ("qkv_from", "norm", "activation", "embedding"):
        if key in given:
            out.add(f"student.{key}", why)
    inter = s.inter_size if "inter_size" in given else source.hidden_size
    if "intra_size" in given and s.intra_size not in (None, inter):
        out.add("student.intra_size", f"{why} (or set it to student.inter_size, {inter})")
    ffn = source.intermediate_size if balance_result is None else balance_result.ffn_size
    if "ffn" in given and s.ffn is not None and balance_result is None:
        ffn = s.ffn.size if "size" in s.ffn.model_fields_set else ffn
        if "stacked" in s.ffn.model_fields_set and s.ffn.stacked != 1:
            out.add("student.ffn.stacked", "student.init: prune_from_source keeps the source's one FFN per block: "
                                           "use stacked: 1 (or leave it out)")
    head = source.hidden_size // max(1, source.num_heads)
    heads = s.num_heads if "num_heads" in given else max(1, inter // head)
    if inter % heads:
        out.add("student.num_heads" if "num_heads" in given else "student.inter_size",
                f"student.inter_size ({inter}) must be divisible by student.num_heads ({heads}): a stock "
                "encoder's heads are inter_size / num_heads wide")
        return None
    try:
        return SlimBertConfig(
            vocab_size=source.vocab_size, embedding_size=inter, trigram_input=False, hidden_size=inter,
            use_bottleneck=False, intra_bottleneck_size=inter, num_hidden_layers=s.num_layers,
            num_attention_heads=heads, intermediate_size=ffn, num_feedforward_networks=1,
            normalization_type="layer_norm", hidden_act=source.hidden_act, hidden_dropout_prob=s.dropout,
            attention_probs_dropout_prob=0.1, max_position_embeddings=source.max_positions - source.position_offset,
            type_vocab_size=max(1, source.type_vocab_size), layer_norm_eps=source.layer_norm_eps,
            pad_token_id=source.pad_token_id if source.pad_token_id is not None else 0, classifier_activation=True)
    except ValueError as e:
        out.add("student", str(e))
        return None


def _teacher_config(recipe: Recipe, source: SourceInfo, out: Collector) -> SlimBertConfig | None:
    t, s = recipe.teacher, recipe.student
    heads = t.num_heads or s.num_heads
    if source.hidden_size % heads:
        out.add("teacher.num_heads", f"{heads} heads do not divide the source width {source.hidden_size} (the IB "
                                     "teacher's intra width)")
        return None
    inter = t.inter_size or s.inter_size
    if inter > source.hidden_size:
        out.add("teacher.inter_size" if t.inter_size else "student.inter_size",
                f"the IB teacher's inter width {inter} exceeds the source width {source.hidden_size}: its "
                "bottlenecks keep the top principal directions of the source's hidden states, so it can be at most "
                "that wide; lower it, or use teacher.type: source")
        return None
    emb = t.embedding_size or s.embedding.size
    if emb > inter:
        out.add("teacher.embedding_size", f"{emb} must be <= the teacher's inter width {inter}")
        return None
    return ib_teacher_config(
        vocab_size=source.vocab_size, source_width=source.hidden_size, num_layers=source.num_layers,
        intermediate_size=source.intermediate_size, hidden_act=source.hidden_act,
        type_vocab_size=source.type_vocab_size, max_positions=source.max_positions - source.position_offset,
        layer_norm_eps=source.layer_norm_eps, inter=inter, heads=heads, embedding_size=emb, trigram=t.trigram)


def _facts(recipe: Recipe, source: SourceInfo, teacher_config: SlimBertConfig | None,
           student_config: SlimBertConfig | None) -> checks.Facts:
    """What the cross-field checks need to know about the teacher the recipe describes."""
    t, s = recipe.teacher, recipe.student
    # An IB teacher whose section is wrong (too wide, heads not dividing) has no config: its width, heads and
    # embedding are unknown, and the checks that need them stay quiet instead of adding follow-on errors about
    # the source's numbers.
    broken = t.type == "inverted_bottleneck" and t.plugin is None and teacher_config is None
    # Cut from the task teacher: the transfer stages' teacher is a classifier, which has no MLM head.
    task_cut = recipe.finetune is not None and recipe.finetune.cut_from == "task_teacher"
    if teacher_config is not None:
        embedding = (teacher_config.vocab_size, teacher_config.embedding_size, teacher_config.trigram_input,
                     teacher_config.hidden_size)
        what = "the IB teacher's"
    elif broken:
        embedding, what = None, "the IB teacher's"
    else:
        embedding = (source.vocab_size, source.embedding_size, False, source.hidden_size)
        what = f"the source's ({source.model_type}, unfactorised)"
    teacher = TeacherFacts(
        layers=source.num_layers,
        heads=None if broken else teacher_config.num_attention_heads if teacher_config else source.num_heads,
        width=None if broken else teacher_config.hidden_size if teacher_config else source.hidden_size,
        student_width=s.inter_size, student_heads=s.num_heads,
        inverted_bottleneck=t.type == "inverted_bottleneck", has_mlm_head=source.has_mlm_head and not task_cut,
        origin="plugin" if t.plugin is not None else "recipe", student_layers=s.num_layers,
        description="the task teacher (finetune.cut_from: task_teacher) is a classifier without one" if task_cut
        else f"{source.path} is a {source.model_type} without one")
    return checks.Facts(teacher, student_config, teacher_config, source.max_positions, embedding, what, source)


def _layer_map(recipe: Recipe, teacher_layers: int, out: Collector) -> list[int]:
    n = recipe.student.num_layers
    lm = recipe.layer_map
    cut = recipe.student.init == "prune_from_source"
    if lm == "importance" and not cut:
        out.add("layer_map", "importance chooses which source layers a student cut from its source keeps; it needs "
                             "student.init: prune_from_source (else use uniform, last or a list)")
    if cut and isinstance(lm, list) and any(b <= a for a, b in zip(lm, lm[1:])):
        out.add("layer_map", f"{lm}: a student cut from its source keeps source layers in order, each once "
                             "(strictly increasing)")
    if isinstance(lm, list):
        if len(lm) != n:
            out.add("layer_map", f"has {len(lm)} entries; expected one teacher layer per student layer ({n})")
        for i, j in enumerate(lm):
            if not 1 <= j <= teacher_layers:
                out.add(("layer_map", i), f"teacher layer {j} is out of range: the teacher has layers 1..{teacher_layers}")
        return list(lm)
    if n > teacher_layers:
        # Not written in the recipe: blame the student's depth, which the user did write.
        key = "layer_map" if "layer_map" in recipe.model_fields_set else "student.num_layers"
        out.add(key, f"layer_map {lm!r} needs a teacher at least as deep as the student ({teacher_layers} < {n} "
                             "layers); give an explicit list")
        return []
    if lm in ("uniform", "importance"):
        # student layer i <- teacher layer i * Lt / Ls (TF2's transfer_teacher_layers, 1-based). For importance,
        # a stand-in until the run measures which layers to keep (transfer/source_init.py).
        return [(i * teacher_layers) // n for i in range(1, n + 1)]
    return [teacher_layers - n + i for i in range(1, n + 1)]  # last: the top teacher layers


def _with_source_pooling(recipe: Recipe, pooling: str) -> Recipe:
    """embedding_distill stages with pooling: auto get the source's own (recipe.resolved.yaml shows which)."""
    stages = [st.model_copy(update={"pooling": pooling}) if getattr(st, "pooling", None) == "auto" else st
              for st in recipe.transfer]
    return recipe.model_copy(update={"transfer": stages})


def _check_corpus_tokens(recipe: Recipe, files: list[Path], tokenizer, out: Collector) -> None:
    """What the run's packing will find: more sequences than data.eval_sequences (counted up to that, so cheap)."""
    d = recipe.data
    got = count_sequences(files, tokenizer, d.seq_len, d.eval_sequences + 1, max_bytes=16 << 20)
    if got is not None and got <= d.eval_sequences:
        out.add("data.eval_sequences", f"the corpus gives {got} sequences of {d.seq_len} tokens, not more than "
                                       f"data.eval_sequences ({d.eval_sequences}) held out, so none are left to "
                                       "train on; add text, shorten data.seq_len or lower data.eval_sequences")


def _corpus_files(recipe: Recipe, base: Path, out: Collector) -> list[Path]:
    c = recipe.data.corpus
    if c.builtin:
        return builtin_corpus(c.builtin)
    if c.task:  # read from the finetune section's training split (checked with it)
        if recipe.finetune is None:
            out.add("data.corpus.task", "reads the finetune section's training texts, but the recipe has no finetune "
                                        "section; add one or give data.corpus.files")
        elif recipe.finetune.format != "glue":
            out.add("data.corpus.task", f"reads sentence columns of a format: glue task, not finetune.format "
                                        f"{recipe.finetune.format}; give data.corpus.files")
        return []
    if c.dataset:
        problem = dataset_problem(c.dataset, base)
        if problem:
            out.add("data.corpus.dataset", problem)
        return []
    files: list[Path] = []
    hint = ("point data.corpus.files at local text files (globs, relative to the recipe), e.g. "
            "--set 'data.corpus.files=[/path/to/*.txt]'")
    for i, pattern in enumerate(c.files):
        p = Path(pattern).expanduser()
        full = str(p if p.is_absolute() else base / p)
        found = sorted(Path(x) for x in glob.glob(full, recursive=True) if Path(x).is_file())
        if not found:
            out.add(("data", "corpus", "files", i), f"no file matches {full}; {hint}")
        files += found
    if files and not any(_has_text(f) for f in files):
        out.add("data.corpus.files", f"the corpus is empty (the matched files hold no text); {hint}")
    elif files:
        # A token takes at least one byte, so this many bytes can never fill the held-out set plus one batch.
        need = (recipe.data.eval_sequences + 1) * (recipe.data.seq_len - 2)
        size = sum(f.stat().st_size for f in files)
        if size < need:
            out.add("data.corpus.files", f"the corpus is too small: {size} bytes give at most {size} tokens, but "
                                         f"data.eval_sequences ({recipe.data.eval_sequences}) held-out sequences plus "
                                         f"training need at least {need} at data.seq_len {recipe.data.seq_len}")
    return files


def _has_text(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 16), b""):
                if block.strip():
                    return True
    except OSError:
        pass
    return False
