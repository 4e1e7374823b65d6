"""The train-splitter stage end to end on tiny corpora, and its CLI."""

from __future__ import annotations

import json

import pytest

from segsllm.config import load_config
from segsllm.data.tokenizer import save_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer_dir(tokenizer, tmp_path_factory):
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"))


SMALL = [
    "run.track=false", "run.device=cpu", "train.steps=25", "train.batch_size=8", "train.lr=5e-3",
    "train.warmup_steps=3", "train.eval_every=0", "train.eval_batches=2", "train.log_every=10",
    "train.ckpt_every=0", "splitter.predictor.d_model=16", "splitter.predictor.n_layers=2", "splitter.chunk_tokens=64",
    "splitter.teacher_tokens=2000", "splitter.teacher_eval_tokens=600", "splitter.calibration_tokens=3000",
]


def test_train_splitter_punctuation_saves_a_learned_segmenter(tiny_data_dir, tokenizer, tokenizer_dir, tmp_path):
    import numpy as np

    from segsllm.segment import build_segmenter
    from segsllm.train.splitter_stage import train_splitter

    out = tmp_path / "spl"
    cfg = load_config(None, [f"data.dir={tiny_data_dir}", f"run.out={out}", "segmenter.max_len=16",
                             f"tokenizer.path={tokenizer_dir}", *SMALL])
    result = train_splitter(cfg, progress=False)
    assert set(result.metrics) == {"prose", "code", "csv"} and result.max_len == 16
    for d, m in result.metrics.items():
        for key in ("mean_len", "p95_len", "teacher_f1", "teacher_precision", "tokens_per_s", "mean_len_stream"):
            assert np.isfinite(m[key]), (d, key)
        assert m["max_seg_len"] <= 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "boundary_predictor" and manifest["lineage"]["teacher"]["name"] == "punctuation"
    assert (out / "metrics.json").is_file() and (out / "config.yaml").is_file()
    assert {"metrics.json", "config.yaml"} <= set(manifest["files"])  # recorded: the manifest came last
    for name in ("config.yaml", "metrics.json", "model.safetensors"):
        assert (out / name).stat().st_mtime_ns <= (out / "manifest.json").stat().st_mtime_ns, name
    seg = build_segmenter(f"learned:{out}", tokenizer=tokenizer)
    assert seg.config.threshold == pytest.approx(result.calibration["threshold"])
    assert "".join(seg.split_text("Hello there. How are you?\n")) == "Hello there. How are you?\n"


def test_epoch_cap_takes_the_smaller_budget():
    from segsllm.config.train import TrainConfig
    from segsllm.train.splitter_stage import epoch_capped

    base = TrainConfig(steps=600)
    assert epoch_capped(base, 20.0, 36_000).tokens == 720_000  # no budget of its own: the cap
    assert epoch_capped(TrainConfig(tokens=100_000), 20.0, 36_000).tokens == 100_000  # its own is smaller
    assert epoch_capped(base, None, 36_000) is base  # no cap
    assert epoch_capped(base, 0.5, 36_000).steps == 600  # steps stay the cap


def test_student_stops_after_max_epochs_over_its_labels(tiny_data_dir, tokenizer_dir, tmp_path):
    """A teacher with few labels: the student stops after max_epochs passes over them, not
    after train.steps (hundreds of passes memorise the labels)."""
    from segsllm.train.splitter_stage import train_splitter

    def run(epochs: str):
        cfg = load_config(None, [f"data.dir={tiny_data_dir}", f"run.out={tmp_path / epochs}", "segmenter.max_len=16",
                                 f"tokenizer.path={tokenizer_dir}", *SMALL, f"splitter.max_epochs={epochs}"])
        return train_splitter(cfg, progress=False)

    capped, uncapped = run("0.5"), run("null")
    assert uncapped.steps == 25
    assert 1 <= capped.steps < 25


def test_max_epochs_must_be_positive():
    from segsllm.errors import ConfigError

    with pytest.raises(ConfigError, match=r"splitter\.max_epochs must be > 0"):
        load_config(None, ["splitter.max_epochs=0"]).splitter.validate()
    for bad in ("' '", "learned:runs/splitter", "mypkg.rules:Commas"):  # a built-in rule, or nothing
        with pytest.raises(ConfigError, match=r"splitter\.sllm_cut_at must be a built-in rule"):
            load_config(None, [f"splitter.sllm_cut_at={bad}"]).splitter.validate()
    assert load_config(None, ["splitter.sllm_cut_at=fixed:k=16"]).splitter.validate().sllm_cut_at == "fixed:k=16"


def test_cli_train_splitter_runs_and_prints_a_table(tiny_data_dir, tokenizer_dir, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    args = ["train-splitter", "--teacher", "punctuation", "--data-dir", str(tiny_data_dir), "--out",
            str(tmp_path / "o"), "--no-track", "--tokenizer", str(tokenizer_dir), "--domains", "code,csv",
            "--target-len", "4", "--max-len", "12"]
    for item in SMALL:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "learned segmenter" in result.output and "csv" in result.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["max_len"] == 12


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--teacher", "vae"], "--vae"),
        (["--teacher", "vae-rule"], "--vae"),
        (["--teacher", "sllm"], "--sllm DIR"),
        (["--teacher", "sllm", "--sllm", "nowhere"], "no SLLM folder at nowhere"),
        (["--teacher", "sllm", "--vae", "nowhere"], "--vae: no folder at nowhere"),
        (["--teacher", "sllm", "--vae", "x", "--em-rounds", "0"], "splitter.em_rounds must be >= 1"),
        (["--teacher", "entropy"], "--base-lm"),
        (["--teacher", "oracle"], "unknown teacher 'oracle'"),
        (["--teacher", "punctuation", "--target-len", "99", "--max-len", "8"], "--target-len"),
    ],
)
def test_cli_bad_input_is_one_line(tiny_data_dir, tokenizer_dir, tmp_path, extra, message):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    args = ["train-splitter", "--data-dir", str(tiny_data_dir), "--out", str(tmp_path / "o"), "--no-track",
            "--tokenizer", str(tokenizer_dir), *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "o").exists()
