"""finetune.pooling / SlimBertConfig.classifier_pooling: what a task head reads (h[CLS] or the masked mean)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from conftest import open_without_slimbert, randomize_norms, write_recipe
from slimbert.models import SlimBertConfig, SlimBertForSequenceClassification, preset, why_not_expressible
from slimbert.models.remote import save_pretrained_portable


def classifier(pooling: str, seed: int = 0, **kw) -> SlimBertForSequenceClassification:
    torch.manual_seed(seed)
    # the released checkpoint's shape, which stock MobileBERT expresses (but for the pooling)
    config = preset("mobilebert_released", **{"num_hidden_layers": 2, "vocab_size": 30522, "num_labels": 3,
                                              "classifier_pooling": pooling, **kw})
    return randomize_norms(SlimBertForSequenceClassification(config)).eval()


def test_mean_pooling_reads_the_masked_mean_and_padding_does_not_move_it():
    # without the 3-gram embedding, whose "next token" of the last word is the pad token's row (as in MobileBERT)
    model = classifier("mean", trigram_input=False)
    ids = torch.randint(1000, 2000, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        out = model(ids, mask, output_hidden_states=True)
        h = out.hidden_states[-1]
        by_hand = torch.stack([h[0].mean(0), h[1, :4].mean(0)])
        torch.testing.assert_close(out.logits, model.classifier(by_hand))
        # the second row alone, without its padding: the same logits
        alone = model(ids[1:, :4], mask[1:, :4]).logits
    torch.testing.assert_close(alone, out.logits[1:], rtol=1e-5, atol=1e-5)
    # and a CLS classifier with the same weights reads something else
    cls = classifier("cls", trigram_input=False)
    cls.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(cls(ids, mask).logits, out.logits)


def test_an_unknown_pooling_is_refused_by_name():
    with pytest.raises(ValueError, match="classifier_pooling must be one of"):
        SlimBertConfig(classifier_pooling="max")


def test_a_mean_pooled_classifier_is_not_stock_mobilebert_and_opens_without_slimbert(tmp_path, real_batch):
    model = classifier("mean", seed=1)
    assert "classifier_pooling" in why_not_expressible(model.config)
    assert why_not_expressible(classifier("cls").config) is None
    batch = {k: real_batch[k][:, :40] for k in ("input_ids", "attention_mask", "token_type_ids")}
    assert save_pretrained_portable(model, tmp_path / "clf") == "slimbert"
    with torch.no_grad():
        ours = model(**batch).logits
    got = open_without_slimbert(tmp_path / "clf", "AutoModelForSequenceClassification", batch, tmp_path)
    assert (torch.tensor(got["out"]) - ours).abs().max().item() <= 1e-5


def test_a_mean_pooled_classifier_exports_to_onnx_with_parity_on_padded_rows(tmp_path, tokenizer, real_batch):
    import onnxruntime as ort

    from slimbert.export.onnx import export

    model = classifier("mean", seed=2)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    result = export(tmp_path / "model", tmp_path / "onnx", measure=False, log=lambda m: None)
    assert result.parity["fp32"].argmax_agreement == 1.0
    assert (real_batch["attention_mask"] == 0).any()   # rows with padding: the mask must reach the pooler
    s = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = {i.name for i in s.get_inputs()}
    x = {k: v.numpy() for k, v in real_batch.items() if k in names}
    got = s.run(None, x)[0]
    with torch.no_grad():
        ref = model(**real_batch).logits.numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


# ---- the recipe knob ----------------------------------------------------------------------------------------------

def test_the_recipe_knob_reaches_the_student_and_squad_refuses_it(tmp_path, tiny_source, shared_data, tokenizer):
    from slimbert.engine.finetune import ClassificationTask
    from slimbert.recipe import load_recipe
    from slimbert.recipe.schema import Finetune

    spec = {"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
            "dev": str(shared_data / "SST-2" / "dev.tsv"), "seq_len": 32, "max_examples": 16, "pooling": "mean"}
    transfer = [{"kind": "joint", "steps": 4, "batch_size": 4}]
    r = load_recipe(write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer, finetune=spec))
    task = ClassificationTask(r.recipe.finetune, tmp_path, tokenizer)
    assert task.student_model(classifier("cls", num_labels=2), 0.1).config.classifier_pooling == "mean"
    assert Finetune(task="t", train="a.tsv", dev="b.tsv").pooling == "cls"   # BERT's and MobileBERT's default
    with pytest.raises(ValidationError, match="pooling: mean shapes a classifier's input"):
        Finetune(task="qa", format="squad", train="t.json", dev="d.json", pooling="mean")
