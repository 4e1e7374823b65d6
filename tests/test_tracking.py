"""MLflow tracking: params, metrics, artifacts, child runs; failures are warnings."""

from __future__ import annotations

import pytest

from segsllm.config import load_config
from segsllm.tracking import NullRun, TrackingWarning, resolve_tracking_uri, start_run


def test_no_track_gives_null_run(tmp_path):
    cfg = load_config(None, ["run.track=false"])
    with start_run(cfg, "unit") as run:
        assert isinstance(run, NullRun) and not run.active
        run.log_metrics({"x": 1.0}, step=1)  # no-op, no error


def test_run_records_params_metrics_tags_artifacts_and_children(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, ["run.seed=3", f"run.tracking_uri={uri}"])
    with start_run(cfg, "unit", tags={"segmenter": "fixed:k=4"}, manifests={"code": {"documents": 2}},
                   system_metrics=False) as run:
        run.log_metrics({"loss": 2.0, "val/code/bits_per_byte": 1.5}, step=1)
        run.log_metrics({"loss": 1.0}, step=2)
        with run.child("cell", tags={"domain": "code"}) as child:
            child.log_metrics({"bpb": 1.2})
    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params["run.seed"] == "3"
    assert got.data.tags["stage"] == "unit" and got.data.tags["segmenter"] == "fixed:k=4"
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    paths = {a.path for a in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "manifests"} <= paths
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == "segsllm/unit"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.run_id}'")
    assert len(children) == 1 and children[0].data.metrics["bpb"] == 1.2


def test_failing_backend_warns_and_carries_on(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = load_config(None, [f"run.tracking_uri=sqlite:///{blocker}/x.db"])
    with pytest.warns(TrackingWarning), start_run(cfg, "unit", system_metrics=False) as run:
        run.log_metrics({"x": 1.0})
    assert not run.active


def test_failure_mid_run_is_a_warning(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"run.tracking_uri={uri}"])
    with start_run(cfg, "unit", system_metrics=False) as run:
        def boom(*args, **kwargs):
            raise RuntimeError("database is locked")

        run.client.log_batch = boom
        with pytest.warns(TrackingWarning, match="locked"):
            run.log_metrics({"x": 1.0}, step=1)
        assert not run.active
        run.log_metrics({"x": 2.0}, step=2)  # silently ignored from now on


def test_uri_resolution(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
