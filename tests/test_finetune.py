"""Task data, metrics and fine-tuning (with and without task distillation) on the real GLUE files."""

import json
import math
import subprocess
import sys

import pytest

from slimbert.data.tasks import TaskDataError, metrics, read_task, sample_rows

from conftest import write_recipe


def test_reads_the_glue_formats(shared_data):
    sst = read_task(shared_data / "SST-2" / "dev.tsv", ["sentence"], "label", False)
    assert sst.label_names == ["0", "1"] and len(sst.texts) == 872 and len(sst.texts[0]) == 1
    mrpc = read_task(shared_data / "MRPC" / "dev.tsv", ["#1 String", "#2 String"], "Quality", False)  # BOM header
    assert len(mrpc.texts) == 408 and len(mrpc.texts[0]) == 2
    assert any('"' in a for a, _ in mrpc.texts)  # quotes are text, not CSV quoting
    rte = read_task(shared_data / "RTE" / "train.tsv", ["sentence1", "sentence2"], "label", False)
    assert rte.label_names == ["entailment", "not_entailment"]
    with pytest.raises(TaskDataError, match="no column 'sentence'"):
        read_task(shared_data / "RTE" / "dev.tsv", ["sentence"], "label", False)


def test_sample_rows_spreads_over_the_file_with_the_seed():
    rows = list(range(1000))
    a = sample_rows(rows, 100, seed=0)
    assert len(a) == 100 == len(set(a)) and a == sorted(a)        # no repeats, file order kept
    assert min(a) < 100 and max(a) > 900                           # the whole file, not its head
    assert sum(x < 500 for x in a) in range(35, 66)                # both halves about equally
    assert a == sample_rows(rows, 100, seed=0) != sample_rows(rows, 100, seed=1)
    assert sample_rows(rows, None, 0) is rows and sample_rows(rows, 5000, 0) is rows


def test_max_examples_samples_the_grouped_glue_file(shared_data):
    # RTE's training file is grouped by source; its head is not a sample of it.
    path = shared_data / "RTE" / "train.tsv"
    full = read_task(path, ["sentence1", "sentence2"], "label", False)
    part = read_task(path, ["sentence1", "sentence2"], "label", False, max_examples=200, seed=3)
    assert len(part.texts) == 200 and set(part.texts) <= set(full.texts)
    assert part.texts[:200] != full.texts[:200]
    positions = sorted(full.texts.index(t) for t in part.texts)
    assert positions[-1] > 0.9 * len(full.texts)


def test_metrics_golden():
    # predictions 1 1 0 0, labels 1 0 0 1: accuracy 1/2; TP 1, FP 1, FN 1 -> F1 1/2; MCC (1*1 - 1*1)/... = 0
    m = metrics([1, 1, 0, 0], [1, 0, 0, 1], regression=False, num_labels=2)
    assert m == {"accuracy": 0.5, "matthews": 0.0, "f1": 0.5}
    # 3 right of 4, TP 2 FP 0 FN 1 TN 1: F1 = 4/5; MCC = (2*1 - 0*1)/sqrt(2*3*1*2) = 2/sqrt(12)
    m = metrics([1, 1, 0, 0], [1, 1, 1, 0], regression=False, num_labels=2)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8) and m["matthews"] == pytest.approx(2 / math.sqrt(12))
    r = metrics([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0], regression=True, num_labels=1)
    assert r["spearman"] == pytest.approx(1.0) and 0.98 < r["pearson"] < 1.0


def finetune_recipe(tmp_path, tiny_source, shared_data, **finetune):
    transfer = [{"kind": "joint", "steps": 4, "batch_size": 4, "optimizer": {"lr": 2e-3}}]
    spec = {"task": "sst2", "train": str(shared_data / "SST-2" / "train.tsv"),
            "dev": str(shared_data / "SST-2" / "dev.tsv"), "max_examples": 256, "epochs": 1, "batch_size": 16,
            "lr": 1e-3, "seq_len": 32, **finetune}
    return write_recipe(tmp_path, tiny_source, shared_data, transfer=transfer, finetune=spec)


