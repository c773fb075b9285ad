"""Interop: the exported folder opens with optimum's ORTModelForSequenceClassification and gives the same logits.

optimum-onnx pins transformers < 4.58, so it lives in its own virtual environment, which .ci/run creates and
names in SLIMBERT_OPTIMUM_PYTHON. Locally, without it, the test is skipped; in CI its absence is a failure.
"""

import json
import os
import subprocess

import numpy as np
import pytest
import torch

from conftest import python_of
from slimbert.export.onnx import export
from slimbert.models import SlimBertForSequenceClassification, preset

pytestmark = pytest.mark.interop

SCRIPT = """
import json, sys
from optimum.onnxruntime import ORTModelForSequenceClassification
from transformers import AutoTokenizer
d, texts = sys.argv[1], json.loads(sys.argv[2])
model = ORTModelForSequenceClassification.from_pretrained(d)
tok = AutoTokenizer.from_pretrained(d)
x = tok(texts, padding=True, return_tensors="pt")
print(json.dumps(model(**x).logits.tolist()))
"""


def test_optimum_opens_the_export_and_agrees(tmp_path, tokenizer):
    python = python_of("SLIMBERT_OPTIMUM_PYTHON", "the optimum-onnx environment")
    torch.manual_seed(0)
    model = SlimBertForSequenceClassification(preset("mobilebert_released", num_hidden_layers=3, num_labels=3)).eval()
    model.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    export(tmp_path / "student", tmp_path / "onnx", measure=False, log=lambda m: None)
    texts = ["The export runs without slimbert.", "A second, longer sentence pads the first one in the batch."]
    done = subprocess.run([python, "-c", SCRIPT, str(tmp_path / "onnx"), json.dumps(texts)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**enc).logits.numpy()
    assert np.abs(theirs - ours).max() <= 1e-5 * max(1.0, np.abs(ours).max())
