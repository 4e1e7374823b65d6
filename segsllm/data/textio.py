"""Turning raw bytes into document text safely.

Every corpus goes through here so the rules are the same everywhere: a NUL byte marks a
binary file (skipped and counted), invalid UTF-8 is replaced by U+FFFD (and counted), and
nothing else is touched: no newline translation (CRLF stays CRLF), no BOM stripping, no
tab expansion, no Unicode normalisation. Files are read as bytes, never in text mode,
because text mode would translate newlines.

User files get one more rule (:func:`decode_text`, ``encoding="auto"``): a file that is
not valid UTF-8 *and has more invalid sequences than valid multi-byte UTF-8 characters*
is legacy 8-bit text (Latin-1 / Windows-1252, what older editors and Excel write), so it
is decoded as Windows-1252 (Latin-1 where cp1252 leaves a byte undefined) instead of
turning every accented letter into U+FFFD. A UTF-8 file with a few corrupt bytes keeps
its UTF-8 and gets U+FFFD for those bytes.
"""

from __future__ import annotations

import hashlib
import re
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
    encoding: str = "utf-8"  # the codec that produced ``text``


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


# Well-formed multi-byte UTF-8 characters (RFC 3629): evidence that a file is UTF-8.
_UTF8_MULTIBYTE = re.compile(
    rb"[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}"
    rb"|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}"
    rb"|\xf4[\x80-\x8f][\x80-\xbf]{2}"
)
ENCODING_MODES = ("auto", "utf-8", "strict")  # or any Python codec name


def decode_text(data: bytes, encoding: str = "auto") -> Decoded:
    """Decode a user file: ``auto`` (UTF-8, else the legacy 8-bit fallback described in the
    module docstring), ``utf-8`` (invalid sequences replaced), ``strict`` (raise
    :class:`UnicodeDecodeError` on invalid UTF-8) or a codec name used for every file."""
    if encoding not in ENCODING_MODES:
        text = data.decode(encoding, errors="replace")
        return Decoded(text, text.count(REPLACEMENT), encoding)
    try:
        return Decoded(data.decode("utf-8"), 0)
    except UnicodeDecodeError:
        if encoding == "strict":
            raise
    utf8 = decode_utf8(data)
    if encoding == "auto" and utf8.replaced > len(_UTF8_MULTIBYTE.findall(data)):
        try:
            return Decoded(data.decode("cp1252"), 0, "cp1252")
        except UnicodeDecodeError:  # 0x81 0x8d 0x8f 0x90 0x9d: undefined in cp1252
            return Decoded(data.decode("latin-1"), 0, "latin-1")
    return utf8


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
