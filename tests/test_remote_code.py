"""Every saved model opens without slimbert: a shape stock MobileBERT cannot express carries its own code and an
`auto_map`, and transformers alone (in a process where `import slimbert` fails) reproduces slimbert's outputs,
with the keywords transformers' and sentence-transformers' callers pass. The opening tests run twice: with this
environment's pinned releases (constraints.txt) and with the newest ones, in the environment .ci/run creates and
names in SLIMBERT_NEWEST_PYTHON (locally, without it, that half is skipped; in CI its absence is a failure)."""

from __future__ import annotations

import inspect
import json
import sys

import pytest
import torch

from conftest import REPO, open_without_slimbert, python_of, randomize_norms
from slimbert.engine.sentence import write_sentence_transformers
from slimbert.models import (SlimBertForMaskedLM, SlimBertForSequenceClassification, SlimBertModel, modeling, preset,
                             remote_modeling, why_not_expressible)
from slimbert.models.modeling import pool
from slimbert.models.remote import (ALLOWED_IMPORTS, AUTO_CLASSES, CODE_FILES, _check_imports, auto_map,
                                    save_pretrained_portable, save_pretrained_standalone, standalone_sources)
from slimbert.recipe import load_recipe


def quickstart_student_config():
    """The student exactly as `slimbert run quickstart` builds it."""
    return load_recipe("quickstart").student_config


def assert_same(theirs: list, ours: torch.Tensor) -> None:
    theirs = torch.tensor(theirs)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() <= 1e-5


@pytest.fixture(params=["pinned", pytest.param("newest", marks=pytest.mark.interop)])
def hf_python(request) -> str:
    """The interpreter whose transformers and sentence-transformers open the folder: this environment's (the
    pins), or the newest releases' environment that .ci/run creates."""
    if request.param == "pinned":
        return sys.executable
    return python_of("SLIMBERT_NEWEST_PYTHON", "the newest-releases environment")


# ---- the generated code ---------------------------------------------------------------------------------------

def test_generated_code_imports_only_torch_transformers_and_each_other():
    sources = standalone_sources()
    assert set(sources) == {"configuration_slimbert.py", "modeling_slimbert_core.py", "modeling_slimbert.py"}
    assert "from .configuration_slimbert import SlimBertConfig" in sources["modeling_slimbert_core.py"]
    assert "from .modeling_slimbert_core import SlimBertModel as StrictModel" in sources["modeling_slimbert.py"]
    # The same code as the package's: only the relative imports' module names and the header differ.
    for module, name in CODE_FILES.items():
        package = (REPO / "slimbert" / "models" / f"{module}.py").read_text()
        generated = sources[f"{name}.py"].split("\n", 2)[2]
        for m, n in CODE_FILES.items():
            generated = generated.replace(f"from .{n} import", f"from .{m} import")
        assert generated == package, module
    for text in sources.values():
        _check_imports(text, "generated")  # raises on anything a folder without slimbert lacks
    assert {"torch", "transformers"} <= ALLOWED_IMPORTS and not any("slimbert" in a for a in ALLOWED_IMPORTS)


@pytest.mark.parametrize("line", ["from .counting import count", "from ..engine import runner",
                                  "import slimbert.recipe", "import yaml"])
def test_an_import_saved_folders_cannot_satisfy_is_refused(line):
    with pytest.raises(RuntimeError, match="saved models"):
        _check_imports(f"import torch\n{line}\n", "slimbert/models/modeling.py")


def test_auto_map_names_every_head():
    mapping = auto_map()
    assert mapping["AutoConfig"] == "configuration_slimbert.SlimBertConfig"
    assert mapping["AutoModel"] == "modeling_slimbert.SlimBertModel"
    for auto in ("AutoModelForMaskedLM", "AutoModelForPreTraining", "AutoModelForSequenceClassification",
                 "AutoModelForQuestionAnswering"):
        assert mapping[auto] == f"modeling_slimbert.SlimBert{auto.removeprefix('AutoModel')}"
    assert auto_map(config_only=True) == {"AutoConfig": "configuration_slimbert.SlimBertConfig"}


# ---- saving ---------------------------------------------------------------------------------------------------

def test_expressible_shapes_stay_stock_mobilebert(tmp_path):
    model = SlimBertForMaskedLM(preset("mobilebert_released", num_hidden_layers=2))
    assert save_pretrained_portable(model, tmp_path) == "mobilebert"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "mobilebert" and "auto_map" not in config
    assert not list(tmp_path.glob("*.py"))


