"""Task data through `datasets`: the GLUE files as the old TSV reader read them, headerless CoLA-style files,
CSV, parquet, JSONL, folders of split files, and the errors a recipe author sees."""

import csv
import json
import os
import subprocess
import sys

import pytest

from slimbert.data.tasks import TaskDataError, read_task, read_task_split
from slimbert.recipe import RecipeError, load_recipe

from conftest import write_recipe

GLUE = [("SST-2", ["sentence"], "label"), ("MRPC", ["#1 String", "#2 String"], "Quality"),
        ("RTE", ["sentence1", "sentence2"], "label")]


def reference_rows(path):
    """What the hand-written reader this replaces returned: GLUE's TSV, no quoting, header after a BOM."""
    csv.field_size_limit(2 ** 30)
    with path.open(encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def reference(path, text_fields, label_field):
    rows = [r for r in reference_rows(path) if r.get(label_field) not in (None, "")]
    texts = [tuple((r[k] or "").strip() for k in text_fields) for r in rows]
    raw = [r[label_field].strip() for r in rows]
    try:
        names = sorted(set(raw), key=float)
    except ValueError:
        names = sorted(set(raw))
    return texts, [names.index(x) for x in raw], names


@pytest.mark.parametrize("task,text_fields,label_field", GLUE)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_every_glue_file_reads_as_the_old_reader_did(shared_data, task, text_fields, label_field, split):
    path = shared_data / task / f"{split}.tsv"
    got = read_task(path, text_fields, label_field, regression=False)
    texts, labels, names = reference(path, text_fields, label_field)
    assert got.texts == texts and got.labels == labels and got.label_names == names
    assert len(got.texts) == {"SST-2": {"train": 67_349, "dev": 872}, "MRPC": {"train": 3_668, "dev": 408},
                              "RTE": {"train": 2_490, "dev": 277}}[task][split]


def test_label_names_stay_what_recipes_expect(shared_data):
    assert read_task(shared_data / "SST-2" / "dev.tsv", ["sentence"], "label", False).label_names == ["0", "1"]
    rte = read_task(shared_data / "RTE" / "dev.tsv", ["sentence1", "sentence2"], "label", False)
    assert rte.label_names == ["entailment", "not_entailment"]
    # dev labels index by the training file's names
    mrpc = read_task(shared_data / "MRPC" / "dev.tsv", ["#1 String", "#2 String"], "Quality", False,
                     label_names=["1", "0"])
    assert mrpc.label_names == ["1", "0"] and mrpc.labels.count(0) == 279  # 279 paraphrases in MRPC dev


def test_jsonl_reads_the_same_examples_as_the_tsv_made_from_it(shared_data):
    tsv = read_task(shared_data / "RTE" / "train.tsv", ["sentence1", "sentence2"], "label", False)
    jsonl = read_task(shared_data / "RTE" / "original" / "train.jsonl", ["premise", "hypothesis"], "label", False)
    assert jsonl.texts == tsv.texts and jsonl.labels == tsv.labels and jsonl.label_names == tsv.label_names


def headerless_cola(shared_data, tmp_path):
    """SST-2 dev rewritten in the layout of GLUE's CoLA train.tsv: no header; source, label, original label
    (empty for accepted sentences), sentence."""
    rows = reference_rows(shared_data / "SST-2" / "dev.tsv")
    path = tmp_path / "cola-style.tsv"
    path.write_text("".join(f"src{i % 7}\t{r['label']}\t{'' if r['label'] == '1' else '*'}\t{r['sentence']}\n"
                            for i, r in enumerate(rows)), encoding="utf-8")
    return path


COLA = ["source", "label", "original_label", "sentence"]


def test_a_headerless_file_reads_with_its_column_names(shared_data, tmp_path):
    path = headerless_cola(shared_data, tmp_path)
    got = read_task(path, ["sentence"], "label", False, columns=COLA)
    sst = read_task(shared_data / "SST-2" / "dev.tsv", ["sentence"], "label", False)
    assert len(got.texts) == 872  # the first line is an example, not a header
    assert got.texts == sst.texts and got.labels == sst.labels and got.label_names == ["0", "1"]


def test_headerless_mistakes_are_explained(shared_data, tmp_path):
    path = headerless_cola(shared_data, tmp_path)
    with pytest.raises(TaskDataError, match="no column 'sentence'.*src0.*column names given"):
        read_task(path, ["sentence"], "label", False)  # the first example was taken as the header
    with pytest.raises(TaskDataError, match="line 1 has 4 fields but 2 column names"):
        read_task(path, ["sentence"], "label", False, columns=["sentence", "label"])
    with pytest.raises(TaskDataError, match="line 1 is a header row"):
        read_task(shared_data / "SST-2" / "dev.tsv", ["sentence"], "label", False, columns=["sentence", "label"])


def test_csv_keeps_quoted_commas_and_words_pandas_would_call_missing(tmp_path):
    path = tmp_path / "toy.csv"
    path.write_text('text,label\n"good, really good",pos\nnull,neg\nNA,neg\n"she said ""no""",007\n')
    got = read_task(path, ["text"], "label", False)
    assert got.texts == [("good, really good",), ("null",), ("NA",), ('she said "no"',)]
    assert got.label_names == ["007", "neg", "pos"] and got.labels == [2, 1, 1, 0]


def test_parquet_with_integer_labels_reads_like_the_tsv(shared_data, tmp_path):
    import pandas as pd

    rows = reference_rows(shared_data / "SST-2" / "dev.tsv")
    path = tmp_path / "dev.parquet"
    pd.DataFrame({"sentence": [r["sentence"] for r in rows], "label": [int(r["label"]) for r in rows]}).to_parquet(path)
    got = read_task(path, ["sentence"], "label", False)
    sst = read_task(shared_data / "SST-2" / "dev.tsv", ["sentence"], "label", False)
    assert got.texts == sst.texts and got.labels == sst.labels and got.label_names == ["0", "1"]
    reg = read_task(path, ["sentence"], "label", regression=True)
    assert reg.labels[:4] == [float(r["label"]) for r in rows[:4]]


def test_a_folder_of_split_files(shared_data, tmp_path):
    folder = tmp_path / "rte"
    folder.mkdir()
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_bytes((shared_data / "RTE" / f"{split}.tsv").read_bytes())
    train = read_task_split(tmp_path, "train", ["sentence1", "sentence2"], "label", False, dataset="rte",
                            max_examples=100)
    dev = read_task_split(tmp_path, "validation", ["sentence1", "sentence2"], "label", False, dataset="rte",
                          label_names=train.label_names)
    assert len(train.texts) == 100 and len(dev.texts) == 277
    assert dev.labels == read_task(shared_data / "RTE" / "dev.tsv", ["sentence1", "sentence2"], "label", False).labels
    with pytest.raises(TaskDataError, match="no 'test' split files.*train: \\['train.tsv'\\]"):
        read_task_split(tmp_path, "test", ["sentence1"], "label", False, dataset="rte")
    with pytest.raises(TaskDataError, match="folder not found: .*data/rte"):  # a path: no hub look-up
        read_task_split(tmp_path, "train", ["sentence1"], "label", False, dataset="./data/rte")


def test_bad_rows_name_the_file_and_line(tmp_path, shared_data):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"sentence": "a", "label": 1}\n\n{"sentence": "b", "label": 0\n')
    with pytest.raises(TaskDataError, match=r"bad.jsonl:3: not JSON"):
        read_task(bad, ["sentence"], "label", False)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("sentence\tlabel\nfine\t1\ntoo\tmany\tfields\n")
    with pytest.raises(TaskDataError, match=r"ragged.tsv.*line 3"):
        read_task(ragged, ["sentence"], "label", False)
    with pytest.raises(TaskDataError, match="must end in"):
        read_task(tmp_path / "notes.txt", ["sentence"], "label", False)


def test_recipe_keys_for_task_data(tmp_path, tiny_source, shared_data):
    path = headerless_cola(shared_data, tmp_path)
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=[{"kind": "joint", "steps": 2}],
                          finetune={"task": "cola", "train": str(path), "dev": str(path), "columns": COLA})
    assert load_recipe(recipe).recipe.finetune.columns == COLA
    for finetune, key, message in [
        ({"task": "cola", "train": str(path), "dev": str(path)}, "finetune.train", "no column 'sentence'"),
        ({"task": "cola", "train": str(path)}, "finetune", "give train and dev files, or a dataset"),
        ({"task": "q", "format": "squad", "dataset": "x"}, "finetune", "squad reads SQuAD JSON files"),
    ]:
        recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=[{"kind": "joint", "steps": 2}],
                              finetune=finetune)
        with pytest.raises(RecipeError) as e:
            load_recipe(recipe)
        problems = {p.path: p.message for p in e.value.problems}
        assert key in problems and message in problems[key], problems


