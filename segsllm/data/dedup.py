"""Exact and near-duplicate documents, found so that duplicates never straddle splits.

- **Exact duplicates**: documents whose text is byte-identical after newline normalisation
  (CRLF and CR become LF) share a :func:`content_key` (sha256). The store keeps one of
  them (the smallest id) and drops the others before splitting.
- **Near-duplicate families**: MinHash over token shingles (``width`` consecutive tokens,
  a token being a run of word characters or one punctuation character), with LSH banding
  to find candidate pairs and the estimated Jaccard similarity to confirm them. Families
  are the connected components of confirmed pairs (union-find), so a template and all its
  siblings (R tables shipped by several packages, generated codec modules) end up in one
  family, and the store splits by family.

Everything is deterministic (fixed hash seeds, no Python ``hash``), numpy-vectorised per
document, and holds only one signature (``num_perm`` uint32) per document in memory.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_MASK64 = (1 << 64) - 1
_EMPTY = np.zeros(0, dtype=np.uint64)


def normalise_newlines(text: str) -> str:
    """``text`` with CRLF and lone CR turned into LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def content_key(text: str) -> str:
    """sha256 (hex) of the newline-normalised UTF-8 text: equal keys mean exact duplicates."""
    return hashlib.sha256(normalise_newlines(text).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class DedupConfig:
    """How near-duplicates are found (the defaults are what the built-in corpora use)."""

    width: int = 5  # tokens per shingle
    num_perm: int = 64  # MinHash permutations (signature length; 256 bytes per document)
    # LSH: 32 bands of 2 rows make a pair of Jaccard 0.5 a candidate with p = 1 - (3/4)^32
    # > 0.9998, so recall at the threshold is near complete; candidates are then confirmed.
    bands: int = 32
    threshold: float = 0.5  # estimated Jaccard at or above which two documents are one family
    # False: only exact duplicates are collapsed (e.g. a synthetic corpus made of variants of
    # one template, where grouping would put every document in one split).
    near_duplicates: bool = True

    def __post_init__(self) -> None:
        if self.width < 1 or self.num_perm < 1 or self.bands < 1:
            raise ValueError("width, num_perm and bands must be >= 1")
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands})")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


class ShingleHasher:
    """Token shingles of a text as unique uint64 hashes (tokens hashed once, memoised)."""

    def __init__(self, width: int = 5) -> None:
        self.width = int(width)
        self._memo: dict[str, int] = {}
        # Shingle hash = sum_j tok[i + j] * M^j (mod 2^64) with an odd multiplier M.
        m = 0x9E3779B97F4A7C15
        self._powers = [pow(m, j, 1 << 64) for j in range(self.width)]

    def _token_hash(self, token: str) -> int:
        h = self._memo.get(token)
        if h is None:
            h = int.from_bytes(
                hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
            )
            if len(self._memo) < 1_000_000:  # bound the memo on huge vocabularies
                self._memo[token] = h
        return h

    def __call__(self, text: str) -> np.ndarray:
        """(n,) uint64 unique shingle hashes; one shingle when the text has < width tokens."""
        tokens = _TOKEN_RE.findall(text)
        if not tokens:
            return _EMPTY
        th = np.fromiter((self._token_hash(t) for t in tokens), dtype=np.uint64, count=len(tokens))
        w = min(self.width, th.size)
        n = th.size - w + 1
        acc = np.zeros(n, dtype=np.uint64)  # (n,)
        with np.errstate(over="ignore"):
            for j in range(w):
                acc += th[j : j + n] * np.uint64(self._powers[j])
        return np.unique(acc)


