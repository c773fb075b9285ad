"""Model cards: a README.md in Hugging Face's format beside every saved student, fine-tuned model and export.

Someone who finds the folder later learns from it what it was compressed from, with which recipe, how faithful the
teacher was, how the transfer went, what it scores and how fast it runs. Two steps, so the card itself is a pure
function of plain data: `read_run` gathers the run directory's files into `CardFacts`; `model_card` renders them
through huggingface_hub's ModelCard / ModelCardData (YAML metadata the hub indexes, then Markdown).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .. import __version__
from ..export.bench import markdown as latency_markdown
from ..models import SlimBertConfig, count, preset
from ..models.convert import from_transformers_config
from ..models.encoders import ENCODER_TYPES, from_encoder_config
from ..teacher.source import SourceError, describe_source
from .checkpoint import write_atomic
from .metrics import NOT_LOSSES

KINDS = ("student", "finetuned", "export")
COUNT_SEQ = 128        # FLOPs per sequence of 128 tokens: the paper's convention, comparable across runs
# architectures[0]'s suffix -> (the hub's pipeline tag, slimbert.count's head).
HEADS = {"ForSequenceClassification": ("text-classification", "classification"),
         "ForQuestionAnswering": ("question-answering", "qa"), "ForMaskedLM": ("fill-mask", "mlm"),
         "ForPreTraining": ("fill-mask", "pretraining")}
# finetune/metrics.json's names -> the hub's metric ids (https://hf.co/metrics).
METRIC_IDS = {"matthews": "matthews_correlation", "exact_match": "exact_match"}


@dataclass
class CardFacts:
    """Everything a card says, as plain data read from a run directory."""

    kind: str                                   # one of KINDS
    name: str                                   # the recipe's name
    recipe_yaml: str                            # recipe.resolved.yaml, verbatim
    base_model: str                             # the source as the recipe names it (hub id or path)
    architecture: str                           # config.json's architectures[0], e.g. MobileBertForMaskedLM
    remote_code: bool                           # saved with its own code (trust_remote_code=True)
    sizes: list[dict]                           # rows: name, shape, params, encoder_params, flops
    corpus: dict                                # the recipe's data.corpus
    head_params: int | None = None              # this model's parameters with its head (None for exports)
    fidelity: dict | None = None                # teacher/fidelity.json
    losses: list[dict] = field(default_factory=list)   # metrics.jsonl: the last row of each stage
    task: dict | None = None                    # finetune/metrics.json, without its history
    finetune: dict | None = None                # the recipe's finetune section
    export: dict | None = None                  # slimbert_export.json (+ "task_metrics": task_metrics.json)
    latency: dict | None = None                 # export/bench/report.json
    version: str = ""


# ---- reading a run directory ----------------------------------------------------------------------------------

def _json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def last_losses(metrics_jsonl: Path) -> list[dict]:
    """The last logged row of each stage (a resumed run logs some steps twice: the later row wins)."""
    last: dict[int, dict] = {}
    if not metrics_jsonl.is_file():
        return []
    for line in metrics_jsonl.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill
        if "stage" in row and row["step"] >= last.get(row["stage"], {"step": -1})["step"]:
            last[row["stage"]] = row
    return [last[k] for k in sorted(last)]


def family_config(model_dir: Path) -> SlimBertConfig:
    """The saved model's shape as a slimbert config (a stock MobileBERT folder converts exactly)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))   # slimbert's classes are registered by ..models
    if isinstance(config, SlimBertConfig):
        return config
    if config.model_type in ENCODER_TYPES:  # a student cut from its source, saved as the source's type
        return from_encoder_config(config)
    return from_transformers_config(config)


def _shape(c: SlimBertConfig) -> str:
    ffn = f"FFN {c.intermediate_size}" + (f" x{c.num_feedforward_networks}" if c.num_feedforward_networks > 1 else "")
    inner = f"{c.hidden_size}/{c.true_hidden_size}" if c.use_bottleneck else f"{c.hidden_size}"
    return f"{c.num_hidden_layers} layers, width {inner}, {c.num_attention_heads} heads, {ffn}"


def size_row(name: str, config: SlimBertConfig) -> dict:
    c = count(config, seq_len=COUNT_SEQ)
    return {"name": name, "shape": _shape(config), "params": c.total_params, "encoder_params": c.encoder_params,
            "flops": c.total_flops}


