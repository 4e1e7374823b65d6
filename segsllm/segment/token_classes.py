"""Per-vocabulary token classes for the punctuation rule, decided once per tokenizer.

Every token id gets a small bit set (``END``, ``PUN``, ``WSP`` ...) computed from its exact
bytes, so that segmenting a document is a gather ``flags[ids]`` plus a few vectorised
scans, with no Python loop over tokens.

Characters split across tokens. Byte-level BPE may cut a multi-byte character such as
``。`` (``E3 80 82``) into ``E3 80`` + ``82``. A token that *starts* with continuation
bytes cannot be judged alone: ``82`` completes ``。`` after ``E3 80`` but ``＂`` after
``EF BC``. Such tokens are marked ``CTX`` and get one flag set per class of the character
they complete (:data:`XCLASSES`). At segmentation time the completed character is
rebuilt, vectorised over the (rare) ``CTX`` positions only, from the last bytes of the
up to three preceding tokens, and the matching flag set is picked. A token that *ends*
inside a character never ends a segment (no ``CB`` bit); a run that stops there is
moved back to the previous character boundary by the segmenter.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

# Token flag bits.
END = 1  # a segment ends after this token (sentence/clause punctuation or a newline)
PUN = 2  # the token is only punctuation (optionally followed by whitespace): may trail a boundary
WSP = 4  # the token is only whitespace: stays with the segment it follows
NLT = 8  # the token's trailing whitespace holds a newline
CB = 16  # the token ends on a character boundary
CTX = 32  # the flags depend on the character completed by the token's leading bytes

# Classes of the character completed by a CTX token's leading continuation bytes.
ORD, TERM, CLOSE, SPACE, NEWLINE, PARTIAL = range(6)
XCLASSES = 6

AMBIGUOUS_QUOTES = '"＂'  # open and close quotations alike
NEWLINE_CHARS = "\n\r\x0b\x0c\x85\u2028\u2029"
MASK24 = 0xFFFFFF


def _is_cont(b: int) -> bool:
    return 0x80 <= b < 0xC0


def _need(lead: int) -> int:
    """Length of the UTF-8 sequence a lead byte starts (1 for ASCII or an invalid lead)."""
    return 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1


@lru_cache(maxsize=1)
def _multibyte_spaces() -> str:
    return "".join(chr(c) for c in range(0x80, 0x10000) if chr(c).isspace())


class TokenClasses:
    """Flag tables of one vocabulary under one punctuation set.

    Attributes (all indexed by token id; ``tail``/``tail_len`` have one extra sentinel row):
    ``flags`` (uint8 bits), ``ctx_flags`` (V x XCLASSES, for CTX tokens), ``lead``/``lead_len``
    (leading continuation bytes, packed big-endian), ``tail``/``tail_len`` (last <= 3 bytes).
    """

    def __init__(self, table: Sequence[bytes], terminals: str, closers: str, newlines: bool) -> None:
        self.terminals = terminals
        self.closers = "".join(c for c in closers if c not in terminals)
        self.newlines = newlines
        self.pchars = terminals + self.closers
        reps = {
            ORD: "a",
            TERM: terminals[:1],
            CLOSE: self.closers[:1],
            SPACE: " ",
            NEWLINE: "\n" if newlines else " ",
        }
        v = len(table)
        self.size = v
        self.flags = np.zeros(v, dtype=np.uint8)
        self.ctx_flags = np.zeros((v, XCLASSES), dtype=np.uint8)
        self.lead = np.zeros(v, dtype=np.int64)
        self.lead_len = np.zeros(v, dtype=np.int64)
        self.all_cont = np.zeros(v, dtype=bool)
        self.tail = np.zeros(v + 1, dtype=np.int64)
        self.tail_len = np.zeros(v + 1, dtype=np.int64)
        self.tail_len[v] = 1  # sentinel: one NUL byte, breaks any character across documents
        for i, data in enumerate(table):
            self._fill(i, data, reps)
        self._build_lookup()

    # ------------------------------------------------------------------ per token

    def classify(self, text: str, trail: bool) -> int:
        """Flags of a token whose complete characters are ``text`` (``trail``: ends mid-char)."""
        core = text.rstrip()
        tail = text[len(core):]
        newline = self.newlines and any(c in NEWLINE_CHARS for c in tail)
        flags = 0 if trail else CB
        if not text or text.isspace():
            flags |= WSP
        if not text or (core and core[0] in self.pchars and not core.strip(self.pchars)):
            flags |= PUN
        if not trail:
            if newline:
                flags |= NLT | END
            else:
                stripped = core.rstrip(self.closers) if self.closers else core
                if stripped and stripped[-1] in self.terminals and not (
                    # ` "`: an ambiguous quote after a space opens a quotation
                    stripped[-1] in AMBIGUOUS_QUOTES and len(stripped) > 1 and stripped[-2].isspace()
                ):
                    flags |= END
        return flags

    def _fill(self, i: int, data: bytes, reps: dict[int, str]) -> None:
        n = len(data)
        lead = 0
        while lead < min(n, 3) and _is_cont(data[lead]):
            lead += 1
        trail = 0  # bytes of an incomplete character at the end
        for back in range(1, min(4, n - lead) + 1):
            b = data[n - back]
            if not _is_cont(b):
                trail = back if _need(b) > back else 0
                break
        middle = data[lead : n - trail].decode("utf-8", errors="replace")
        self.tail[i] = int.from_bytes(data[-3:], "big") if n else 0
        self.tail_len[i] = min(n, 3)
        if lead == 0:
            self.flags[i] = self.classify(middle, trail > 0)
            return
        self.lead[i] = int.from_bytes(data[:lead], "big")
        self.lead_len[i] = lead
        self.all_cont[i] = lead == n
        ordinary = self.classify(reps[ORD] + middle, trail > 0)
        row = [self.classify(reps[c] + middle, trail > 0) if reps[c] else ordinary
               for c in range(PARTIAL)]
        # PARTIAL: the token only continues a character that is still incomplete after it.
        row.append(PUN | WSP)
        self.ctx_flags[i] = row
        dependent = any(r != row[ORD] for r in row[:PARTIAL]) or self.all_cont[i]
        self.flags[i] = (row[ORD] | CTX) if dependent else row[ORD]

    # ------------------------------------------------------------------ split characters

    def _build_lookup(self) -> None:
        """Sorted packed UTF-8 codes of the multi-byte characters that are not ORD."""
        classes: dict[int, int] = {}
        for c in _multibyte_spaces():
            cls = NEWLINE if (self.newlines and c in NEWLINE_CHARS) else SPACE
            classes[int.from_bytes(c.encode("utf-8"), "big")] = cls
        for c in self.closers:
            classes[int.from_bytes(c.encode("utf-8"), "big")] = CLOSE
        for c in self.terminals:
            classes[int.from_bytes(c.encode("utf-8"), "big")] = TERM
        keys = sorted(k for k in classes if k > 0x7F)
        self.lookup_keys = np.array(keys, dtype=np.int64)
        self.lookup_vals = np.array([classes[k] for k in keys], dtype=np.int64)

    def resolve(self, flat: np.ndarray, pos: np.ndarray, pos_in_doc: np.ndarray) -> np.ndarray:
        """Flags of the CTX tokens at ``pos`` given the bytes of the tokens before them."""
        ids = flat[pos]
        sentinel = self.size
        t = np.zeros(pos.size, dtype=np.int64)
        have = np.zeros(pos.size, dtype=np.int64)
        for k in (1, 2, 3):  # gather the last <= 3 bytes before each position
            prev = np.where(pos_in_doc >= k, flat[np.maximum(pos - k, 0)], sentinel)
            need_more = have < 3
            shifted = np.where(need_more, self.tail[prev] << (8 * np.minimum(have, 3)), 0)
            t |= shifted & MASK24
            have = np.where(need_more, have + self.tail_len[prev], have)
        have = np.minimum(have, 3)
        # The lead byte of the completed character is the last non-continuation byte of t.
        k0 = np.full(pos.size, -1, dtype=np.int64)
        for k in (2, 1, 0):
            byte = (t >> (8 * k)) & 0xFF
            k0 = np.where((k < have) & ((byte < 0x80) | (byte >= 0xC0)), k, k0)
        found = k0 >= 0
        k0c = np.maximum(k0, 0)
        lead_byte = (t >> (8 * k0c)) & 0xFF
        need = np.select(
            [(lead_byte >= 0xC0) & (lead_byte < 0xE0), (lead_byte >= 0xE0) & (lead_byte < 0xF0),
             (lead_byte >= 0xF0) & (lead_byte < 0xF8)], [2, 3, 4], 1)
        m = self.lead_len[ids]
        got = k0c + 1 + m
        code = ((t & ((np.int64(1) << (8 * (k0c + 1))) - 1)) << (8 * m)) | self.lead[ids]
        xcls = np.full(pos.size, ORD, dtype=np.int64)
        complete = found & (need > 1) & (got == need)
        if self.lookup_keys.size and complete.any():
            j = np.minimum(np.searchsorted(self.lookup_keys, code), self.lookup_keys.size - 1)
            hit = complete & (self.lookup_keys[j] == code)
            xcls[hit] = self.lookup_vals[j[hit]]
        xcls[found & (need > 1) & (got < need) & self.all_cont[ids]] = PARTIAL
        return self.ctx_flags[ids, xcls]
