"""What a task head can read from h[CLS] and from the mean, and the source's ceiling through the mean (round 7).

  python benchmarks/quality/pooling_probe.py cosines [--arm pruned_source_block ...]
      mean pairwise cosine of h[CLS] and of the masked mean over 32 SST-2 dev sentences, per layer, for the source
      and the named transfer arms' students (runs/quality/transfer-<arm>/student): a value near 1 is a vector that
      is the same for every sentence, which a classifier on it cannot separate.
  python benchmarks/quality/pooling_probe.py source --task sst2
      the source fine-tuned to its dev plateau exactly as run.py's ceiling (same sample, budget, early stopping,
      seed 0), but with its head on the masked mean of the last hidden states instead of BERT's pooled h[CLS].
      Written to runs/quality-pooling/ (never over the ceiling that teaches the students).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import run  # noqa: E402  (benchmarks/quality/run.py)


def _batch(tokenizer, n: int = 32) -> dict:
    rows = (run.DATA / "SST-2" / "dev.tsv").read_text().splitlines()[1:n + 1]
    return dict(tokenizer([r.split("\t")[0] for r in rows], padding=True, return_tensors="pt"))


def _mean_cosine(v: torch.Tensor) -> float:
    c = torch.nn.functional.normalize(v.float(), dim=-1)
    return (c @ c.T)[~torch.eye(len(c), dtype=torch.bool)].mean().item()


def cosines(arms: list[str]) -> None:
    from transformers import AutoModel, AutoTokenizer

    from slimbert.export.onnx import load_model
    from slimbert.models.modeling import pool

    tokenizer = AutoTokenizer.from_pretrained(run.source_path())
    batch = _batch(tokenizer)
    models = {"source": AutoModel.from_pretrained(run.source_path())}
    for arm in arms:
        models[arm] = load_model(run.A.WORK / f"transfer-{arm}" / "student", "fill-mask")[0].slimbert
    for name, model in models.items():
        with torch.no_grad():
            hidden = model.eval()(**batch, output_hidden_states=True).hidden_states
        for i, h in enumerate(hidden):
            mean = pool(h, batch["attention_mask"], "mean")
            print(f"{name} layer {i}: h[CLS] {_mean_cosine(h[:, 0]):.3f}, mean {_mean_cosine(mean):.3f}")


def mean_pooled_source(task: str) -> None:
    """run.py's ceiling with one change: BertForSequenceClassification's head reads the masked mean."""
    from transformers.modeling_outputs import SequenceClassifierOutput
    from transformers.models.bert import modeling_bert

    from slimbert.models.modeling import pool

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **_):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(self.dropout(pool(h, attention_mask, "mean"))))

    modeling_bert.BertForSequenceClassification.forward = forward
    run.configure("cpu", str(run.ROOT / "runs" / "quality-pooling"))
    result = run.finetune(task, "source", 0)
    print("curve (epoch: dev accuracy):", ", ".join(f"{c['epoch']:.2f}: {100 * c['accuracy']:.2f}"
                                                    for c in result["curve"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["cosines", "source"])
    p.add_argument("--arm", action="append", default=[])
    p.add_argument("--task", choices=["sst2", "mrpc", "rte"], default="sst2")
    a = p.parse_args()
    run.configure("cpu")
    if a.command == "cosines":
        cosines(a.arm)
    else:
        run.refuse_if_busy(False)
        mean_pooled_source(a.task)


if __name__ == "__main__":
    main()