def test_other_shapes_carry_their_code(tmp_path):
    config = preset("mobilebert", num_hidden_layers=2)
    assert why_not_expressible(config) is not None
    model = SlimBertForMaskedLM(config)
    assert save_pretrained_portable(model, tmp_path) == "slimbert"
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "slimbert" and saved["auto_map"] == auto_map()
    assert saved["architectures"] == ["SlimBertForMaskedLM"]
    assert sorted(p.name for p in tmp_path.glob("*.py")) == ["configuration_slimbert.py", "modeling_slimbert.py",
                                                             "modeling_slimbert_core.py"]
    assert getattr(model.config, "auto_map", None) is None   # the caller's model is left as it was


def test_with_slimbert_installed_the_folder_still_opens_with_its_classes(tmp_path):
    """Where slimbert is imported, transformers uses the registered classes, even with trust_remote_code=True:
    remote_modeling's, so that sentence-transformers' keywords work there too."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = randomize_norms(SlimBertForMaskedLM(preset("mobilebert", num_hidden_layers=2))).eval()
    save_pretrained_standalone(model, tmp_path)
    for trust in (False, True):
        loaded = AutoModelForMaskedLM.from_pretrained(tmp_path, trust_remote_code=trust).eval()
        assert type(loaded) is remote_modeling.SlimBertForMaskedLM and isinstance(loaded, SlimBertForMaskedLM)
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert torch.equal(loaded(ids, return_dict=False)[0], model(ids).logits)


# ---- the forward transformers' callers use (remote_modeling.py, the auto_map's classes) -------------------------

def small_pair(strict_cls, **config):
    """A strict model and the auto_map's class of the same head with the same weights, in eval mode."""
    torch.manual_seed(0)
    strict = randomize_norms(strict_cls(preset("mobilebert", num_hidden_layers=2, **config))).eval()
    lenient = getattr(remote_modeling, strict_cls.__name__)(strict.config).eval()
    lenient.load_state_dict(strict.state_dict())
    return strict, lenient


def padded_batch():
    ids = torch.randint(5, 1000, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def test_auto_map_classes_are_the_strict_models_with_a_lenient_forward():
    from transformers.utils import find_labels

    for cls in AUTO_CLASSES.values():
        lenient, strict = getattr(remote_modeling, cls), getattr(modeling, cls)
        assert issubclass(lenient, strict) and lenient.accepts_loss_kwargs is False
        params = inspect.signature(lenient.forward).parameters
        assert {"return_dict", "output_attentions", "output_hidden_states", "token_type_ids", "position_ids",
                "head_mask", "inputs_embeds"} <= set(params)
        assert any(p.kind is p.VAR_KEYWORD for p in params.values())
        # Trainer finds the labels in the signature (and so keeps those dataset columns), as for the strict class.
        assert find_labels(lenient) == find_labels(strict)
        # slimbert's own forward stays strict: an unknown keyword is a TypeError there.
        strict_params = inspect.signature(strict.forward).parameters
        assert "return_dict" not in strict_params and not any(p.kind is p.VAR_KEYWORD for p in strict_params.values())


def test_lenient_forward_honours_transformers_keywords():
    strict, lenient = small_pair(SlimBertModel)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = strict(ids, mask, output_hidden_states=True, output_attention_scores=True)
        sdpa = strict(ids, mask)        # without scores, attention runs through SDPA: equal to rounding, not bits
        plain = lenient(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
        as_tuple = lenient(input_ids=ids, attention_mask=mask, return_dict=False)
        full = lenient(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True,
                       use_cache=False, cache_position=None)                # "off" values of keywords it lacks
    assert torch.equal(plain.last_hidden_state, sdpa.last_hidden_state)
    assert plain.hidden_states is None and plain.attentions is None and plain.attention_scores is None
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2      # (last_hidden_state, pooler_output), as BERT's
    assert torch.equal(as_tuple[0], sdpa.last_hidden_state) and torch.equal(as_tuple[1], sdpa.pooler_output)
    assert len(full.hidden_states) == 3 and all(torch.equal(a, b) for a, b in zip(full.hidden_states, want.hidden_states))
    assert full.attention_scores is None and len(full.attentions) == 2
    for probs, scores in zip(full.attentions, want.attention_scores):
        assert probs.shape == (2, 4, 9, 9)
        torch.testing.assert_close(probs, scores.softmax(-1))
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 9))
        assert probs[1, :, :, 6:].abs().max() == 0                  # padded keys get no attention
    with torch.no_grad():
        ours = lenient(ids, mask, output_attention_scores=True, num_layers=1)   # slimbert's own keywords pass
    assert len(ours.attention_scores) == 1 and ours.attentions is None


