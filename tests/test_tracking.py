"""Experiment tracking: the scalars of metrics.jsonl reach TensorBoard and MLflow (read back with their own
readers), the recipe becomes run parameters, the loss plots artifacts; tracker mistakes are refused at validate."""

import json
import subprocess
import sys

import pytest

from slimbert.engine.tracking import Trackers, flat_params, flatten, mlflow_uri, scalars
from slimbert.recipe import RecipeError, load_recipe
from slimbert.recipe.resolve import logging_problems
from slimbert.recipe.schema import Logging, MLflow

from conftest import write_recipe


def test_rows_become_tagged_scalars():
    row = {"stage": 0, "kind": "progressive", "step": 12, "lr": 0.001, "loss": 2.5, "tokens_per_s": 830.1,
           "feature_map": 1.25, "layer": 2}
    assert scalars(row) == ("0-progressive", 12, {"lr": 0.001, "loss": 2.5, "tokens_per_s": 830.1,
                                                   "feature_map": 1.25, "layer": 2.0})
    nested = {"before": {"cosine": [0.5, 0.75], "ok": True, "name": "x"}, "n": 64, "bad": float("nan")}
    assert flatten(nested) == {"before/cosine/0": 0.5, "before/cosine/1": 0.75, "n": 64.0}
    assert scalars({"loss": 1.0}) == ("run", 0, {"loss": 1.0})
    assert flat_params({"student": {"num_layers": 2, "ffn": {"size": 64}}, "layer_map": [1, 3], "x": None}) == {
        "student.num_layers": "2", "student.ffn.size": "64", "layer_map": "[1, 3]", "x": "None"}


def test_mlflow_uri_defaults_to_a_store_in_the_run_and_reads_paths_from_the_recipe(tmp_path):
    assert mlflow_uri(MLflow(), tmp_path / "run", tmp_path) == f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    assert mlflow_uri(MLflow(tracking_uri="sqlite:///db/m.db"), tmp_path / "run", tmp_path) == \
        f"sqlite:///{tmp_path / 'db' / 'm.db'}"
    assert mlflow_uri(MLflow(tracking_uri="http://host:5000"), tmp_path, tmp_path) == "http://host:5000"


def test_tracker_mistakes_are_recipe_problems(tmp_path, monkeypatch):
    problems = dict(logging_problems(Logging(mlflow={"tracking_uri": "mlruns"}), tmp_path))
    assert "sqlite:///" in problems["logging.mlflow.tracking_uri"]
    problems = dict(logging_problems(Logging(mlflow={"tracking_uri": "sqlite:///nowhere/m.db"}), tmp_path))
    assert "does not exist" in problems["logging.mlflow.tracking_uri"]
    assert dict(logging_problems(Logging(mlflow={"tracking_uri": "http://"}), tmp_path)) == {
        "logging.mlflow.tracking_uri": "'http://': no host"}
    assert "expected a URI" in dict(logging_problems(Logging(mlflow={"tracking_uri": "http://[x"}), tmp_path))[
        "logging.mlflow.tracking_uri"]
    assert logging_problems(Logging(tensorboard=True, mlflow={}), tmp_path) == []
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    problems = dict(logging_problems(Logging(mlflow={}), tmp_path))
    assert "mlflow package" in problems["logging.mlflow"] and "slimbert[tracking]" in problems["logging.mlflow"]


def test_log_shortcut_keeps_the_recipes_tracker_settings():
    from slimbert.recipe.overrides import tracker_overrides

    assert tracker_overrides({}, "tensorboard,mlflow") == ["logging.tensorboard=true", "logging.mlflow={}"]
    assert tracker_overrides({"logging": {"mlflow": {"experiment": "mine"}}}, "mlflow, wandb") == ["logging.wandb={}"]
    with pytest.raises(RecipeError, match="tensorboard, mlflow, wandb, trackio"):
        tracker_overrides({}, "tb")


def test_validate_names_the_tracker_key_with_its_line(tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data, logging={"mlflow": {"tracking_uri": "ftp://x/y"}})
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    (p,) = e.value.problems
    assert p.path == "logging.mlflow.tracking_uri" and p.line is not None and "ftp://x/y" in p.message


