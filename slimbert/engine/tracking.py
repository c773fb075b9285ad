"""Experiment trackers: every scalar the run logs, fanned out to TensorBoard, MLflow, Weights & Biases and trackio.

metrics.jsonl stays the record; trackers are views of it for people who watch training in those tools. A row's
identifying fields (stage, kind) become a tag prefix ("0-progressive/loss") and its step the tracker's step, so a
stage's curves sit together and restart at 0 as its steps do. At the end, the results the run wrote as JSON
(teacher fidelity, task metrics) and the loss plots follow. Only rank 0 builds trackers.

Configuration mistakes (a tracker not installed, a malformed URI) are refused by `validate`
(recipe.resolve); a tracker that still cannot start (a server that refuses the connection) is a RecipeError at
the start of the run, before any step; one that fails during the run is dropped with a warning rather than
stopping training, since metrics.jsonl still has every row.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable, Protocol

import yaml

from ..recipe.errors import Problem, RecipeError
from ..recipe.schema import Logging, MLflow, Trackio, WandB

ROW_KEYS = ("stage", "kind", "step")  # identify a row; every other number in it is a scalar


def flatten(values: dict, prefix: str = "") -> dict[str, float]:
    """The finite numbers in a nested dict, named by their path ("before/cosine/3"); booleans are not numbers."""
    out: dict[str, float] = {}
    for key, v in values.items():
        name = f"{prefix}{key}"
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            if math.isfinite(v):
                out[name] = float(v)
        elif isinstance(v, dict):
            out.update(flatten(v, name + "/"))
        elif isinstance(v, (list, tuple)):
            out.update(flatten(dict(enumerate(v)), name + "/"))
    return out


def scalars(row: dict) -> tuple[str, int, dict[str, float]]:
    """(tag prefix, step, {name: value}) for one metrics.jsonl row."""
    prefix = "-".join(str(row[k]) for k in ("stage", "kind") if k in row) or "run"
    return prefix, int(row.get("step", 0)), flatten({k: v for k, v in row.items() if k not in ROW_KEYS})


def flat_params(recipe: dict, prefix: str = "") -> dict[str, str]:
    """The resolved recipe as run parameters: dotted keys, scalars as text, lists as JSON."""
    out: dict[str, str] = {}
    for key, v in recipe.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(flat_params(v, name + "."))
        else:
            out[name] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


def mlflow_uri(spec: MLflow, out: Path, base: Path) -> str:
    """The tracking URI: the recipe's (a relative sqlite path read from the recipe's folder) or a SQLite store in
    the run directory."""
    uri = spec.tracking_uri
    if uri is None:
        return f"sqlite:///{(out / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///'):]).resolve()}"
    return uri


class Tracker(Protocol):
    def log(self, prefix: str, step: int, values: dict[str, float]) -> None: ...
    def image(self, tag: str, path: Path) -> None: ...
    def close(self, failed: bool) -> None: ...


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, out: Path, recipe: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        # TensorBoard's text plugin renders Markdown: indent the YAML so it shows as code
        text = yaml.safe_dump(recipe, sort_keys=False)
        self.writer.add_text("recipe", "\n".join("    " + line for line in text.splitlines()), 0)

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        for key, v in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", v, step)

    def image(self, tag: str, path: Path) -> None:
        import matplotlib.image

        pixels = matplotlib.image.imread(str(path))  # PNG: floats in [0, 1], H x W x RGBA
        self.writer.add_image(tag, pixels[..., :3], 0, dataformats="HWC")

    def close(self, failed: bool) -> None:
        self.writer.close()


class MLflowTracker:
    name = "mlflow"

    def __init__(self, spec: MLflow, out: Path, base: Path, run_name: str, recipe: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = mlflow_uri(spec, out, base)
        self.client = MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(spec.experiment)
        if found is not None:
            experiment = found.experiment_id
        else:
            # a local store keeps artifacts beside it, not in ./mlruns of whatever folder the run started from
            local = Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts" if self.uri.startswith("sqlite:///") \
                else None
            experiment = self.client.create_experiment(spec.experiment,
                                                       artifact_location=local.as_uri() if local else None)
        self.run_id = self.client.create_run(experiment, run_name=run_name).info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_params(recipe).items()]  # MLflow's longest parameter value
        for i in range(0, len(params), 100):  # log_batch takes at most 100 parameters
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{prefix}/{k}", v, now, step) for k, v in values.items()])

    def image(self, tag: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path("plots") / Path(tag).parent))

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class WandbTracker:
    name = "wandb"

    def __init__(self, spec: WandB, out: Path, run_name: str, recipe: dict):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=spec.project, name=run_name, dir=str(out), mode=spec.mode, config=recipe,
                              reinit="create_new")
        self.prefixes: set[str] = set()

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        # W&B's own step only grows; each stage's curves get their own x axis, as in the other trackers
        if prefix not in self.prefixes:
            self.run.define_metric(f"{prefix}/step")
            self.run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
            self.prefixes.add(prefix)
        self.run.log({f"{prefix}/step": step, **{f"{prefix}/{k}": v for k, v in values.items()}})

    def image(self, tag: str, path: Path) -> None:
        self.run.log({f"plots/{tag}": self.wandb.Image(str(path))})

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class TrackioTracker:
    name = "trackio"

    def __init__(self, spec: Trackio, run_name: str, recipe: dict):
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=spec.project, name=run_name, config=recipe)

    def log(self, prefix: str, step: int, values: dict[str, float]) -> None:
        self.trackio.log({f"{prefix}/step": step, **{f"{prefix}/{k}": v for k, v in values.items()}})

    def image(self, tag: str, path: Path) -> None:
        pass  # trackio shows scalars; the plots stay in the run directory

    def close(self, failed: bool) -> None:
        self.trackio.finish()


# Result files a run writes after its stages, logged at the end under these prefixes.
RESULTS = {"teacher_fidelity": Path("teacher") / "fidelity.json", "export": Path("export") / "task_metrics.json"}


class Trackers:
    """The enabled trackers, fed like metrics.jsonl. With none enabled every call does nothing."""

    def __init__(self, spec: Logging, out: Path, base: Path, run_name: str, recipe: dict,
                 warn: Callable[[str], None] = lambda m: None):
        self.out, self.warn = out, warn
        self.active: list[Tracker] = []
        makers = [("tensorboard", spec.tensorboard, lambda: TensorBoardTracker(out, recipe)),
                  ("mlflow", spec.mlflow, lambda: MLflowTracker(spec.mlflow, out, base, run_name, recipe)),
                  ("wandb", spec.wandb, lambda: WandbTracker(spec.wandb, out, run_name, recipe)),
                  ("trackio", spec.trackio, lambda: TrackioTracker(spec.trackio, run_name, recipe))]
        for name, wanted, make in makers:
            if not wanted:
                continue
            try:
                self.active.append(make())
            except Exception as e:  # noqa: BLE001 - whatever the library raised, no step has run yet
                self.close(failed=True)
                # validate checks what it can offline; a server that refuses us is still the recipe's setting
                raise RecipeError(Problem(f"logging.{name}", f"cannot start {name}: {type(e).__name__}: "
                                                            f"{(str(e).splitlines() or [''])[0][:300]}")) from None

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for t in list(self.active):
            try:
                call(t)
            except Exception as e:  # noqa: BLE001 - a tracker failing mid-run must not cost the training
                self.active.remove(t)
                self.warn(f"logging: {getattr(t, 'name', t)} failed ({type(e).__name__}: {str(e)[:200]}); it "
                          "gets no more metrics (metrics.jsonl has them all)")

    def log(self, row: dict) -> None:
        """One metrics.jsonl row."""
        if self.active:
            prefix, step, values = scalars(row)
            self._each(lambda t: t.log(prefix, step, values))

    def finish(self, failed: bool = False) -> None:
        """Results written after the stages (fidelity, task metrics, fine-tuning history), the loss plots, then
        close."""
        if self.active and not failed:
            for prefix, rel in RESULTS.items():
                if (self.out / rel).is_file():
                    values = flatten(json.loads((self.out / rel).read_text()))
                    self._each(lambda t: t.log(prefix, 0, values))
            finetune = self.out / "finetune" / "metrics.json"
            if finetune.is_file():
                result = json.loads(finetune.read_text())
                history = result.get("history") or []
                for row in history:
                    self.log({"kind": "finetune", **row})
                last = history[-1]["step"] if history else 0
                values = flatten({"dev": result.get("dev") or {}, "teacher_dev": result.get("teacher_dev") or {}})
                self._each(lambda t: t.log("finetune", last, values))
            for png in sorted(self.out.glob("stages/*/loss.png")):
                tag = f"{png.parent.name}/loss"
                self._each(lambda t: t.image(tag, png))
        self.close(failed)

    def close(self, failed: bool = False) -> None:
        for t in self.active:
            try:
                t.close(failed)
            except Exception as e:  # noqa: BLE001 - closing the others matters more
                self.warn(f"logging: closing {getattr(t, 'name', t)} failed: {e}")
        self.active = []
