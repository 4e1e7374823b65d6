"""Which bytes of a test split are scored: enough documents, none dominating the domain.

A domain's bits/byte is a byte-weighted mean over its documents, so one long file (a 500 KB
generated table, a 47 % share of English prose in the "code" split) would decide it alone.
:func:`select_scored` picks documents in a fixed pseudo-random order (sha256 of the id,
independent of the stored order and of any model) until it has at least ``min_docs`` of
them and ``target_bytes`` to score, then cuts every document to a common byte cap (after a
line end where possible) so that no document is more than ``max_share`` of the domain's
scored bytes. Pure function: (id, text) pairs in, the scored (id, text prefix) pairs out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoredDoc:
    """One document as scored: its id, the prefix of its text that is scored, and sizes."""

    id: str
    text: str
    n_bytes: int  # UTF-8 bytes of ``text`` (the scored prefix)
    full_bytes: int  # UTF-8 bytes of the whole document

    @property
    def truncated(self) -> bool:
        return self.n_bytes < self.full_bytes


def _order_key(doc_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"score:{seed}:{doc_id}".encode()).digest()


def cut_utf8(text: str, max_bytes: int) -> str:
    """At most ``max_bytes`` UTF-8 bytes of ``text``, cut after its last line end when there
    is one in the kept part, never inside a character."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    cut = data[: max(max_bytes, 0)]
    nl = cut.rfind(b"\n")
    if nl > 0:
        cut = cut[: nl + 1]
    return cut.decode("utf-8", errors="ignore")


def share_cap(sizes: Sequence[int], max_share: float) -> float:
    """The largest cap ``c`` with ``c <= max_share * sum(min(size, c))``: capping every
    document at ``c`` leaves none above ``max_share`` of the total. ``inf`` when no cap is
    needed; 0 when the documents are too few (fewer than ``1 / max_share``) for any cap."""
    s = sorted(int(b) for b in sizes if b > 0)
    n = len(s)
    if n == 0:
        return math.inf
    if s[-1] <= max_share * sum(s):
        return math.inf
    prefix = 0
    best = 0.0
    for k in range(n):  # documents s[k:] are capped, s[:k] kept whole
        capped = n - k
        denom = 1.0 - max_share * capped
        if denom > 0:
            c = max_share * prefix / denom
            lo = s[k - 1] if k else 0
            if lo <= c <= s[k]:
                best = max(best, c)
        prefix += s[k]
    return best


def _budget_cap(sizes: Sequence[int], budget: int) -> float:
    """The cap ``c`` with ``sum(min(size, c)) == budget`` (inf when everything fits)."""
    s = sorted(int(b) for b in sizes)
    if sum(s) <= budget:
        return math.inf
    prefix = 0
    for k, b in enumerate(s):
        c = (budget - prefix) / (len(s) - k)
        if c <= b:
            return c
        prefix += b
    return math.inf  # pragma: no cover - unreachable: sum(s) > budget


def select_scored(docs: Sequence[tuple[str, str]], target_bytes: int | None = None, min_docs: int = 20,
                  max_share: float = 1 / 8, seed: int = 0) -> list[ScoredDoc]:
    """The documents to score and the prefix of each, in the order given.

    Documents (empty ones skipped) are taken in sha256(seed, id) order until there are
    ``min_docs`` of them and, each counted up to ``max_share * target_bytes``, at least
    ``target_bytes`` (all of them when the split has fewer). They are then cut to one common
    cap: the one that scores about ``target_bytes`` in all (the cap is raised to win back
    what line-end cuts lose), or less where needed so that no document is more than ``max_share`` of the
    scored total. ``target_bytes=None`` takes
    every document and only applies the share cap. Fewer than ``1 / max_share`` documents
    cannot satisfy the share; they are then cut to the shortest one's length (equal weights).
    """
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"max_share must be in (0, 1], got {max_share}")
    if target_bytes is not None and target_bytes <= 0:
        raise ValueError(f"target_bytes must be positive, got {target_bytes}")
    sizes = {i: len(t.encode("utf-8")) for i, (_, t) in enumerate(docs)}
    order = sorted((i for i in sizes if sizes[i] > 0), key=lambda i: _order_key(docs[i][0], seed))
    chosen: list[int] = []
    if target_bytes is None:
        chosen = order
    else:
        per_doc = max_share * target_bytes
        counted = 0.0
        for i in order:
            if len(chosen) >= min_docs and counted >= target_bytes:
                break
            chosen.append(i)
            counted += min(sizes[i], per_doc)
    if not chosen:
        return []
    chosen_sizes = [sizes[i] for i in chosen]
    cap = share_cap(chosen_sizes, max_share)
    if cap == 0.0:  # too few documents for the share: equal weights
        cap = float(min(chosen_sizes))
    if target_bytes is not None:
        cap = min(cap, _budget_cap(chosen_sizes, target_bytes))
    enforce = len(chosen) * max_share >= 1
    raw = [docs[i][1] for i in chosen]
    texts = _cut_all(raw, cap, max_share, enforce)
    if target_bytes is not None and not math.isinf(cap):
        share_limit = share_cap(chosen_sizes, max_share) if enforce else cap
        for _ in range(8):  # line-end cuts lose bytes: raise the cap to win them back
            got = [len(t.encode("utf-8")) for t in texts]
            short = target_bytes - sum(got)
            cut = sum(g < b for g, b in zip(got, chosen_sizes, strict=True))
            if short <= 0 or cut == 0 or cap >= share_limit:
                break
            cap = min(cap + short / cut, share_limit)
            texts = _cut_all(raw, cap, max_share, enforce)
    keep = sorted(range(len(chosen)), key=lambda k: chosen[k])
    return [ScoredDoc(docs[chosen[k]][0], texts[k], len(texts[k].encode("utf-8")), sizes[chosen[k]])
            for k in keep]


def _cut_all(texts: list[str], cap: float, max_share: float, enforce: bool) -> list[str]:
    """Cut every text to ``cap`` bytes; cutting at line ends loses bytes, which can push a
    document over the share again, so the cap shrinks until no document exceeds it."""
    limit = math.inf if math.isinf(cap) else int(cap)
    for _ in range(64):
        out = [t if math.isinf(limit) else cut_utf8(t, int(limit)) for t in texts]
        sizes = [len(t.encode("utf-8")) for t in out]
        total = sum(sizes)
        if not enforce or max(sizes) <= max_share * total:
            return out
        limit = math.floor(max_share * total)
    # Line-end cuts keep losing too much: cut inside lines (never inside a character).
    data = [t.encode("utf-8") for t in texts]
    for _ in range(64):
        out = [d[: int(limit)].decode("utf-8", errors="ignore") for d in data]
        sizes = [len(t.encode("utf-8")) for t in out]
        if max(sizes) <= max_share * sum(sizes):
            return out
        limit = math.floor(max_share * sum(sizes))
    return out  # pragma: no cover - each round loses at most 3 bytes per document
