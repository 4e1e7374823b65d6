"""MLflow tracking: params, metrics, artifacts, child runs; failures are warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsllm.config import load_config
from segsllm.tracking import NullRun, TrackingWarning, resolve_tracking_uri, start_run


def test_no_track_gives_null_run(tmp_path):
    cfg = load_config(None, ["run.track=false"])
    with start_run(cfg, "unit") as run:
        assert isinstance(run, NullRun) and not run.active
        run.log_metrics({"x": 1.0}, step=1)  # no-op, no error
        # Every call a live run takes, a NullRun takes too.
        from segsllm.tracking import Run

        live = {n for n in vars(Run) if not n.startswith("_") and callable(getattr(Run, n))}
        assert live - {"start_system_metrics", "finish"} <= {n for n in dir(run) if not n.startswith("_")}
        run.log_table([{"a": 1}], "t.json")


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


# ---------------------------------------------------------------- names, experiment kind


def test_short_segmenter_drops_folder_paths():
    from segsllm.tracking import short_segmenter

    assert short_segmenter("learned:/tmp/a/run/splitter-punctuation") == "learned:splitter-punctuation"
    assert short_segmenter("learned:runs/splitter/") == "learned:splitter"
    assert short_segmenter("learned:path=/x/y/sp,threshold=0.5") == "learned:path=sp,threshold=0.5"
    assert short_segmenter("fixed:k=8,max_len=32") == "fixed:k=8,max_len=32"
    assert short_segmenter("punctuation,learned:/abs/sp") == "punctuation,learned:sp"


def test_runs_are_named_after_stage_segmenter_and_folder_even_with_one_seed(tmp_path):
    """Seeding ``random`` used to make MLflow's random names all equal."""
    import random

    from mlflow import MlflowClient

    from segsllm.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = []
    for seg, folder in (("punctuation", "vae-punctuation"), ("fixed:k=8", "vae-fixed-k-8"),
                        (f"learned:{tmp_path / 'run' / 'splitter-punctuation'}", "vae-learned")):
        random.seed(0)
        cfg = load_config(None, [f"run.tracking_uri={uri}", f"run.out={tmp_path / 'run' / folder}"])
        with start_run(cfg, "vae", tags={"segmenter": seg}, system_metrics=False) as run:
            ids.append(run.run_id)
    client = MlflowClient(uri)
    runs = [client.get_run(i) for i in ids]
    names = [r.info.run_name for r in runs]
    assert names == ["vae · punctuation · run/vae-punctuation", "vae · fixed:k=8 · run/vae-fixed-k-8",
                     "vae · learned:splitter-punctuation · run/vae-learned"]
    learned = runs[2].data.tags
    assert learned["segmenter"] == "learned:splitter-punctuation"
    assert learned["segmenter.spec"].endswith("/run/splitter-punctuation")
    assert str(tmp_path) not in names[2]
    exp = client.get_experiment(runs[0].info.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


def test_an_older_experiment_gets_the_kind_tag(tmp_path):
    from mlflow import MlflowClient

    from segsllm.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp_id = MlflowClient(uri).create_experiment("segsllm/unit")  # as segsllm used to create it
    with start_run(load_config(None, [f"run.tracking_uri={uri}"]), "unit", system_metrics=False):
        pass
    assert MlflowClient(uri).get_experiment(exp_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


# ---------------------------------------------------------------- stale runs and resume


def _killed_run(cfg):
    """A run whose process died (kill -9): opened, never ended, still RUNNING."""
    from segsllm.tracking import _open, resolve_tracking_uri

    tags = {"segmenter": "punctuation", "out_dir": str(Path(cfg.run.out).resolve())}
    run = _open(resolve_tracking_uri(cfg.run.tracking_uri), "segsllm/unit", "unit", "unit", tags, resume=False)
    run.log_params({"train.steps": cfg.train.steps})
    run.log_metrics({"loss": 3.0}, step=1)
    return run


def test_resume_continues_the_interrupted_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"run.tracking_uri={uri}", f"run.out={tmp_path / 'o'}", "train.steps=10"])
    old = _killed_run(cfg)
    assert MlflowClient(uri).get_run(old.run_id).info.status == "RUNNING"
    cfg.train.steps = 20  # resumed with a longer schedule: params are immutable, the change is a tag
    with start_run(cfg, "unit", tags={"segmenter": "punctuation"}, system_metrics=False, resume=True) as run:
        run.log_metrics({"loss": 2.0}, step=2)
    assert run.run_id == old.run_id
    client = MlflowClient(uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags["resumed"] == "true"
    assert got.data.params["train.steps"] == "10" and got.data.tags["resumed.param.train.steps"] == "20"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 3.0), (2, 2.0)]
    assert len(client.search_runs([got.info.experiment_id])) == 1


