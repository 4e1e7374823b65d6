"""From token segments back to text segments, exactly.

Byte-level BPE tokens can split a multi-byte UTF-8 character (``。`` is three bytes and
may be two tokens), and segment boundaries are token boundaries, so a boundary can fall
inside a character. The choice here: **a character belongs to the segment in which it is
completed**. Each segment's bytes are decoded; an incomplete character at its end is
carried over to the next segment. Hence ``"".join(segments) == text`` exactly and
``len(segments) == len(ends)`` (index ``i`` is still token segment ``i``); a segment that
lies wholly inside one character is the empty string. The built-in segmenters never place a
rule boundary inside a character; only a ``max_len`` split or ``fixed`` can.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from segsllm.data.vocab import vocab_bytes


def incomplete_tail(data: bytes) -> int:
    """Number of bytes at the end of ``data`` that start a character not yet complete."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if 0x80 <= b < 0xC0:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 1
        return back if need > back else 0
    return 0


def segment_texts(tokenizer: Any, ids: Any, ends: np.ndarray) -> list[str]:
    """One string per segment; joined they equal ``decode(ids)`` (exact for byte-level BPE).

    Tokenizers that are not byte-level decode each slice through the tokenizer instead
    (what the model sees; the join may then differ from the original text).
    """
    ids = np.asarray(ids, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if ends.size == 0:
        return []
    vb = vocab_bytes(tokenizer)
    if not vb.byte_level:
        from segsllm.data.tokenizer import decode

        starts = np.concatenate(([0], ends[:-1])).tolist()
        return [decode(tokenizer, ids[s:e].tolist()) for s, e in zip(starts, ends.tolist(), strict=True)]
    # One join over all tokens, then byte offsets of the segment ends (no per-segment join).
    data = b"".join(map(vb.table.__getitem__, ids.tolist()))
    byte_ends = np.cumsum(vb.lengths[ids])[ends - 1].tolist()
    out: list[str] = []
    start = 0
    for end in byte_ends:
        cut = end - incomplete_tail(data[max(start, end - 4):end])
        out.append(data[start:cut].decode("utf-8", errors="replace"))
        start = cut
    if start < len(data):
        out[-1] += data[start:].decode("utf-8", errors="replace")
    return out


# A cut before " word" that follows a non-space is where GPT-2-style pre-tokenizers cut anyway,
# so encoding the pieces separately gives the same ids as encoding the whole text.
_SAFE_CUT = re.compile(r"(?<=\S)(?= [^\W\d_])")
CHUNK_CHARS = 1 << 18
CHUNKS_PER_BATCH = 16


def _chunks(text: str, size: int) -> list[str]:
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        target = start + size
        m = _SAFE_CUT.search(text, target, min(len(text), target + size // 4))
        cut = m.start() if m else target  # no safe point nearby: cut anyway (still lossless)
        if 0xDC00 <= ord(text[cut]) <= 0xDFFF:  # never split a surrogate pair
            cut += 1
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode_ids(tokenizer: Any, text: str, chunk_chars: int = CHUNK_CHARS) -> np.ndarray:
    """Token ids of ``text`` as ``int64``, in bounded memory and in parallel for long texts.

    Texts longer than ``chunk_chars`` (a 10 MB single line) are encoded in pieces cut at
    pre-tokenizer boundaries (``"…word| next"``), so the ids equal ``encode(text)`` for
    byte-level BPE; only a piece with no such point nearby (``"aaaa…"``) is cut blindly,
    which changes the tokens at that seam but still decodes to the same text.
    """
    from segsllm.data.tokenizer import encode

    if len(text) <= chunk_chars:
        return np.asarray(encode(tokenizer, text), dtype=np.int64)
    pieces = _chunks(text, chunk_chars)
    parts: list[np.ndarray] = []
    for i in range(0, len(pieces), CHUNKS_PER_BATCH):
        batch = tokenizer(pieces[i : i + CHUNKS_PER_BATCH], add_special_tokens=False)["input_ids"]
        parts.extend(np.asarray(ids, dtype=np.int64) for ids in batch)
    return np.concatenate(parts)
