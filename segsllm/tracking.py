"""The only module that talks to MLflow.

One experiment per stage (``segsllm/<stage>``); a run logs the flattened resolved config as
params, tags (stage, segmenter, domain, backbone, git commit), per-step metrics, the data
manifests and the config as artifacts, and system metrics. Only rank 0 logs. Any tracking
failure is a warning: the run carries on untracked rather than losing the training.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length


class TrackingWarning(UserWarning):
    """The tracking backend failed; the command goes on without it."""


def resolve_tracking_uri(explicit: str | None = None) -> str:
    """--tracking-uri > $MLFLOW_TRACKING_URI > the embedded SQLite file in the working folder."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The current git commit of the working folder, if any (for the run's tags)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class NullRun:
    """Stand-in when tracking is off (``--no-track``, non-zero rank, or a failed backend)."""

    run_id: str | None = None
    active = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Ignored."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Ignored."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Ignored."""

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Ignored."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Ignored."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Ignored."""

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[NullRun]:
        """A nested run; here another NullRun."""
        yield NullRun()


class Run(NullRun):
    """A live MLflow run driven through ``MlflowClient`` (no global fluent state)."""

    active = True

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self._monitor: Any = None

    # A failing backend must never kill training: every call goes through _safe.
    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            warnings.warn(
                f"MLflow tracking failed ({what}): {str(exc).splitlines()[0] if str(exc) else exc!r};"
                " continuing without tracking",
                TrackingWarning,
                stacklevel=3,
            )
            self.active = False

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_metric_key(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params
            self._safe("params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(k), float(v), now, int(step or 0))
            for k, v in metrics.items()
            if v is not None
        ]
        for i in range(0, len(items), 1000):
            self._safe("metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items() if v is not None]
        self._safe("tags", self.client.log_batch, self.run_id, tags=items)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, default=str), artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._safe("artifact", self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if p.is_dir():
            self._safe("artifacts", self.client.log_artifacts, self.run_id, str(p), artifact_path)
        else:
            self._safe("artifact", self.client.log_artifact, self.run_id, str(p), artifact_path)

    def start_system_metrics(self) -> None:
        """CPU/GPU/memory sampled in the background (needs psutil); best effort."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.uri)
            self._monitor.start()
        except Exception:  # optional: psutil missing, unsupported platform ...
            self._monitor = None

    def finish(self, status: str) -> None:
        if self._monitor is not None:
            with suppress(Exception):
                self._monitor.finish()
        self._safe("end run", self.client.set_terminated, self.run_id, status)

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[NullRun]:
        """A nested run (e.g. one bench cell) under this one."""
        if not self.active:
            yield NullRun()
            return
        try:
            tags_all = {"mlflow.parentRunId": self.run_id, "mlflow.runName": name}
            tags_all.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
            info = self.client.create_run(self.experiment_id, tags=tags_all, run_name=name).info
            child = Run(self.client, info.run_id, self.experiment_id, self.uri)
        except Exception as exc:
            warnings.warn(f"MLflow child run failed: {exc}", TrackingWarning, stacklevel=3)
            yield NullRun()
            return
        status = "FINISHED"
        try:
            yield child
        except BaseException:
            status = "FAILED"
            raise
        finally:
            child.finish(status)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:MAX_PARAM_VALUE]


def _metric_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space : and /; map anything else to '_'.
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)


@contextmanager
def start_run(
    cfg: Any,
    stage: str,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
    manifests: Mapping[str, Any] | None = None,
    system_metrics: bool = True,
) -> Iterator[NullRun]:
    """Open the run of one stage; yields a :class:`NullRun` when tracking is off.

    ``cfg`` is the resolved dataclass config (``cfg.run.track`` / ``cfg.run.tracking_uri``);
    its flattened form becomes the params and its YAML an artifact.
    """
    from segsllm.runtime import is_rank_zero

    run_cfg = getattr(cfg, "run", None)
    track = bool(getattr(run_cfg, "track", True))
    if not track or not is_rank_zero():
        yield NullRun()
        return

    uri = resolve_tracking_uri(getattr(run_cfg, "tracking_uri", None))
    prefix = getattr(run_cfg, "experiment_prefix", "segsllm")
    all_tags = dict(getattr(run_cfg, "tags", None) or {})
    all_tags.update(tags or {})
    try:
        run = _open(uri, f"{prefix}/{stage}", run_name, stage, all_tags)
    except Exception as exc:
        warnings.warn(
            f"MLflow tracking unavailable at {uri}: {str(exc).splitlines()[0] if str(exc) else exc!r};"
            " running untracked",
            TrackingWarning,
            stacklevel=3,
        )
        yield NullRun()
        return

    _log_config(run, cfg)
    for name, manifest in (manifests or {}).items():
        run.log_dict(manifest, f"manifests/{name}.json")
    if system_metrics:
        run.start_system_metrics()
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run.finish(status)


def _open(uri: str, experiment: str, run_name: str | None, stage: str, tags: Mapping[str, Any] | None) -> Run:
    import logging

    # Quiet alembic's migration chatter on the first use of a fresh SQLite file.
    for noisy in ("alembic", "mlflow.store", "mlflow.tracking", "mlflow.system_metrics"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    from segsllm import __version__

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    experiment_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
    all_tags = {"stage": stage, "segsllm.version": __version__}
    commit = git_commit()
    if commit:
        all_tags["git.commit"] = commit
    all_tags.update({k: str(v) for k, v in (tags or {}).items() if v is not None})
    info = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info
    return Run(client, info.run_id, experiment_id, uri)


def _log_config(run: Run, cfg: Any) -> None:
    import dataclasses

    from segsllm.config import flatten

    if dataclasses.is_dataclass(cfg):
        resolved = dataclasses.asdict(cfg)
        run.log_params(flatten(resolved))
        with tempfile.TemporaryDirectory() as tmp:
            from omegaconf import OmegaConf

            path = Path(tmp) / "config.yaml"
            path.write_text(OmegaConf.to_yaml(OmegaConf.create(resolved)), encoding="utf-8")
            run.log_artifact(path)
