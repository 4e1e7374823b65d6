"""One segment per line: the obvious rule for code and CSV (docs/DESIGN.md §4).

A boundary follows every token whose *trailing whitespace holds a newline* (``"\\n"``,
``"\\r\\n"``, ``":\\n"``, ``"\\n\\n"``, and byte-level BPE's ``"\\n    "``, which glues a
newline to the next line's indentation); lines longer than ``max_len`` tokens are split.
Such a token ends on a character boundary (its last byte is ASCII whitespace), so a line
cut never splits a character; only the ``max_len`` split can.

Why "trailing whitespace holds" rather than "the last byte is": byte-level BPE merges a
newline with the following indentation, so on Python code most line ends are tokens like
``"\\n    "``; ending only at a final ``\\n`` byte would leave most lines uncut. The
indentation then stays with the line above, as the punctuation rule keeps trailing
whitespace with the segment it follows.

Decided once per vocabulary from each token's exact bytes, then one gather per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segsllm.segment.base import (
    EMPTY,
    Cutter,
    RunCutter,
    Segmenter,
    SegmenterError,
    batch_layout,
    enforce_max_len,
    split_ends,
)

ASCII_WHITESPACE = b" \t\n\r\x0b\x0c"


def newline_tokens(table: Sequence[bytes]) -> np.ndarray:
    """(V,) bool: the token's trailing (ASCII) whitespace holds a ``\\n``."""
    out = np.zeros(len(table), dtype=bool)
    for i, tok in enumerate(table):
        body = tok.rstrip(ASCII_WHITESPACE)
        out[i] = b"\n" in tok[len(body):]
    return out


class LinesSegmenter(Segmenter):
    """Cut after every token ending a line (a newline in its trailing whitespace); long lines split."""

    name = "lines"
    needs_tokenizer = True
    causal = True  # the cut after token t depends on token t and the length of its line so far

    def __init__(self, max_len: int = 64) -> None:
        if int(max_len) < 1:
            raise SegmenterError(f"lines: max_len must be >= 1, got {max_len}")
        self.max_len = int(max_len)
        self._newline: np.ndarray | None = None  # (V,) bool

    def bind(self, tokenizer: Any) -> LinesSegmenter:
        """Mark the vocabulary's line-ending tokens once."""
        from segsllm.data.vocab import vocab_bytes

        self.bind_vocab(vocab_bytes(tokenizer).table)
        self.tokenizer = tokenizer
        return self

    def bind_vocab(self, table: Sequence[bytes]) -> LinesSegmenter:
        """Use a vocabulary given directly as the bytes of each token id."""
        self._newline = newline_tokens(table)
        return self

    def segment(self, ids: Any) -> np.ndarray:
        return self.segment_batch([ids])[0]

    def cutter(self) -> Cutter:
        if self._newline is None:
            raise SegmenterError("lines segmenter is not bound to a tokenizer: use "
                                 "build_segmenter(spec, tokenizer=...) or .bind(tokenizer)")
        return _LinesCutter(self._newline, self.max_len)

    def segment_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """All documents in one vectorised pass (boundaries never cross documents)."""
        nl = self._newline
        if nl is None:
            raise SegmenterError("lines segmenter is not bound to a tokenizer: use "
                                 "build_segmenter(spec, tokenizer=...) or .bind(tokenizer)")
        arrays, starts, stops = batch_layout(docs)
        if not arrays:
            return []
        if stops[-1] == 0:
            return [EMPTY for _ in arrays]
        flat = np.concatenate(arrays)  # (N,)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= nl.size:
            bad = lo if lo < 0 else hi
            raise SegmenterError(f"token id {bad} is outside the vocabulary (size {nl.size}) this segmenter "
                                 "was bound to: wrong tokenizer?")
        mark = np.zeros(flat.size + 1, dtype=bool)  # mark[e]: a segment ends at offset e
        mark[1:] = nl[flat]
        mark[stops] = True
        mark[0] = False
        return split_ends(enforce_max_len(np.flatnonzero(mark), self.max_len), starts, stops)


class _LinesCutter(RunCutter):
    """A line ends after a newline token, or at ``max_len``."""

    def __init__(self, newline: np.ndarray, max_len: int) -> None:
        super().__init__(max_len)
        self.newline = newline

    def cut_here(self, token: int) -> bool:
        if not 0 <= token < self.newline.size:
            raise SegmenterError(f"token id {token} is outside the vocabulary (size {self.newline.size}) "
                                 "this segmenter was bound to: wrong tokenizer?")
        return bool(self.newline[token])


__all__ = ["LinesSegmenter", "newline_tokens"]
