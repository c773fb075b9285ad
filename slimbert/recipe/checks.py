"""Cross-field checks: each a named pure function of the recipe and a small facts record, returning
(key path, message) pairs. `load_recipe` runs them against the teacher the recipe describes; `with_teacher`
runs the same list against a teacher passed in through the Python API (or built by a plugin)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..models import SlimBertConfig
from ..teacher.source import SourceInfo
from ..transfer.init import problems as prune_problems
from ..transfer.source_init import problems as cut_problems
from ..transfer.strategies import TeacherFacts, stage_problems
from .schema import Recipe

Problems = list[tuple[str, str]]


@dataclass(frozen=True)
class Facts:
    """What the checks know besides the recipe: the teacher (see TeacherFacts), the derived architectures and
    the source's limits."""

    teacher: TeacherFacts
    student: SlimBertConfig | None          # None when the student's section has problems of its own
    teacher_config: SlimBertConfig | None   # the IB teacher's; None for the source or a teacher passed in
    max_positions: int                      # the source's, which the student inherits
    embedding: tuple | None = None          # the teacher's (vocab, embedding size, trigram, inter width)
    embedding_what: str = ""                # whose embedding that is, for the message
    source: SourceInfo | None = None        # the source's architecture (prune_from_source cuts it)


def stages(recipe: Recipe, f: Facts) -> Problems:
    """Every stage against its kind's own rules (transfer/strategies.py) and the teacher."""
    return stage_problems(recipe.transfer, f.teacher)


def embedding_copy(recipe: Recipe, f: Facts) -> Problems:
    """student.copy_embeddings needs the teacher's tables in the student's shapes."""
    s = recipe.student
    if not s.copy_embeddings or f.student is None:
        return []
    if f.teacher.origin == "passed_in":
        if f.teacher.width != s.inter_size:
            return [("student.copy_embeddings", f"the teacher passed in is {f.teacher.width} wide and the student "
                                                f"{s.inter_size}: its embeddings cannot be copied; set "
                                                "copy_embeddings: false")]
        return []
    # prune_from_teacher copies the embeddings pruned to the student's widths; copy_embeddings adds nothing.
    if f.teacher.origin == "plugin" or s.init in ("prune_from_teacher", "prune_from_source"):
        return []
    mine = (f.student.vocab_size, f.student.embedding_size, f.student.trigram_input, f.student.hidden_size)
    if f.embedding is not None and f.embedding != mine:  # None: the teacher's section is wrong, reported there
        return [("student.copy_embeddings",
                 f"copying embeddings and the MLM head needs a compatible vocab and embedding: {f.embedding_what} "
                 f"(vocab, embedding size, trigram, inter width) is {f.embedding}, the student's {mine}; set "
                 "copy_embeddings: false or match the shapes")]
    return []


def student_init(recipe: Recipe, f: Facts) -> Problems:
    """student.init: prune_from_teacher needs the IB teacher the recipe builds, at least as wide as the student."""
    if recipe.student.init != "prune_from_teacher":
        return []
    if f.teacher.origin == "passed_in":
        return [("student.init", "prune_from_teacher prunes the IB teacher the recipe builds into the student; a "
                                 "teacher passed in cannot be: set student.init: random")]
    if f.student is None or (f.teacher.inverted_bottleneck and f.teacher_config is None and f.teacher.width is None):
        return []  # the student's or the IB teacher's own section is wrong, and reported there
    return prune_problems(f.teacher_config, f.student)


def source_cut(recipe: Recipe, f: Facts) -> Problems:
    """student.init: prune_from_source cuts the source and distils from it: the source's teacher, its shape."""
    if recipe.student.init != "prune_from_source":
        if "refit_tokens" in recipe.student.model_fields_set:
            return [("student.refit_tokens", "the least-squares refit re-solves a student cut from its source: it "
                                             f"needs student.init: prune_from_source (this recipe's is "
                                             f"{recipe.student.init}); remove refit_tokens")]
        return []
    out = []
    if recipe.teacher.type != "source" or recipe.teacher.plugin is not None:
        out.append(("teacher.type", "student.init: prune_from_source cuts the source itself and distils from it: set "
                                    "teacher.type: source (an inverted-bottleneck teacher is not used)"))
    if f.student is not None and f.source is not None:
        out += cut_problems(f.source, f.student)
    return out


def task_teacher_cut(recipe: Recipe, f: Facts) -> Problems:
    """finetune.cut_from: task_teacher fine-tunes the source first and cuts the student from it: a cut student,
    distilled from that same teacher, which the run makes (or the source is)."""
    ft = recipe.finetune
    if ft is None or ft.cut_from != "task_teacher":
        return []
    out = []
    if recipe.student.init != "prune_from_source":
        out.append(("finetune.cut_from", "task_teacher cuts the student from the task teacher: it needs student.init: "
                                         f"prune_from_source (this recipe's is {recipe.student.init})"))
    if not ft.distill:
        out.append(("finetune.cut_from", "task_teacher: the task teacher the student is cut from also teaches it: "
                                         "set finetune.distill: true"))
    if ft.teacher_model is not None:
        out.append(("finetune.teacher_model", "finetune.cut_from: task_teacher cuts the teacher this run fine-tunes "
                                              "from the source; a separate teacher_model is not cut: give your "
                                              "fine-tuned model as source.model instead (a classifier of the task is "
                                              "the teacher as it is)"))
    return out


