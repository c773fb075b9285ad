"""Load a recipe: YAML -> overrides -> schema -> paths and source -> architectures -> cross-field checks.

Everything a run needs to know is decided here, before any training, and every problem found is
reported at once (each with its key path and line) through one RecipeError.
"""

from __future__ import annotations

import dataclasses
import glob
import reprlib
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from ..data.corpus import BUILDERS
from ..data.qa import read_squad
from ..data.tasks import TaskDataError, read_task
from ..models import SlimBertConfig
from ..plugins import TEACHERS, PluginError, load_plugins
from ..teacher.build import ib_teacher_config
from ..teacher.source import (SourceError, SourceInfo, check_tokenizer_files, check_weights,
                              describe_source, resolve_model_path)
from ..transfer.strategies import TeacherFacts
from . import balance as balance_solver
from . import checks
from .errors import Problem, RecipeError
from .loader import LineMap, read_recipe_file
from .overrides import apply_overrides, parse_override
from .schema import STAGE_KINDS, Recipe

@dataclass
class Resolved:
    """A validated recipe with everything derived from it."""

    recipe: Recipe
    file: Path
    raw: dict
    source: SourceInfo
    source_path: Path | str
    tokenizer_path: Path | str
    teacher_config: SlimBertConfig | None     # None when the source itself is the teacher
    student_config: SlimBertConfig
    layer_map: list[int]                      # teacher layer (1-based) for each student layer
    corpus_files: list[Path] = field(default_factory=list)
    balance: balance_solver.BalanceResult | None = None

    @property
    def teacher_layers(self) -> int:
        return self.source.num_layers

    @property
    def teacher_heads(self) -> int:
        return self.teacher_config.num_attention_heads if self.teacher_config else self.source.num_heads

    @property
    def teacher_feature_width(self) -> int:
        return self.teacher_config.hidden_size if self.teacher_config else self.source.hidden_size


class Collector:
    def __init__(self, lines: LineMap, file: str, overrides: list[str] | None = None):
        self.lines, self.file, self.problems = lines, file, []
        # A value set with --set is blamed on the override, not on the recipe line it replaced.
        self.overridden = {tuple(parse_override(o)[0]): o for o in overrides or ()}

    def add(self, loc: tuple | str, message: str) -> None:
        if isinstance(loc, str):  # "transfer.0.steps": list indexes are ASCII digits ("²".isdigit() too)
            loc = tuple(int(x) if x.isascii() and x.isdigit() else x for x in loc.split("."))
        loc = tuple(loc)
        override = next((o for k, o in self.overridden.items() if loc[:len(k)] == k), None)
        if override is not None:
            self.problems.append(Problem(".".join(map(str, loc)), message, None, f"--set {override}"))
        else:
            self.problems.append(Problem(".".join(map(str, loc)), message, self.lines.line(loc), self.file))

    def extend(self, problems: list[tuple[str, str]]) -> None:
        for loc, message in problems:
            self.add(loc, message)

    def raise_if_any(self) -> None:
        if self.problems:
            raise RecipeError(self.problems)


def _data_loc(data, loc: tuple) -> tuple:
    """The part of a pydantic error location that names keys and indexes in the user's data. pydantic adds the
    union member it tried (a stage kind, 'literal[...]', 'list[...]'); the user never wrote those."""
    out, node = [], data
    for x in loc:
        if isinstance(node, dict) and x in node:
            out.append(x)
            node = node[x]
        elif isinstance(node, list) and isinstance(x, int) and 0 <= x < len(node):
            out.append(x)
            node = node[x]
        elif isinstance(node, dict) and isinstance(x, str) and x not in STAGE_KINDS and not node_is_tagged(x):
            out.append(x)  # a missing key: name it
            node = None
    return tuple(out)


def node_is_tagged(x: str) -> bool:
    return "[" in x or x in ("names", "list")  # pydantic's union member tags (schema.py's Tag names)


_REPR = reprlib.Repr()  # bounded: a value in a message never floods the terminal (Python 3.11 has no kwargs)
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 4, 2


def _short(value) -> str:
    return _REPR.repr(value)