def read_run(run_dir: Path, model_dir: Path, kind: str) -> CardFacts:
    """Gather the card's facts for `model_dir` (student/, finetune/model/ or export/) of the run in `run_dir`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    run_dir, model_dir = Path(run_dir), Path(model_dir)
    recipe_yaml = (run_dir / "recipe.resolved.yaml").read_text(encoding="utf-8")
    recipe = yaml.safe_load(recipe_yaml)
    plan = _json(run_dir / "plan.json") or {}
    # An export holds only config.json: the sizes are those of the PyTorch model it came from.
    export = _json(model_dir / "slimbert_export.json") if kind == "export" else None
    weights_dir = Path(export["source"]) if export and Path(export["source"], "config.json").is_file() else model_dir
    config = family_config(weights_dir)
    saved = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    sizes = [size_row("this model", config)]
    source_path = plan.get("source", {}).get("model")
    if source_path:
        try:
            sizes.append(size_row("source", describe_source(source_path).as_config()))
        except SourceError:
            pass  # the source moved since the run: its row is left out rather than guessed
    if (run_dir / "teacher" / "model" / "config.json").is_file():
        sizes.append(size_row("IB teacher", family_config(run_dir / "teacher" / "model")))
    sizes.append(size_row("BERT_BASE", preset("bert_base")))
    architecture = (json.loads((weights_dir / "config.json").read_text()).get("architectures") or [""])[0]
    head_params = None
    if kind != "export":
        head = next((h for suffix, (_, h) in HEADS.items() if architecture.endswith(suffix)), None)
        head_params = count(config, seq_len=COUNT_SEQ, head=head).total_params
    # Task metrics belong to the fine-tuned model and to an export made from it, not to the pre-trained student.
    finetuned = kind == "finetuned" or (kind == "export" and weights_dir.resolve() == (run_dir / "finetune" / "model")
                                        .resolve())
    task = _json(run_dir / "finetune" / "metrics.json") if finetuned else None
    if task is not None:
        task = {k: v for k, v in task.items() if k != "history"}
    if export is not None:
        export = {**export, "task_metrics": _json(model_dir / "task_metrics.json")}
    return CardFacts(
        kind=kind, name=recipe.get("name", run_dir.name), recipe_yaml=recipe_yaml,
        base_model=str(recipe.get("source", {}).get("model", "")), architecture=architecture,
        remote_code="auto_map" in saved, sizes=sizes, corpus=recipe.get("data", {}).get("corpus", {}),
        head_params=head_params, fidelity=_json(run_dir / "teacher" / "fidelity.json"),
        losses=last_losses(run_dir / "metrics.jsonl"), task=task,
        finetune=recipe.get("finetune") if finetuned else None, export=export,
        latency=_json(model_dir / "bench" / "report.json") if kind == "export" else None, version=__version__)


# ---- the card ------------------------------------------------------------------------------------------------

def _datasets(facts: CardFacts) -> list[str]:
    """Hub dataset ids the recipe names (local files are listed in the card's text, not as hub ids)."""
    names = [facts.corpus.get("dataset")]
    if facts.finetune:
        names.append(facts.finetune.get("dataset"))
    return [n for n in names if n and not Path(n).exists()]


def _pipeline(facts: CardFacts) -> str:
    if facts.export:
        return facts.export["task"]   # the export's own task, one of the hub's pipeline tags
    return next((p for suffix, (p, _) in HEADS.items() if facts.architecture.endswith(suffix)), "feature-extraction")


def _eval_results(facts: CardFacts):
    from huggingface_hub import EvalResult

    if not facts.task:
        return None
    task_type = "question-answering" if (facts.finetune or {}).get("format") == "squad" else "text-classification"
    ft = facts.finetune or {}
    # The hub dataset when the recipe names one (finetune.dataset), else the task's name.
    dataset = ft.get("dataset") if isinstance(ft.get("dataset"), str) else facts.task["task"]
    return [EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=facts.task["task"],
                       dataset_config=ft.get("dataset_config"), dataset_split="dev",
                       metric_type=METRIC_IDS.get(k, k), metric_name=k, metric_value=v)
            for k, v in facts.task["dev"].items()]


