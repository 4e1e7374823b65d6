"""The paper's baseline: a segment ends after sentence/clause punctuation or a newline.

The rule, per token (decided once per vocabulary, see :mod:`token_classes`):

- a boundary follows a token whose text, ignoring trailing whitespace and closing quotes
  or brackets, ends with a *terminal* (``, . ! ? ; : "``, their full-width forms ``，．！？；：＂``,
  ``。、｡､``, ellipses ``… ‥ ⋯``), or whose trailing whitespace holds a newline;
- punctuation-only tokens right after such a boundary stay with it (``."``, ``?”``,
  ``!)``, ``...`` tokenised as three ``.``), unless the boundary was a newline;
- whitespace-only tokens after a boundary stay with the segment they follow (the spaces,
  blank lines and indentation after a sentence);
- a boundary never falls inside a character; runs longer than ``max_len`` are split;
- an ambiguous quote (``"``, ``＂``) right after a space in the same token (`` "``) opens a
  quotation and is not a boundary.

Known limits of the rule, kept on purpose because it is the baseline: ASCII ``"`` opens
as well as closes quotes, and ``.`` also appears in numbers (``22.8``) and code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segsllm.segment.base import (
    EMPTY,
    Segmenter,
    SegmenterError,
    as_ids,
    batch_layout,
    enforce_max_len,
    split_ends,
)
from segsllm.segment.token_classes import CB, CTX, END, NLT, PUN, WSP, TokenClasses

TERMINALS = ',.!?;:"' + "，．！？；：＂" + "。、｡､" + "…‥⋯"
CLOSERS = "”’」』）》〉】〕］｝»›" + ")]}'"


def _next_true(mask: np.ndarray) -> np.ndarray:
    """``out[i]`` = smallest ``j >= i`` with ``mask[j]`` (``mask[-1]`` must be True)."""
    idx = np.where(mask, np.arange(mask.size, dtype=np.int64), mask.size - 1)
    return np.minimum.accumulate(idx[::-1])[::-1]


class PunctuationSegmenter(Segmenter):
    """Cut after sentence/clause punctuation (ASCII + CJK) or a newline; whitespace trails."""

    name = "punctuation"
    needs_tokenizer = True

    def __init__(
        self,
        max_len: int = 64,
        terminals: str = TERMINALS,
        closers: str = CLOSERS,
        newlines: bool = True,
    ) -> None:
        if int(max_len) < 1:
            raise SegmenterError(f"punctuation: max_len must be >= 1, got {max_len}")
        if any(c.isspace() for c in terminals + closers):
            raise SegmenterError("punctuation: terminals and closers must not contain whitespace")
        self.max_len = int(max_len)
        self.terminals = terminals
        self.closers = closers
        self.newlines = bool(newlines)
        self._classes: TokenClasses | None = None

    def bind(self, tokenizer: Any) -> PunctuationSegmenter:
        """Classify every vocabulary entry of ``tokenizer`` once."""
        from segsllm.data.vocab import vocab_bytes

        self.bind_vocab(vocab_bytes(tokenizer).table)
        self.tokenizer = tokenizer
        return self

    def bind_vocab(self, table: Sequence[bytes]) -> PunctuationSegmenter:
        """Classify a vocabulary given directly as the bytes of each token id."""
        self._classes = TokenClasses(table, self.terminals, self.closers, self.newlines)
        return self

    @property
    def vocab_size(self) -> int | None:
        return self._classes.size if self._classes is not None else None

    def segment(self, ids: Any) -> np.ndarray:
        flat = as_ids(ids)
        if flat.size == 0:
            return EMPTY
        n = np.array([flat.size], dtype=np.int64)
        return self._ends(flat, np.zeros(1, dtype=np.int64), n)

    def segment_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """All documents in one vectorised pass (boundaries never cross documents)."""
        arrays, starts, stops = batch_layout(docs)
        if not arrays:
            return []
        if stops[-1] == 0:
            return [EMPTY for _ in arrays]
        return split_ends(self._ends(np.concatenate(arrays), starts, stops), starts, stops)

    # ------------------------------------------------------------------ the rule

    def _ends(self, flat: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """End offsets in the concatenated stream ``flat`` of documents ``[starts, stops)``."""
        tc = self._classes
        if tc is None:
            raise SegmenterError(
                "punctuation segmenter is not bound to a tokenizer: use "
                "build_segmenter(spec, tokenizer=...) or .bind(tokenizer)"
            )
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= tc.size:
            bad = lo if lo < 0 else hi
            raise SegmenterError(
                f"token id {bad} is outside the vocabulary (size {tc.size}) this segmenter "
                "was bound to: wrong tokenizer?"
            )
        n = flat.size
        f = tc.flags[flat]
        ctx = np.flatnonzero(f & CTX)
        if ctx.size:
            doc = np.searchsorted(starts, ctx, side="right") - 1
            f[ctx] = tc.resolve(flat, ctx, ctx - starts[doc])
        first = starts[starts < stops]
        f[first] &= ~np.uint8(PUN | WSP)  # trailing runs never reach into the next document

        bound = np.flatnonzero(f & END)
        # Punctuation-only tokens right after a boundary join it; a newline ends that run.
        brk = np.empty(n + 1, dtype=bool)
        brk[:n] = (f & PUN) == 0
        brk[n] = True
        brk[1:] |= (f & (PUN | NLT)) == (PUN | NLT)
        cuts = _next_true(brk)[bound + 1]
        after_newline = (f[bound] & NLT) != 0
        cuts[after_newline] = bound[after_newline] + 1
        # Whitespace-only tokens then stay with the segment they follow.
        cuts = _next_true(np.append((f & WSP) == 0, True))[cuts]

        # A run may stop inside a split character: move such cuts back to its start.
        inside = (f[cuts - 1] & CB) == 0
        if inside.any():
            ok = np.zeros(n + 1, dtype=bool)
            ok[1:] = (f & CB) != 0
            ok[stops] = True
            valid = np.flatnonzero(ok)
            j = np.searchsorted(valid, cuts[inside], side="right") - 1
            cuts[inside] = np.where(j >= 0, valid[np.maximum(j, 0)], 0)
        # Sorted, unique, with every document end: a mask is O(n), unlike np.unique.
        mark = np.zeros(n + 1, dtype=bool)
        mark[cuts] = True
        mark[stops] = True
        ends = np.flatnonzero(mark[1:]) + 1
        return enforce_max_len(ends, self.max_len)
