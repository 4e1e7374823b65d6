"""Equal token context for the token LM and the SLLM: which windows score which positions.

Both models are scored with the same token context ``C`` (``bench.context_tokens``) and the
same stride (docs/DESIGN.md §7):

- the token LM with a sliding window over ``BOS d EOS``
  (:func:`segsllm.data.token_windows.window_bounds`): the first window scores its ``C``
  positions, every later one ``stride`` new positions with up to ``C - stride`` earlier
  tokens as context;
- the SLLM with windows of **whole segments whose tokens sum to at most C**
  (:func:`segment_window_bounds`): the first window scores the segments that fit in ``C``
  tokens, every later one the next segments that fit in ``stride`` tokens, carrying as many
  earlier segments as fit in ``C`` as context. A window starts from the SLLM's start vector,
  as its training windows do, and never holds more segments than the backbone has positions.

Either way every position is scored exactly once, so a document's NLL is the sum over its
windows. Pure numpy: (a, b, e) triples, inputs ``[a, e)``, scored ``[b, e)``.
"""

from __future__ import annotations

import numpy as np

from segsllm.errors import DataError


def default_stride(context_tokens: int) -> int:
    """Half the context: every scored token (past a document's first window) sees at least
    ``C/2`` earlier tokens, at twice the cost of non-overlapping windows."""
    return max(1, context_tokens // 2)


def segment_window_bounds(lengths: np.ndarray, context_tokens: int, stride_tokens: int,
                          max_segments: int | None = None) -> list[tuple[int, int, int]]:
    """``(a, b, e)`` windows over one document's segments (``lengths`` (n,) tokens each).

    Inputs are segments ``[a, e)`` (their tokens sum to at most ``context_tokens``, at most
    ``max_segments`` of them), scored ``[b, e)``; the scored ranges tile ``[0, n)``. A
    segment longer than ``context_tokens`` cannot fit any window: DataError.
    """
    lens = np.asarray(lengths, dtype=np.int64)
    n = int(lens.size)
    if n == 0:
        return []
    if not 1 <= stride_tokens <= context_tokens:
        raise ValueError(f"stride must be in [1, {context_tokens}], got {stride_tokens}")
    if int(lens.max()) > context_tokens:
        raise DataError(f"a segment of {int(lens.max())} tokens does not fit a context of {context_tokens} tokens; "
                        "raise bench.context_tokens or lower segmenter.max_len")
    cap = int(max_segments) if max_segments else n
    csum = np.concatenate([[0], np.cumsum(lens)])  # (n+1,)
    out: list[tuple[int, int, int]] = []
    b = 0
    while b < n:
        budget = context_tokens if b == 0 else stride_tokens
        e = b + 1
        while e < n and csum[e + 1] - csum[b] <= budget and e + 1 - b <= cap:
            e += 1
        # As much earlier context as fits in C tokens and the position cap.
        a = int(np.searchsorted(csum, csum[e] - context_tokens, side="left"))
        a = min(max(a, e - cap), b)
        out.append((a, b, e))
        b = e
    return out


__all__ = ["default_stride", "segment_window_bounds"]