def _schema_problems(e: ValidationError, data: dict, out: Collector) -> None:
    seen = set()
    for err in e.errors():
        loc = _data_loc(data, err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        elif err["type"] == "union_tag_invalid":
            msg = f"unknown stage kind {_short(err['input'].get('kind'))}; expected one of {', '.join(STAGE_KINDS)}"
        elif err["type"] == "union_tag_not_found":
            msg = f"each stage needs a kind: one of {', '.join(STAGE_KINDS)}"
        elif err["type"] == "string_pattern_mismatch":
            field = Recipe.model_fields.get(str(loc[-1])) if len(loc) == 1 else None
            msg = f"{_short(err['input'])} is not allowed" + (f": {field.description}" if field else "")
        elif "input" in err and err["type"] not in ("value_error",):
            msg += f" (got {_short(err['input'])})"
        if loc in seen and len(err["loc"]) != len(loc):
            continue  # one message per key when several union members reject it
        seen.add(loc)
        out.add(loc, msg.replace("Value error, ", ""))


def load_recipe(path: str | Path, overrides: list[str] | None = None, allow_plugins: bool = False) -> Resolved:
    data, lines, file = read_recipe_file(path)
    data = apply_overrides(data, overrides or [])
    out = Collector(lines, str(path), overrides)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        _schema_problems(e, data, out)
        out.raise_if_any()
    base = file.parent
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
    if tokenizer_path is not None:
        _check_tokenizer(tokenizer_path, source, out, "source.tokenizer" if recipe.source.tokenizer else "source.model")

    # Architectures -----------------------------------------------------------------------------------
    t = recipe.teacher
    balance = None
    out.extend(checks.widths_or_balance(recipe))
    student_config = _student_config(recipe, source, balance_result=None, out=out)
    if recipe.balance is not None and student_config is not None and not out.problems:
        b = recipe.balance
        try:
            balance = balance_solver.solve(student_config, ratio=b.mha_ffn_ratio, tolerance=b.tolerance,
                                           max_params=b.max_params, max_flops=b.max_flops, stacked=b.stacked,
                                           seq_len=recipe.data.seq_len)
            student_config = _student_config(recipe, source, balance, out)
        except ValueError as e:
            out.add("balance", f"impossible balance: {e}")
    ib = t.type == "inverted_bottleneck" and plugin_teacher is None
    teacher_config = _teacher_config(recipe, source, out) if ib else None

    # Layer map -----------------------------------------------------------------------------------------
    # A plugin's teacher is only known when the run builds it; the run re-checks the recipe against it then.
    layer_map = _layer_map(recipe, source.num_layers, out if plugin_teacher is None else Collector(lines, ""))

    # Cross-field checks, before any training -----------------------------------------------------------
    out.extend(checks.run_checks(recipe, _facts(recipe, source, teacher_config, student_config)))

    # Data and task files ---------------------------------------------------------------------------------
    corpus_files = _corpus_files(recipe, base, out)
    for i, pairs in enumerate(recipe.data.similarity_pairs):
        p = Path(pairs).expanduser()
        if not (p if p.is_absolute() else base / p).is_file():
            out.add(("data", "similarity_pairs", i), f"file not found: {p if p.is_absolute() else base / p}")
    recipe = _with_source_pooling(recipe, source.pooling)
    if recipe.finetune is not None:
        _check_task(recipe.finetune, base, out)
    out.raise_if_any()
    return Resolved(recipe=recipe, file=file, raw=data, source=source, source_path=source_path,
                    tokenizer_path=tokenizer_path, teacher_config=teacher_config, student_config=student_config,
                    layer_map=layer_map, corpus_files=corpus_files, balance=balance)


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
                           attention=attention, origin="passed_in")
    out.extend(checks.run_checks(r.recipe, checks.Facts(teacher, r.student_config, None, r.source.max_positions)))
    out.raise_if_any()
    return dataclasses.replace(r, teacher_config=None, layer_map=layer_map)


