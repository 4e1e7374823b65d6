"""Conformance kit: check any segmenter against the contract of docs/DESIGN.md §4.

One line for a plug-in author (in a pytest test, or anywhere)::

    from segsllm.segment.testing import check_segmenter
    check_segmenter(MySegmenter())

It checks, on shipped prose / code / CSV / CJK samples and edge cases and on random token
ids generated with ``hypothesis`` (within the vocabulary, including long runs of one
token): end offsets are a 1-D int64 array, strictly increasing, ending at ``len(ids)``
(an exact partition with no empty segment), every segment is at most ``max_len`` tokens,
results are deterministic, lists and arrays give the same result, ``segment_batch``
equals per-document ``segment``, and ``split_text`` joins back to the text. A violation
raises ``AssertionError`` naming the segmenter, the rule and the offending input.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "segsllm.segment.testing needs hypothesis: pip install 'segsllm[test]' or hypothesis"
    ) from exc

from segsllm.segment.base import Segmenter
from segsllm.segment.samples import SAMPLES, all_texts

__all__ = ["check_ends", "check_segmenter", "default_tokenizer"]


def _short(x: Any, limit: int = 12) -> str:
    arr = np.asarray(x).ravel().tolist()
    body = ", ".join(map(str, arr[:limit])) + (", ..." if len(arr) > limit else "")
    return f"[{body}] (len {len(arr)})"


def check_ends(ends: Any, n: int, max_len: int, where: str = "") -> None:
    """Assert that ``ends`` is a valid segmentation of ``n`` ids with segments <= ``max_len``."""
    at = f" {where}" if where else ""
    assert isinstance(ends, np.ndarray), f"segment() must return a numpy array, got {type(ends).__name__}{at}"
    assert ends.ndim == 1, f"end offsets must be 1-D, got shape {ends.shape}{at}"
    assert ends.dtype == np.int64, (
        f"end offsets must be int64, got {ends.dtype}{at} (return np.asarray(ends, dtype=np.int64))"
    )
    if n == 0:
        assert ends.size == 0, f"empty input must give no segments, got {_short(ends)}{at}"
        return
    assert ends.size > 0, f"non-empty input ({n} ids) gave no segments{at}"
    assert ends[-1] == n, f"last end offset must be len(ids)={n}, got {ends[-1]}: {_short(ends)}{at}"
    lengths = np.diff(ends, prepend=0)
    bad = np.flatnonzero(lengths <= 0)
    assert bad.size == 0, (
        f"end offsets must be strictly increasing and > 0 (no empty segment); segment {bad[0]} "
        f"has length {lengths[bad[0]]}: {_short(ends)}{at}"
    )
    long = np.flatnonzero(lengths > max_len)
    assert long.size == 0, (
        f"segment {long[0]} has {lengths[long[0]]} tokens > max_len={max_len}: {_short(ends)}{at}"
    )


@lru_cache(maxsize=1)
def default_tokenizer() -> Any:
    """A small byte-level BPE trained on the shipped samples (used when none is given)."""
    from segsllm.data.tokenizer import train_bpe

    return train_bpe(list(SAMPLES.values()) * 20, vocab_size=512, min_frequency=2)


def _check_ids(seg: Segmenter, ids: Sequence[int], name: str) -> np.ndarray:
    where = f"for {name} on ids {_short(ids)}"
    ends = seg.segment(list(ids))
    check_ends(ends, len(ids), seg.max_len, where)
    again = seg.segment(np.asarray(ids, dtype=np.int32))
    assert np.array_equal(ends, again), (
        f"not deterministic (or list vs int32 array differ) {where}: {_short(ends)} then {_short(again)}"
    )
    return ends


def _check_batch(seg: Segmenter, docs: Sequence[Sequence[int]], name: str) -> None:
    batch = seg.segment_batch([np.asarray(d, dtype=np.int64) for d in docs])
    assert isinstance(batch, list) and len(batch) == len(docs), (
        f"segment_batch must return one array per document for {name}: "
        f"{len(docs)} documents in, {len(batch) if isinstance(batch, list) else type(batch).__name__} out"
    )
    for i, (doc, got) in enumerate(zip(docs, batch, strict=True)):
        single = seg.segment(np.asarray(doc, dtype=np.int64))
        check_ends(got, len(doc), seg.max_len, f"for {name} in segment_batch, document {i}")
        assert np.array_equal(got, single), (
            f"segment_batch differs from segment for {name} on document {i} {_short(doc)}: "
            f"{_short(got)} vs {_short(single)}"
        )


def check_segmenter(
    segmenter: Segmenter,
    texts: Sequence[str] | None = None,
    tokenizer: Any = None,
    *,
    max_examples: int = 60,
) -> None:
    """Run the whole conformance kit on ``segmenter``; raises ``AssertionError`` on a violation.

    ``texts`` adds real texts to the shipped samples; ``tokenizer`` defaults to the one the
    segmenter is bound to, else a small BPE trained on the samples (bound if needed).
    """
    from segsllm.data.tokenizer import decode, encode

    name = getattr(segmenter, "name", "") or type(segmenter).__name__
    assert isinstance(segmenter, Segmenter), f"{name} must subclass segsllm.segment.Segmenter"
    max_len = getattr(segmenter, "max_len", None)
    assert isinstance(max_len, int) and max_len >= 1, f"{name}.max_len must be an int >= 1, got {max_len!r}"
    tok = tokenizer if tokenizer is not None else segmenter.tokenizer
    tok = tok if tok is not None else default_tokenizer()
    if segmenter.tokenizer is None:
        segmenter.bind(tok)
    vocab = len(tok)

    # Real texts: invariants, determinism, exact text round trip.
    docs: list[list[int]] = []
    for i, text in enumerate([*all_texts(), *(texts or [])]):
        ids = encode(tok, text)
        docs.append(ids)
        _check_ids(segmenter, ids, f"{name} (text {i}: {text[:30]!r})")
        if decode(tok, ids) == text:  # lossless tokenizer: the text segments join exactly
            parts = segmenter.split_text(text, tok)
            assert "".join(parts) == text, f"split_text of {name} does not join back to text {i}: {text[:40]!r}"
    _check_batch(segmenter, docs, name)
    assert segmenter.segment_batch([]) == [], f"segment_batch([]) of {name} must be []"

    # Random ids: free mixtures and long runs of one token (to exercise max_len).
    token = st.integers(0, vocab - 1)
    longest = min(3 * max_len, 1024)
    runs = st.lists(st.tuples(token, st.integers(1, longest)), max_size=4).map(
        lambda rs: [t for t, k in rs for _ in range(k)]
    )
    ids_st = st.one_of(st.lists(token, max_size=longest), runs)
    cfg = settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )

    @cfg
    @given(ids_st)
    def random_ids(ids: list[int]) -> None:
        _check_ids(segmenter, ids, name)

    @cfg
    @given(st.lists(ids_st, max_size=5))
    def random_batches(batch: list[list[int]]) -> None:
        _check_batch(segmenter, batch, name)

    random_ids()
    random_batches()
