"""Bad input: every recipe in tests/malformed/ must make `slimbert validate` and `slimbert run` exit 2 with one
readable line per problem (key path and line), no traceback, and nothing written to --out. The same for
`--set` overrides. A property-based fuzz test then throws random YAML trees and override strings at the loader
and the override parser: only RecipeError may come out."""

from __future__ import annotations

import json
import os
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
ENV = re.compile(r"^# env: (\w+)=(.*)$")


def case_env(path: Path) -> dict[str, str]:
    """Environment a case runs under ('# env: HF_HUB_OFFLINE=1')."""
    return dict(m.groups() for m in map(ENV.match, path.read_text(encoding="utf-8").splitlines()) if m)


def expectations(path: Path) -> list[tuple[str, int | None, str]]:
    """(key path, line, words) from the file's header; '-' means the whole file / no line."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        m = EXPECT.match(line)
        if m:
            key, at, words = m.groups()
            out.append(("" if key == "-" else key, None if at == "-" else int(at), words))
    return out


def evil_pickle(marker: Path) -> bytes:
    """A pickle that creates `marker` when unpickled: it must only ever be refused."""
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    return pickle.dumps({"state": Evil()})


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
    (pickle / "pytorch_model.bin").write_bytes(evil_pickle(root / "PWNED"))
    gpt2 = copy("gpt2")
    config = json.loads((gpt2 / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**config, "model_type": "gpt2", "architectures": ["GPT2Model"]}))
    no_tokenizer = copy("no-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (no_tokenizer / f).unlink(missing_ok=True)
    def with_config(name, **fields):  # the tiny source with config.json fields of the wrong type
        d = copy(name)
        config = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**config, **fields}))
        return d

    float_positions = with_config("float-positions", max_position_embeddings=512.0)
    list_act = with_config("list-act", hidden_act=["gelu"])
    no_mlm = with_config("no-mlm", architectures=["BertModel"])
    torch.manual_seed(0)
    small = root / "small-vocab"  # weights for a 1000-token vocabulary, no tokenizer of its own
    BertForMaskedLM(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                               intermediate_size=128, max_position_embeddings=128)).save_pretrained(small)
    return {"MODEL_NO_WEIGHTS": no_weights, "MODEL_TRUNCATED": truncated, "MODEL_PICKLE": pickle,
            "MODEL_GPT2": gpt2, "MODEL_NO_WEIGHTS_OK": no_tokenizer, "MODEL_SMALL_VOCAB": small,
            "MODEL_FLOAT_POSITIONS": float_positions, "MODEL_LIST_ACT": list_act, "MODEL_NO_MLM": no_mlm}


@pytest.fixture(scope="module")
def placeholders(tmp_path_factory, tiny_source, shared_data):
    models = make_bad_models(tmp_path_factory.mktemp("bad-models"), tiny_source)
    values = {"SOURCE": tiny_source, "SHARED": shared_data, "CORPUS": shared_data / "wikitext-2-raw" / "wiki.test.raw",
              **models}
    yield {f"@{k}@": str(v) for k, v in values.items()}
    assert not (models["MODEL_PICKLE"].parent / "PWNED").exists(), "a pickle was executed"


def materialize(case: Path, dest: Path, placeholders: dict[str, str]) -> Path:
    """The case with real paths filled in, beside a copy of malformed/data (paths resolve relative to it)."""
    text = case.read_text(encoding="utf-8")
    for k, v in placeholders.items():
        text = text.replace(k, v)
    shutil.copytree(MALFORMED / "data", dest / "data", dirs_exist_ok=True)
    path = dest / case.name
    path.write_text(text, encoding="utf-8")
    return path


def invoke(*args, env: dict | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
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


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_malformed_recipe_exits_2_and_writes_nothing(case, tmp_path, placeholders):
    recipe = materialize(case, tmp_path, placeholders)
    before = tree(tmp_path)
    expected = expectations(case)
    env = case_env(case)
    code, output = invoke("validate", recipe, env=env)
    assert code == 2, output
    check_problems(output, str(recipe), expected)
    out = tmp_path / "out"
    code, output = invoke("run", recipe, "--out", out, env=env)
    assert code == 2, output
    check_problems(output, str(recipe), expected)
    assert not out.exists(), f"run wrote {sorted(p.name for p in out.iterdir())}"
    assert tree(tmp_path) == before, "left behind beside the recipe (a cache folder, a half-written file)"
    assert not Path("/tmp/slimbert-pwned").exists(), "python_tag.yaml ran its command"


def tree(root: Path) -> dict[str, int]:
    """Every path under root with its size (-1 for folders): what a refused command must leave as it was."""
    return {str(p.relative_to(root)): -1 if p.is_dir() else p.stat().st_size for p in root.rglob("*")}


# ---- YAML nested past the parser's recursion limit, generated ----------------------------------------------------

DEEP = 10_000


def deep_yaml(shape: str) -> str:
    """A recipe whose `seed` holds DEEP levels (PyYAML's composer recurses once per level, Python stops at 1,000),
    or, for aliases, 20 anchors of 60 levels each repeating the one before: shallow text, 1,200-level data."""
    if shape == "flow_list":
        value = "[" * DEEP + "]" * DEEP
    elif shape == "flow_mapping":
        value = "{a: " * DEEP + "1" + "}" * DEEP
    elif shape == "block_mapping":
        return "seed:\n" + "".join(" " * (i + 1) + "a:\n" for i in range(DEEP))
    else:
        anchors = "".join(f"x{i}: &a{i} " + "[" * 60 + (f"*a{i - 1}" if i else "1") + "]" * 60 + "\n"
                          for i in range(20))
        return anchors + "seed: *a19\n"
    return f"seed: {value}\n"


@pytest.mark.parametrize("shape", ["flow_list", "flow_mapping", "block_mapping", "aliases"])
def test_yaml_nested_past_the_recursion_limit_exits_2(shape, tmp_path):
    recipe = tmp_path / "deep.yaml"
    recipe.write_text(deep_yaml(shape))
    before = tree(tmp_path)
    for command in (["validate", recipe], ["run", recipe, "--out", tmp_path / "out"], ["plan", recipe]):
        code, output = invoke(*command)
        assert code == 2 and "Traceback" not in output, output
        (line,) = problem_lines(output)
        assert line.startswith(str(recipe)) and "nested more than 100 levels deep" in line, output
    assert tree(tmp_path) == before


# ---- --set overrides -----------------------------------------------------------------------------------------------

GOOD = MALFORMED / "zero_layers.yaml"  # the base recipe; overrides below fix or break it


@pytest.mark.parametrize("overrides, key, words", [
    (["novalue"], "", "must look like key.path=value"),
    (["a..b=1"], "a..b", "dot-separated names"),
    (["=3"], "", "dot-separated names"),
    (["transfer.7.steps=1"], "transfer.7", "out of range"),
    (["name.first=x"], "name.first", "no such key"),
    (["student.num_layers=zero"], "student.num_layers", "valid integer"),
    (["transfer.0.optimizer.lr=.nan"], "transfer.0.optimizer.lr", "finite number"),
    (["student=[1, 2]"], "student", "valid dictionary"),
    (["name=../../outside"], "name", "not allowed"),
    (["layer_map=[1, 99]"], "layer_map.1", "out of range"),
    (["teacher.type=magic"], "teacher.type", "'inverted_bottleneck' or 'source'"),
    (["data.corpus.files=[/no/such/*.txt]"], "data.corpus.files.0", "no file matches"),
    (["source.model=./nowhere"], "source.model", "not found"),
    (["seed=!!python/object/apply:os.system [true]"], "seed", "not valid YAML"),
    (["student.num_layers=[1"], "student.num_layers", "not valid YAML"),
    (["transfer.0.kind=telepathy"], "transfer.0.kind", "unknown stage kind"),
    (["transfer.0.optimizer.betas=[0.9]"], "transfer.0.optimizer.betas", "expected 2 values"),
    (["transfer.0.steps_per_layer=1e40"], "transfer.0.steps_per_layer", "valid integer"),
    (["transfer.0.steps_per_layer=1000000000000"], "transfer.0.steps_per_layer", "plausible bound"),
    (["data.corpus.files=[\"D:\\0_x\"]"], "data.corpus.files.0", "NUL character"),
    (["source.tokenizer=not a hub id"], "source.tokenizer", "not a valid hub id"),
    (["data.corpus={dataset: data/binary.tsv}"], "data.corpus.dataset", "must end in"),
    (["seed=" + "[" * DEEP], "seed", "nested more than 100 levels deep"),
    (["seed=" + "{a: " * DEEP], "seed", "nested more than 100 levels deep"),
])
def test_bad_override_exits_2_and_writes_nothing(overrides, key, words, tmp_path, placeholders):
    recipe = materialize(GOOD, tmp_path, placeholders)
    sets = [x for o in ["student.num_layers=2", *overrides] for x in ("--set", o)]
    for command in (["validate", recipe], ["run", recipe, "--out", tmp_path / "out"]):
        code, output = invoke(*command, *sets)
        assert code == 2, output
        assert "Traceback" not in output
        lines = problem_lines(output)
        assert len(lines) == 1, output
        assert words in lines[0] and (not key or f" {key}:" in lines[0]), output
        # A value given with --set is blamed on the override, not on the recipe line it replaced.
        assert lines[0].startswith("--set ") or "override" in lines[0], output
    assert not (tmp_path / "out").exists()


# ---- property-based fuzzing: only RecipeError may come out ------------------------------------------------------------

KEYS = ["name", "seed", "source", "model", "teacher", "type", "student", "num_layers", "inter_size", "ffn", "size",
        "data", "corpus", "files", "seq_len", "transfer", "kind", "steps", "alpha", "layer_map", "balance", "plugins"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(), st.text(max_size=12),
                    st.sampled_from(["uniform", "last", "joint", "progressive", "source", "../x", "*.txt", ""]))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner,
                                                 max_size=5)), max_leaves=24)
FUZZ = settings(max_examples=int(os.environ.get("SLIMBERT_FUZZ_EXAMPLES", 60)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def paths_of(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths_of(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths_of(v, prefix + (i,))


@pytest.fixture(scope="module")
def base_recipe(tmp_path_factory, placeholders) -> tuple[Path, dict]:
    path = materialize(GOOD, tmp_path_factory.mktemp("fuzz-base"), placeholders)
    path.write_text(path.read_text().replace("num_layers: 0", "num_layers: 2"))
    load_recipe(path)  # the base is valid: every failure below comes from the fuzzed part
    return path, yaml.safe_load(path.read_text())


def only_recipe_errors(fn) -> None:
    try:
        fn()
    except RecipeError as e:
        assert e.problems and all(str(p) for p in e.problems)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_yaml_text(text):
    only_recipe_errors(lambda: parse_yaml(text, "fuzz.yaml"))


@FUZZ
@given(tree=trees)
def test_fuzz_random_trees(tree, tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(tree))
    only_recipe_errors(lambda: load_recipe(path))


@FUZZ
@given(data=st.data(), value=trees)
def test_fuzz_one_key_of_a_valid_recipe(base_recipe, data, value, tmp_path):
    """The valid base recipe with one key path replaced by a random tree (or removed): the cross-field checks
    see odd values of the right shape, not only schema errors."""
    path, base = base_recipe
    tree = yaml.safe_load(path.read_text())
    where = data.draw(st.sampled_from(sorted((p for p in paths_of(base) if p), key=str)))
    node = tree
    for part in where[:-1]:
        node = node[part]
    if data.draw(st.booleans()) and isinstance(node, dict):
        del node[where[-1]]
    else:
        node[where[-1]] = value
    fuzzed = path.with_name("fuzzed.yaml")
    fuzzed.write_text(yaml.safe_dump(tree))
    only_recipe_errors(lambda: load_recipe(fuzzed))


@FUZZ
@given(data=st.data())
def test_fuzz_overrides(base_recipe, data):
    path, base = base_recipe
    key = data.draw(st.one_of(st.text(max_size=20), st.sampled_from([".".join(map(str, p)) for p in paths_of(base)
                                                                       if p])))
    value = data.draw(st.one_of(st.text(max_size=20), trees.map(lambda t: yaml.safe_dump(t, default_flow_style=True)
                                                                 .strip().replace("\n", " "))))
    text = data.draw(st.sampled_from([f"{key}={value}", key, value]))
    only_recipe_errors(lambda: parse_override(text))
    only_recipe_errors(lambda: apply_overrides(base, [text]))
    only_recipe_errors(lambda: load_recipe(path, [text]))


# ---- property-based: a source config.json with random types per field -------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True), st.text(max_size=10),
              st.sampled_from([0, -1, 1, 512.0, 64.5, "gelu", "bert", "BertForMaskedLM", ["gelu"], [], {}])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


@pytest.fixture(scope="module")
def fuzz_source(tmp_path_factory, tiny_source, base_recipe) -> tuple[Path, dict, Path]:
    """A copy of the tiny source whose config.json each example rewrites, and a recipe pointing at it."""
    root = tmp_path_factory.mktemp("fuzz-source")
    source = root / "source"
    shutil.copytree(tiny_source, source)
    path, base = base_recipe
    recipe = root / "recipe.yaml"
    shutil.copytree(MALFORMED / "data", root / "data")
    recipe.write_text(yaml.safe_dump({**base, "source": {"model": str(source)}}))
    return source, json.loads((source / "config.json").read_text()), recipe


@settings(max_examples=int(os.environ.get("SLIMBERT_FUZZ_EXAMPLES", 40)), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_source_config_json(fuzz_source, data):
    """Every field of the source's config.json replaced by a value of a random type (or removed): validate
    reports it (RecipeError naming source.model) or accepts it; transformers' strict configs never escape."""
    source, config, recipe = fuzz_source
    fields = data.draw(st.lists(st.sampled_from(sorted(config) + ["architectures", "model_type", "embedding_size"]),
                                min_size=1, max_size=3, unique=True))
    fuzzed = dict(config)
    for f in fields:
        if data.draw(st.booleans()) and f in fuzzed:
            del fuzzed[f]
        else:
            fuzzed[f] = data.draw(json_values)
    (source / "config.json").write_text(json.dumps(fuzzed))
    try:
        load_recipe(recipe)
    except RecipeError as e:
        assert e.problems and all(str(p) for p in e.problems)
    finally:
        (source / "config.json").write_text(json.dumps(config))
