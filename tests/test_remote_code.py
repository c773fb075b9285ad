"""Every saved model opens without slimbert: a shape stock MobileBERT cannot express carries its own code and an
`auto_map`, and transformers alone (in a process where `import slimbert` fails) reproduces slimbert's outputs."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import REPO, open_without_slimbert, randomize_norms
from slimbert.models import (SlimBertForMaskedLM, SlimBertForSequenceClassification, SlimBertModel, preset,
                             why_not_expressible)
from slimbert.models.remote import (ALLOWED_IMPORTS, _check_imports, auto_map, save_pretrained_portable,
                                    save_pretrained_standalone, standalone_sources)
from slimbert.recipe import load_recipe


def quickstart_student_config():
    """The student exactly as `slimbert run quickstart` builds it."""
    return load_recipe("quickstart").student_config


def assert_same(theirs: list, ours: torch.Tensor) -> None:
    theirs = torch.tensor(theirs)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() <= 1e-5


# ---- the generated code ---------------------------------------------------------------------------------------

def test_generated_code_imports_only_torch_transformers_and_each_other():
    sources = standalone_sources()
    assert set(sources) == {"configuration_slimbert.py", "modeling_slimbert.py"}
    modeling = sources["modeling_slimbert.py"]
    assert "from .configuration_slimbert import SlimBertConfig" in modeling
    assert "from .configuration import" not in modeling
    # The same code as the package's: only the import lines and the header differ.
    package = (REPO / "slimbert" / "models" / "modeling.py").read_text()
    assert modeling.split("\n", 2)[2].replace("configuration_slimbert", "configuration") == package
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
    assert sorted(p.name for p in tmp_path.glob("*.py")) == ["configuration_slimbert.py", "modeling_slimbert.py"]
    assert getattr(model.config, "auto_map", None) is None   # the caller's model is left as it was


def test_with_slimbert_installed_the_folder_still_opens_with_its_classes(tmp_path):
    """Where slimbert is imported, transformers uses the registered classes and needs no trust_remote_code."""
    from transformers import AutoModelForMaskedLM

    torch.manual_seed(0)
    model = randomize_norms(SlimBertForMaskedLM(preset("mobilebert", num_hidden_layers=2))).eval()
    save_pretrained_standalone(model, tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is SlimBertForMaskedLM
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


# ---- opening without slimbert ---------------------------------------------------------------------------------

@pytest.fixture
def batch(real_batch):
    return {k: real_batch[k][:, :40] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_quickstart_student_opens_without_slimbert(tmp_path, batch, shared_data, minilm_path):
    config = quickstart_student_config()
    assert config.qkv_source == "inter" and why_not_expressible(config) is not None   # the reason for all this
    torch.manual_seed(0)
    student = randomize_norms(SlimBertForMaskedLM(config)).eval()
    folder = tmp_path / "student"
    assert save_pretrained_portable(student, folder) == "slimbert"
    with torch.no_grad():
        logits = student(**batch).logits
        hidden = student.slimbert(**batch).last_hidden_state
    got = open_without_slimbert(folder, "AutoModelForMaskedLM", batch, tmp_path)
    assert got["class"].endswith("modeling_slimbert.SlimBertForMaskedLM")
    assert_same(got["out"], logits)
    got = open_without_slimbert(folder, "AutoModel", batch, tmp_path)
    assert got["class"].endswith("modeling_slimbert.SlimBertModel")
    assert_same(got["out"], hidden)


def test_fine_tuned_classifier_opens_without_slimbert(tmp_path, batch, shared_data, minilm_path):
    config = quickstart_student_config()
    config = type(config)(**{**config.to_diff_dict(), "num_labels": 3, "id2label": {0: "neg", 1: "neu", 2: "pos"},
                             "label2id": {"neg": 0, "neu": 1, "pos": 2}})
    torch.manual_seed(1)
    classifier = randomize_norms(SlimBertForSequenceClassification(config)).eval()
    folder = tmp_path / "finetune-model"
    save_pretrained_portable(classifier, folder)
    with torch.no_grad():
        logits = classifier(**batch).logits
    got = open_without_slimbert(folder, "AutoModelForSequenceClassification", batch, tmp_path)
    assert got["class"].endswith("modeling_slimbert.SlimBertForSequenceClassification")
    assert_same(got["out"], logits)
    assert json.loads((folder / "config.json").read_text())["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}


def test_without_the_code_files_it_would_not_open(tmp_path, batch):
    """The control: the same folder saved the old way (no code, no auto_map) fails where slimbert is absent."""
    model = SlimBertModel(preset("mobilebert", num_hidden_layers=1))
    model.save_pretrained(tmp_path / "old")
    with pytest.raises(AssertionError, match="model type `slimbert` but Transformers does not recognize"):
        open_without_slimbert(tmp_path / "old", "AutoModel", batch, tmp_path)


def test_export_folder_config_opens_without_slimbert(tmp_path, tokenizer, batch):
    from slimbert.export.onnx import export

    model = SlimBertForSequenceClassification(preset("mobilebert", num_hidden_layers=1, num_labels=2)).eval()
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export(tmp_path / "model", tmp_path / "onnx", measure=False, log=lambda m: None)
    assert (tmp_path / "onnx" / "configuration_slimbert.py").is_file()
    assert not (tmp_path / "onnx" / "modeling_slimbert.py").exists()      # no weights to model
    got = open_without_slimbert(tmp_path / "onnx", "AutoConfig", batch, tmp_path)
    assert got["class"].endswith("configuration_slimbert.SlimBertConfig")
    assert got["out"]["qkv_source"] == "inter" and got["out"]["hidden_size"] == 512
