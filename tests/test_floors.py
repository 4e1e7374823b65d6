"""Compressor floors on exactly the given bytes, primed xz, per-document bits."""

from __future__ import annotations

import bz2
import gzip
import lzma
import random

import numpy as np
import pytest

from segsllm.bench import floors


def _text(seed: int, n_words: int) -> str:
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    return " ".join(rng.choice(vocab) for _ in range(n_words)) + "\n"


def test_each_compressor_round_trips_the_exact_bytes():
    data = _text(0, 2000).encode()
    assert gzip.decompress(floors.COMPRESSORS["gzip-9"](data)) == data
    assert bz2.decompress(floors.COMPRESSORS["bzip2-9"](data)) == data
    assert lzma.decompress(floors.COMPRESSORS["xz-9e"](data)) == data
    assert floors.compressed_bits("xz-9e", data) == 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    with pytest.raises(KeyError):
        floors.compressed_bits("zstd", data)


def test_known_answers_random_and_repetitive():
    noise = random.Random(1).randbytes(50_000)
    for name, bpb in floors.floors([noise]).items():
        assert 7.99 < bpb < 8.2, (name, bpb)  # incompressible: 8 bits/byte plus headers
    for name, bpb in floors.floors([b"abcdefgh" * 20_000]).items():
        assert bpb < 0.05, (name, bpb)
    text = floors.floors([_text(2, 20_000)])
    assert all(1.0 < v < 5.0 for v in text.values())  # 12-letter words compress well below 8


def test_floors_use_the_utf8_bytes_of_the_concatenation():
    docs = ["é" * 1000, "ü" * 500]
    got = floors.floors(docs)
    data = ("é" * 1000 + "ü" * 500).encode()
    assert got["gzip-9"] == 8 * len(gzip.compress(data, 9, mtime=0)) / len(data) == floors.floors([data])["gzip-9"]
    with pytest.raises(ValueError):
        floors.floors([""])


def test_priming_with_related_text_helps_and_unrelated_does_not():
    prime = _text(3, 40_000).encode()
    seen = prime[100_000:130_000]  # text xz has already seen in the prime
    cold = floors.compressed_bits("xz-9e", seen)
    assert floors.primed_bits(prime, seen) < 0.1 * cold
    noise = random.Random(4).randbytes(30_000)  # nothing in the prime helps with noise
    assert floors.primed_bits(prime, noise) == pytest.approx(floors.compressed_bits("xz-9e", noise), rel=0.02)
    out = floors.floors([seen], prime=prime)
    assert out[floors.PRIMED] < 0.1 * out["xz-9e"]


def test_per_document_bits_compress_each_document_alone():
    docs = [_text(s, 500) for s in range(5)]
    prime = _text(9, 5000).encode()
    per = floors.per_document_bits(docs, prime=prime)
    assert set(per) == {"gzip-9", "bzip2-9", "xz-9e", floors.PRIMED}
    for name in floors.COMPRESSORS:
        assert per[name].shape == (5,)
        assert np.array_equal(per[name], [floors.compressed_bits(name, d.encode()) for d in docs])
    base = len(lzma.compress(prime, preset=floors.XZ_PRESET))
    assert per[floors.PRIMED][2] == 8 * (len(lzma.compress(prime + docs[2].encode(), preset=floors.XZ_PRESET)) - base)


def test_fixed_prime_is_a_deterministic_prefix_of_the_training_texts():
    train = ["aaaa", "bbbb", "cccc"]
    assert floors.fixed_prime(train, 6) == b"aaaabb"
    assert floors.fixed_prime(train, 100) == b"aaaabbbbcccc"
