"""Bad input: every recipe in tests/malformed/ must make `slimbert validate` and `slimbert run` exit 2 with one
readable line per problem (key path and line), no traceback, and nothing written to --out. The same for
`--set` overrides. A property-based fuzz test then throws random YAML trees and override strings at the loader
and the override parser: only RecipeError may come out."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from slimbert.cli import app
from slimbert.recipe import RecipeError, load_recipe
from slimbert.recipe.loader import parse_yaml
from slimbert.recipe.overrides import apply_overrides, parse_override

MALFORMED = Path(__file__).resolve().parent / "malformed"
CASES = sorted(MALFORMED.glob("*.yaml"))
EXPECT = re.compile(r"^# expect: (\S+) @ (\S+) \| (.+)$")


def expectations(path: Path) -> list[tuple[str, int | None, str]]:
    """(key path, line, words) from the file's header; '-' means the whole file / no line."""
    out = []
    for line in path.read_text().splitlines():
        m = EXPECT.match(line)
        if m:
            key, at, words = m.groups()
            out.append(("" if key == "-" else key, None if at == "-" else int(at), words))
    return out


def make_bad_models(root: Path, source: Path) -> dict[str, Path]:
    """Model directories broken in one way each, derived from the tiny source."""
    from transformers import BertConfig, BertForMaskedLM

    def copy(name):
        d = root / name
        shutil.copytree(source, d)
        return d

    no_weights = copy("no-weights")
    (no_weights / "model.safetensors").unlink()
    truncated = copy("truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 3])
    pickle = copy("pickle-only")
    (pickle / "model.safetensors").unlink()
    (pickle / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    gpt2 = copy("gpt2")
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2Model"]}))
    no_tokenizer = copy("no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    torch.manual_seed(0)
    small = root / "small-vocab"  # weights for a 1000-token vocabulary, no tokenizer of its own
    BertForMaskedLM(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=128)).save_pretrained(small)
    return {"MODEL_NO_WEIGHTS": no_weights, "MODEL_TRUNCATED": truncated, "MODEL_PICKLE": pickle,
            "MODEL_GPT2": gpt2, "MODEL_NO_WEIGHTS_OK": no_tokenizer, "MODEL_SMALL_VOCAB": small}


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, tiny_source, shared_data) -> dict[str, str]:
    models = make_bad_models(tmp_path_factory.mktemp("bad-models"), tiny_source)
    values = {"SOURCE": tiny_source, "CORPUS": shared_data / "wikitext-2-raw" / "wiki.test.raw", **models}
    return {f"@{k}@": str(v) for k, v in values.items()}


def materialize(case: Path, dest: Path, placeholders: dict[str, str]) -> Path:
    """The case with real paths filled in, beside a copy of malformed/data (paths resolve relative to it)."""
    text = case.read_text()
    for k, v in placeholders.items():
        text = text.replace(k, v)
    shutil.copytree(MALFORMED / "data", dest / "data", dirs_exist_ok=True)
    path = dest / case.name
    path.write_text(text)
    return path


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped: {result.exception!r}\n{result.output}")
    return result.exit_code, result.output


def problem_lines(output: str) -> list[str]:
    return [l.strip() for l in output.splitlines() if l.startswith("  ")]


def check_problems(output: str, file: str, expected: list[tuple[str, int | None, str]]) -> None:
    assert "Traceback" not in output, output
    lines = problem_lines(output)
    assert re.search(rf"{len(expected)} problem\(s\)", output), f"expected {len(expected)} problem(s):\n{output}"
    for key, line, words in expected:
        where = f"{file}:{line}:" if line is not None else f"{file}"
        hit = [l for l in lines if l.startswith(where) and (not key or f" {key}:" in l) and words in l]
        assert hit, f"no problem at {where} naming {key!r} with {words!r}:\n{output}"


def test_the_corpus_is_big_enough():
    assert len(CASES) >= 30
    assert all(expectations(c) for c in CASES), [c.name for c in CASES if not expectations(c)]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_malformed_recipe_exits_2_and_writes_nothing(case, tmp_path, placeholders):
    recipe = materialize(case, tmp_path, placeholders)
    expected = expectations(case)
    code, output = invoke("validate", recipe)
    assert code == 2, output
    check_problems(output, str(recipe), expected)
    out = tmp_path / "out"
    code, output = invoke("run", recipe, "--out", out)
    assert code == 2, output
    check_problems(output, str(recipe), expected)
    assert not out.exists(), f"run wrote {sorted(p.name for p in out.iterdir())}"
