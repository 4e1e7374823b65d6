"""The exact bytes of every vocabulary entry, computed once per tokenizer.

Rule-based segmenters decide per *token* (not per character), so they need each token's
text. Decoding tokens one by one through the tokenizer is wrong for byte-level BPE: a
token may hold half of a multi-byte character. Instead the token string is mapped back to
bytes through the inverse of GPT-2's ``bytes_to_unicode`` table. Tokenizers that are not
byte-level (SentencePiece, WordPiece) get a best-effort mapping (``▁`` is a space,
``<0xNN>`` a byte, ``##`` a continuation).
"""

from __future__ import annotations

import re
import weakref
from functools import lru_cache
from typing import Any

import numpy as np

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars), strict=True))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


class VocabBytes:
    """``table[i]`` is the UTF-8 bytes token ``i`` stands for; ``byte_level`` says if exact."""

    def __init__(self, table: list[bytes], byte_level: bool) -> None:
        self.table = table
        self.byte_level = byte_level
        self.lengths = np.fromiter(map(len, table), dtype=np.int64, count=len(table))

    def __len__(self) -> int:
        return len(self.table)


def _added_tokens(tokenizer: Any) -> dict[int, str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): getattr(t, "content", str(t)) for i, t in decoder.items()}


def _token_strings(tokenizer: Any) -> list[str]:
    size = len(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(list(range(size)))
    return [t if t is not None else "" for t in toks]


def _compute(tokenizer: Any) -> VocabBytes:
    strings = _token_strings(tokenizer)
    added = _added_tokens(tokenizer)
    inv = unicode_to_bytes()
    regular = [s for i, s in enumerate(strings) if i not in added]
    # Byte-level BPE vocabularies use only the 256 byte characters, and among them the
    # remapped ones (code point >= 256: "Ġ" for a space, "Ċ" for a newline, ...). Not every
    # such vocabulary holds all 256 as single-character tokens (SmolLM2's does not), and a
    # WordPiece/SentencePiece vocabulary never uses the remapped characters.
    remapped = {c for c in inv if ord(c) >= 256}
    chars = {c for s in regular for c in s}
    byte_level = chars <= set(inv) and bool(chars & remapped)
    table: list[bytes] = []
    for i, s in enumerate(strings):
        if i in added:
            table.append(added[i].encode("utf-8"))
        elif byte_level:
            table.append(bytes(inv[c] for c in s))
        else:
            m = _BYTE_TOKEN.match(s)
            if m:
                table.append(bytes([int(m.group(1), 16)]))
            else:
                s = s[2:] if s.startswith("##") else s
                table.append(s.replace("\u2581", " ").encode("utf-8"))
    return VocabBytes(table, byte_level)


_CACHE: weakref.WeakKeyDictionary[Any, VocabBytes] = weakref.WeakKeyDictionary()


def vocab_bytes(tokenizer: Any) -> VocabBytes:
    """Bytes of every token id of ``tokenizer`` (cached per tokenizer object)."""
    try:
        hit = _CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable: compute every time
        return _compute(tokenizer)
    if hit is None or len(hit) != len(tokenizer):
        hit = _compute(tokenizer)
        _CACHE[tokenizer] = hit
    return hit
