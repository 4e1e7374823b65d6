"""Spec strings, typed parameters, module:Class paths and the max_len default."""

from __future__ import annotations

import numpy as np
import pytest

from segsllm.segment import (
    FixedSegmenter,
    MaxLenCapped,
    PunctuationSegmenter,
    SegmenterError,
    build_segmenter,
    registered_names,
)
from segsllm.segment.spec import parse_args


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("", (None, {})),
        ("k=16", (None, {"k": "16"})),
        ("k=16,max_len=32", (None, {"k": "16", "max_len": "32"})),
        (" k = 3 , x = y ", (None, {"k": "3", "x": "y"})),
        ("runs/splitter", ("runs/splitter", {})),
        ("runs/splitter,max_len=8", ("runs/splitter", {"max_len": "8"})),
        ("terminals='.,!?'", (None, {"terminals": ".,!?"})),
        ("terminals=\"'\"", (None, {"terminals": "'"})),
        ("terminals=' . '", (None, {"terminals": " . "})),
    ],
)
def test_parse_args(args, expected):
    assert parse_args(args, args) == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("a,b", "only the first argument may be positional"),
        ("k=1,k=2", "given twice"),
        ("x='unterminated", "cannot parse"),
    ],
)
def test_parse_args_errors(args, message):
    with pytest.raises(SegmenterError, match=message):
        parse_args(args, args)


def test_build_builtins_with_typed_params():
    seg = build_segmenter("punctuation:max_len=48,newlines=off")
    assert isinstance(seg, PunctuationSegmenter)
    assert seg.max_len == 48 and seg.newlines is False
    fixed = build_segmenter("fixed:k=16,max_len=32")
    assert isinstance(fixed, FixedSegmenter) and (fixed.k, fixed.max_len) == (16, 32)
    assert build_segmenter("fixed").max_len == 16


def test_config_max_len_is_a_default_that_the_spec_overrides():
    assert build_segmenter("punctuation", max_len=32).max_len == 32
    assert build_segmenter("punctuation:max_len=48", max_len=32).max_len == 48
    assert build_segmenter("fixed:k=8", max_len=64).max_len == 64
    with pytest.raises(SegmenterError, match="k=100 is larger than max_len=64"):
        build_segmenter("fixed:k=100", max_len=64)


def test_spec_round_trips():
    for spec in ["punctuation", "punctuation:max_len=48", "fixed:k=4", "punctuation:terminals='.,'"]:
        seg = build_segmenter(spec)
        again = build_segmenter(seg.spec())
        assert again.params() == seg.params(), spec
    assert build_segmenter("punctuation:terminals='.,'").spec() == "punctuation:terminals='.,'"
    assert build_segmenter("fixed:k=4").describe()["spec"] == "fixed:k=4"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown segmenter 'nope'; available: fixed, learned, lines, punctuation"),
        ("", "empty segmenter spec"),
        ("fixed:q=1", "has no parameter 'q'; parameters: k: int = 16"),
        ("fixed:k=abc", "k expects int, got 'abc'"),
        ("fixed:k=0", "k must be >= 1"),
        ("fixed:4", None),
        ("punctuation:newlines=maybe", "newlines expects bool"),
        ("punctuation:12", None),
        ("learned:runs/splitter", "no splitter folder at runs/splitter"),
        ("learned", "needs path"),
        ("no_such_module_xyz:Seg", "cannot import 'no_such_module_xyz'"),
        ("segsllm.segment.fixed:Nope", "has no 'Nope'; segmenters in it: FixedSegmenter"),
        ("segsllm.errors:SegsllmError", "not a Segmenter subclass"),
        ("bad name!", "unknown segmenter"),
    ],
)
def test_spec_errors_are_one_line(spec, message):
    if message is None:  # positional binds to the first parameter
        seg = build_segmenter(spec)
        assert seg.params()[next(iter(seg.params()))] in (4, 12)
        return
    with pytest.raises(SegmenterError) as info:
        build_segmenter(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_module_class_path_with_args():
    seg = build_segmenter("segsllm.segment.fixed:FixedSegmenter:k=3")
    assert isinstance(seg, FixedSegmenter) and seg.k == 3
    assert seg.spec() == "segsllm.segment.fixed:FixedSegmenter:k=3"
    assert seg.segment(list(range(7))).tolist() == [3, 6, 7]


def test_module_class_from_working_folder(tmp_path, monkeypatch):
    (tmp_path / "cwd_seg_mod.py").write_text(
        "import numpy as np\nfrom segsllm.segment import Segmenter\n\n"
        "class Whole(Segmenter):\n    '''One segment, split by max_len.'''\n"
        "    def __init__(self):\n        self.max_len = 100\n"
        "    def segment(self, ids):\n"
        "        return np.array([len(ids)] if len(ids) else [], dtype=np.int64)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    seg = build_segmenter("cwd_seg_mod:Whole", max_len=10)
    assert isinstance(seg, MaxLenCapped)  # takes no max_len: wrapped to honour the cap
    assert seg.segment(np.arange(25)).tolist() == [10, 20, 25]


def test_registered_names_and_instances_pass_through():
    assert {"punctuation", "fixed", "learned"} <= set(registered_names())
    seg = FixedSegmenter(k=2)
    assert build_segmenter(seg) is seg


# ---------------------------------------------------------------- max_len defaults and display


CUSTOM = '''
from segsllm.segment import Segmenter, enforce_max_len
import numpy as np


class Short(Segmenter):
    """Cut every 3 tokens, its own max_len default 24."""

    def __init__(self, max_len: int = 24) -> None:
        self.max_len = max_len

    def segment(self, ids):
        n = len(ids)
        return enforce_max_len(np.minimum(np.arange(3, n + 3, 3), n), self.max_len)


class Long(Short):
    """Its own max_len default 128."""

    def __init__(self, max_len: int = 128) -> None:
        self.max_len = max_len
'''


def test_a_custom_class_keeps_its_own_max_len_default_and_is_capped_loudly(tmp_path, monkeypatch):
    import warnings

    from segsllm.segment import build_segmenter

    (tmp_path / "mysegs.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build_segmenter("mysegs:Short", max_len=64).max_len == 24  # not replaced by the config's 64
        assert build_segmenter("mysegs:Short:max_len=40", max_len=64).max_len == 40  # the spec wins
    with pytest.warns(UserWarning, match=r"default max_len=128 is above segmenter.max_len=64"):
        assert build_segmenter("mysegs:Long", max_len=64).max_len == 64
    assert build_segmenter("punctuation", max_len=48).max_len == 48  # built-ins take the config's


@pytest.mark.parametrize(("spec", "canonical"), [
    ("fixed:k=16", "fixed:k=16,max_len=64"),  # k=16 is the default, but it was typed: kept
    ("fixed", "fixed:max_len=64"),
    ("punctuation:max_len=64", "punctuation:max_len=64"),
])
def test_spec_keeps_what_was_typed(spec, canonical):
    from segsllm.segment import build_segmenter

    seg = build_segmenter(spec, max_len=64)
    assert seg.spec() == canonical
    assert build_segmenter(seg.spec(), max_len=64).params() == seg.params()  # still rebuilds it
