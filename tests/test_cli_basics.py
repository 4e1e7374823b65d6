"""CLI surface: stage commands listed, fast imports, one-line errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from segsllm.cli.app import app

runner = CliRunner()
STAGES = ["data", "train-tokenizer", "train-lm", "train-vae", "train-splitter", "finetune",
          "bench", "generate", "segment", "segmenters", "pipeline"]


def test_help_lists_every_stage_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in STAGES:
        assert name in result.output


def test_help_imports_no_heavy_modules():
    code = (
        "import sys, json; sys.argv=['segsllm','--help']\n"
        "from segsllm.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(json.dumps([m for m in ('torch','transformers','mlflow') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("segsllm ")


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "segsllm", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "segsllm" in out.stdout


def test_bad_config_key_is_one_line_and_exit_2():
    result = runner.invoke(app, ["train-splitter", "--set", "run.nope=1"])
    assert result.exit_code == 2
    assert "nope" in result.output
    assert "Traceback" not in result.output


def test_unknown_preset_exit_2():
    result = runner.invoke(app, ["train-splitter", "--config", "no-such-preset"])
    assert result.exit_code == 2 and "no-such-preset" in result.output


def test_presets_command_lists_presets():
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0 and "tiny" in result.output and "smoke" in result.output


@pytest.mark.parametrize(("command", "hint"), [
    (["train-vae", "--tokenizer", "tok"], "interrupted: rerun the same command with --resume"),
    (["pipeline", "--config", "smoke"], "interrupted: rerun the same command to resume"),
])
def test_ctrl_c_prints_a_resume_hint(monkeypatch, tmp_path, command, hint):
    from typer.testing import CliRunner

    import segsllm.pipeline
    import segsllm.train.vae_stage
    from segsllm.cli.app import app

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segsllm.train.vae_stage, "train_vae", interrupted)
    monkeypatch.setattr(segsllm.pipeline, "run_pipeline", interrupted)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, [*command, "--no-track"])
    assert r.exit_code == 130
    assert hint in " ".join(r.stderr.split()) and "Traceback" not in r.output


def test_transformers_progress_bars_are_silenced(monkeypatch):
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setattr(hf_logging, "_tqdm_active", True)  # bars on, put back after the test
    assert runner.invoke(app, ["presets"]).exit_code == 0
    assert not hf_logging.is_progress_bar_enabled()
    import os

    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"


def test_help_has_examples_flags_and_plain_usage():
    import re

    wide = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}
    for command in [*STAGES, "presets"]:
        args = [command, "prepare", "--help"] if command == "data" else [command, "--help"]
        out = runner.invoke(app, args, env=wide).stdout
        assert "Examples" in out and "$ segsllm " in out, command
        assert "<bool>" not in out, command  # flags are shown as flags
    seg = runner.invoke(app, ["segment", "--help"], env=wide).stdout
    assert "[OPTIONS] FILE" in seg and "{file}" not in seg
    assert "Tokenizer folder (default: tokenizer.path of the config)." in seg
    assert re.search(r"--json\s+Print", seg)


def test_presets_have_one_line_descriptions():
    out = runner.invoke(app, ["presets"], env={"COLUMNS": "300"}).stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "every stage for a few steps on a sliver of the built-in corpora (a few minutes on 2 CPU cores)." \
        in lines["smoke"]
    assert "the main job on the built-in corpora" in lines["tiny"]
