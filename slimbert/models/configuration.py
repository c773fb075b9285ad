"""Configuration of the bottleneck-BERT family.

One config expresses BERT, the IB-BERT teacher, MobileBERT (paper Table 1 and the released checkpoint)
and MobileBERT_TINY. Names follow the paper and the official TF code (`intra_bottleneck_size`,
`num_feedforward_networks`, `trigram_input`, ...), so a reader can check them against either.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

NORM_TYPES = ("layer_norm", "no_norm")

# Where the block's query/key/value projections read from (reference doc §1.2):
#   inter             Q,K,V <- block input x (H wide). IB-BERT teacher and the paper's Table-1 MobileBERT.
#   shared_bottleneck Q,K <- a separate H->I bottleneck s, V <- x. The released MobileBERT checkpoint.
#   bottleneck        Q,K,V <- the input bottleneck u (I wide). MobileBERT_TINY.
QKV_SOURCES = ("inter", "shared_bottleneck", "bottleneck")
# What the pooler (the task head's input) reads: h[CLS], or the masked mean of the last hidden states.
CLASSIFIER_POOLINGS = ("cls", "mean")


@strict
class SlimBertConfig(PreTrainedConfig):
    r"""
    vocab_size: rows of the word table.
    embedding_size: E, width of the word table. With `trigram_input` or E != H the concatenated
        embeddings are projected to H by `embedding_transformation`.
    trigram_input: concat [e(t+1), e(t), e(t-1)] (zero-padded) before the projection ("3-convolution").
    hidden_size: H, the inter-block width: embedding output, block input/output, the feature map.
    use_bottleneck: add the H->I input and I->H output bottlenecks. False gives a plain post-LN BERT block.
    intra_bottleneck_size: I, the width inside a block (attention output, FFN input/output).
    qkv_source: where Q/K/V read from, see `QKV_SOURCES`. Ignored without a bottleneck (always x).
    num_attention_heads: A. Head size is I / A.
    intermediate_size: F, the inner width of each FFN.
    num_feedforward_networks: N, FFNs stacked in each block.
    normalization_type: "layer_norm" or "no_norm" (x * gamma + beta). The MLM transform keeps LayerNorm.
    hidden_act: activation of the FFNs and of the MLM transform.
    bottleneck_normalization_type: norm of the embedding output and of the bottleneck input/output
        ("layer_norm" / "no_norm"); None means `normalization_type`. An IB teacher built from a source uses
        no_norm here (initialised to identity), so its PCA-initialised linear maps start exact.
    inter_residual: "plain" adds the block input to the output bottleneck (MobileBERT); "gated" scales it
        by a learned per-feature gate (starts at 0 in a teacher built from a source, which has no such
        residual; reference ib-teacher-probe).
    classifier_activation: pooler = tanh(dense(h[CLS])). False (the official MobileBERT setting) pools
        the raw h[CLS].
    classifier_pooling: what the pooler reads: "cls" (h[CLS], BERT's and MobileBERT's) or "mean" (the mean of
        the last hidden states over the attention mask, as a sentence-transformers source pools: such a
        source's h[CLS] carries little of the sentence, so a student copying it does not either).
    """

    model_type = "slimbert"

    vocab_size: int = 30522
    embedding_size: int = 128
    trigram_input: bool = True
    hidden_size: int = 512
    use_bottleneck: bool = True
    intra_bottleneck_size: int = 128
    qkv_source: str = "inter"
    num_hidden_layers: int = 24
    num_attention_heads: int = 4
    intermediate_size: int = 512
    num_feedforward_networks: int = 4
    normalization_type: str = "no_norm"
    hidden_act: str = "relu"
    bottleneck_normalization_type: str | None = None
    inter_residual: str = "plain"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_activation: bool = False
    classifier_pooling: str = "cls"
    classifier_dropout: float | int | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        # Loaded configs (e.g. converted from stock MobileBERT) may carry the derived width; it is never
        # read back, so a stale value can not override the real one (reference doc §5.4).
        kwargs.pop("true_hidden_size", None)
        self.check()
        super().__post_init__(**kwargs)

    @property
    def true_hidden_size(self) -> int:
        """I when bottlenecked, else H: the width of attention output and FFN input/output."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def qkv_input_sizes(self) -> tuple[int, int]:
        """(in_features of Q and K, in_features of V)."""
        H, I = self.hidden_size, self.true_hidden_size
        if not self.use_bottleneck or self.qkv_source == "inter":
            return H, H
        if self.qkv_source == "shared_bottleneck":
            return I, H
        return I, I

    def check(self) -> None:
        """Raise ValueError naming the field and the constraint for an impossible architecture."""
        positive = ("vocab_size", "embedding_size", "hidden_size", "intra_bottleneck_size", "num_hidden_layers",
                    "num_attention_heads", "intermediate_size", "num_feedforward_networks",
                    "max_position_embeddings", "type_vocab_size")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.normalization_type not in NORM_TYPES:
            raise ValueError(f"normalization_type must be one of {list(NORM_TYPES)}, got {self.normalization_type!r}")
        if self.bottleneck_normalization_type not in (None, *NORM_TYPES):
            raise ValueError(f"bottleneck_normalization_type must be one of {list(NORM_TYPES)} or None, got "
                             f"{self.bottleneck_normalization_type!r}")
        if self.inter_residual not in ("plain", "gated"):
            raise ValueError(f"inter_residual must be 'plain' or 'gated', got {self.inter_residual!r}")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of {sorted(ACT2FN)}, got {self.hidden_act!r}")
        if self.classifier_pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"classifier_pooling must be one of {list(CLASSIFIER_POOLINGS)}, got "
                             f"{self.classifier_pooling!r}")
        if self.qkv_source not in QKV_SOURCES:
            raise ValueError(f"qkv_source must be one of {list(QKV_SOURCES)}, got {self.qkv_source!r}")
        if self.true_hidden_size % self.num_attention_heads:
            width = "intra_bottleneck_size" if self.use_bottleneck else "hidden_size"
            raise ValueError(
                f"{width} ({self.true_hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}): each head gets an equal slice")
        if self.embedding_size > self.hidden_size:
            # The MLM decoder is [word table (E) ; extra columns (H - E)]: E > H has no such split.
            raise ValueError(
                f"embedding_size ({self.embedding_size}) must be <= hidden_size ({self.hidden_size}): the MLM "
                f"head reuses the word table and adds hidden_size - embedding_size extra columns")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def bottleneck_norm(self) -> str:
        return self.bottleneck_normalization_type or self.normalization_type

    @property
    def has_embedding_transformation(self) -> bool:
        return self.trigram_input or self.embedding_size != self.hidden_size

    def to_dict(self):
        out = super().to_dict()
        out.pop("true_hidden_size", None)
        return out