def test_lenient_forward_reads_the_config_when_a_keyword_is_none():
    _, lenient = small_pair(SlimBertModel, output_hidden_states=True, output_attentions=True, return_dict=False)
    ids, mask = padded_batch()
    with torch.no_grad():
        out = lenient(ids, mask)
        explicit = lenient(ids, mask, return_dict=True, output_attentions=False)
    assert isinstance(out, tuple) and len(out) == 4                 # last, pooler, hidden_states, attentions
    assert explicit.hidden_states is not None and explicit.attentions is None


@pytest.mark.parametrize("head, targets", [
    (modeling.SlimBertForMaskedLM, lambda ids: {"labels": ids}),
    (modeling.SlimBertForPreTraining, lambda ids: {"labels": ids, "next_sentence_label": torch.tensor([0, 1])}),
    (modeling.SlimBertForSequenceClassification, lambda ids: {"labels": torch.tensor([0, 1])}),
    (modeling.SlimBertForQuestionAnswering, lambda ids: {"start_positions": torch.tensor([1, 2]),
                                                         "end_positions": torch.tensor([3, 4])}),
])
def test_every_head_returns_a_tuple_led_by_the_loss(head, targets):
    strict, lenient = small_pair(head)
    ids, mask = padded_batch()
    with torch.no_grad():
        want = strict(ids, mask, **targets(ids))
        got = lenient(input_ids=ids, attention_mask=mask, return_dict=False, **targets(ids))
    assert isinstance(got, tuple) and len(got) == len(want.to_tuple())
    assert all(torch.equal(a, b) for a, b in zip(got, want.to_tuple())) and torch.equal(got[0], want.loss)


@pytest.mark.parametrize("key, value", [("head_mask", torch.ones(2, 4)), ("inputs_embeds", torch.zeros(2, 9, 128)),
                                        ("cu_seq_lens_q", torch.tensor([0, 9, 18]))])
def test_inputs_it_cannot_honour_are_refused_not_ignored(key, value):
    _, lenient = small_pair(SlimBertModel)
    ids, mask = padded_batch()
    with pytest.raises(TypeError, match="'attention_msk'"):           # misspelt: refused, as the strict forward does
        lenient(ids, attention_msk=mask)
    with pytest.raises(ValueError, match=f"SlimBertModel.forward got {key}: "):
        lenient(ids, mask, **{key: value})
    with pytest.raises(ValueError, match="needs input_ids"):
        lenient(attention_mask=mask)


# ---- opening without slimbert, with the pinned and the newest releases ------------------------------------------