def card_data(facts: CardFacts):
    from huggingface_hub import ModelCardData

    tags = ["slimbert", "mobilebert", "knowledge-distillation", "model-compression"]
    if facts.remote_code:
        tags.append("custom_code")     # the hub's tag for folders that load with trust_remote_code=True
    if facts.kind == "export":
        tags.append("onnx")
    model_name = f"{facts.name} ({'fine-tuned on ' + facts.task['task'] if facts.task else facts.kind})"
    results = _eval_results(facts)
    return ModelCardData(
        base_model=facts.base_model or None, library_name="onnx" if facts.kind == "export" else "transformers",
        tags=tags, datasets=_datasets(facts) or None, pipeline_tag=_pipeline(facts),
        metrics=[METRIC_IDS.get(k, k) for k in facts.task["dev"]] if facts.task else None,
        model_name=model_name if results else None, eval_results=results)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _usage(facts: CardFacts) -> str:
    if facts.kind == "export":
        return ("```python\nimport onnxruntime as ort\nfrom transformers import AutoTokenizer\n\n"
                "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n"
                "session = ort.InferenceSession(\"path/to/this/folder/model.onnx\")\n"
                "outputs = session.run(None, dict(tokenizer([\"Hello world\"], return_tensors=\"np\")))\n```\n\n"
                "The folder has optimum's ORTModel layout, so `optimum.onnxruntime.ORTModelFor...` classes open it "
                "too. Nothing here needs slimbert.")
    auto = {"text-classification": "AutoModelForSequenceClassification", "question-answering":
            "AutoModelForQuestionAnswering", "fill-mask": "AutoModelForMaskedLM"}.get(_pipeline(facts), "AutoModel")
    trust = ", trust_remote_code=True" if facts.remote_code else ""
    how = ("Its shape is not expressible as transformers' stock MobileBERT, so the folder carries its own "
           "configuration and modelling code (`configuration_slimbert.py`, `modeling_slimbert*.py`, generated from "
           "slimbert's source): `trust_remote_code=True` runs that code; transformers alone opens it, without slimbert."
           if facts.remote_code else
           "It is saved as transformers' stock MobileBERT: it opens with transformers alone.")
    return (f"```python\nfrom transformers import {auto}, AutoTokenizer\n\n"
            f"model = {auto}.from_pretrained(\"path/to/this/folder\"{trust})\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n```\n\n{how}")


def _sizes(facts: CardFacts) -> str:
    base = next(r for r in facts.sizes if r["name"] == "BERT_BASE")
    rows = [[r["name"], r["shape"], f"{r['params']:,}", f"{r['encoder_params']:,}", f"{r['flops'] / 1e9:.3f}",
             f"{base['params'] / r['params']:.2f}x", f"{base['flops'] / r['flops']:.2f}x"] for r in facts.sizes]
    text = _table(["model", "shape (width: inter/intra)", "parameters", "encoder parameters",
                   f"GFLOPs / sequence of {COUNT_SEQ}", "BERT_BASE / it (params)", "BERT_BASE / it (FLOPs)"], rows)
    text += ("\n\nParameters of the embeddings, blocks and pooler, without task heads, so the rows compare; "
             "encoder parameters are the blocks alone. FLOPs: 2 x multiply-accumulates of every matmul "
             "(`slimbert count`).")
    if facts.head_params is not None:
        text += f" This model with its head: {facts.head_params:,} parameters."
    return text


def fidelity_rows(f: dict) -> tuple[list[str], list[list[str]]]:
    """teacher/fidelity.json as a table (header, rows): the card's and the console's."""
    whens = [w for w in ("before", "after") if w in f]
    header = ["state", *[f"cosine {w}" for w in whens], *[f"attention KL {w}" for w in whens]]
    rows = []
    for j in range(len(f[whens[0]]["cosine"])):
        kl = [f"{f[w]['attention_kl'][j - 1]:.4f}" if j else "" for w in whens]
        rows.append(["embedding" if j == 0 else f"layer {j}", *[f"{f[w]['cosine'][j]:.4f}" for w in whens], *kl])
    for key, label in (("source_mlm_loss", "MLM loss (source)"), ("teacher_mlm_loss", "MLM loss (teacher)"),
                       ("source_mlm_accuracy", "MLM accuracy (source)"),
                       ("teacher_mlm_accuracy", "MLM accuracy (teacher)")):
        if key in f[whens[0]]:
            rows.append([label, *[f"{f[w][key]:.4f}" for w in whens], *[""] * len(whens)])
    return header, rows


def _fidelity(f: dict) -> str:
    whens = [w for w in ("before", "after") if w in f]
    return (f"The inverted-bottleneck teacher against its source on {f['held_out_sequences']} held-out sequences, "
            f"{' and '.join(f'{w} adaptation' for w in whens)}: cosine of the feature maps, KL of the attention "
            "distributions (`teacher/fidelity.json`).\n\n" + _table(*fidelity_rows(f)))


