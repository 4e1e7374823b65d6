"""Fixed-length segments: every ``k`` tokens, blind to content (the control condition)."""

from __future__ import annotations

from typing import Any

import numpy as np

from segsllm.segment.base import Cutter, RunCutter, Segmenter, SegmenterError, as_ids


class FixedSegmenter(Segmenter):
    """Cut every k tokens, whatever they are (the last segment may be shorter)."""

    name = "fixed"
    causal = True  # the cut after token t depends on t's position only

    def __init__(self, k: int = 16, max_len: int | None = None) -> None:
        k = int(k)
        if k < 1:
            raise SegmenterError(f"fixed: k must be >= 1, got {k}")
        if max_len is not None and int(max_len) < k:
            raise SegmenterError(
                f"fixed: k={k} is larger than max_len={max_len}; lower k or raise max_len "
                "(e.g. --set segmenter.max_len=" + str(k) + ")"
            )
        self.k = k
        self.max_len = k if max_len is None else int(max_len)

    def segment(self, ids: Any) -> np.ndarray:
        n = as_ids(ids).size
        return np.minimum(np.arange(self.k, n + self.k, self.k, dtype=np.int64), n)

    def cutter(self) -> Cutter:
        return RunCutter(self.k)  # every k tokens from the segment's start

    def params(self) -> dict[str, Any]:
        # max_len == k is the default (None): keep specs short ("fixed:k=8").
        return {"k": self.k, "max_len": None if self.max_len == self.k else self.max_len}