def run(recipe, out):
    return subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(out)],
                          capture_output=True, text=True)


@pytest.mark.e2e
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_finetune_evaluates_and_saves(tmp_path, tiny_source, shared_data, pooling):
    done = run(finetune_recipe(tmp_path, tiny_source, shared_data, pooling=pooling), tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert result["train_examples"] == 256 and result["dev_examples"] == 872
    assert set(result["dev"]) == {"accuracy", "f1", "matthews"} and 0 <= result["dev"]["accuracy"] <= 1
    assert result["history"][-1]["loss"] > 0
    config = json.loads((tmp_path / "out" / "finetune" / "model" / "config.json").read_text())
    assert config.get("classifier_pooling", "cls") == pooling   # the saved head reads what the recipe asked
    assert "sst2 dev: accuracy" in " ".join(done.stderr.split())


@pytest.mark.e2e
@pytest.mark.parametrize("distill_hidden, augment", [(0.0, 0), (1.0, 2)])
def test_finetune_with_task_distillation_on_pairs(tmp_path, tiny_source, shared_data, distill_hidden, augment):
    recipe = finetune_recipe(tmp_path, tiny_source, shared_data, task="mrpc",
                             train=str(shared_data / "MRPC" / "train.tsv"), dev=str(shared_data / "MRPC" / "dev.tsv"),
                             text_fields=["#1 String", "#2 String"], label_field="Quality", distill=True,
                             max_examples=128, distill_hidden=distill_hidden, augment=augment)
    done = run(recipe, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert result["distill"] and set(result["teacher_dev"]) == {"accuracy", "f1", "matthews"}
    assert (result["train_examples"], result["augmented_examples"]) == (128, 128 * augment)


def test_hidden_distillation_refuses_a_task_teacher_of_another_depth(tmp_path, tiny_source, shared_data):
    from transformers import BertConfig, BertForSequenceClassification

    from slimbert.recipe import RecipeError, load_recipe

    shallow = tmp_path / "teacher"
    BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64)).save_pretrained(shallow)
    recipe = finetune_recipe(tmp_path, tiny_source, shared_data, distill=True, distill_hidden=1.0,
                             teacher_model=str(shallow))
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    [problem] = e.value.problems
    assert problem.path == "finetune.distill_hidden" and "source's 4" in problem.message
    assert "has 2 layers" in problem.message
    load_recipe(finetune_recipe(tmp_path, tiny_source, shared_data, distill=True, teacher_model=str(shallow)))


def _mrpc_task(tokenizer, shared_data, **spec):
    from slimbert.engine.finetune import ClassificationTask
    from slimbert.recipe.schema import Finetune

    spec = Finetune(**{"task": "mrpc", "train": str(shared_data / "MRPC" / "train.tsv"),
                       "dev": str(shared_data / "MRPC" / "dev.tsv"), "text_fields": ["#1 String", "#2 String"],
                       "label_field": "Quality", "max_examples": 40, "seq_len": 64, **spec})
    return ClassificationTask(spec, shared_data, tokenizer)


