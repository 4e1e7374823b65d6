"""The only module that talks to MLflow.

One experiment per stage (``segsllm/<stage>``), created as a model-training experiment so
the UI opens on its runs table; a run is named after what it is (stage, segmenter, output
folder) and logs the flattened resolved config as params, tags (stage, segmenter, domain,
backbone, git commit, output folder), per-step metrics, the data manifests and the config
as artifacts, and system metrics. Only rank 0 logs.

Failures cost seconds, never the training: a remote server gets a short health check
before the run, MLflow's HTTP retries are cut short, and the first failure switches
tracking off for that URI for the rest of the process, with one warning. A run left
RUNNING by a killed process is continued by ``resume`` and closed as KILLED otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value's length
MAX_RUN_NAME = 250
# The MLflow 3 UI shows a "custom model development" experiment as its runs table first
# (a GenAI one opens on traces); the tag is read by the UI from the experiment.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
HEALTH_TIMEOUT_S = 3.0  # the health check of a remote server before a run
# MLflow's own HTTP defaults (7 retries, backoff 2, 120 s timeout) turn a dead server into
# minutes; these bound one failing call to seconds. The environment still wins.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
# URIs that failed in this process: tracking stays off for them (one warning, not one per call).
_FAILED_URIS: set[str] = set()
_PATH_IN_SPEC = re.compile(r"[^,:=\s'\"]*[/\\][^,:=\s'\"]*")  # a path inside a spec's arguments


class TrackingWarning(UserWarning):
    """The tracking backend failed; the command goes on without it."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tracking_failed(uri: str, what: str, exc: BaseException) -> None:
    """Switch tracking off for ``uri`` in this process; warn only the first time."""
    if uri in _FAILED_URIS:
        return
    _FAILED_URIS.add(uri)
    warnings.warn(f"MLflow tracking at {uri} failed ({what}: {_first_line(exc)}); "
                  "continuing without tracking", TrackingWarning, stacklevel=3)


