"""Turning raw bytes into document text safely.

Every corpus goes through here so the rules are the same everywhere: a NUL byte marks a
binary file (skipped and counted), invalid UTF-8 is replaced by U+FFFD (and counted), and
nothing else is touched: no newline translation (CRLF stays CRLF), no BOM stripping, no
tab expansion, no Unicode normalisation. Files are read as bytes, never in text mode,
because text mode would translate newlines.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

REPLACEMENT = "\ufffd"
_REPLACEMENT_BYTES = REPLACEMENT.encode("utf-8")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Decoded:
    """Text of one document and what had to be done to get it."""

    text: str
    replaced: int = 0  # invalid UTF-8 sequences replaced by U+FFFD


def is_binary(data: bytes) -> bool:
    """True when ``data`` holds a NUL byte (the same rule git and grep use)."""
    return b"\x00" in data


def decode_utf8(data: bytes) -> Decoded:
    """Decode UTF-8 exactly; invalid sequences become U+FFFD and are counted.

    The count is the number of U+FFFD characters introduced by decoding: those already in
    the input (encoded as EF BF BD) are not counted.
    """
    try:
        return Decoded(data.decode("utf-8"), 0)
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        return Decoded(text, text.count(REPLACEMENT) - data.count(_REPLACEMENT_BYTES))


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_of_pairs(pairs: list[tuple[str, str]]) -> str:
    """One hash over ``(name, sha256)`` pairs in sorted order: the identity of a file set."""
    h = hashlib.sha256()
    for name, digest in sorted(pairs):
        h.update(f"{name}\t{digest}\n".encode())
    return h.hexdigest()