@pytest.mark.e2e
def test_an_offline_hub_dataset_is_a_clear_validate_error(tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data, transfer=[{"kind": "joint", "steps": 2}],
                          finetune={"task": "cola", "dataset": "nyu-mll/glue", "dataset_config": "cola"})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "validate", str(recipe)], capture_output=True,
                          text=True, env=env)
    text = " ".join(done.stderr.split()) + " ".join(done.stdout.split())
    assert done.returncode == 2, text
    assert "finetune.dataset" in text and "nyu-mll/glue" in text and "hub cannot be reached" in text
    assert "Traceback" not in text


@pytest.mark.e2e
def test_run_finetunes_on_a_folder_of_headerless_files(tmp_path, tiny_source, shared_data):
    folder = tmp_path / "cola"
    folder.mkdir()
    headerless_cola(shared_data, tmp_path).rename(folder / "dev.tsv")
    train = reference_rows(shared_data / "SST-2" / "train.tsv")[:300]
    (folder / "train.tsv").write_text("".join(f"s\t{r['label']}\t\t{r['sentence']}\n" for r in train))
    recipe = write_recipe(tmp_path, tiny_source, shared_data,
                          transfer=[{"kind": "joint", "steps": 2, "batch_size": 4}],
                          finetune={"task": "cola", "dataset": "cola", "columns": COLA, "max_examples": 128,
                                    "epochs": 1, "batch_size": 32, "seq_len": 32})
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "finetune" / "metrics.json").read_text())
    assert result["train_examples"] == 128 and result["dev_examples"] == 872
    assert result["label_names"] == ["0", "1"] and set(result["dev"]) == {"accuracy", "f1", "matthews"}
