"""Config merging: defaults < preset < --set < flags, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsllm.config import (
    Config,
    flatten,
    list_presets,
    load_config,
    read_config,
    resolve_preset,
    save_config,
)
from segsllm.errors import ConfigError


def test_defaults_are_dataclasses():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.run.seed == 0 and cfg.data.domains == ["prose", "code", "csv"]


def test_shipped_presets_resolve_and_load():
    names = list_presets()
    assert {"smoke", "tiny"} <= set(names)
    for name in names:
        assert isinstance(load_config(name), Config)


def test_precedence_preset_then_set_then_flags(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  seed: 5\ntokenizer:\n  vocab_size: 1000\n")
    cfg = load_config(str(preset))
    assert cfg.run.seed == 5 and cfg.tokenizer.vocab_size == 1000
    cfg = load_config(str(preset), ["run.seed=7"])
    assert cfg.run.seed == 7
    cfg = load_config(str(preset), ["run.seed=7"], {"run.seed": 9, "run.out": None})
    assert cfg.run.seed == 9 and cfg.run.out is None


def test_set_parses_yaml_values():
    cfg = load_config(None, ["data.domains=[code,csv]", "run.track=false", "data.max_docs=3"])
    assert cfg.data.domains == ["code", "csv"]
    assert cfg.run.track is False and cfg.data.max_docs == 3


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["nope.key=1"], "nope"),
        (["run.bogus=1"], "bogus"),
        (["run.seed=abc"], "run.seed"),
        (["tokenizer.vocab_size=1.5x"], "tokenizer.vocab_size"),
        (["noequals"], "KEY=VALUE"),
    ],
)
def test_bad_overrides_are_one_line_errors_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_a_bad_layer_is_named_among_good_ones(tmp_path: Path):
    """All layers merge in one call; a failure still names the layer at fault."""
    preset = tmp_path / "p.yaml"
    preset.write_text("run:\n  seed: 5\npipeline:\n  overrides:\n    lm: [train.steps=oops]\n")
    with pytest.raises(ConfigError, match=r"\(from --set run.seed=x\)"):
        load_config(str(preset), ["train.lr=0.1", "run.seed=x", "train.steps=3"])
    with pytest.raises(ConfigError, match=r"train.steps.*\(from pipeline.overrides.lm in .*p.yaml: train.steps=oops\)"):
        load_config(str(preset), ["train.lr=0.1"], stage="lm")
    assert load_config(str(preset), ["train.lr=0.1"], stage="vae").run.seed == 5


def test_unknown_key_in_yaml_is_an_error(tmp_path: Path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("data:\n  domainz: [code]\n")
    with pytest.raises(ConfigError, match="domainz"):
        load_config(str(preset))


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="tiny"):
        resolve_preset("does-not-exist")
    with pytest.raises(ConfigError, match="not found"):
        resolve_preset("missing.yaml")


def test_save_and_read_round_trip(tmp_path: Path):
    cfg = load_config("tiny", ["run.seed=11"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert read_config(path) == cfg


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == {"a.b": 1, "a.c": [1, 2], "d": "x"}


def test_config_package_and_every_preset_load_without_torch():
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from segsllm.config import list_presets, load_config\n"
        "from segsllm.config.pipeline import STAGES\n"
        "for name in list_presets():\n"
        "    load_config(name)\n"
        "    for stage in STAGES:\n"
        "        load_config(name, stage=stage)\n"
        "print(json.dumps([m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules]))\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


STAGED = """\
train:
  steps: 600
  batch_size: 64
pipeline:
  overrides:
    lm: [train.steps=200, train.batch_size=8]