def check_reachable(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise ``OSError`` unless an ``http(s)://`` tracking server answers ``/health`` in time.

    Local stores (sqlite, file) are not checked: they fail fast on their own.
    """
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # http(s) only, checked above
            resp.read(64)
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OSError(f"{url} unreachable within {timeout:g} s: {reason}") from exc


def limit_http_retries(uri: str) -> None:
    """Bound MLflow's HTTP retries and timeout for a remote ``uri`` (see ``HTTP_LIMITS``).

    MLflow reads them from the environment on each request; values already set win.
    """
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_LIMITS.items():
            os.environ.setdefault(key, value)


def short_segmenter(spec: str | None) -> str | None:
    """A segmenter spec without folder paths: ``learned:/a/b/splitter-x`` -> ``learned:splitter-x``.

    Works on a comma-separated list too. Run names and tags use it, so names stay short
    and no absolute path ends up in them (the full spec goes in the ``segmenter.spec`` tag).
    """
    if spec is None:
        return None
    return _PATH_IN_SPEC.sub(lambda m: Path(m.group().rstrip("/\\")).name or m.group(), spec)


def run_name(stage: str, segmenter: str | None = None, folder: str | Path | None = None) -> str:
    """``stage · segmenter · parent/folder``: what the run is and where it wrote.

    ``none`` is left out; the folder keeps its last two components, enough to tell
    pipelines apart without a full path. MLflow's own random names are never used.
    """
    parts = [stage]
    seg = short_segmenter(segmenter)
    if seg and seg != "none":
        parts.append(seg)
    if folder:
        p = Path(folder).resolve()
        parts.append("/".join(x for x in (p.parent.name, p.name) if x))
    return " · ".join(parts)[:MAX_RUN_NAME]


def _segmenter_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """String tags; a segmenter spec holding a path is tagged short, the full spec beside it."""
    out = {str(k): str(v) for k, v in tags.items() if v is not None}
    seg = out.get("segmenter")
    if seg is not None and short_segmenter(seg) != seg:
        out["segmenter"] = str(short_segmenter(seg))
        out.setdefault("segmenter.spec", seg)
    return out


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

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Ignored."""

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[NullRun]:
        """A nested run; here another NullRun."""
        yield NullRun()


class Run(NullRun):
    """A live MLflow run driven through ``MlflowClient`` (no global fluent state)."""

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str,
                 params: Mapping[str, str] | None = None, inherited: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.inherited = dict(inherited or {})  # tags every child carries too (the pipeline's run id)
        self._params = dict(params or {})  # already logged (a continued run)
        self._monitor: Any = None
        limit_http_retries(uri)

    @property
    def active(self) -> bool:  # type: ignore[override]
        return self.uri not in _FAILED_URIS

    # A failing backend must never kill training: every call goes through _safe, and the
    # first failure switches tracking off for this URI (this run, its children, later runs).
    def _safe(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if not self.active:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            tracking_failed(self.uri, what, exc)
            self._stop_monitor(wait=False)

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param, RunTag

        new: list[Any] = []
        changed: list[Any] = []
        for k, v in params.items():
            key, value = _metric_key(k), _param_value(v)
            old = self._params.get(key)
            if old is None:
                new.append(Param(key, value))
                self._params[key] = value
            elif old != value:  # a continued run: params are immutable, record the change as a tag
                changed.append(RunTag(f"resumed.param.{key}"[:250], value))
        for i in range(0, len(new), 100):  # log_batch takes at most 100 params
            self._safe("params", self.client.log_batch, self.run_id, params=new[i : i + 100])
        for i in range(0, len(changed), 100):
            self._safe("tags", self.client.log_batch, self.run_id, tags=changed[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [  # sorted: the UI lists a run's metrics in the order they were first logged
            Metric(_metric_key(k), float(v), now, int(step or 0))
            for k, v in sorted(metrics.items())
            if v is not None
        ]
        for i in range(0, len(items), 1000):
            self._safe("metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in _segmenter_tags(tags).items()]
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

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """Rows (one dict each) as an MLflow table artifact, viewable and comparable in the UI.

        The runs page's artifact view groups by the first column and shows the second.
        """
        if not rows:
            return
        with warnings.catch_warnings():  # pandas' deprecation notes from inside MLflow
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            self._safe("table", self.client.log_table, self.run_id, _columns(rows), artifact_file)

    def start_system_metrics(self) -> None:
        """CPU/GPU/memory sampled in the background (needs psutil); best effort."""
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=10, tracking_uri=self.uri)
            self._monitor.start()
        except Exception:  # optional: psutil missing, unsupported platform ...
            self._monitor = None

    def _stop_monitor(self, wait: bool) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        if wait and self.active:
            with suppress(Exception):
                monitor.finish()
        else:  # a dead backend: do not wait on the sampling thread's retries (it is a daemon)
            with suppress(Exception):
                monitor._shutdown_event.set()

    def finish(self, status: str) -> None:
        self._stop_monitor(wait=True)
        self._safe("end run", self.client.set_terminated, self.run_id, status)

    @contextmanager
    def child(self, name: str, tags: Mapping[str, Any] | None = None) -> Iterator[NullRun]:
        """A nested run (e.g. one bench cell) under this one."""
        if not self.active:
            yield NullRun()
            return
        try:
            tags_all = {**self.inherited, "mlflow.parentRunId": self.run_id, "mlflow.runName": name,
                        **_segmenter_tags(tags or {})}
            info = self.client.create_run(self.experiment_id, tags=tags_all, run_name=name).info
            child = Run(self.client, info.run_id, self.experiment_id, self.uri, inherited=self.inherited)
        except Exception as exc:
            tracking_failed(self.uri, "child run", exc)
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


def bench_table(rows: list[Mapping[str, Any]], metric: str = "sllm_bits_per_byte") -> list[dict[str, Any]]:
    """Bench result rows shaped for MLflow's artifact view: the first column names the cell
    (``csv · fixed:k=8``), the second is ``metric``; rows sorted by domain, best first.

    So the runs page's table view answers "which segmenter wins on CSV" without settings.
    """
    import math

    def order(r: Mapping[str, Any]) -> tuple[str, float]:
        v = r.get(metric)
        return str(r.get("domain")), v if isinstance(v, (int, float)) and not math.isnan(v) else math.inf

    out = []
    for r in sorted(rows, key=order):
        seg = short_segmenter(str(r.get("segmenter")))
        out.append({"domain · segmenter": f"{r.get('domain')} · {seg}", metric: r.get(metric),
                    **{k: v for k, v in r.items() if k != metric}, "segmenter": seg})
    return out


def _columns(rows: list[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Rows -> columns (every key of any row, in first-seen order; NaN and missing -> None)."""
    import math

    keys = list(dict.fromkeys(k for r in rows for k in r))

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)

    return {k: [clean(r.get(k)) for r in rows] for k in keys}


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
    resume: bool = False,
) -> Iterator[NullRun]:
    """Open the run of one stage; yields a :class:`NullRun` when tracking is off.

    ``cfg`` is the resolved dataclass config (``cfg.run.track`` / ``cfg.run.tracking_uri``);
    its flattened form becomes the params and its YAML an artifact. The run is named
    :func:`run_name` (stage, ``tags["segmenter"]``, ``cfg.run.out``) unless ``run_name`` is
    given. With ``resume`` the last unfinished run of the same stage and output folder is
    continued; without it, such runs left RUNNING by a killed process are closed as KILLED.
    """
    from segsllm.runtime import is_rank_zero

    run_cfg = getattr(cfg, "run", None)
    track = bool(getattr(run_cfg, "track", True))
    if not track or not is_rank_zero():
        yield NullRun()
        return

    uri = resolve_tracking_uri(getattr(run_cfg, "tracking_uri", None))
    if uri in _FAILED_URIS:  # failed earlier in this process: do not pay the timeout again
        yield NullRun()
        return
    prefix = getattr(run_cfg, "experiment_prefix", "segsllm")
    all_tags = dict(getattr(run_cfg, "tags", None) or {})
    all_tags.update(tags or {})
    out = getattr(run_cfg, "out", None)
    if out:
        all_tags.setdefault("out_dir", str(Path(out).resolve()))
    name = run_name or _default_name(stage, all_tags.get("segmenter"), out)
    try:
        check_reachable(uri)
        run = _open(uri, f"{prefix}/{stage}", name, stage, all_tags, resume=resume)
    except Exception as exc:
        tracking_failed(uri, "start", exc)
        yield NullRun()
        return

    _log_config(run, cfg)
    for mname, manifest in (manifests or {}).items():
        run.log_dict(manifest, f"manifests/{mname}.json")
    if system_metrics and run.active:
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


def _default_name(stage: str, segmenter: Any, out: Any) -> str:
    """:func:`run_name` (shadowed by ``start_run``'s argument of the same name)."""
    return run_name(stage, None if segmenter is None else str(segmenter), out)


def _open(uri: str, experiment: str, name: str, stage: str, tags: Mapping[str, Any], *, resume: bool) -> Run:
    import logging

    from mlflow.entities import RunTag

    # Quiet alembic's migration chatter on the first use of a fresh SQLite file, and the
    # retry / monitor chatter of a failing server (its one warning comes from here).
    for noisy in ("alembic", "mlflow.store", "mlflow.tracking", "mlflow.utils.rest_utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for noisy in ("mlflow.system_metrics", "urllib3.connectionpool"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    limit_http_retries(uri)
    from mlflow import MlflowClient

    from segsllm import __version__

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment(client, experiment)
    all_tags = {"stage": stage, "segsllm.version": __version__}
    commit = git_commit()
    if commit:
        all_tags["git.commit"] = commit
    all_tags.update(_segmenter_tags(tags))
    previous = _unfinished_runs(client, experiment_id, all_tags.get("out_dir"))
    if resume and previous:
        # Continue the interrupted run: same run id, metric history goes on from the checkpoint.
        run_id = previous[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        items = [RunTag(k, v) for k, v in {**all_tags, "resumed": "true"}.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run_id, tags=items[i : i + 100])
        _close(client, previous[1:], run_id)
        return Run(client, run_id, experiment_id, uri, params=previous[0].data.params, inherited=_inherited(all_tags))
    info = client.create_run(experiment_id, tags=all_tags, run_name=name).info
    _close(client, previous, info.run_id)
    return Run(client, info.run_id, experiment_id, uri, inherited=_inherited(all_tags))


def _inherited(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith("pipeline.")}


def _experiment(client: Any, name: str) -> str:
    """The experiment's id, created (or marked) as a model-training experiment."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if EXPERIMENT_KIND_TAG not in (exp.tags or {}):  # created by an older segsllm
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _unfinished_runs(client: Any, experiment_id: str, out_dir: str | None) -> list[Any]:
    """Runs of this experiment and output folder not FINISHED, newest first (stale or interrupted)."""
    if not out_dir:
        return []
    runs = client.search_runs([experiment_id], "attributes.status != 'FINISHED'", max_results=200,
                              order_by=["attributes.start_time DESC"])
    return [r for r in runs if r.data.tags.get("out_dir") == out_dir
            and "mlflow.parentRunId" not in r.data.tags]


def _close(client: Any, runs: list[Any], by: str) -> None:
    """Mark runs a killed process left RUNNING as KILLED (they will never finish themselves)."""
    for r in runs:
        if r.info.status != "RUNNING":
            continue
        children = client.search_runs([r.info.experiment_id], f"tags.mlflow.parentRunId = '{r.info.run_id}'",
                                      max_results=1000)
        for run in [r, *children]:
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "superseded_by", by)
                client.set_terminated(run.info.run_id, "KILLED")


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
