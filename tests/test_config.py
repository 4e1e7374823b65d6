"""Config merging: defaults < preset < --set < flags, and one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from segsllm.config import (
    Config,
    ConfigError,
    flatten,
    list_presets,
    load_config,
    read_config,
    resolve_preset,
    save_config,
)


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