"""


def test_stage_overrides_apply_to_their_stage_only(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text(STAGED)
    lm = load_config(str(preset), stage="lm")
    assert (lm.train.steps, lm.train.batch_size) == (200, 8)
    vae = load_config(str(preset), stage="vae")
    assert (vae.train.steps, vae.train.batch_size) == (600, 64)
    plain = load_config(str(preset))
    assert plain.train.steps == 600 and plain.pipeline.overrides == {"lm": ["train.steps=200", "train.batch_size=8"]}


def test_command_line_beats_a_presets_stage_overrides(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text(STAGED)
    cfg = load_config(str(preset), ["train.steps=5"], stage="lm")
    assert (cfg.train.steps, cfg.train.batch_size) == (5, 8)  # the preset's other lm value stays
    cfg = load_config(str(preset), ["pipeline.overrides.lm=[train.batch_size=2]"], stage="lm")
    assert (cfg.train.steps, cfg.train.batch_size) == (200, 2)
    cfg = load_config(str(preset), ["pipeline.overrides.lm=[train.steps=7]", "train.steps=9"], stage="lm")
    assert cfg.train.steps == 9  # later layers win, whatever section they name
    cfg = load_config(str(preset), [], {"train.steps": 11}, stage="lm")
    assert cfg.train.steps == 11


def test_a_stage_config_is_resolved_and_reloads_to_the_same_run(tmp_path: Path):
    preset = tmp_path / "p.yaml"
    preset.write_text(STAGED)
    cfg = load_config(str(preset), ["train.steps=5"], stage="lm")
    assert "lm" not in cfg.pipeline.overrides  # applied, so not applied again
    saved = save_config(cfg, tmp_path / "config.yaml")
    assert load_config(str(saved), stage="lm") == cfg == read_config(saved)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["pipeline.overrides.lmm=[train.steps=1]"], "pipeline.overrides.lmm"),
        (["pipeline.overrides.lm=[train.steps]"], "KEY=VALUE"),
        (["pipeline.overrides.lm=[train.stepz=1]"], "stepz"),
        (["lm.train.steps=3"], "pipeline.overrides.lm"),
        (["sllm.batch_size=3"], "pipeline.overrides.sllm"),
        (["splitter.d_model=16"], "splitter.predictor.d_model"),
        (["splitter.predictor.target_len=4"], "splitter.target_len"),
    ],
)
def test_stage_override_mistakes_are_one_line_errors(overrides, needle):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides, stage="lm").splitter.validate()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_unknown_stage_is_an_error():
    with pytest.raises(ConfigError, match="unknown stage"):
        load_config(None, stage="lmm")


def test_splitter_nests_the_predictor_config():
    from segsllm.config.splitter import BoundaryPredictorConfig

    cfg = load_config(None, ["splitter.predictor.d_model=16", "splitter.predictor.dilations=[1,2]",
                             "splitter.predictor.n_layers=2", "splitter.predictor.decode=threshold"])
    sp = cfg.splitter.validate()
    assert isinstance(sp.predictor, BoundaryPredictorConfig)
    p = sp.predictor_config(vocab_size=300, pad_id=0, max_len=24, target_len=6, decode=sp.predictor.decode)
    assert (p.vocab_size, p.d_model, p.n_layers, p.dilations, p.max_len, p.target_len, p.decode) == (
        300, 16, 2, [1, 2], 24, 6.0, "threshold")
    with pytest.raises(ConfigError, match=r"splitter\.predictor\.dilations"):
        load_config(None, ["splitter.predictor.dilations=[2,2,4,8]"]).splitter.validate()


def test_sllm_folders_with_the_old_batch_size_key_still_load():
    from segsllm.config.sllm import SLLMConfig

    assert SLLMConfig.from_dict({"max_segments": 8, "batch_size": 4}) == SLLMConfig(max_segments=8)
    with pytest.raises(ConfigError, match="unknown sllm config key"):
        SLLMConfig.from_dict({"max_segmentz": 8})


def test_section_validation_names_the_key():
    from segsllm.config.backbone import BackboneConfig
    from segsllm.config.train import TrainConfig

    with pytest.raises(ConfigError, match=r"train\.grad_accum"):
        TrainConfig(grad_accum=0).validate()
    with pytest.raises(ConfigError, match="family"):
        BackboneConfig(spec="tiny:mamba").validate()
    with pytest.raises(ConfigError, match="dtype"):
        BackboneConfig(dtype="int3").validate()
    with pytest.raises(ConfigError, match=r"backbone\.num_heads"):
        BackboneConfig(num_heads=0).validate()
    assert BackboneConfig(spec="org/model", family="other").validate().family == "other"  # tiny only


# Every section is validated when the config is loaded: (override, key named, what is wanted).
BAD_VALUES = [
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.steps=0", "train.steps", ">= 1"),
    ("train.lr=0", "train.lr", "> 0"),
    ("train.betas=[0.9,1.5]", "train.betas", "[0, 1)"),
    ("train.eval_batches=0", "train.eval_batches", ">= 1"),
    ("data.validation_fraction=1.5", "data.validation_fraction", "[0, 1)"),
    ("data.max_docs=0", "data.max_docs", ">= 1"),
    ("data.domains=[]", "data.domains", "at least one"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size", ">= 259"),
    ("segmenter.max_len=0", "segmenter.max_len", ">= 1"),
    ("vae.max_len=0", "vae.max_len", ">= 1"),
    ("vae.encoder_layers=0", "vae.encoder_layers", ">= 1"),
    ("vae.dropout=1.0", "vae.dropout", "[0, 1)"),
    ("backbone.num_layers=0", "backbone.num_layers", ">= 1"),
    ("lm.context_len=1", "lm.context_len", ">= 2"),
    ("sllm.max_segments=0", "sllm.max_segments", ">= 1"),
    ("splitter.chunk_tokens=1", "splitter.chunk_tokens", ">= 2"),
    ("bench.prompts=0", "bench.prompts", ">= 1"),
    ("run.device=gpu", "run.device", "cuda:N"),
    ("run.seed=-1", "run.seed", ">= 0"),
]


@pytest.mark.parametrize(("override", "key", "want"), BAD_VALUES)
def test_bad_values_are_refused_when_loading(override, key, want):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(key) and want in message and "\n" not in message


@pytest.mark.parametrize(("override", "key", "want"), BAD_VALUES[:4] + BAD_VALUES[-2:])
def test_bad_values_on_the_command_line_are_one_line_no_traceback(override, key, want, tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    r = CliRunner().invoke(app, ["train-vae", "--tokenizer", str(tmp_path), "--no-track", "--set", override])
    assert r.exit_code == 2 and "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), r.stderr


def test_depth_outside_the_papers_variants_is_refused(tmp_path):
    from typer.testing import CliRunner

    from segsllm.cli.app import app

    r = CliRunner().invoke(app, ["train-vae", "--tokenizer", str(tmp_path), "--no-track", "--depth", "3"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().startswith("error: --depth must be 1, 2 or 4")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_folder_or_file_named_like_a_preset_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke").mkdir()  # ./smoke/ (say, a run folder)
    (tmp_path / "tiny").write_text("not yaml: [")  # ./tiny, a stray file
    assert resolve_preset("smoke").name == "smoke.yaml" and resolve_preset("smoke").parent != tmp_path
    assert resolve_preset("tiny").name == "tiny.yaml"
    assert load_config("smoke").train.steps == load_config(str(resolve_preset("smoke"))).train.steps
    with pytest.raises(ConfigError, match="is a folder"):
        resolve_preset("./smoke")
    (tmp_path / "mine.yaml").write_text("train:\n  steps: 7\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "conf").write_text("train:\n  steps: 9\n")
    assert load_config("mine.yaml").train.steps == 7  # a .yaml name is a file
    assert load_config("sub/conf").train.steps == 9  # so is a path with a separator
    with pytest.raises(ConfigError, match=r"config file not found: other\.yml"):
        resolve_preset("other.yml")


def test_a_merge_only_student_decodes_where_its_teacher_could_cut():
    """splitter.sllm_cut_at reaches the predictor of an sllm-taught student (and no other),
    and cannot be set on the predictor by hand."""
    from segsllm.config.splitter import BoundaryPredictorConfig, SplitterConfig
    from segsllm.errors import ConfigError

    def derived(**kw):
        return SplitterConfig(**kw).validate().predictor_config(vocab_size=64, pad_id=0, max_len=48, target_len=16,
                                                                decode="viterbi")

    assert derived(teacher="sllm", sllm_cut_at="fixed:k=16").cut_at == "fixed:k=16"
    assert derived(teacher="sllm").cut_at is None
    assert derived(teacher="entropy", sllm_cut_at="punctuation").cut_at is None
    with pytest.raises(ConfigError, match=r"predictor\.cut_at is not a setting"):
        SplitterConfig(predictor=BoundaryPredictorConfig(cut_at="lines")).validate()
