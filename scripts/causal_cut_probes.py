"""Causal, content-aware cut rules from a bigram model of the training split: the probes of
the README's "other causal cut rules" table (#13), kept so those rows can be rerun.

Fit the bigram once, then use the rules as segmenter plug-ins by module path
(``PYTHONPATH=scripts``)::

    python scripts/causal_cut_probes.py fit --data-dir data --tokenizer RUN/tokenizer \\
        --max-docs 400 --max-doc-bytes 60000 --out RUN/bigram.npy
    segsllm train-vae ... --segmenter "causal_cut_probes:InfoBudget:table=RUN/bigram.npy,bits=110"
    ... --segmenter "causal_cut_probes:LooseWindow:table=RUN/bigram.npy,lo=15,hi=21,tau=3"
    ... --segmenter "causal_cut_probes:LooseWindow:score=newline,lo=12,hi=20"
    python scripts/causal_cut_probes.py lengths --data-dir data --tokenizer RUN/tokenizer \\
        --segmenter "causal_cut_probes:InfoBudget:table=RUN/bigram.npy,bits=110"

- ``InfoBudget``: equal-information segments (cf. equal-info windows): a segment ends after
  token t once the bigram surprisal of its tokens reaches ``bits``.
- ``LooseWindow``: a segment ends after token t when it holds at least ``lo`` tokens and t is
  cut-friendly, or when it reaches ``hi``. Cut-friendly: ``dependence`` — what t tells about
  the next token, KL(p(. | t) || p̄) in bits with p̄ the mean of the table's rows, is at most
  ``tau``; ``newline`` — t ends a line (the ``lines`` rule's tokens).
- ``CycleLengths``: the control without content — lengths cycle through a fixed list.

All decide from tokens <= t and the current run length only, so they are causal and an SLLM
can leave their boundaries free (``sllm.boundaries=segmenter``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from segsllm.segment.base import EMPTY, Segmenter, SegmenterError, as_ids

_TABLES: dict[str, np.ndarray] = {}


def fit_bigram(docs: Sequence[np.ndarray], vocab_size: int, k: float = 10.0) -> np.ndarray:
    """(V + 1, V) float32 log2 p(next | token); row V is the document start. Each row mixes its
    counts with the add-½ unigram, weight c(row) / (c(row) + k) (Witten-Bell-like)."""
    V = int(vocab_size)
    counts = np.zeros((V + 1, V), dtype=np.float64)
    for ids in docs:
        ids = as_ids(ids)
        if ids.size:
            np.add.at(counts, (np.concatenate([[V], ids[:-1]]), ids), 1)
    unigram = (counts.sum(0) + 0.5) / (counts.sum() + 0.5 * V)  # (V,)
    rows = counts.sum(1, keepdims=True)  # (V + 1, 1)
    weight = rows / (rows + k)
    probs = weight * counts / np.maximum(rows, 1) + (1 - weight) * unigram
    return np.log2(probs).astype(np.float32)


def _table(path: str) -> np.ndarray:
    if not path:
        raise SegmenterError("this rule needs table=PATH (python scripts/causal_cut_probes.py fit ...)")
    if path not in _TABLES:
        try:
            _TABLES[path] = np.load(path)
        except OSError as err:
            raise SegmenterError(f"no bigram table at {path}: {err}") from None
    return _TABLES[path]


def surprisal(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(n,) bits of each token given the one before (the first given the document start)."""
    start = table.shape[0] - 1
    return -table[np.concatenate([[start], ids[:-1]]), ids]


def dependence(table: np.ndarray) -> np.ndarray:
    """(V,) bits: KL(p(. | t) || p̄) of each token t, p̄ the mean of the token rows."""
    logp = table[:-1].astype(np.float64)  # (V, V)
    p = np.exp2(logp)
    return (p * (logp - np.log2(p.mean(0)))).sum(1)


class InfoBudget(Segmenter):
    """Cut after token t once the segment's bigram surprisal reaches ``bits`` (or at max_len)."""

    name = "info-budget"
    causal = True

    def __init__(self, table: str = "", bits: float = 100.0, max_len: int = 48) -> None:
        if float(bits) <= 0 or int(max_len) < 1:
            raise SegmenterError(f"info-budget: bits must be > 0 and max_len >= 1, got {bits}, {max_len}")
        self.table, self.bits, self.max_len = table, float(bits), int(max_len)

    def segment(self, ids: Any) -> np.ndarray:
        ids = as_ids(ids)
        n = ids.size
        if n == 0:
            return EMPTY
        spent = np.concatenate([[0.0], np.cumsum(surprisal(_table(self.table), ids), dtype=np.float64)])
        ends, start = [], 0
        while start < n:
            first = int(np.searchsorted(spent, spent[start] + self.bits, side="left"))  # spent[e] - spent[start] >= bits
            start = min(max(first, start + 1), start + self.max_len, n)
            ends.append(start)
        return np.asarray(ends, dtype=np.int64)