def _check_task(ft, base: Path, out: Collector) -> None:
    """The task files exist and hold the named columns (and, for regression, numbers) before any training."""
    names = None
    for key in ("train", "dev"):
        p = base / getattr(ft, key)
        if not p.is_file():
            out.add(f"finetune.{key}", f"file not found: {p}")
            continue
        try:
            if ft.format == "squad":
                read_squad(p, ft.max_examples if key == "train" else None)
            else:
                names = read_task(p, ft.text_fields, ft.label_field, ft.regression, label_names=names,
                                  max_examples=ft.max_examples if key == "train" else None).label_names
        except TaskDataError as e:
            out.add(f"finetune.{key}", str(e))
        except Exception as e:  # noqa: BLE001 - binary or odd files: whatever the parser raised, it is the file
            out.add(f"finetune.{key}", f"{p}: cannot read it as {ft.format} data ({type(e).__name__}: "
                                       f"{(str(e).splitlines() or [''])[0][:200]})")
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


def _check_tokenizer(path, source: SourceInfo, out: Collector, key: str) -> None:
    from transformers import AutoTokenizer

    if not isinstance(path, Path):
        return  # a hub id: checked when the run loads it, so validate and plan never touch the network

    try:
        check_tokenizer_files(path)
        tok = AutoTokenizer.from_pretrained(str(path))
    except SourceError as e:
        out.add(key, str(e))
        return
    except Exception as e:  # noqa: BLE001 - tokenizer loaders raise many types for a broken directory
        out.add(key, f"cannot load a tokenizer from {path}: {type(e).__name__}: "
                                    f"{(str(e).splitlines() or [''])[0]}")
        return
    if len(tok) > source.vocab_size:
        out.add(key, f"tokenizer mismatch: the tokenizer at {path} has {len(tok)} tokens but the "
                                    f"source model's vocabulary has {source.vocab_size} rows")
    elif None not in (tok.pad_token_id, source.pad_token_id) and tok.pad_token_id != source.pad_token_id:
        out.add(key, f"tokenizer mismatch: the tokenizer at {path} pads with id {tok.pad_token_id}, "
                                    f"the source model with {source.pad_token_id}: they come from different models")


def _student_config(recipe: Recipe, source: SourceInfo, balance_result, out: Collector) -> SlimBertConfig | None:
    s = recipe.student
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
    if teacher_config is not None:
        embedding = (teacher_config.vocab_size, teacher_config.embedding_size, teacher_config.trigram_input,
                     teacher_config.hidden_size)
        what = "the IB teacher's"
    else:
        embedding = (source.vocab_size, source.embedding_size, False, source.hidden_size)
        what = f"the source's ({source.model_type}, unfactorised)"
    teacher = TeacherFacts(
        layers=source.num_layers,
        heads=teacher_config.num_attention_heads if teacher_config else source.num_heads,
        width=teacher_config.hidden_size if teacher_config else source.hidden_size,
        student_width=s.inter_size, student_heads=s.num_heads,
        inverted_bottleneck=t.type == "inverted_bottleneck", has_mlm_head=source.has_mlm_head,
        origin="plugin" if t.plugin is not None else "recipe",
        description=f"{source.path} is a {source.model_type} without one")
    return checks.Facts(teacher, student_config, teacher_config, source.max_positions, embedding, what)


def _layer_map(recipe: Recipe, teacher_layers: int, out: Collector) -> list[int]:
    n = recipe.student.num_layers
    lm = recipe.layer_map
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
    if lm == "uniform":  # student layer i <- teacher layer i * Lt / Ls (TF2's transfer_teacher_layers, 1-based)
        return [(i * teacher_layers) // n for i in range(1, n + 1)]
    return [teacher_layers - n + i for i in range(1, n + 1)]  # last: the top teacher layers


def _with_source_pooling(recipe: Recipe, pooling: str) -> Recipe:
    """embedding_distill stages with pooling: auto get the source's own (recipe.resolved.yaml shows which)."""
    stages = [st.model_copy(update={"pooling": pooling}) if getattr(st, "pooling", None) == "auto" else st
              for st in recipe.transfer]
    return recipe.model_copy(update={"transfer": stages})


def _corpus_files(recipe: Recipe, base: Path, out: Collector) -> list[Path]:
    c = recipe.data.corpus
    if c.dataset:
        local = Path(c.dataset).expanduser()
        local = local if local.is_absolute() else base / local
        # A hub name is only checked when the run loads it; a path (or a data file's name) must exist now.
        if not local.exists() and (c.dataset.startswith((".", "/", "~")) or local.suffix in BUILDERS):
            out.add("data.corpus.dataset", f"no such data file or folder: {local}")
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