def test_hidden_distill_pairs_layers_and_projects_widths():
    import torch

    from slimbert.engine.finetune import HiddenDistill

    torch.manual_seed(0)
    teacher = [torch.randn(2, 5, 8) for _ in range(5)]        # embeddings + 4 layers, width 8
    mask = torch.ones(2, 5)
    same = HiddenDistill(8, 8, [2, 4])                        # 2 student layers <- teacher layers 2 and 4
    assert same.pairs == [(0, 0), (1, 2), (2, 4)] and not list(same.parameters())
    assert same([teacher[0], teacher[2], teacher[4]], teacher, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert same([teacher[0], teacher[1], teacher[4]], teacher, mask).item() > 0.1   # layer 1 is not layer 2
    wide = HiddenDistill(6, 8, [2, 4])                        # a 6-wide student: a learned 6 -> 8 projection
    student = [torch.randn(2, 5, 6, requires_grad=True) for _ in range(3)]
    wide(student, teacher, mask).backward()
    assert wide.proj.weight.grad is not None and student[1].grad is not None
    with pytest.raises(ValueError, match="the student has 3 and the task teacher 4"):
        same([teacher[0]] * 4, teacher, mask)
    from slimbert.recipe.schema import Finetune

    with pytest.raises(ValueError, match="set distill: true"):
        Finetune(task="t", train="a.tsv", dev="b.tsv", distill_hidden=1.0)


def test_training_with_hidden_distillation_moves_the_student_towards_the_teacher(tokenizer, tiny_source,
                                                                                 shared_data):
    import torch
    from transformers import AutoModelForSequenceClassification

    from slimbert.engine.finetune import HiddenDistill, TeacherOutputs, _inputs, train
    from slimbert.models import SlimBertConfig, SlimBertForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_source), num_labels=2).eval()
    cfg = SlimBertConfig(vocab_size=teacher.config.vocab_size, embedding_size=32, hidden_size=64,
                         intra_bottleneck_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         num_labels=2, max_position_embeddings=128)

    def gap(student, task):
        x = _inputs(task.train, torch.arange(task.n_train))
        with torch.no_grad():
            s = student(**x, output_hidden_states=True).hidden_states
            t = teacher(**x, output_hidden_states=True).hidden_states
        return HiddenDistill(64, 64, [2, 4])(s, t, x["attention_mask"]).item()

    results = {}
    for weight in (0.0, 10.0):
        task = _mrpc_task(tokenizer, shared_data, distill=True, distill_hidden=weight, distill_alpha=1.0, lr=2e-3,
                          epochs=4, batch_size=8)
        torch.manual_seed(0)
        student = SlimBertForSequenceClassification(cfg)
        before = gap(student, task)
        train(student, task, 0, teacher, layer_map=[2, 4])
        results[weight] = (before, gap(student, task))
    assert results[0.0][0] == pytest.approx(results[10.0][0])          # the same start
    assert results[10.0][1] < 0.7 * results[10.0][0]                   # distilled: much closer to the teacher
    assert results[10.0][1] < 0.7 * results[0.0][1]                    # and closer than labels alone took it
    task = _mrpc_task(tokenizer, shared_data, distill=True, distill_hidden=1.0)
    with pytest.raises(ValueError, match="needs the fine-tuned teacher model"):
        train(SlimBertForSequenceClassification(cfg), task, 0, TeacherOutputs(teacher, task))


@pytest.mark.e2e
def test_bad_task_columns_are_named_before_training(tmp_path, tiny_source, shared_data):
    recipe = finetune_recipe(tmp_path, tiny_source, shared_data, text_fields=["text"])
    done = run(recipe, tmp_path / "out")
    assert done.returncode == 2 and "finetune.train" in done.stderr and "'text'" in done.stderr
    assert not (tmp_path / "out").exists()


# ---- SQuAD-format QA ----------------------------------------------------------------------------------------

def test_squad_metrics_golden():
    from slimbert.data.qa import QAExample, squad_metrics

    ex = [QAExample("a", "q", "c", ["The Eiffel Tower"], 0), QAExample("b", "q", "c", ["red fox", "fox"], 0)]
    # a: normalisation drops "the" and case: exact. b: "quick red fox" vs "red fox": P 2/3, R 1 -> F1 0.8
    m = squad_metrics(ex, {"a": "eiffel tower!", "b": "quick red fox"})
    assert m["exact_match"] == pytest.approx(50.0) and m["f1"] == pytest.approx(90.0)


def squad_file(path, paragraphs):
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data))
    return path


