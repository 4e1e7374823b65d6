"""Compressor floors: what general-purpose compressors pay, in bits/byte, on the scored bytes.

A language model that loses to ``xz`` on the same bytes has learned little, so every
quality table carries these rows (docs/DESIGN.md §7). Standard library only:

- ``gzip-9``   ``gzip.compress(data, 9, mtime=0)``           (``gzip -9``)
- ``bzip2-9``  ``bz2.compress(data, 9)``                     (``bzip2 -9``)
- ``xz-9e``    ``lzma.compress(data, preset=9 | PRESET_EXTREME)``  (``xz -9e``)
- ``xz-9e-primed``  xz with a fixed slice of the training split in front:
  ``size(xz(prime + data)) − size(xz(prime))``, the bytes xz needs for ``data`` once it has
  seen ``prime`` (its 64 MiB dictionary holds the whole slice). This is the floor for a
  model that trained on that split.

:func:`floors` compresses the concatenation of the scored documents (the domain's number);
:func:`per_document_bits` compresses each document on its own (headers included, as a model
that scores each document from a cold start pays them), the per-document numbers the
bootstrap in :mod:`segsllm.stats` resamples. Both take exactly the bytes given.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable, Sequence

import numpy as np

XZ_PRESET = 9 | lzma.PRESET_EXTREME

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip-9": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bzip2-9": lambda data: bz2.compress(data, compresslevel=9),
    "xz-9e": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=XZ_PRESET),
}
PRIMED = "xz-9e-primed"


def compressed_bits(name: str, data: bytes) -> int:
    """Bits of ``data`` compressed by compressor ``name`` (a key of :data:`COMPRESSORS`)."""
    if name not in COMPRESSORS:
        raise KeyError(f"unknown compressor {name!r}; known: {', '.join(COMPRESSORS)}")
    return 8 * len(COMPRESSORS[name](data))


def primed_bits(prime: bytes, data: bytes, prime_size: int | None = None) -> int:
    """Bits xz -9e spends on ``data`` after ``prime``: ``size(xz(prime+data)) − size(xz(prime))``.

    ``prime_size`` (bytes of ``xz(prime)``) saves recompressing the prime for every call.
    """
    if prime_size is None:
        prime_size = len(COMPRESSORS["xz-9e"](prime))
    return 8 * (len(COMPRESSORS["xz-9e"](prime + data)) - prime_size)


def fixed_prime(train_texts: Sequence[str | bytes], n_bytes: int) -> bytes:
    """The first ``n_bytes`` of the training documents in the order given (UTF-8)."""
    out = bytearray()
    for t in train_texts:
        if len(out) >= n_bytes:
            break
        out += t.encode("utf-8") if isinstance(t, str) else t
    return bytes(out[:n_bytes])


def _as_bytes(docs: Sequence[str | bytes]) -> list[bytes]:
    return [d.encode("utf-8") if isinstance(d, str) else bytes(d) for d in docs]


def floors(docs: Sequence[str | bytes], prime: bytes | None = None) -> dict[str, float]:
    """Bits/byte of each compressor on the concatenation of ``docs`` (plus primed xz when
    ``prime`` is given)."""
    data = b"".join(_as_bytes(docs))
    if not data:
        raise ValueError("floors need at least one byte")
    out = {name: compressed_bits(name, data) / len(data) for name in COMPRESSORS}
    if prime is not None:
        out[PRIMED] = primed_bits(prime, data) / len(data)
    return out


def per_document_bits(docs: Sequence[str | bytes], prime: bytes | None = None,
                      names: Sequence[str] = tuple(COMPRESSORS)) -> dict[str, np.ndarray]:
    """(D,) bits per document for each compressor, every document compressed on its own.

    With ``prime``, also primed xz per document (one xz of ``prime + document`` each: slow
    for a large prime, about the prime's size of xz -9e work per document).
    """
    data = _as_bytes(docs)
    out = {name: np.asarray([compressed_bits(name, d) for d in data], dtype=np.float64) for name in names}
    if prime is not None:
        base = len(COMPRESSORS["xz-9e"](prime))
        out[PRIMED] = np.asarray([primed_bits(prime, d, base) for d in data], dtype=np.float64)
    return out