class LooseWindow(Segmenter):
    """Cut after a cut-friendly token once the segment holds ``lo`` tokens; always at ``hi``."""

    name = "loose-window"
    causal = True
    needs_tokenizer = True

    def __init__(self, table: str = "", score: str = "dependence", lo: int = 12, hi: int = 20,
                 tau: float = 3.0, max_len: int = 48) -> None:
        if score not in ("dependence", "newline"):
            raise SegmenterError(f"loose-window: score must be dependence or newline, got {score!r}")
        if not 1 <= int(lo) <= int(hi) <= int(max_len):
            raise SegmenterError(f"loose-window: need 1 <= lo <= hi <= max_len, got {lo}, {hi}, {max_len}")
        self.table, self.score, self.tau = table, score, float(tau)
        self.lo, self.hi, self.max_len = int(lo), int(hi), int(max_len)
        self._friendly: np.ndarray | None = None  # (V,) bool

    def bind(self, tokenizer: Any) -> LooseWindow:
        from segsllm.data.vocab import vocab_bytes
        from segsllm.segment.lines import newline_tokens

        if self.score == "newline":
            self._friendly = newline_tokens(vocab_bytes(tokenizer).table)
        else:
            self._friendly = dependence(_table(self.table)) <= self.tau
        self.tokenizer = tokenizer
        return self

    def segment(self, ids: Any) -> np.ndarray:
        ids = as_ids(ids)
        n = ids.size
        if n == 0:
            return EMPTY
        if self._friendly is None:
            raise SegmenterError("loose-window is not bound to a tokenizer")
        candidates = np.flatnonzero(self._friendly[ids]) + 1  # end offsets after a friendly token
        ends, start = [], 0
        while start < n:
            j = int(np.searchsorted(candidates, start + self.lo, side="left"))
            end = start + self.hi
            if j < candidates.size and candidates[j] < end:
                end = int(candidates[j])
            start = min(end, n)
            ends.append(start)
        return np.asarray(ends, dtype=np.int64)


class CycleLengths(Segmenter):
    """The content-free control: segment lengths cycle through ``lengths`` ("14-18-13-..."),
    restarting at each document; causal (a segment's length depends on its index only)."""

    name = "cycle-lengths"
    causal = True

    def __init__(self, lengths: str = "14-18-13-19-16-15-17", max_len: int = 48) -> None:
        try:
            self._cycle = np.array([int(x) for x in str(lengths).split("-")], dtype=np.int64)
        except ValueError:
            raise SegmenterError(f"cycle-lengths: lengths must be like 14-18-13, got {lengths!r}") from None
        if self._cycle.size == 0 or self._cycle.min() < 1 or self._cycle.max() > int(max_len):
            raise SegmenterError(f"cycle-lengths: every length must be in [1, max_len={max_len}], got {lengths!r}")
        self.lengths, self.max_len = str(lengths), int(max_len)

    def segment(self, ids: Any) -> np.ndarray:
        n = as_ids(ids).size
        if n == 0:
            return EMPTY
        reps = n // int(self._cycle.min()) // self._cycle.size + 1
        ends = np.cumsum(np.tile(self._cycle, reps))
        return np.append(ends[ends < n], n).astype(np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("fit", "lengths"):
        p = sub.add_parser(name)
        p.add_argument("--data-dir", default="data")
        p.add_argument("--tokenizer", required=True, help="the run's tokenizer folder")
        p.add_argument("--domains", default="prose,code,csv")
        p.add_argument("--max-docs", type=int, default=None)
        p.add_argument("--max-doc-bytes", type=int, default=None)
    sub.choices["fit"].add_argument("--out", required=True, help="where to write the table (.npy)")
    sub.choices["lengths"].add_argument("--segmenter", required=True)
    sub.choices["lengths"].add_argument("--split", default="validation")
    args = ap.parse_args()

    from segsllm.data.tokenizer import load_tokenizer
    from segsllm.train.teachers import load_documents

    tokenizer = load_tokenizer(args.tokenizer)
    split = "train" if args.command == "fit" else args.split
    docs = {d: load_documents(args.data_dir, d, split, tokenizer, max_docs=args.max_docs,
                              max_doc_bytes=args.max_doc_bytes) for d in args.domains.split(",")}
    if args.command == "fit":
        np.save(args.out, fit_bigram([x for ds in docs.values() for x in ds], len(tokenizer)))
        print(f"bigram of {sum(len(x) for ds in docs.values() for x in ds):,} tokens: {args.out}")
        return
    from segsllm.segment import build_segmenter

    seg = build_segmenter(args.segmenter, tokenizer=tokenizer)
    for domain, ds in docs.items():
        n_segments = sum(len(seg.segment(x)) for x in ds)
        print(f"{domain}: {sum(len(x) for x in ds) / max(n_segments, 1):.2f} tokens per segment ({split})")


if __name__ == "__main__":
    main()