@pytest.fixture
def batch(real_batch):
    return {k: real_batch[k][:, :40] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_quickstart_student_opens_without_slimbert(tmp_path, batch, hf_python, shared_data, minilm_path):
    config = quickstart_student_config()
    assert config.qkv_source == "inter" and why_not_expressible(config) is not None   # the reason for all this
    torch.manual_seed(0)
    student = randomize_norms(SlimBertForMaskedLM(config)).eval()
    folder = tmp_path / "student"
    assert save_pretrained_portable(student, folder) == "slimbert"
    with torch.no_grad():
        logits = student(**batch).logits
        full = student.slimbert(**batch, output_hidden_states=True, output_attention_scores=True)
    got = open_without_slimbert(folder, "AutoModelForMaskedLM", batch, tmp_path, hf_python)
    assert got["class"].endswith("modeling_slimbert.SlimBertForMaskedLM")
    assert_same(got["out"], logits)
    got = open_without_slimbert(folder, "AutoModel", batch, tmp_path, hf_python, calls=[
        {"return_dict": False}, {"output_hidden_states": True, "output_attentions": True, "return_dict": True}])
    assert got["class"].endswith("modeling_slimbert.SlimBertModel")
    assert_same(got["out"], full.last_hidden_state)
    as_tuple, with_all = got["calls"]
    assert len(as_tuple) == 2 and as_tuple[0] == got["out"]
    assert set(with_all) == {"last_hidden_state", "pooler_output", "hidden_states", "attentions"}
    for theirs, ours in zip(with_all["hidden_states"], full.hidden_states, strict=True):
        assert_same(theirs, ours)
    for theirs, ours in zip(with_all["attentions"], full.attention_scores, strict=True):
        assert_same(theirs, ours.softmax(-1))


TEXTS = ["The student encodes without slimbert.", "A second, longer sentence, so that the batch is padded.", "Hi"]


def sentence_student(tmp_path, tokenizer, minilm_path):
    """A student of the quickstart's shape in the layout a run on MiniLM leaves (modules.json: mean pooling, then
    Normalize), and the embeddings slimbert gives it for TEXTS."""
    config = quickstart_student_config()
    torch.manual_seed(2)
    student = randomize_norms(SlimBertForMaskedLM(config)).eval()
    folder = tmp_path / "student"
    save_pretrained_portable(student, folder)
    tokenizer.save_pretrained(folder)
    write_sentence_transformers(folder, minilm_path, config.hidden_size, "mean")
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = pool(student.slimbert(**enc).last_hidden_state, enc["attention_mask"], "mean")
    return folder, torch.nn.functional.normalize(ours, dim=-1)


def test_quickstart_student_encodes_in_sentence_transformers(tmp_path, hf_python, tokenizer, minilm_path):
    """The issue's failure: sentence-transformers calls forward(..., return_dict=True). Without slimbert, the
    student encodes as slimbert embeds, within 1e-5."""
    folder, ours = sentence_student(tmp_path, tokenizer, minilm_path)
    got = open_without_slimbert(folder, "SentenceTransformer", {"texts": TEXTS}, tmp_path, hf_python)
    assert got["class"].endswith("modeling_slimbert.SlimBertModel")
    assert_same(got["out"], ours)


def test_in_a_process_that_imported_slimbert_sentence_transformers_encodes_too(tmp_path, tokenizer, minilm_path):
    """There transformers opens the folder with slimbert's registered classes, whatever trust_remote_code says
    (a notebook that ran slimbert.compress, then encodes with the student)."""
    from sentence_transformers import SentenceTransformer

    folder, ours = sentence_student(tmp_path, tokenizer, minilm_path)
    for trust in (False, True):
        model = SentenceTransformer(str(folder), device="cpu", trust_remote_code=trust)
        assert_same(model.encode(TEXTS).tolist(), ours)


def test_fine_tuned_classifier_opens_without_slimbert(tmp_path, batch, hf_python, shared_data, minilm_path):
    config = quickstart_student_config()
    config = type(config)(**{**config.to_diff_dict(), "num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"},
                             "label2id": {"neg": 0, "neu": 1, "pos": 2}})
    torch.manual_seed(1)
    classifier = randomize_norms(SlimBertForSequenceClassification(config)).eval()
    folder = tmp_path / "finetune-model"
    save_pretrained_portable(classifier, folder)
    with torch.no_grad():
        logits = classifier(**batch).logits
    got = open_without_slimbert(folder, "AutoModelForSequenceClassification", batch, tmp_path, hf_python,
                                calls=[{"return_dict": False}])
    assert got["class"].endswith("modeling_slimbert.SlimBertForSequenceClassification")
    assert_same(got["out"], logits)
    assert got["calls"] == [[got["out"]]]                           # return_dict=False: (logits,)
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}


def test_without_the_code_files_it_would_not_open(tmp_path, batch):
    """The control: the same folder saved the old way (no code, no auto_map) fails where slimbert is absent."""
    model = SlimBertModel(preset("mobilebert", num_hidden_layers=1))
    model.save_pretrained(tmp_path / "old")
    with pytest.raises(AssertionError, match="model type `slimbert` but Transformers does not recognize"):
        open_without_slimbert(tmp_path / "old", "AutoModel", batch, tmp_path)


def test_export_folder_config_opens_without_slimbert(tmp_path, tokenizer, batch, hf_python):
    from slimbert.export.onnx import export

    model = SlimBertForSequenceClassification(preset("mobilebert", num_hidden_layers=1, num_labels=2)).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export(tmp_path / "model", tmp_path / "onnx", measure=False, log=lambda m: None)
    assert (tmp_path / "onnx" / "configuration_slimbert.py").is_file()
    assert not list((tmp_path / "onnx").glob("modeling_*.py"))      # no weights to model
    got = open_without_slimbert(tmp_path / "onnx", "AutoConfig", batch, tmp_path, hf_python)
    assert got["class"].endswith("configuration_slimbert.SlimBertConfig")
    assert got["out"]["qkv_source"] == "inter" and got["out"]["hidden_size"] == 512