def _losses(rows: list[dict]) -> str:
    table = [[r["stage"], r["kind"], r["step"] + 1, f"{r['loss']:.4g}",
              ", ".join(f"{k} {v:.4g}" for k, v in r.items() if k not in (*NOT_LOSSES, "loss"))] for r in rows]
    return ("The last logged value of each stage (`metrics.jsonl`; loss curves in `stages/*/loss.png`).\n\n"
            + _table(["stage", "kind", "steps", "loss", "terms"], table))


def _task(facts: CardFacts) -> str:
    t = facts.task
    header = ["model", *t["dev"]]
    rows = [["this model (PyTorch)", *[f"{v:.4f}" for v in t["dev"].values()]]]
    if t.get("teacher_dev"):
        rows.append(["fine-tuned teacher", *[f"{t['teacher_dev'].get(k, float('nan')):.4f}" for k in t["dev"]]])
    tm = (facts.export or {}).get("task_metrics") or {}
    for name in [n for n in tm if n.endswith(".onnx")]:
        rows.append([f"`{name}`", *[f"{tm[name].get(k, float('nan')):.4f}" for k in t["dev"]]])
    how = "with task distillation" if t.get("distill") else "on the labels"
    return (f"{t['task']} dev set ({t['dev_examples']:,} examples), fine-tuned {how} on {t['train_examples']:,} "
            f"training examples (`finetune/metrics.json`).\n\n" + _table(header, rows))


def _export(e: dict) -> str:
    rows = [[k, f"{p['cosine']:.6f}", f"{p['max_abs']:.3g}",
             "" if p.get("argmax_agreement") is None else f"{p['argmax_agreement']:.4f}"]
            for k, p in e.get("parity", {}).items()]
    passes = ", ".join(p["pass"] for p in e.get("passes", []))
    return (f"ONNX (opset {e['opset']}, task {e['task']}) from `{e['source']}`; graph passes: {passes or 'none'}. "
            "Parity against PyTorch on real text (`slimbert_export.json`):\n\n"
            + _table(["model", "output cosine", "max abs difference", "argmax agreement"], rows))


def _data(facts: CardFacts) -> str:
    c = facts.corpus
    corpus = (f"the `datasets` dataset `{c['dataset']}`" + (f" ({c['dataset_config']})" if c.get("dataset_config")
                                                              else "") if c.get("dataset")
              else ", ".join(f"`{Path(f).name}`" for f in c.get("files", [])) or "n/a")
    text = f"Transfer corpus: {corpus}."
    if facts.finetune:
        ft = facts.finetune
        files = ", ".join(f"`{ft[k]}`" for k in ("train", "dev") if ft.get(k))
        text += f" Task: {ft.get('task')}" + (f" ({files})" if files else "") + "."
    return text


def model_card(facts: CardFacts):
    """The card as a huggingface_hub ModelCard: metadata, then the run's numbers as Markdown."""
    from huggingface_hub import ModelCard

    what = {"student": "A student compressed", "finetuned": "A student compressed and fine-tuned",
            "export": "The ONNX export of a student compressed"}[facts.kind]
    sections = [f"# {facts.name}", f"{what} from `{facts.base_model}` with slimbert {facts.version}: MobileBERT's recipe (an inverted-bottleneck teacher, layer-wise knowledge "
                "transfer), as set out in the recipe below.", "## How to use", _usage(facts),
                "## Shape and size", _sizes(facts)]
    if facts.task:
        sections += ["## Task results", _task(facts)]
    if facts.export:
        sections += ["## Export", _export(facts.export)]
    if facts.latency:
        sections += ["## Latency", latency_markdown(facts.latency).strip()]
    if facts.fidelity:
        sections += ["## Teacher fidelity", _fidelity(facts.fidelity)]
    if facts.losses:
        sections += ["## Knowledge transfer", _losses(facts.losses)]
    sections += ["## Training data", _data(facts), "## Recipe",
                 "The resolved recipe (`recipe.resolved.yaml`); `slimbert run` on it repeats the run.",
                 f"```yaml\n{facts.recipe_yaml.rstrip()}\n```"]
    return ModelCard(f"---\n{card_data(facts).to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def write_card(run_dir: Path, model_dir: Path, kind: str) -> Path:
    """Write `model_dir/README.md` for the run in `run_dir` (whole or not at all: a killed run leaves no torn card)."""
    path = Path(model_dir) / "README.md"
    write_atomic(path, str(model_card(read_run(run_dir, model_dir, kind))))
    return path
