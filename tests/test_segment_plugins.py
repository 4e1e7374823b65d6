"""Plug-ins declared through the ``segsllm.segmenters`` entry point of a temporary distribution."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

from segsllm.segment import (
    SegmenterError,
    SegmenterPluginWarning,
    build_segmenter,
    list_segmenters,
    registered_names,
)
from segsllm.segment.testing import check_segmenter

# The shadowing plug-in warns on every scan; the tests that check warnings record them.
pytestmark = pytest.mark.filterwarnings("ignore::segsllm.segment.SegmenterPluginWarning")

PLUGIN = textwrap.dedent(
    '''
    import numpy as np
    from segsllm.segment import Segmenter, enforce_max_len

    class EveryN(Segmenter):
        """Cut every n tokens (a test plug-in)."""

        def __init__(self, n: int = 3, max_len: int = 8) -> None:
            self.n = n
            self.max_len = max_len

        def segment(self, ids):
            size = len(ids)
            ends = np.minimum(np.arange(self.n, size + self.n, self.n, dtype=np.int64), size)
            return enforce_max_len(ends, self.max_len)
    '''
)


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A distribution 'segplug' with a working, a broken and a shadowing plug-in."""
    (tmp_path / "segplug_ok.py").write_text(PLUGIN)
    (tmp_path / "segplug_bad.py").write_text("raise ImportError('missing dependency frobnicate')\n")
    info = tmp_path / "segplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[segsllm.segmenters]\n"
        "everyn = segplug_ok:EveryN\n"
        "broken = segplug_bad:Thing\n"
        "fixed = segplug_ok:EveryN\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SEGSLLM_NO_PLUGINS", raising=False)
    for mod in ("segplug_ok", "segplug_bad"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    return tmp_path


def test_plugin_is_discovered_listed_and_built(plugin_dist):
    assert "everyn" in registered_names()
    with pytest.warns(SegmenterPluginWarning):
        rows = {r.name: r for r in list_segmenters()}
    row = rows["everyn"]
    assert row.source == "plugin: segplug 0.1" and row.available
    assert row.description == "Cut every n tokens (a test plug-in)."
    assert [str(p) for p in row.params] == ["n: int = 3", "max_len: int = 8"]
    with pytest.warns(UserWarning, match="default max_len=8 is above segmenter.max_len=6"):
        seg = build_segmenter("everyn:n=2", max_len=6)
    assert seg.max_len == 6 and seg.spec() == "everyn:n=2,max_len=6"
    assert build_segmenter("everyn:n=2", max_len=64).max_len == 8  # its own default, not the config's 64
    assert seg.segment(list(range(5))).tolist() == [2, 4, 5]


def test_plugin_passes_the_conformance_kit(plugin_dist, tokenizer):
    check_segmenter(build_segmenter("everyn:n=5"), tokenizer=tokenizer, max_examples=20)


def test_broken_plugin_is_a_warning_not_a_crash(plugin_dist):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = {r.name: r for r in list_segmenters()}
    messages = [str(w.message) for w in caught if issubclass(w.category, SegmenterPluginWarning)]
    assert any("'broken'" in m and "segplug 0.1" in m and "frobnicate" in m for m in messages)
    assert any("'fixed'" in m and "shadowed" in m for m in messages)
    assert not rows["broken"].available and "frobnicate" in (rows["broken"].error or "")
    assert rows["fixed"].source == "built-in"  # the built-in wins
    with pytest.raises(SegmenterError, match=r"'broken' from segplug 0\.1 failed to load: ImportError"):
        build_segmenter("broken")
    assert build_segmenter("punctuation").name == "punctuation"  # others are unaffected


def test_no_plugins_env_turns_discovery_off(plugin_dist, monkeypatch):
    monkeypatch.setenv("SEGSLLM_NO_PLUGINS", "1")
    assert "everyn" not in registered_names()
    assert all(r.source == "built-in" for r in list_segmenters())
    with pytest.raises(SegmenterError, match="unknown segmenter 'everyn'"):
        build_segmenter("everyn")


def test_plugin_via_cli(plugin_dist, tokenizer_dir, tmp_path):
    import json

    from typer.testing import CliRunner

    from segsllm.cli.app import app

    runner = CliRunner()
    listed = runner.invoke(app, ["segmenters"])
    assert listed.exit_code == 0, listed.output
    assert "everyn" in listed.stdout and "segplug 0.1" in listed.stdout
    assert "broken" in listed.stdout and "frobnicate" in listed.stderr
    text = "A plug-in cuts this text every two tokens, exactly.\n"
    (tmp_path / "t.txt").write_text(text)
    out = runner.invoke(
        app, ["segment", str(tmp_path / "t.txt"), "-t", str(tokenizer_dir), "--segmenter", "everyn:n=2", "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert "".join(data["segments"]) == text and data["stats"]["max_tokens_per_segment"] == 2


@pytest.fixture
def tokenizer_dir(tokenizer, tmp_path_factory):
    from segsllm.data.tokenizer import save_tokenizer

    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tok"))
