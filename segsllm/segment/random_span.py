"""A segmenter that cuts uniformly random spans: training data that favours no boundary rule."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

from segsllm.segment.base import EMPTY, Segmenter, SegmenterError, as_ids


class RandomSpanSegmenter(Segmenter):
    """Uniformly random segment lengths in 1..max_len, seeded by the ids themselves.

    Train the ``vae`` teacher's SentenceVAE on these
    (``--segmenter segsllm.segment.random_span:RandomSpanSegmenter:max_len=24``): it then sees
    spans of every length at every offset, so its reconstruction loss is an unbiased
    score for any candidate span instead of favouring one segmenter's boundaries.
    """

    def __init__(self, max_len: int = 24, seed: int = 0) -> None:
        if int(max_len) < 1:
            raise SegmenterError(f"RandomSpanSegmenter: max_len must be >= 1, got {max_len}")
        self.max_len, self.seed = int(max_len), int(seed)

    def spec(self) -> str:
        # max_len always: a command's segmenter.max_len must not replace it on rebuild.
        return f"{type(self).__module__}:{type(self).__qualname__}:max_len={self.max_len},seed={self.seed}"

    def segment(self, ids: Any) -> np.ndarray:
        arr = as_ids(ids)
        if arr.size == 0:
            return EMPTY
        rng = np.random.default_rng([self.seed, zlib.crc32(arr.tobytes()), arr.size])
        ends = np.cumsum(rng.integers(1, self.max_len + 1, size=arr.size))
        ends = ends[ends < arr.size]
        return np.append(ends, arr.size).astype(np.int64)


__all__ = ["RandomSpanSegmenter"]