def make_squad(shared_data, n, offset):
    """Questions whose answer is the word after a cue, on real WikiText paragraphs."""
    text = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text()
    lines = [l.strip() for l in text.splitlines() if len(l.strip()) > 300 and not l.startswith(" =")]
    paragraphs = []
    for k, context in enumerate(lines[offset:offset + n]):
        words = context.split()
        answer = words[7]
        start = context.index(" " + answer + " ", len(" ".join(words[:7])) - 1) + 1
        paragraphs.append({"context": context, "qas": [{"id": f"q{offset + k}", "question": f"what follows {words[6]} ?",
                                                        "answers": [{"text": answer, "answer_start": start}]}]})
    return paragraphs


def test_squad_features_locate_the_answer(tokenizer, shared_data, tmp_path):
    from slimbert.data.qa import features, read_squad

    path = squad_file(tmp_path / "train.json", make_squad(shared_data, 6, 0))
    examples = read_squad(path)
    feats = features(examples, tokenizer, seq_len=64, doc_stride=16)
    t = feats["tensors"]
    assert len(t["input_ids"]) > len(examples)  # long contexts were windowed
    found = 0
    for i in range(len(t["input_ids"])):
        s, e = int(t["start_positions"][i]), int(t["end_positions"][i])
        if s == 0:
            continue
        found += 1
        ex = examples[feats["owner"][i]]
        offs = feats["offsets"][i]
        assert ex.context[offs[s][0]:offs[e][1]] == ex.answers[0]
    assert found >= len(examples)


@pytest.mark.e2e
def test_squad_finetune_reports_exact_match_and_f1(tmp_path, tiny_source, shared_data):
    train = squad_file(tmp_path / "train.json", make_squad(shared_data, 24, 0))
    dev = squad_file(tmp_path / "dev.json", make_squad(shared_data, 8, 24))
    recipe = finetune_recipe(tmp_path, tiny_source, shared_data, task="toy-squad", format="squad", train=str(train),
                             dev=str(dev), seq_len=64, doc_stride=16, epochs=2, batch_size=8, distill=True)
    done = run(recipe, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert set(result["dev"]) == {"exact_match", "f1"} and 0 <= result["dev"]["f1"] <= 100
    assert result["dev_examples"] == 8 and set(result["teacher_dev"]) == {"exact_match", "f1"}


def test_precomputed_teacher_outputs_equal_running_the_teacher(tokenizer, tiny_source, shared_data):
    """Task distillation reads the teacher's logits from a one-off pass; they must be what the teacher gives for
    the same trimmed batch, for classification rows and for padded span logits alike."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from slimbert.engine.finetune import ClassificationTask, TeacherOutputs, _inputs
    from slimbert.recipe.schema import Finetune

    spec = Finetune(task="mrpc", train=str(shared_data / "MRPC" / "train.tsv"),
                    dev=str(shared_data / "MRPC" / "dev.tsv"), text_fields=["#1 String", "#2 String"],
                    label_field="Quality", max_examples=40, seq_len=64)
    task = ClassificationTask(spec, shared_data, tokenizer)
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(tiny_source), num_labels=2).eval()
    cached = TeacherOutputs(teacher, task, batch_size=16)
    assert cached.outputs["logits"].shape == (40, 2)
    idx = torch.tensor([3, 17, 38, 0, 25])
    x = _inputs(task.train, idx)
    with torch.no_grad():
        live = teacher(**x).logits
    torch.testing.assert_close(cached(idx, x["input_ids"].shape[1]).logits, live, rtol=1e-5, atol=1e-5)
    # outputs saved once and reloaded (several students distilled from one teacher) read the same
    reloaded = TeacherOutputs.from_outputs({k: v.clone() for k, v in cached.outputs.items()})
    torch.testing.assert_close(reloaded(idx, x["input_ids"].shape[1]).logits, live, rtol=1e-5, atol=1e-5)
