"""The shared run options: declared once, reach every stage command, arrive as one RunOptions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from segsllm.cli.app import app
from segsllm.cli.run_options import SHARED, RunOptions, run_options

runner = CliRunner()
STAGE_COMMANDS = ["train-tokenizer", "train-lm", "train-vae", "train-splitter", "finetune",
                  "bench", "pipeline"]
LONG_FLAGS = {"--config", "--set", "--data-dir", "--out", "--seed", "--device", "--tracking-uri",
              "--no-track"}


def _echo_app(*names: str) -> typer.Typer:
    """A one-command app whose command prints the RunOptions it received as JSON."""
    echo = typer.Typer()

    @echo.command()
    @run_options(*names)
    def show(
        opts: RunOptions,
        tag: Annotated[str, typer.Option("--tag")] = "t",
    ) -> None:
        payload = {k: str(v) if isinstance(v, Path) else v for k, v in vars(opts).items()}
        typer.echo(json.dumps({"tag": tag, **payload}))

    @echo.command()
    def other() -> None:  # a second command keeps `show` a named subcommand
        """Unused."""

    return echo


def test_options_arrive_as_one_dataclass():
    result = runner.invoke(_echo_app(), [
        "show", "--tag", "x", "-c", "tiny", "--set", "a.b=1", "-s", "c.d=2", "--data-dir", "d",
        "-o", "o", "--seed", "7", "--device", "cpu", "--tracking-uri", "file:///m", "--no-track",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "tag": "x", "config": "tiny", "set_": ["a.b=1", "c.d=2"], "data_dir": "d", "out": "o",
        "seed": 7, "device": "cpu", "tracking_uri": "file:///m", "no_track": True,
    }


def test_defaults_when_not_given():
    result = runner.invoke(_echo_app(), ["show"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"tag": "t", **{k: v for k, v in vars(RunOptions()).items()}}


def test_subset_rejects_the_options_left_out():
    echo = _echo_app("seed")
    assert runner.invoke(echo, ["show", "--seed", "3"]).exit_code == 0
    result = runner.invoke(echo, ["show", "--out", "x"])
    assert result.exit_code == 2 and "--out" in result.output


def test_resolve_applies_flags_over_preset(tmp_path):
    cfg = RunOptions(config="tiny", set_=["run.seed=5"], out=tmp_path, no_track=True).resolve(
        {"data.domains": ["prose"]}, segmenter="fixed:k=4"
    )
    assert cfg.run.seed == 5 and cfg.run.out == str(tmp_path) and cfg.run.track is False
    assert cfg.data.domains == ["prose"] and cfg.segmenter.spec == "fixed:k=4"
    assert RunOptions(seed=9, set_=["run.seed=5"]).resolve().run.seed == 9  # flag beats --set


def test_every_stage_command_takes_every_shared_option():
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name in STAGE_COMMANDS:
        cmd = commands[name]
        flags = {o for p in cmd.params for o in p.opts}
        assert flags >= LONG_FLAGS, (name, LONG_FLAGS - flags)


def test_shared_table_matches_the_dataclass():
    assert list(SHARED) == list(vars(RunOptions()))


def test_misuse_is_caught_at_import_time():
    with pytest.raises(ValueError, match="nope"):
        run_options("nope")

    def no_opts(seed: int = 0) -> None: ...

    with pytest.raises(TypeError, match="opts"):
        run_options()(no_opts)

    def clash(opts: RunOptions, seed: int = 0) -> None: ...

    with pytest.raises(TypeError, match="seed"):
        run_options()(clash)