def test_a_fresh_start_closes_the_stale_running_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, [f"run.tracking_uri={uri}", f"run.out={tmp_path / 'o'}"])
    other = load_config(None, [f"run.tracking_uri={uri}", f"run.out={tmp_path / 'other'}"])
    old, elsewhere = _killed_run(cfg), _killed_run(other)
    cell_ctx = old.child("csv · punctuation")  # a bench cell killed with its parent (kept open)
    cell = cell_ctx.__enter__()
    with start_run(cfg, "unit", system_metrics=False) as run:
        pass
    client = MlflowClient(uri)
    stale = client.get_run(old.run_id)
    assert stale.info.status == "KILLED" and stale.data.tags["superseded_by"] == run.run_id
    assert client.get_run(cell.run_id).info.status == "KILLED"
    del cell_ctx
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert client.get_run(elsewhere.run_id).info.status == "RUNNING"  # another folder: not ours to close


# ---------------------------------------------------------------- outages cost seconds

DEAD_URI = "http://127.0.0.1:9/"  # the discard port: nothing listens, connections are refused


def test_unreachable_server_fails_the_health_check_fast():
    import time

    from segsllm.tracking import check_reachable

    started = time.monotonic()
    with pytest.raises(OSError, match="unreachable"):
        check_reachable(DEAD_URI)
    assert time.monotonic() - started < 60  # a timeout bound, not a speed claim
    check_reachable("sqlite:///x.db")  # local stores are not probed


def test_server_dying_mid_run_switches_tracking_off_after_one_warning(recwarn):
    """The first failing call warns once and turns tracking off; later calls cost nothing."""
    import time

    from mlflow import MlflowClient

    from segsllm.tracking import Run

    uri = "http://127.0.0.1:9/mid-run"
    started = time.monotonic()
    run = Run(MlflowClient(uri), "0" * 32, "0", uri)
    for step in range(5):
        run.log_metrics({"loss": 1.0}, step=step)
        with run.child("cell") as child:
            child.log_metrics({"bpb": 1.0})
    run.finish("FINISHED")
    assert time.monotonic() - started < 60  # MLflow's defaults retried for minutes
    assert not run.active
    assert len([w for w in recwarn if issubclass(w.category, TrackingWarning)]) == 1


def test_cli_stage_with_a_dead_server_prints_one_warning_line(tiny_data_dir, tokenizer, tmp_path):
    """A real stage in a real process: returns within a generous bound, one ``warning:`` line."""
    import os
    import subprocess
    import sys
    import time

    from segsllm.data.tokenizer import save_tokenizer

    tok = save_tokenizer(tokenizer, tmp_path / "tok")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(key, None)
    args = [sys.executable, "-m", "segsllm", "train-vae", "--data-dir", str(tiny_data_dir), "--out",
            str(tmp_path / "o"), "--tokenizer", str(tok), "--segmenter", "punctuation", "--domains", "csv",
            "--device", "cpu", "--tracking-uri", DEAD_URI, "--set", "train.steps=2", "--set",
            "train.eval_batches=1", "--set", "vae.d_model=32", "--set", "vae.d_ff=64"]
    started = time.monotonic()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert elapsed < 60, elapsed  # a timeout bound (MLflow's defaults took 251 s), not a speed claim
    warning_lines = [ln for ln in proc.stderr.splitlines() if "warning" in ln.lower()]
    assert len(warning_lines) == 1, proc.stderr
    assert warning_lines[0].startswith("warning: MLflow tracking at http://127.0.0.1:9/")
    assert "Traceback" not in proc.stderr and "TrackingWarning" not in proc.stderr
    assert (tmp_path / "o" / "manifest.json").is_file()