ROWS = [{"stage": 0, "kind": "progressive", "step": s, "lr": 1e-3, "loss": 3.0 - s / 10, "tokens_per_s": 100.0 + s,
         "feature_map": 2.0 - s / 10, "attention": 0.5, "layer": 1 + s // 3} for s in range(6)] + \
       [{"stage": 1, "kind": "pretrain_distill", "step": s, "lr": 5e-4, "loss": 1.5 - s / 20, "tokens_per_s": 90.0,
         "mlm": 1.5 - s / 20} for s in range(4)]


def tensorboard_scalars(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}, acc


def mlflow_run(out, experiment="slimbert"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    metrics = {k: {m.step: m.value for m in client.get_metric_history(run.info.run_id, k)} for k in run.data.metrics}
    return client, run, metrics


def expected(rows):
    want = {}
    for row in rows:
        prefix, step, values = scalars(row)
        for k, v in values.items():
            want.setdefault(f"{prefix}/{k}", {})[step] = v
    return want


def assert_same(got, want, tol):
    assert set(want) <= set(got), sorted(set(want) - set(got))
    for tag, series in want.items():
        assert set(got[tag]) == set(series), tag
        for step, v in series.items():
            assert got[tag][step] == pytest.approx(v, rel=tol, abs=tol), (tag, step)


def test_trackers_receive_every_row_parameter_and_plot(tmp_path):
    out = tmp_path / "run"
    (out / "stages" / "0-progressive").mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.plot([1, 2], [3, 1])
    plt.savefig(out / "stages" / "0-progressive" / "loss.png")
    plt.close()
    (out / "teacher").mkdir()
    (out / "teacher" / "fidelity.json").write_text(json.dumps({"before": {"cosine": [0.9, 0.8]},
                                                               "held_out_sequences": 8}))
    recipe = {"name": "tiny", "student": {"num_layers": 2}, "layer_map": [2, 4]}
    trackers = Trackers(Logging(tensorboard=True, mlflow={}), out, tmp_path, "tiny-run", recipe)
    for row in ROWS:
        trackers.log(row)
    trackers.finish()
    want = expected(ROWS)
    want["teacher_fidelity/before/cosine/1"] = {0: 0.8}
    tb, acc = tensorboard_scalars(out)
    assert_same(tb, want, 1e-6)  # TensorBoard stores float32
    assert acc.Tags()["images"] == ["0-progressive/loss"]
    client, run, ml = mlflow_run(out)
    assert_same(ml, want, 1e-12)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-run"
    assert run.data.params == {"name": "tiny", "student.num_layers": "2", "layer_map": "[2, 4]"}
    (art,) = client.list_artifacts(run.info.run_id, "plots/0-progressive")
    assert art.path == "plots/0-progressive/loss.png"
    assert (out / "mlartifacts").is_dir()  # artifacts beside the store, not in the caller's folder


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_warning(tmp_path):
    warnings = []
    trackers = Trackers(Logging(tensorboard=True), tmp_path, tmp_path, "r", {}, warn=warnings.append)

    def broken(*a):
        raise OSError("disk gone")

    trackers.active[0].log = broken
    trackers.log(ROWS[0])
    trackers.log(ROWS[1])
    assert trackers.active == [] and len(warnings) == 1 and "disk gone" in warnings[0]


def test_a_tracker_that_cannot_start_is_a_recipe_error_before_any_step(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # port 9 (discard) refuses at once; no backoff
    with pytest.raises(RecipeError) as e:
        Trackers(Logging(tensorboard=True, mlflow={"tracking_uri": "http://127.0.0.1:9"}), tmp_path, tmp_path, "r", {})
    (p,) = e.value.problems
    assert p.path == "logging.mlflow" and "127.0.0.1:9" in p.message


def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra (pip install 'slimbert[wandb]')")
    monkeypatch.setenv("WANDB_SILENT", "true")
    trackers = Trackers(Logging(wandb={}), tmp_path, tmp_path, "r", {"name": "tiny"})
    for row in ROWS:
        trackers.log(row)
    trackers.finish()
    import wandb

    wandb.teardown()  # the service process writes the record file; stopping it flushes the file
    # wandb 0.31 reads its offline log (a binary record file) only in its Go core, so this checks what is
    # visible from Python: the run's record file names every series and the recipe.
    (record,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = record.read_bytes()
    for tag in expected(ROWS):
        assert tag.encode() in data, tag
    assert b"tiny" in data and b"1-pretrain_distill/step" in data


@pytest.mark.e2e
def test_a_run_logs_every_metrics_row_to_tensorboard_and_mlflow(tmp_path, tiny_source, shared_data):
    recipe = write_recipe(tmp_path, tiny_source, shared_data)
    done = subprocess.run([sys.executable, "-m", "slimbert.cli", "run", str(recipe), "--out", str(tmp_path / "out"),
                           "--log", "tensorboard,mlflow"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"progressive", "pretrain_distill"}
    want = expected(rows)
    tb, acc = tensorboard_scalars(out)
    assert_same(tb, want, 1e-6)
    assert sorted(acc.Tags()["images"]) == ["0-progressive/loss", "1-pretrain_distill/loss"]
    client, run, ml = mlflow_run(out)
    assert_same(ml, want, 1e-12)
    assert run.info.status == "FINISHED"
    assert run.data.params["student.num_layers"] == "2"
    assert json.loads(run.data.params["transfer"])[0]["kind"] == "progressive"
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {
        "plots/0-progressive", "plots/1-pretrain_distill"}