class MinHasher:
    """MinHash signatures: ``h_i(x) = ((a_i x + b_i) mod 2^64) >> 32`` minimised over shingles."""

    def __init__(self, num_perm: int = 64, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = int(num_perm)
        self.a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)

    def __call__(self, shingles: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """(num_perm,) uint32 signature; all 2^32 - 1 (never matching a real one) when empty."""
        sig = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for lo in range(0, shingles.size, chunk):
                x = shingles[lo : lo + chunk, None]  # (c, 1)
                h = (x * self.a[None, :] + self.b[None, :]) >> np.uint64(32)  # (c, P)
                np.minimum(sig, h.min(axis=0), out=sig)
        return sig.astype(np.uint32)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def families(signatures: Sequence[np.ndarray | None], cfg: DedupConfig = DedupConfig()) -> list[int]:
    """Family label (the index of its first member) of every document.

    Documents whose signatures agree in one LSH band are candidates; a candidate pair whose
    signatures agree in at least ``threshold`` of the positions (the MinHash estimate of
    the Jaccard similarity of their shingle sets) is joined. ``None`` (no shingles) never
    joins a family.
    """
    n = len(signatures)
    parent = list(range(n))
    rows = cfg.num_perm // cfg.bands
    live = [i for i, s in enumerate(signatures) if s is not None]
    if live:
        sig = np.stack([signatures[i] for i in live])  # (L, P)
        for band in range(cfg.bands):
            buckets: dict[bytes, list[int]] = {}
            block = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows])  # (L, rows)
            for k in range(len(live)):
                buckets.setdefault(block[k].tobytes(), []).append(k)
            for members in buckets.values():
                for pos, k in enumerate(members[:-1]):
                    others = np.asarray(members[pos + 1 :])  # (m,)
                    agree = (sig[others] == sig[k][None, :]).mean(axis=1)  # (m,)
                    for o in others[agree >= cfg.threshold]:
                        ra, rb = _find(parent, live[k]), _find(parent, live[int(o)])
                        if ra != rb:
                            parent[max(ra, rb)] = min(ra, rb)
    return [_find(parent, i) for i in range(n)]


@dataclass
class DedupPlan:
    """What to keep and how to group it, for documents given in source order."""

    kept: list[bool]  # False for an exact duplicate that is dropped
    collapsed: dict[str, str]  # dropped id -> the id kept in its place
    family_key: list[str]  # per document: the id that decides its split (smallest id of its family)
    families: list[list[str]]  # near-duplicate families of two or more kept documents (sorted ids)

    @property
    def grouped(self) -> int:
        """Kept documents that share a family with at least one other."""
        return sum(len(f) for f in self.families)


def plan(
    ids: Sequence[str], keys: Sequence[str], signatures: Sequence[np.ndarray | None],
    cfg: DedupConfig = DedupConfig(),
) -> DedupPlan:
    """Collapse exact duplicates (keep the smallest id), then group the kept ones into families.

    The result does not depend on the order of the documents.
    """
    n = len(ids)
    keeper: dict[str, int] = {}
    for i in range(n):
        j = keeper.get(keys[i])
        if j is None or ids[i] < ids[j]:
            keeper[keys[i]] = i
    kept = [keeper[keys[i]] == i for i in range(n)]
    collapsed = {ids[i]: ids[keeper[keys[i]]] for i in range(n) if not kept[i]}
    live = [i for i in range(n) if kept[i]]
    labels = families([signatures[i] for i in live], cfg) if cfg.near_duplicates else list(range(len(live)))
    members: dict[int, list[str]] = {}
    for i, lab in zip(live, labels, strict=True):
        members.setdefault(lab, []).append(ids[i])
    smallest = {lab: min(m) for lab, m in members.items()}
    family_key = list(ids)
    for i, lab in zip(live, labels, strict=True):
        family_key[i] = smallest[lab]
    for i in range(n):  # a dropped duplicate follows the document kept in its place
        if not kept[i]:
            family_key[i] = family_key[keeper[keys[i]]]
    groups = sorted(sorted(m) for m in members.values() if len(m) > 1)
    return DedupPlan(kept, collapsed, family_key, groups)
