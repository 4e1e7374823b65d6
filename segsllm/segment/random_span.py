"""A segmenter that cuts uniformly random spans: training data that favours no boundary rule."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from segsllm.segment.base import EMPTY, Segmenter, SegmenterError, as_ids


class RandomSpanSegmenter(Segmenter):
    """Uniformly random segment lengths in ``min_len..max_len``, seeded by the ids themselves.

    Train the ``vae`` teacher's SentenceVAE on these
    (``--segmenter segsllm.segment.random_span:RandomSpanSegmenter:max_len=24``): it then sees
    spans of every length at every offset, so its reconstruction loss is an unbiased
    score for any candidate span instead of favouring one segmenter's boundaries.
    With ``min_len`` it is the content-blind control of a learned splitter: segments as
    long and as irregular as the splitter's (say 13..19 beside one that cuts 16 ± 3 tokens),
    with boundaries that follow nothing in the text.
    """

    def __init__(self, max_len: int = 24, seed: int = 0, min_len: int = 1) -> None:
        if int(max_len) < 1:
            raise SegmenterError(f"RandomSpanSegmenter: max_len must be >= 1, got {max_len}")
        if not 1 <= int(min_len) <= int(max_len):
            raise SegmenterError(f"RandomSpanSegmenter: min_len must be in 1..max_len={max_len}, got {min_len}")
        self.max_len, self.seed, self.min_len = int(max_len), int(seed), int(min_len)

    def spec(self) -> str:
        # max_len always: a command's segmenter.max_len must not replace it on rebuild. min_len
        # only when set, so the spec (and every folder and cache key named by it) of the
        # default is the one it always was.
        low = f"min_len={self.min_len}," if self.min_len != 1 else ""
        return f"{type(self).__module__}:{type(self).__qualname__}:{low}max_len={self.max_len},seed={self.seed}"

    def segment(self, ids: Any) -> np.ndarray:
        arr = as_ids(ids)
        if arr.size == 0:
            return EMPTY
        rng = np.random.default_rng([self.seed, zlib.crc32(arr.tobytes()), arr.size])
        ends = np.cumsum(rng.integers(self.min_len, self.max_len + 1, size=arr.size))
        ends = ends[ends < arr.size]
        return np.append(ends, arr.size).astype(np.int64)


__all__ = ["RandomSpanSegmenter"]
