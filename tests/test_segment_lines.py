"""The ``lines`` segmenter: one segment per line, long lines split, indentation stays above."""

from __future__ import annotations

import numpy as np
import pytest

from segsllm.segment import build_segmenter
from segsllm.segment.lines import newline_tokens


def test_newline_tokens_are_those_with_a_newline_in_trailing_whitespace():
    table = [b"a", b"\n", b"x\n", b"\r\n", b"\n    ", b"\nx", b"  ", b"\n\xe4", b": \n\t"]
    assert newline_tokens(table).tolist() == [False, True, True, True, True, False, False, False, True]


def test_one_segment_per_line_on_code_and_csv(tokenizer, sample_texts):
    seg = build_segmenter("lines", tokenizer=tokenizer, max_len=64)
    for name in ("code", "csv"):
        text = sample_texts[name]
        parts = seg.split_text(text)
        assert "".join(parts) == text
        assert all("\n" in p for p in parts), (name, parts)  # every segment ends a line here
        assert not any("\n" in p.rstrip() for p in parts), (name, parts)  # and holds one line
    # CSV rows are exactly the lines.
    assert seg.split_text(sample_texts["csv"]) == sample_texts["csv"].splitlines(keepends=True)


def test_long_lines_are_split_at_max_len(tokenizer):
    from segsllm.data.tokenizer import encode

    ids = np.array(encode(tokenizer, "word " * 40 + "\nend\n"))
    seg = build_segmenter("lines:max_len=5", tokenizer=tokenizer)
    ends = seg.segment(ids)
    assert np.diff(ends, prepend=0).max() <= 5 and ends[-1] == len(ids)
    nl = int(np.flatnonzero(newline_tokens([tokenizer.decode([i]).encode() for i in ids]))[0]) + 1
    assert nl in ends.tolist()  # the line end is still a boundary
    assert seg.segment_batch([ids, ids[:3], []])[1].tolist() == [3]


def test_unbound_and_out_of_vocabulary_are_one_line_errors(tokenizer):
    from segsllm.segment import LinesSegmenter, SegmenterError

    with pytest.raises(SegmenterError, match="not bound"):
        LinesSegmenter().segment([1, 2])
    with pytest.raises(SegmenterError, match="outside the vocabulary"):
        build_segmenter("lines", tokenizer=tokenizer).segment([len(tokenizer) + 5])
    with pytest.raises(SegmenterError, match="max_len"):
        LinesSegmenter(max_len=0)
