"""Document token streams -> fixed-length windows for the token-level LM (train and eval).

A document of ``n`` tokens ``d`` is modelled as the stream ``BOS d EOS``: the inputs are
``x = BOS d`` and the targets ``t = d EOS`` (``n + 1`` positions), ``x[p]`` predicting
``t[p]``. A window covers positions ``[a, e)`` (at most ``context_len`` of them): inputs
``x[a:e]``, labels ``t[a:e]`` with positions before ``b`` masked (``-100``) because they
are context only. Windows never cross documents (short documents are padded, not packed),
which is how the SLLM sees documents too.

- Training (:func:`train_windows`): consecutive non-overlapping chunks ``[kC, (k+1)C)``;
  only the first starts with BOS, a later one starts mid-document.
- Evaluation (:func:`eval_windows`): the same chunks when ``stride == C``; with a smaller
  stride a sliding window where each later chunk scores ``stride`` new positions with up to
  ``C - stride`` earlier ones as context. Either way every document token and the final
  EOS are scored exactly once, so the NLL sums to the document's NLL under that scheme.

Byte counts: each window carries the UTF-8 bytes of the tokens it scores (EOS has none).
Per-token bytes come from the vocabulary (exact for byte-level BPE); when the exact byte
count of each document's text is given, the difference is put on the document's last
window, so the byte total of every document is its text's UTF-8 length whatever the
tokenizer. Token ids come from a :class:`~segsllm.data.segments.SegmentTable`, so the LM
sees exactly the tokens (and bytes) the SLLM sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segsllm.data.batches import EpochBatches
from segsllm.errors import DataError

IGNORE = -100  # label of positions that are not scored (context, padding)


@dataclass
class DocumentSpans:
    """Where each document's tokens lie in a flat id array: ``ids[start[i]:end[i]]``."""

    ids: np.ndarray  # (N_tokens,) token ids of all documents, back to back
    start: np.ndarray  # (D,) int64
    end: np.ndarray  # (D,) int64
    doc_index: np.ndarray  # (D,) the documents' indices in their split (for exact bytes)

    def __len__(self) -> int:
        return int(self.start.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start  # (D,)

    @classmethod
    def from_table(cls, table: Any) -> DocumentSpans:
        """Documents of a SegmentTable: runs of consecutive segments with the same doc index."""
        seg_doc = np.asarray(table.doc_index)
        if seg_doc.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return cls(np.asarray(table.ids), empty, empty, empty)
        change = np.flatnonzero(np.diff(seg_doc)) + 1
        first = np.concatenate([[0], change])  # first segment of each document
        last = np.concatenate([change, [seg_doc.size]]) - 1  # its last segment
        starts = np.asarray(table.starts, dtype=np.int64)
        lengths = np.asarray(table.lengths, dtype=np.int64)
        return cls(
            ids=np.asarray(table.ids),
            start=starts[first],
            end=starts[last] + lengths[last],
            doc_index=seg_doc[first].astype(np.int64),
        )

    def subset(self, rows: Sequence[int] | np.ndarray) -> DocumentSpans:
        rows = np.asarray(rows, dtype=np.int64)
        return DocumentSpans(self.ids, self.start[rows], self.end[rows], self.doc_index[rows])


def window_bounds(n_targets: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """``(a, b, e)`` of each window over ``n_targets`` positions: inputs/labels ``[a, e)``,
    scored ``[b, e)``. Scored ranges tile ``[0, n_targets)``; ``e - a <= context_len``."""
    if not 1 <= stride <= context_len:
        raise ValueError(f"stride must be in [1, {context_len}], got {stride}")
    out = []
    b, e = 0, min(context_len, n_targets)
    while True:
        out.append((max(0, e - context_len), b, e))
        if e >= n_targets:
            return out
        b, e = e, min(e + stride, n_targets)


class TokenWindows:
    """An indexable dataset of windows over documents (items for :func:`collate_windows`).

    Item ``i`` is ``{"input_ids", "labels", "n_bytes", "n_targets"}`` built on the fly from
    the flat ids. ``lengths`` (window widths) lets it join :class:`ConcatTables`.
    """

    def __init__(
        self,
        docs: DocumentSpans,
        *,
        context_len: int,
        bos_id: int,
        eos_id: int,
        stride: int | None = None,
        token_bytes: np.ndarray | None = None,
        doc_bytes: Mapping[int, int] | np.ndarray | None = None,
        domain: str = "",
    ) -> None:
        if context_len < 2:
            raise DataError(f"context_len must be >= 2, got {context_len}")
        self.docs = docs
        self.context_len = int(context_len)
        self.stride = int(stride or context_len)
        self.bos_id, self.eos_id = int(bos_id), int(eos_id)
        self.domain = domain
        rows, a, b, e = [], [], [], []
        for row, n in enumerate(docs.lengths.tolist()):
            for wa, wb, we in window_bounds(n + 1, self.context_len, self.stride):
                rows.append(row)
                a.append(wa)
                b.append(wb)
                e.append(we)
        self.row = np.asarray(rows, dtype=np.int64)  # (W,) document row of each window
        self.a = np.asarray(a, dtype=np.int64)  # (W,) first input position
        self.b = np.asarray(b, dtype=np.int64)  # (W,) first scored position
        self.e = np.asarray(e, dtype=np.int64)  # (W,) end (exclusive)
        self.n_bytes = self._bytes(token_bytes, doc_bytes)  # (W,)

    def _bytes(self, token_bytes: np.ndarray | None, doc_bytes: Any) -> np.ndarray:
        """UTF-8 bytes of the tokens each window scores (EOS: 0), exact per document if given."""
        out = np.zeros(len(self), dtype=np.int64)
        if token_bytes is None:
            return out
        ids = np.asarray(self.docs.ids, dtype=np.int64)
        per_token = np.asarray(token_bytes, dtype=np.int64)[np.clip(ids, 0, len(token_bytes) - 1)]
        csum = np.concatenate([[0], np.cumsum(per_token)])  # (N+1,)
        start = self.docs.start[self.row]
        n = self.docs.lengths[self.row]
        # Scored doc tokens are positions [b, min(e, n)); position n is the EOS.
        out = csum[start + np.minimum(self.e, n)] - csum[start + np.minimum(self.b, n)]
        if doc_bytes is not None:
            last = np.flatnonzero(self.e == n + 1)  # each document's last window
            for w in last.tolist():
                r = int(self.row[w])
                s, t = int(self.docs.start[r]), int(self.docs.end[r])
                exact = int(doc_bytes[int(self.docs.doc_index[r])])
                out[w] += exact - int(csum[t] - csum[s])
        return out

    def __len__(self) -> int:
        return int(self.row.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return self.e - self.a  # (W,)

    @property
    def n_targets(self) -> int:
        """Scored positions over all windows: every document's tokens + one EOS each."""
        return int((self.e - self.b).sum())

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = int(self.row[i])
        a, b, e = int(self.a[i]), int(self.b[i]), int(self.e[i])
        s, n = int(self.docs.start[r]), int(self.docs.lengths[r])
        doc = self.docs.ids[s : s + n]
        # x[p] = BOS if p == 0 else doc[p-1];  t[p] = doc[p] if p < n else EOS
        x = np.empty(e - a, dtype=np.int64)
        t = np.empty(e - a, dtype=np.int64)
        if a == 0:
            x[0] = self.bos_id
            x[1:] = doc[: e - 1]
        else:
            x[:] = doc[a - 1 : e - 1]
        inner = min(e, n) - a
        t[:inner] = doc[a : a + inner]
        if e == n + 1:
            t[-1] = self.eos_id
        t[: b - a] = IGNORE  # context-only positions
        return {"input_ids": x, "labels": t, "n_bytes": int(self.n_bytes[i]), "n_targets": e - b}


def collate_windows(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad windows to the batch's widest: ``input_ids``/``labels``/``attention_mask``
    ``(B, T)``, ``n_bytes`` ``(B,)``; padded labels are ``IGNORE``."""
    import torch

    width = max(len(it["input_ids"]) for it in items)
    ids = np.full((len(items), width), pad_id, dtype=np.int64)  # (B, T)
    labels = np.full((len(items), width), IGNORE, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(items), width), dtype=np.int64)  # (B, T) 1 = real token
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        ids[row, :n] = it["input_ids"]
        labels[row, :n] = it["labels"]
        mask[row, :n] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "labels": torch.from_numpy(labels),
        "attention_mask": torch.from_numpy(mask),
        "n_bytes": torch.tensor([int(it["n_bytes"]) for it in items], dtype=torch.long),  # (B,)
    }


class TokenWindowBatches(EpochBatches):
    """Endless, resumable, shuffled batches of windows (the loop's ``BatchSource``).

    Each epoch is a seeded permutation; with ``balanced=True`` over a
    :class:`~segsllm.data.segments.ConcatTables` of several domains it holds the same
    number of windows from each domain (the smallest domain's count, a fresh random subset
    of the larger ones every epoch), the policy the SLLM's segment batches use
    (``data.balance_domains``), so neither model is trained mostly on CSV. Rank ``r`` of
    ``w`` takes batches ``r::w``; the state is (epoch, batches consumed).
    """

    what = "windows"

    def __init__(self, dataset: Any, batch_size: int, pad_id: int, seed: int = 0, *, balanced: bool = False,
                 rank: int | None = None, world_size: int | None = None) -> None:
        self.pad_id = int(pad_id)
        super().__init__(dataset, batch_size, seed, balanced=balanced, rank=rank, world_size=world_size)

    def _collate(self, items: list[Any]) -> dict[str, Any]:
        return collate_windows(items, self.pad_id)


class _WholeDocument:
    """The cut that keeps each document's tokens whole: it keys plain token streams in the
    segment-table cache (the LM and the teachers need tokens, not segments)."""

    def spec(self) -> str:
        return "token-stream"

    def segment_batch(self, docs: Sequence[np.ndarray]) -> list[list[int]]:
        return [[len(d)] if len(d) else [] for d in docs]


def token_streams(data_dir: Any, domain: str, split: str, tokenizer: Any, *, max_docs: int | None = None,
                  max_doc_bytes: int | None = None) -> Any:
    """Every document of one split as a plain token stream: a cached
    :class:`~segsllm.data.segments.SegmentTable` holding each document as one segment, so
    the LM (and anyone else who needs only tokens) reads exactly the tokens the SLLM reads."""
    from segsllm.data.segments import load_segments

    return load_segments(data_dir, domain, split, tokenizer, _WholeDocument(), max_docs=max_docs,
                         max_doc_bytes=max_doc_bytes)


def train_windows(table: Any, context_len: int, bos_id: int, eos_id: int,
                  token_bytes: np.ndarray | None = None) -> TokenWindows:
    """Non-overlapping per-document training windows of one segment table."""
    return TokenWindows(DocumentSpans.from_table(table), context_len=context_len, bos_id=bos_id,
                           eos_id=eos_id, token_bytes=token_bytes, domain=getattr(table, "domain", ""))


def pick_documents(weights: np.ndarray, budget: int | None) -> np.ndarray:
    """Rows of whole documents evenly spread over the split whose ``weights`` (e.g. UTF-8
    bytes) reach ``budget``, as few as possible (at least one); all rows when ``budget`` is
    None. Deterministic, and the same for every model given the same weights and budget."""
    w = np.asarray(weights, dtype=np.int64)
    n = int(w.shape[0])
    if budget is None or n == 0 or int(w.sum()) <= budget:
        return np.arange(n)

    def spread(k: int) -> np.ndarray:
        return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))

    lo, hi = 1, n  # bisection on the number of documents; spread(n) holds all of them
    while lo < hi:
        mid = (lo + hi) // 2
        if int(w[spread(mid)].sum()) >= budget:
            hi = mid
        else:
            lo = mid + 1
    return spread(lo)


def select_eval_documents(table: Any, doc_bytes: Any, max_bytes: int | None) -> DocumentSpans:
    """The validation documents to evaluate: whole documents, evenly spread, about
    ``max_bytes`` UTF-8 bytes in total (all when None).

    Chosen by bytes, not tokens, so models with different tokenizers (the SLLM on ours, a
    pretrained base on its own) are scored on the same documents; call it from any stage
    that must be compared with ``train-lm``.
    """
    docs = DocumentSpans.from_table(table)
    weights = np.asarray(doc_bytes, dtype=np.int64)[docs.doc_index] if doc_bytes is not None else docs.lengths
    return docs.subset(pick_documents(weights, max_bytes))


def eval_windows(
    table: Any,
    context_len: int,
    bos_id: int,
    eos_id: int,
    *,
    stride: int | None = None,
    token_bytes: np.ndarray | None = None,
    doc_bytes: Mapping[int, int] | np.ndarray | None = None,
    max_bytes: int | None = None,
) -> TokenWindows:
    """Evaluation windows over whole documents of one table (see :func:`select_eval_documents`)."""
    docs = select_eval_documents(table, doc_bytes, max_bytes)
    return TokenWindows(docs, context_len=context_len, bos_id=bos_id, eos_id=eos_id, stride=stride,
                           token_bytes=token_bytes, doc_bytes=doc_bytes, domain=getattr(table, "domain", ""))
