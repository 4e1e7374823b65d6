"""Documents as sequences of segments, cut into windows and batched for the SLLM.

A :class:`~segsllm.data.segments.SegmentTable` stores each document's segments in order.
The SLLM trains on **windows**: up to ``max_segments`` consecutive segments of one
document. A document of n segments gives ``ceil(n / max_segments)`` non-overlapping
windows; each knows whether it is the document's first and last. Every window is modelled
on its own, starting from the SLLM's start vector (see :class:`segsllm.config.sllm.SLLMConfig`).

A batch of windows is a dict of tensors::

    ids        (B, S, T)  segment tokens, right-padded in T (tokens) and S (segments)
    lengths    (B, S)     tokens per segment, 0 for padded segment slots
    n_segments (B,)       real segments per window (a prefix of the S slots)
    is_first   (B,)       the window starts its document
    is_last    (B,)       the window ends its document (the stop head's "stop" target lives here)
    n_bytes    (B,)       UTF-8 bytes of the window's segments (windows partition the documents)

Training uses :class:`SegmentWindowBatches` (one domain per batch, domains balanced, resumable);
evaluation uses :func:`eval_windows` (whole documents, an evenly spread subset when capped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from segsllm.data.batches import EpochBatches, SequentialBatches
from segsllm.errors import DataError

# Columns of the window index.
_TABLE, _LO, _HI, _FIRST, _LAST = range(5)


def document_bounds(table: Any) -> np.ndarray:
    """(n_docs, 2) [first, last) segment indices of every non-empty document, in order."""
    doc = np.asarray(table.doc_index)
    if doc.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cuts = np.flatnonzero(np.diff(doc)) + 1  # where a new document starts
    lo = np.concatenate([[0], cuts])
    hi = np.concatenate([cuts, [doc.size]])
    return np.stack([lo, hi], axis=1).astype(np.int64)


def window_index(table: Any, max_segments: int, table_id: int = 0) -> np.ndarray:
    """(W, 5) rows ``[table_id, lo, hi, is_first, is_last]``: each document's segments cut
    into consecutive windows of at most ``max_segments`` segments."""
    if max_segments < 1:
        raise DataError(f"max_segments must be >= 1, got {max_segments}")
    bounds = document_bounds(table)  # (D, 2)
    if bounds.size == 0:
        return np.zeros((0, 5), dtype=np.int64)
    n = bounds[:, 1] - bounds[:, 0]  # (D,) segments per document
    per_doc = -(-n // max_segments)  # (D,) windows per document (ceil)
    doc_of = np.repeat(np.arange(len(bounds)), per_doc)  # (W,)
    first_w = np.cumsum(per_doc) - per_doc  # (D,) index of each document's first window
    k = np.arange(doc_of.size) - first_w[doc_of]  # (W,) window number inside its document
    lo = bounds[doc_of, 0] + k * max_segments
    hi = np.minimum(lo + max_segments, bounds[doc_of, 1])
    is_first = k == 0
    is_last = hi == bounds[doc_of, 1]
    return np.stack([np.full_like(lo, table_id), lo, hi, is_first, is_last], axis=1).astype(np.int64)


class SegmentWindows:
    """The windows of one or more segment tables as one indexable dataset.

    ``dataset[i]`` is a dict: ``ids`` (the window's tokens, flat), ``lengths`` (tokens per
    segment), ``n_bytes``, ``is_first``, ``is_last``, ``domain``. Items are sliced from the
    (memory-mapped) tables only when asked for.
    """

    def __init__(self, tables: Sequence[Any], max_segments: int) -> None:
        if not tables:
            raise DataError("no segment tables to build document windows from")
        self.tables = list(tables)
        self.max_segments = int(max_segments)
        parts = [window_index(t, self.max_segments, i) for i, t in enumerate(self.tables)]
        self.index = np.concatenate(parts) if parts else np.zeros((0, 5), dtype=np.int64)  # (W, 5)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        t, lo, hi, first, last = (int(v) for v in self.index[i])
        table = self.tables[t]
        lengths = np.asarray(table.lengths[lo:hi], dtype=np.int64)  # (S,)
        start = int(table.starts[lo])
        ids = np.asarray(table.ids[start : start + int(lengths.sum())], dtype=np.int64)
        return {
            "ids": ids,
            "lengths": lengths,
            "n_bytes": int(np.asarray(table.n_bytes[lo:hi]).sum()),
            "is_first": bool(first),
            "is_last": bool(last),
            "domain": table.domain,
        }

    @property
    def n_docs(self) -> int:
        return int(self.index[:, _LAST].sum())

    @property
    def n_segments(self) -> int:
        return int((self.index[:, _HI] - self.index[:, _LO]).sum())


def collate_windows(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Pad windows into the batch layout of the module docstring."""
    import torch

    B = len(items)
    S = max(len(it["lengths"]) for it in items)
    T = max(int(np.max(it["lengths"])) for it in items)
    ids = np.full((B, S, T), pad_id, dtype=np.int64)  # (B, S, T)
    lengths = np.zeros((B, S), dtype=np.int64)  # (B, S)
    for b, it in enumerate(items):
        lens = np.asarray(it["lengths"], dtype=np.int64)
        if lens.size and lens.min() < 1:
            raise DataError("a document window holds an empty segment (segmenters never emit one)")
        lengths[b, : lens.size] = lens
        # Scatter the flat tokens into (segment, position) slots in one go.
        seg = np.repeat(np.arange(lens.size), lens)
        pos = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        ids[b, seg, pos] = it["ids"]
    return {
        "ids": torch.from_numpy(ids),
        "lengths": torch.from_numpy(lengths),
        "n_segments": torch.tensor([len(it["lengths"]) for it in items], dtype=torch.long),  # (B,)
        "is_first": torch.tensor([bool(it["is_first"]) for it in items]),  # (B,)
        "is_last": torch.tensor([bool(it["is_last"]) for it in items]),  # (B,)
        "n_bytes": torch.tensor([int(it["n_bytes"]) for it in items], dtype=torch.long),  # (B,)
    }


