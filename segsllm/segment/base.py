"""The segmenter contract (docs/DESIGN.md §4) and the helpers every segmenter shares.

A segmenter cuts one document's token ids into segments and returns the segment **end
offsets**: a strictly increasing ``int64`` array whose last value is ``len(ids)``; segment
``i`` is ``ids[ends[i-1]:ends[i]]``. The offsets partition the ids exactly (nothing lost,
nothing duplicated, no empty segment), no segment is longer than ``max_len``, and the same
input gives the same output. ``segsllm.segment.testing.check_segmenter`` checks all of it.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from segsllm.errors import SegmenterError

EMPTY = np.zeros(0, dtype=np.int64)


def as_ids(ids: Any) -> np.ndarray:
    """One document's token ids as a 1-D ``int64`` array (lists, arrays, CPU tensors)."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return EMPTY
    if arr.ndim != 1:
        raise SegmenterError(f"token ids must be 1-D (one document), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise SegmenterError(f"token ids must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def batch_layout(docs: Sequence[Any]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """(documents as id arrays, start offsets (D,), stop offsets (D,)) of ``docs`` laid end to
    end: what a vectorised ``segment_batch`` concatenates and later splits back."""
    arrays = [as_ids(d) for d in docs]
    sizes = np.array([a.size for a in arrays], dtype=np.int64)
    stops = np.cumsum(sizes)
    return arrays, stops - sizes, stops


def split_ends(ends: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> list[np.ndarray]:
    """Segment ends over the concatenation of :func:`batch_layout` back to per-document ends."""
    lo = np.searchsorted(ends, starts, side="right")
    hi = np.searchsorted(ends, stops, side="right")
    return [ends[a:b] - s for a, b, s in zip(lo.tolist(), hi.tolist(), starts.tolist(), strict=True)]


def segment_lengths(ends: np.ndarray) -> np.ndarray:
    """Tokens per segment from end offsets."""
    return np.diff(np.asarray(ends, dtype=np.int64), prepend=0)


def enforce_max_len(ends: np.ndarray, max_len: int) -> np.ndarray:
    """Split every segment longer than ``max_len`` greedily into ``max_len``-token pieces.

    Vectorised: the extra cuts of all long segments are generated at once, so long runs
    without a boundary (a 10 MB line, a CSV column of numbers) cost no Python loop.
    """
    if max_len < 1:
        raise SegmenterError(f"max_len must be >= 1, got {max_len}")
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0:
        return ends
    starts = np.concatenate(([0], ends[:-1]))
    lengths = ends - starts
    over = lengths > max_len
    if not over.any():
        return ends
    n_extra = (lengths[over] - 1) // max_len  # cuts inside each long segment
    first = np.cumsum(n_extra) - n_extra
    ramp = np.arange(int(n_extra.sum()), dtype=np.int64) - np.repeat(first, n_extra) + 1
    extra = np.repeat(starts[over], n_extra) + ramp * max_len
    return np.sort(np.concatenate((ends, extra)))


class Segmenter(abc.ABC):
    """Base class of every segmenter: built-ins, the learned one and plug-ins.

    Subclasses implement :meth:`segment` and set ``self.max_len`` in ``__init__``. They
    store every ``__init__`` parameter as an attribute of the same name, so that
    :meth:`params` and :meth:`spec` can describe them. A segmenter that needs the
    vocabulary (to know which token is punctuation) sets ``needs_tokenizer = True`` and
    overrides :meth:`bind`, which is called once with the tokenizer before use.
    """

    name: ClassVar[str] = ""  # registry name; build_segmenter sets it on the instance too
    needs_tokenizer: ClassVar[bool] = False
    # Causal (lookahead 0): whether the cut after token t depends on tokens <= t only (and
    # on the segmenter's own earlier cuts). A generator can then take the decisions token by
    # token, so an SLLM with ``sllm.boundaries=segmenter`` need not encode them
    # (docs/DESIGN.md §5). False unless a subclass knows better.
    causal: ClassVar[bool] = False
    max_len: int
    tokenizer: Any = None

    @abc.abstractmethod
    def segment(self, ids: Any) -> np.ndarray:
        """End offsets (``int64``, strictly increasing, last == ``len(ids)``) of one document."""

    def segment_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        """End offsets of each document; override when a batch can be done faster at once."""
        return [self.segment(doc) for doc in docs]

    def bind(self, tokenizer: Any) -> Segmenter:
        """Attach the tokenizer whose ids this segmenter will see; returns ``self``."""
        self.tokenizer = tokenizer
        return self

    def cutter(self) -> Cutter:
        """Its decisions token by token, for generation (causal segmenters only). This generic
        one re-segments the tokens since the segment's start per token; built-ins return an
        O(1) one (docs/DESIGN.md §4)."""
        return HistoryCutter(self)

    def split_ids(self, ids: Any) -> list[np.ndarray]:
        """The segments themselves, as slices of ``ids``."""
        arr = as_ids(ids)
        return np.split(arr, self.segment(arr)[:-1]) if arr.size else []

    def split_text(self, text: str, tokenizer: Any = None) -> list[str]:
        """Encode ``text``, segment it and return one string per segment.

        For a lossless (byte-level BPE) tokenizer ``"".join(result) == text`` exactly; see
        :func:`segsllm.segment.text.segment_texts` for how characters split across a
        boundary are handled.
        """
        from segsllm.data.tokenizer import encode
        from segsllm.segment.text import segment_texts

        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise SegmenterError(f"{self.name or type(self).__name__}.split_text needs a tokenizer")
        if self.needs_tokenizer and self.tokenizer is None:
            self.bind(tokenizer)
        ids = np.asarray(encode(tokenizer, text), dtype=np.int64)
        return segment_texts(tokenizer, ids, self.segment(ids))

    # ------------------------------------------------------------------ description

    def params(self) -> dict[str, Any]:
        """Constructor parameters and their current values (attributes of the same name)."""
        out: dict[str, Any] = {}
        for p in inspect.signature(type(self).__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            if hasattr(self, p.name):
                out[p.name] = getattr(self, p.name)
        return out

    def spec(self) -> str:
        """A spec string that rebuilds this segmenter (parameters that differ from defaults)."""
        from segsllm.segment.spec import format_spec

        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        given = getattr(self, "given_params", frozenset())  # as typed in the spec: shown as given
        changed = {k: v for k, v in self.params().items() if k in given or k not in defaults or defaults[k] != v}
        return format_spec(self.name or f"{type(self).__module__}:{type(self).__qualname__}", changed)

    def describe(self) -> dict[str, Any]:
        """Name, spec, ``max_len``, parameters and one-line description (for logs and tables)."""
        doc = (inspect.getdoc(type(self)) or "").strip().splitlines()
        return {
            "name": self.name or type(self).__name__,
            "spec": self.spec(),
            "max_len": int(self.max_len),
            "params": self.params(),
            "description": doc[0] if doc else "",
        }

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec()!r} max_len={getattr(self, 'max_len', '?')}>"


class MaxLenCapped(Segmenter):
    """Wraps a segmenter that takes no ``max_len`` parameter and splits what exceeds the cap."""

    def __init__(self, inner: Segmenter, max_len: int) -> None:
        self.inner = inner
        self.max_len = int(max_len)
        self.name = inner.name
        self.needs_tokenizer = inner.needs_tokenizer  # type: ignore[misc]
        self.tokenizer = inner.tokenizer

    @property
    def causal(self) -> bool:  # type: ignore[override]
        return bool(self.inner.causal)  # the greedy max_len split is itself causal

    def segment(self, ids: Any) -> np.ndarray:
        return enforce_max_len(self.inner.segment(ids), self.max_len)

    def segment_batch(self, docs: Sequence[Any]) -> list[np.ndarray]:
        return [enforce_max_len(e, self.max_len) for e in self.inner.segment_batch(docs)]

    def cutter(self) -> Cutter:
        return CappedCutter(self.inner.cutter(), self.max_len)

    def bind(self, tokenizer: Any) -> Segmenter:
        self.inner.bind(tokenizer)
        self.tokenizer = tokenizer
        return self

    def spec(self) -> str:
        return self.inner.spec()

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "max_len": self.max_len}


def cuts_after(segmenter: Segmenter, ids: Sequence[int]) -> bool:
    """Whether a *causal* segmenter ends a segment after the last of ``ids``.

    A segmenter always ends one at the end of what it is given, so it is given one more
    token (a copy of the last): by causality the cut after ``ids[-1]`` cannot depend on it.
    Refuses a segmenter that is not causal (the answer would depend on tokens not yet seen).
    """
    _refuse_lookahead(segmenter)
    if not len(ids):
        return False
    arr = np.asarray([*ids, ids[-1]], dtype=np.int64)
    ends = segmenter.segment(arr)
    return bool(np.isin(len(ids), ends))


class Cutter(abc.ABC):
    """A causal segmenter's decisions as tokens arrive (free-boundary generation, docs/DESIGN.md §5).

    :meth:`push` one token, get whether a segment ends after it. :meth:`end_segment` says a
    segment ended for another reason (the prompt's end, a length budget), so run lengths count
    from there, as from a document's start. Pushing a document's tokens one by one cuts where
    ``segmenter.segment`` cuts (tests check it for every built-in).
    """

    @abc.abstractmethod
    def push(self, token: int) -> bool:
        """Take the next token; True if a segment ends after it."""

    @abc.abstractmethod
    def end_segment(self) -> None:
        """A segment ended here by an outside decision."""

    def start(self, context: Sequence[int]) -> int:
        """Begin a segment after ``context`` (a prompt, already segmented): left context only.
        Returns the token steps it took (what a FLOP count prices)."""
        for t in context:
            self.push(t)
        self.end_segment()
        return len(context)


def _refuse_lookahead(segmenter: Segmenter) -> None:
    if not segmenter.causal:
        raise SegmenterError(f"segmenter {segmenter.spec()!r} is not causal: its cuts depend on later tokens")


class HistoryCutter(Cutter):
    """For any causal segmenter: :func:`cuts_after` over the tokens since the last outside end
    (O(that history) per token: plug-ins that can do better override ``cutter``)."""

    def __init__(self, segmenter: Segmenter) -> None:
        _refuse_lookahead(segmenter)
        self.segmenter = segmenter
        self.history: list[int] = []

    def push(self, token: int) -> bool:
        self.history.append(int(token))
        return cuts_after(self.segmenter, self.history)

    def end_segment(self) -> None:
        self.history = []


class RunCutter(Cutter):
    """Counts the tokens of the current segment; ends it at ``max_len`` or when
    :meth:`cut_here` says so (a rule that looks at the token and the run length only)."""

    def __init__(self, max_len: int) -> None:
        self.max_len = int(max_len)
        self.run = 0  # tokens in the current segment, the pushed one included

    def cut_here(self, token: int) -> bool:
        return False

    def push(self, token: int) -> bool:
        self.run += 1
        cut = self.cut_here(int(token)) or self.run >= self.max_len
        if cut:
            self.run = 0
        return cut

    def end_segment(self) -> None:
        self.run = 0


class CappedCutter(RunCutter):
    """An inner cutter whose segments are split at ``max_len`` (as :func:`enforce_max_len`
    splits them: the inner segmenter's own runs go on across those splits)."""

    def __init__(self, inner: Cutter, max_len: int) -> None:
        super().__init__(max_len)
        self.inner = inner

    def cut_here(self, token: int) -> bool:
        return self.inner.push(token)

    def end_segment(self) -> None:
        super().end_segment()
        self.inner.end_segment()
