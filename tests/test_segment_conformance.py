"""The conformance kit passes every built-in and catches each kind of broken segmenter."""

from __future__ import annotations

import random

import numpy as np
import pytest

from segsllm.segment import Segmenter, build_segmenter, enforce_max_len
from segsllm.segment.testing import check_ends, check_segmenter

FAST = {"max_examples": 25}


@pytest.mark.parametrize(
    "spec",
    ["punctuation", "punctuation:max_len=6", "punctuation:newlines=false,terminals='.'", "fixed",
     "fixed:k=3", "lines", "lines:max_len=4"],
)
def test_builtins_pass_the_kit(spec, tokenizer, sample_texts):
    check_segmenter(build_segmenter(spec, tokenizer=tokenizer), texts=list(sample_texts.values()), **FAST)


def test_kit_works_without_a_tokenizer():
    check_segmenter(build_segmenter("fixed:k=5"), **FAST)


class _Base(Segmenter):
    def __init__(self, max_len: int = 8) -> None:
        self.max_len = max_len


class DropsLast(_Base):
    def segment(self, ids):
        n = len(ids)
        return enforce_max_len(np.array([n - 1] if n > 1 else ([n] if n else []), np.int64), 10**9)


class IgnoresMaxLen(_Base):
    def segment(self, ids):
        return np.array([len(ids)] if len(ids) else [], dtype=np.int64)


class EmptySegment(_Base):
    def segment(self, ids):
        ends = np.minimum(np.arange(4, len(ids) + 4, 4, dtype=np.int64), len(ids))
        return np.concatenate((ends[:1], ends)) if ends.size else ends


class Random(_Base):
    def segment(self, ids):
        n = len(ids)
        cuts = sorted({random.randint(1, n) for _ in range(n // 2)} | {n}) if n else []
        return enforce_max_len(np.array(cuts, dtype=np.int64), self.max_len)


class BadBatch(_Base):
    def segment(self, ids):
        return enforce_max_len(np.array([len(ids)] if len(ids) else [], np.int64), self.max_len)

    def segment_batch(self, docs):
        return [enforce_max_len(np.array([len(d)] if len(d) else [], np.int64), 1) for d in docs]


class Int32(_Base):
    def segment(self, ids):
        return enforce_max_len(np.array([len(ids)] if len(ids) else [], np.int64), 4).astype(np.int32)


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (DropsLast, "last end offset"),
        (IgnoresMaxLen, "max_len"),
        (EmptySegment, "strictly increasing"),
        (Random, "deterministic"),
        (BadBatch, "segment_batch differs"),
        (Int32, "int64"),
    ],
)
def test_kit_catches_broken_segmenters(broken, message, tokenizer):
    with pytest.raises(AssertionError, match=message):
        check_segmenter(broken(), tokenizer=tokenizer, **FAST)


def test_kit_rejects_bad_max_len(tokenizer):
    seg = IgnoresMaxLen()
    seg.max_len = 0
    with pytest.raises(AssertionError, match="max_len"):
        check_segmenter(seg, tokenizer=tokenizer)


def test_check_ends_messages():
    check_ends(np.array([2, 5], np.int64), 5, 3)
    check_ends(np.zeros(0, np.int64), 0, 3)
    with pytest.raises(AssertionError, match="no segments"):
        check_ends(np.zeros(0, np.int64), 4, 3)
    with pytest.raises(AssertionError, match="numpy array"):
        check_ends([5], 5, 8)


@pytest.mark.parametrize(
    ("ends", "max_len", "expected"),
    [
        ([10], 4, [4, 8, 10]),
        ([3, 12, 13], 4, [3, 7, 11, 12, 13]),
        ([2, 4], 4, [2, 4]),
        ([8], 4, [4, 8]),
        ([], 4, []),
        ([5, 6], 1, [1, 2, 3, 4, 5, 6]),
    ],
)
def test_enforce_max_len(ends, max_len, expected):
    assert enforce_max_len(np.array(ends, np.int64), max_len).tolist() == expected