class WindowCollator:
    """Picklable ``collate`` for the loop's batch sources (a partial of :func:`collate_windows`)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return collate_windows(items, self.pad_id)


def windows_from_segments(segments: Sequence[Sequence[int]], pad_id: int, *, is_last: bool = True,
                          n_bytes: int = 0) -> dict[str, Any]:
    """One window from a list of segments (token id lists): a batch of one, for tests and tools."""
    lengths = np.asarray([len(s) for s in segments], dtype=np.int64)
    flat = np.concatenate([np.asarray(s, dtype=np.int64) for s in segments]) if segments else np.zeros(0, np.int64)
    item = {"ids": flat, "lengths": lengths, "n_bytes": n_bytes, "is_first": True, "is_last": is_last}
    return collate_windows([item], pad_id)


class SegmentWindowBatches(EpochBatches):
    """Endless, resumable batches of document windows (the loop's ``BatchSource``).

    Every batch holds windows of **one** table (domain): the decoder pads segments to the
    longest in the batch, and a prose segment beside CSV's 2-token cells would waste ~20x
    compute. Each epoch: per table a seeded permutation of its windows — with ``balanced``
    the same number from every table (the smallest table's count; a fresh random subset of
    the larger ones each epoch, so CSV's many windows do not drown prose) — cut into
    batches; then the batch order is shuffled across tables. Rank ``r`` of ``w`` takes
    batches ``r::w``. State: (epoch, batches consumed).
    """

    what = "document windows"

    def __init__(self, tables: Sequence[Any], max_segments: int, batch_size: int, pad_id: int, seed: int = 0,
                 *, balanced: bool = True, rank: int | None = None, world_size: int | None = None) -> None:
        data = SegmentWindows(tables, max_segments)
        self.collate = WindowCollator(pad_id)
        self.balanced = balanced
        # Window ids of each non-empty table.
        self.groups = [ids for ids in (np.flatnonzero(data.index[:, _TABLE] == t) for t in range(len(tables)))
                       if ids.size]
        super().__init__(data, batch_size, seed, rank=rank, world_size=world_size)

    def _per_group(self) -> list[int]:
        sizes = [g.size for g in self.groups]
        return [min(sizes)] * len(sizes) if self.balanced and sizes else sizes

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return sum(-(-n // self.batch_size) for n in self._per_group()) // self.world_size

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        batches: list[np.ndarray] = []
        for group, n in zip(self.groups, self._per_group(), strict=True):
            pick = rng.permutation(group)[:n]
            batches += [pick[i : i + self.batch_size] for i in range(0, n, self.batch_size)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order][self.rank :: self.world_size][: len(self)]

    def _collate(self, items: list[Any]) -> dict[str, Any]:
        return self.collate(items)


def train_windows(tables: Sequence[Any], max_segments: int, batch_size: int, pad_id: int, seed: int = 0,
                  balanced: bool = True) -> SegmentWindowBatches:
    """Endless, shuffled, resumable batches of windows (see :class:`SegmentWindowBatches`)."""
    return SegmentWindowBatches(tables, max_segments, batch_size, pad_id, seed, balanced=balanced)


def spread_documents(n_windows_per_doc: np.ndarray, max_windows: int | None) -> np.ndarray:
    """Indices of evenly spread documents whose windows fit in ``max_windows`` (all when
    None; at least one document)."""
    n = len(n_windows_per_doc)
    if max_windows is None or n == 0 or int(n_windows_per_doc.sum()) <= max_windows:
        return np.arange(n)
    best = np.array([0])
    for k in range(1, n + 1):  # the most documents, evenly spaced, that still fit
        docs = np.unique(np.linspace(0, n - 1, k).round().astype(int))
        if int(n_windows_per_doc[docs].sum()) > max_windows:
            break
        best = docs
    return best


def eval_windows(table: Any, max_segments: int, batch_size: int, pad_id: int,
                 max_windows: int | None = None) -> Any:
    """Finite, re-iterable batches of one table's windows, whole documents in order (per rank).

    With ``max_windows``, an evenly spread subset of **whole documents** whose windows fit
    (at least one document), so every evaluated document's end is scored too.
    """
    data = SegmentWindows([table], max_segments)
    doc_of = np.cumsum(data.index[:, _FIRST]) - 1  # (W,) document of each window
    keep = spread_documents(np.bincount(doc_of), max_windows)
    data.index = data.index[np.isin(doc_of, keep)]
    return SequentialBatches(data, batch_size, collate=WindowCollator(pad_id))


__all__ = [
    "SegmentWindowBatches",
    "SegmentWindows",
    "WindowCollator",
    "collate_windows",
    "document_bounds",
    "eval_windows",
    "spread_documents",
    "train_windows",
    "window_index",
    "windows_from_segments",
]