# ---- presets: the paper's architectures (reference doc §1.1 and §6) ------------------------------------

def _bert(hidden: int, layers: int, heads: int, **kw) -> SlimBertConfig:
    return SlimBertConfig(
        embedding_size=hidden, trigram_input=False, hidden_size=hidden, use_bottleneck=False,
        intra_bottleneck_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * hidden, num_feedforward_networks=1, normalization_type="layer_norm",
        hidden_act="gelu", hidden_dropout_prob=0.1, classifier_activation=True, **kw)


def _mobilebert(**kw) -> SlimBertConfig:
    base = dict(embedding_size=128, trigram_input=True, hidden_size=512, use_bottleneck=True,
                intra_bottleneck_size=128, num_hidden_layers=24, num_attention_heads=4, intermediate_size=512,
                num_feedforward_networks=4, normalization_type="no_norm", hidden_act="relu",
                hidden_dropout_prob=0.0, classifier_activation=False, qkv_source="inter")
    base.update(kw)
    return SlimBertConfig(**base)


PRESETS = {
    "bert_base": lambda: _bert(768, 12, 12),
    "bert_large": lambda: _bert(1024, 24, 16),
    # IB-BERT_LARGE teacher: 512 in/out, 1024 inside, Q/K/V from the 512-wide block input.
    "ib_bert_large": lambda: _mobilebert(intra_bottleneck_size=1024, intermediate_size=4096,
                                         num_feedforward_networks=1, normalization_type="layer_norm",
                                         hidden_act="gelu", hidden_dropout_prob=0.1, qkv_source="inter"),
    "mobilebert": lambda: _mobilebert(qkv_source="inter"),  # paper Table 1: 25.3M
    "mobilebert_released": lambda: _mobilebert(qkv_source="shared_bottleneck"),  # google/mobilebert-uncased
    "mobilebert_tiny": lambda: _mobilebert(qkv_source="bottleneck", num_feedforward_networks=2),
}


def preset(name: str, **overrides) -> SlimBertConfig:
    """A named architecture from the paper, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    config = PRESETS[name]()
    if not overrides:
        return config
    return SlimBertConfig(**{**config.to_diff_dict(), **overrides})
