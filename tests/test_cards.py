"""Model cards: huggingface_hub parses them back, and their numbers are the run's (params, fidelity, losses, task
metrics, latency)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard

from conftest import write_recipe
from slimbert.engine.cards import CardFacts, last_losses, model_card, read_run, size_row, write_card
from slimbert.models import SlimBertForMaskedLM, SlimBertForSequenceClassification, count, preset
from slimbert.models.remote import save_pretrained_portable

FIDELITY = {"before": {"cosine": [0.9, 0.8, 0.7], "attention_kl": [0.0012, 0.0034], "source_mlm_loss": 2.5,
                       "source_mlm_accuracy": 0.5, "teacher_mlm_loss": 3.25, "teacher_mlm_accuracy": 0.375},
            "after": {"cosine": [0.95, 0.9123, 0.8765], "attention_kl": [0.0005, 0.0007], "source_mlm_loss": 2.5,
                      "source_mlm_accuracy": 0.5, "teacher_mlm_loss": 2.75, "teacher_mlm_accuracy": 0.4375},
            "held_out_sequences": 8}
TASK = {"task": "sst2", "dev": {"accuracy": 0.8125, "matthews": 0.625, "f1": 0.8}, "teacher_dev": None,
        "distill": False, "train_examples": 256, "dev_examples": 872, "label_names": ["0", "1"]}


def facts(**changes) -> CardFacts:
    base = dict(kind="student", name="quick", recipe_yaml="name: quick\nseed: 0\n", base_model="bert-base-uncased",
                architecture="SlimBertForMaskedLM", remote_code=True,
                sizes=[size_row("this model", preset("mobilebert", num_hidden_layers=4)),
                       size_row("BERT_BASE", preset("bert_base"))],
                corpus={"dataset": "Salesforce/wikitext", "dataset_config": "wikitext-2-raw-v1"}, head_params=12345,
                fidelity=FIDELITY,
                # a row as the runner logs it: throughput fields (strings among them) are not loss terms
                losses=[{"stage": 0, "kind": "progressive", "step": 79, "lr": 1e-3, "loss": 12.5, "tokens_per_s": 9.0,
                         "tflops": 0.5, "mfu": 0.3, "device": "cuda:0", "precision": "bf16", "processes": 1,
                         "peak": "table: NVIDIA H100", "feature_map": 10.25, "attention": 2.25, "layer": 2}],
                version="0.1.0")
    return CardFacts(**{**base, **changes})


def parsed(card, tmp_path: Path) -> ModelCard:
    card.save(tmp_path / "README.md")
    return ModelCard.load(tmp_path / "README.md")


def table_row(text: str, first: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


# ---- the card as a pure function of the facts -----------------------------------------------------------------

def test_student_card_metadata_and_numbers(tmp_path):
    card = parsed(model_card(facts()), tmp_path)
    d = card.data
    assert d.base_model == "bert-base-uncased" and d.library_name == "transformers"
    assert {"slimbert", "mobilebert", "knowledge-distillation", "custom_code"} <= set(d.tags)
    assert d.datasets == ["Salesforce/wikitext"] and d.pipeline_tag == "fill-mask"
    assert d.eval_results is None          # no task metrics, no model-index
    text = card.text
    ours = count(preset("mobilebert", num_hidden_layers=4))
    row = table_row(text, "this model")
    assert row[2] == f"{ours.total_params:,}" and row[3] == f"{ours.encoder_params:,}"
    assert table_row(text, "BERT_BASE")[2] == "109,482,240"
    assert float(row[5].rstrip("x")) == pytest.approx(109_482_240 / ours.total_params, abs=0.005)
    assert table_row(text, "layer 2")[1:] == ["0.7000", "0.8765", "0.0034", "0.0007"]
    assert table_row(text, "MLM loss (teacher)")[1:3] == ["3.2500", "2.7500"]
    assert table_row(text, "0") == ["0", "progressive", "80", "12.5", "feature_map 10.25, attention 2.25"]
    assert "trust_remote_code=True" in text and "AutoModelForMaskedLM" in text
    assert "```yaml\nname: quick\nseed: 0\n```" in text


def test_finetuned_card_has_a_model_index(tmp_path):
    card = parsed(model_card(facts(kind="finetuned", architecture="MobileBertForSequenceClassification",
                                   remote_code=False, task=TASK, fidelity=None,
                                   finetune={"task": "sst2", "train": "train.tsv", "dev": "dev.tsv"})), tmp_path)
    d = card.data
    assert d.pipeline_tag == "text-classification" and "custom_code" not in d.tags
    assert d.metrics == ["accuracy", "matthews_correlation", "f1"]
    results = {r.metric_type: r for r in d.eval_results}
    assert results["accuracy"].metric_value == 0.8125 and results["matthews_correlation"].metric_value == 0.625
    assert results["accuracy"].dataset_name == "sst2" and results["accuracy"].dataset_split == "dev"
    assert results["accuracy"].task_type == "text-classification"
    assert table_row(card.text, "this model (PyTorch)")[1:] == ["0.8125", "0.6250", "0.8000"]
    assert "Teacher fidelity" not in card.text and "trust_remote_code" not in card.text


def test_export_card_has_latency_and_parity(tmp_path):
    report = {"config": {"threads": 2, "runs": 5, "alternating_blocks": 5, "warmup": 5},
              "versions": {"onnxruntime": "1.x", "machine": "x86_64"},
              "models": {"student": {"initializer_params": 1000, "flops_per_sequence": 2e9, "file_mb": 4.0,
                                     "onnx_nodes": 101}},
              "results": [{"model": "student", "batch_size": 1, "sequence_length": 128,
                           "latency": {"mean": 0.0123, "p50": 0.0121, "p90": 0.013, "p99": 0.014, "stdev_": 3.0},
                           "throughput": {"value": 81.3}, "p50_vs_student": 1.0}]}
    export = {"task": "text-classification", "opset": 17, "source": "run/finetune/model", "passes": [],
              "parity": {"fp32": {"cosine": 1.0, "max_abs": 1e-7, "argmax_agreement": 1.0}},
              "task_metrics": {"model.onnx": {"accuracy": 0.8125, "matthews": 0.625, "f1": 0.8}}}
    card = parsed(model_card(facts(kind="export", task=TASK, export=export, latency=report, head_params=None)),
                  tmp_path)
    assert card.data.library_name == "onnx" and "onnx" in card.data.tags
    assert card.data.pipeline_tag == "text-classification"
    assert table_row(card.text, "student")[1:7] == ["ort", "fp32", "1", "128", "12.3", "12.1"]  # mean and p50 ms
    assert table_row(card.text, "`model.onnx`")[1] == "0.8125"
    assert table_row(card.text, "fp32")[1] == "1.000000"


# ---- reading a run directory ----------------------------------------------------------------------------------

def test_last_losses_keeps_the_last_row_of_each_stage(tmp_path):
    rows = [{"stage": 0, "step": 0, "loss": 3.0}, {"stage": 0, "step": 9, "loss": 2.0},
            {"stage": 1, "step": 4, "loss": 1.5}, {"stage": 1, "step": 9, "loss": 1.0},
            {"stage": 1, "step": 9, "loss": 0.9}]     # a resumed run logs step 9 again: the later one wins
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + '\n{"torn')
    assert [(r["stage"], r["loss"]) for r in last_losses(tmp_path / "metrics.jsonl")] == [(0, 2.0), (1, 0.9)]
    assert last_losses(tmp_path / "absent.jsonl") == []


def test_read_run_takes_its_numbers_from_the_files(tmp_path, tiny_source):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.resolved.yaml").write_text(yaml.safe_dump({"name": "r", "source": {"model": "my/source"},
                                                              "data": {"corpus": {"files": ["a.txt"]}}}))
    (run / "plan.json").write_text(json.dumps({"source": {"model": str(tiny_source)}}))
    (run / "teacher").mkdir()
    (run / "teacher" / "fidelity.json").write_text(json.dumps(FIDELITY))
    (run / "metrics.jsonl").write_text(json.dumps({"stage": 0, "kind": "joint", "step": 2, "loss": 0.5}) + "\n")
    config = preset("mobilebert", num_hidden_layers=2, vocab_size=1000)
    save_pretrained_portable(SlimBertForMaskedLM(config), run / "student")
    f = read_run(run, run / "student", "student")
    assert f.base_model == "my/source" and f.remote_code and f.architecture == "SlimBertForMaskedLM"
    assert f.fidelity == FIDELITY and f.losses[0]["loss"] == 0.5 and f.task is None
    sizes = {r["name"]: r for r in f.sizes}
    assert list(sizes) == ["this model", "source", "BERT_BASE"]     # no teacher/model/: no IB teacher row
    assert sizes["this model"]["params"] == count(config).total_params
    assert f.head_params == count(config, head="mlm").total_params
    # The source's row is the real source's size: its BertModel (embeddings, blocks, pooler), tensor by tensor.
    from transformers import BertModel

    assert sizes["source"]["params"] == sum(p.numel() for p in BertModel.from_pretrained(tiny_source).parameters())
    # 4 blocks of Q, K, V, O (64 x 64 + 64), FFN 64 -> 128 -> 64, two LayerNorms.
    assert sizes["source"]["encoder_params"] == 4 * (4 * (64 * 64 + 64) + 64 * 128 + 128 + 128 * 64 + 64 + 2 * 2 * 64)
    assert sizes["BERT_BASE"]["params"] == 109_482_240
    # A stock MobileBERT folder reads back as the same shape.
    torch.manual_seed(0)
    clf = SlimBertForSequenceClassification(preset("mobilebert_released", num_hidden_layers=2, vocab_size=1000))
    assert save_pretrained_portable(clf, run / "finetune" / "model") == "mobilebert"
    (run / "finetune" / "metrics.json").write_text(json.dumps({**TASK, "history": [{"loss": 1.0}]}))
    f = read_run(run, run / "finetune" / "model", "finetuned")
    assert not f.remote_code and f.architecture == "MobileBertForSequenceClassification"
    assert f.task == TASK and f.head_params == count(clf).total_params
    path = write_card(run, run / "finetune" / "model", "finetuned")
    assert ModelCard.load(path).data.eval_results[0].metric_value == TASK["dev"]["accuracy"]


# ---- a real run writes them -------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_a_run_writes_a_card_beside_every_model(tmp_path, tiny_source, shared_data):
    """IB teacher (fidelity), progressive + PD transfer (losses), SST-2 fine-tune (task metrics), ONNX export with a
    latency report: each saved folder's README.md parses, and its numbers are the run's files'."""
    recipe = write_recipe(
        tmp_path, tiny_source, shared_data,
        teacher={"type": "inverted_bottleneck", "inter_size": 48, "num_heads": 4, "embedding_size": 32,
                 "init_sequences": 32, "init": "random"},
        student={"num_layers": 2, "inter_size": 48, "intra_size": 24, "num_heads": 4, "qkv_from": "inter",
                 "ffn": {"size": 48, "stacked": 2}, "embedding": {"size": 32, "trigram": True},
                 "copy_embeddings": True},
        transfer=[{"kind": "teacher_adaptation", "steps": 3, "batch_size": 8, "optimizer": {"lr": 1e-3}},
                  {"kind": "progressive", "steps_per_layer": 2, "batch_size": 4, "optimizer": {"lr": 2e-3}},
                  {"kind": "pretrain_distill", "steps": 2, "batch_size": 4, "alpha": 0.5, "optimizer": {"lr": 1e-3}}],
        finetune={"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
                  "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 32, "epochs": 1, "batch_size": 16,
                  "lr": 1e-3, "seq_len": 32},
        export={"onnx": True, "bench": {"batch": [1], "seq": [16], "compare": []}})
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    fidelity = json.loads((out / "teacher" / "fidelity.json").read_text())
    losses = last_losses(out / "metrics.jsonl")
    task = json.loads((out / "finetune" / "metrics.json").read_text())
    plan = json.loads((out / "plan.json").read_text())
    for folder, kind in ((out / "student", "student"), (out / "finetune" / "model", "finetuned"),
                         (out / "export", "export")):
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == str(tiny_source) and "slimbert" in card.data.tags, kind
        text = card.text
        # The student's own parameters: plan.json counted the same shape before the run.
        assert table_row(text, "this model")[2] == f"{plan['student']['params']['total']:,}", kind
        cosines = table_row(text, f"layer {len(fidelity['after']['cosine']) - 1}")
        assert cosines[1:3] == [f"{fidelity['before']['cosine'][-1]:.4f}", f"{fidelity['after']['cosine'][-1]:.4f}"]
        for row in losses:
            cells = table_row(text, str(row["stage"]))
            assert cells[1] == row["kind"] and cells[3] == f"{row['loss']:.4g}", kind
        assert yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, flags=re.S).group(1)) == \
            yaml.safe_load((out / "recipe.resolved.yaml").read_text())
        if kind == "student":
            assert card.data.eval_results is None and card.data.pipeline_tag == "fill-mask"
            assert "custom_code" in card.data.tags    # Q/K/V from the inter width: saved with its own code
        else:
            values = {r.metric_name: r.metric_value for r in card.data.eval_results}
            assert values == task["dev"], kind
            assert table_row(text, "this model (PyTorch)")[1:] == [f"{v:.4f}" for v in task["dev"].values()]
    report = json.loads((out / "export" / "bench" / "report.json").read_text())
    p50 = report["results"][0]["latency"]["p50"] * 1e3
    assert table_row(ModelCard.load(out / "export" / "README.md").text, "student")[4] == f"{p50:.1f}"