def export_needs_onnx(recipe: Recipe, f: Facts) -> Problems:
    """The latency report and both int8 models are made from the ONNX export: without it they would be skipped."""
    e, out = recipe.export, []
    if e.onnx:
        return out
    if e.bench is not None:
        out.append(("export.bench", "the latency report times the ONNX export: set export.onnx: true"))
    if e.quantize is not None:
        out.append(("export.quantize", f"{e.quantize} quantizes the ONNX export, which is off: set export.onnx: true "
                                       "(or remove quantize)"))
    if e.static_int8:
        out.append(("export.static_int8", "static int8 is calibrated on the ONNX export, which is off: set "
                                          "export.onnx: true (or remove static_int8)"))
    return out


def openvino_needs_onnx(recipe: Recipe, f: Facts) -> Problems:
    e, out = recipe.export, []
    if e.openvino and not e.onnx:
        out.append(("export.openvino", "the IR is converted from the ONNX export: set export.onnx: true as well"))
    if e.bench is not None and "openvino" in (e.bench.runtimes or []) and not e.openvino:
        out.append(("export.bench.runtimes", "openvino needs the student's IR: set export.openvino: true"))
    if e.bench is not None and "max_accuracy_drop" in e.bench.model_fields_set and (
            recipe.finetune is None or e.bench.runtimes is None):
        out.append(("export.bench.max_accuracy_drop", "reads the exported variants' dev metrics, which need a "
                                                      "finetune section and export.bench.runtimes; without them it "
                                                      "would do nothing: remove it"))
    return out


def sequence_lengths(recipe: Recipe, f: Facts) -> Problems:
    """The student inherits the source's positions: longer task or benchmark sequences fail hours later."""
    out, n = [], f.max_positions
    if recipe.data.seq_len > n:
        out.append(("data.seq_len", f"{recipe.data.seq_len} exceeds the source's {n} positions"))
    if recipe.finetune is not None and recipe.finetune.seq_len > n:
        out.append(("finetune.seq_len", f"{recipe.finetune.seq_len} exceeds the student's {n} positions (the source's)"))
    if recipe.export.bench is not None and max(recipe.export.bench.seq) > n:
        out.append(("export.bench.seq", f"{max(recipe.export.bench.seq)} exceeds the student's {n} positions "
                                        "(the source's)"))
    return out


def widths_or_balance(recipe: Recipe) -> Problems:
    """student.intra_size / ffn are given, or solved by a balance section: one, not both, not neither. A student cut
    from its source has its depth and widths searched only against a latency budget, over the axes its block has.
    Run before the search (which these problems stop), not among CHECKS."""
    s, out = recipe.student, []
    b = recipe.balance
    if b is not None and s.init == "prune_from_source":
        if b.latency_ms is None:
            out.append(("balance", "student.init: prune_from_source: a balance section chooses a cut student's depth "
                                   "and widths against a latency budget: add balance.latency_ms, or remove balance "
                                   "and set num_layers, inter_size, num_heads and ffn.size"))
        for key in sorted({"mha_ffn_ratio", "tolerance", "stacked", "qkv_from"} & b.model_fields_set):
            out.append((f"balance.{key}", "student.init: prune_from_source keeps the source's block (one FFN, Q/K/V "
                                          "from the block input, its own attention/FFN balance): the search cuts "
                                          "only layers, inter_sizes, heads and ffn_sizes; remove it"))
    elif b is not None and b.ffn_sizes is not None:
        out.append(("balance.ffn_sizes", "only a student cut from its source (student.init: prune_from_source) has "
                                         "its FFN width searched; a bottleneck student's is a multiple of its intra "
                                         "width, which the search chooses: remove it"))
    if b is not None:
        for key in ("intra_size", "ffn"):
            if key in s.model_fields_set and getattr(s, key) is not None:
                out.append((f"student.{key}", "conflicts with balance: give the widths or a balance, not both "
                                              f"(set student.{key}: null or remove balance)"))
    elif s.intra_size is None or s.ffn is None:
        out.append(("student.intra_size" if s.intra_size is None else "student.ffn",
                    "is null but there is no balance section to solve it"))
    return out


CHECKS: list[Callable[[Recipe, Facts], Problems]] = [stages, embedding_copy, student_init, source_cut, task_teacher_cut,
                                                     export_needs_onnx, openvino_needs_onnx, sequence_lengths]


def run_checks(recipe: Recipe, f: Facts) -> Problems:
    return [p for check in CHECKS for p in check(recipe, f)]


def advice(recipe: Recipe, source_has_mlm_head: bool, source_is_sentence_model: bool) -> Problems:
    """Not errors but likely mistakes, printed by `validate`: a source without an MLM head (an embedding or
    reranking model) whose knowledge the recipe never distils beyond its layer features."""
    out = []
    kinds = {st.kind for st in recipe.transfer}
    if source_has_mlm_head or "embedding_distill" in kinds:
        return out
    for i, st in enumerate(recipe.transfer):
        if st.kind == "pretrain_distill" and st.alpha == 1.0:
            what = "a sentence-transformers model" if source_is_sentence_model else "a model without an MLM head"
            out.append((f"transfer.{i}.kind", f"the source is {what}: this stage trains on hard MLM labels only "
                                              "(alpha 1) and teaches nothing of its embedding space; consider "
                                              "kind: embedding_distill (its pooled sentence embedding)"))
    return out
