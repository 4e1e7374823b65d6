"""`pipeline --jobs N`: stages run side by side in worker processes, in dependency order;
a failure stops the run and names the stage's error."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from segsllm.errors import ConfigError, SegsllmError
from segsllm.pipeline import Stage
from segsllm.pipeline_jobs import run_stages_parallel, threads_per_job


@dataclass
class FakeCfg:
    """What a fake stage does: sleep, maybe fail, then record where and when it ran."""

    log: str
    sleep: float = 0.0
    fail: str = ""  # "config": a ConfigError; "odd": an exception that cannot be pickled


class Unpicklable(Exception):
    def __init__(self, message: str, handle: object) -> None:
        super().__init__(message)
        self.handle = handle


def record(cfg: FakeCfg, resume: bool) -> None:
    """A stage runner (module level: the spawned workers import it by name)."""
    import os

    import torch

    started = time.time()
    time.sleep(cfg.sleep)
    if cfg.fail == "config":
        raise ConfigError("stage config is wrong: splitter.bogus")
    if cfg.fail == "odd":
        raise Unpicklable("odd failure", handle=lambda: None)
    Path(cfg.log).write_text(json.dumps({"start": started, "end": time.time(), "pid": os.getpid(),
                                         "threads": torch.get_num_threads(), "resume": resume}))


def _stages(tmp_path: Path, spec: dict[str, tuple[list[str], float, str]]) -> list[Stage]:
    return [Stage(name, "lm", FakeCfg(str(tmp_path / f"{name}.json"), sleep, fail), record, after)
            for name, (after, sleep, fail) in spec.items()]


def _run(stages: list[Stage], jobs: int = 2) -> list[tuple[str, str]]:
    events: list[tuple[str, str]] = []

    def start(st: Stage) -> bool:
        events.append(("start", st.name))
        return st.name == "b"  # resume flags reach the stage

    def finish(st: Stage, resume: bool, seconds: float, cpu: float) -> None:
        assert seconds >= 0 and cpu >= 0
        events.append(("finish", st.name))

    run_stages_parallel(stages, jobs, start=start, finish=finish)
    return events


def test_independent_stages_overlap_and_dependants_wait(tmp_path):
    # a -> (b, c) side by side -> d; "x" (not in this run: finished before) is no obstacle.
    stages = _stages(tmp_path, {"a": ([], 0.0, ""), "b": (["a", "x"], 1.5, ""), "c": (["a"], 1.5, ""),
                                "d": (["b", "c"], 0.0, "")})
    events = _run(stages)
    assert [n for e, n in events if e == "finish"][-1] == "d"
    rec = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in "abcd"}
    assert rec["b"]["pid"] != rec["c"]["pid"]  # two workers
    assert max(rec["b"]["start"], rec["c"]["start"]) < min(rec["b"]["end"], rec["c"]["end"])  # at once
    assert rec["d"]["start"] >= max(rec["b"]["end"], rec["c"]["end"])
    assert rec["b"]["threads"] == rec["c"]["threads"] == threads_per_job(2)
    assert rec["b"]["resume"] is True and rec["c"]["resume"] is False
    # A lone runnable stage (a: the first, d: the last) runs in this process, with its cores.
    import os

    assert rec["a"]["pid"] == rec["d"]["pid"] == os.getpid()


def test_a_failing_stage_stops_the_run_and_its_error_comes_back(tmp_path):
    stages = _stages(tmp_path, {"a": ([], 0.0, ""), "slow": (["a"], 30.0, ""), "bad": (["a"], 0.5, "config"),
                                "after_bad": (["bad"], 0.0, "")})
    with pytest.raises(ConfigError, match=r"stage config is wrong: splitter\.bogus"):
        _run(stages)
    # The slow stage was stopped (waited for, it would have written its record); nothing
    # that reads the failed stage started.
    assert not (tmp_path / "slow.json").exists() and not (tmp_path / "after_bad.json").exists()


def test_an_unpicklable_error_is_named(tmp_path):
    stages = _stages(tmp_path, {"one": ([], 0.0, "odd"), "two": ([], 0.0, "")})
    with pytest.raises(SegsllmError, match="Unpicklable: odd failure"):
        _run(stages)


def test_stages_that_wait_on_nothing_that_runs_are_refused(tmp_path):
    stages = _stages(tmp_path, {"a": (["b"], 0.0, ""), "b": (["a"], 0.0, "")})
    with pytest.raises(SegsllmError, match="wait on stages that never finish: a"):
        _run(stages)


def test_jobs_below_one_is_a_one_line_error(tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    result = CliRunner().invoke(app, ["pipeline", "--config", "smoke", "--out", str(tmp_path), "--jobs", "0"])
    assert result.exit_code == 2 and "pipeline.jobs must be an int >= 1" in result.output
    assert "Traceback" not in result.output
