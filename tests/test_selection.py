"""Scored-byte selection: enough documents, none above 1/8 of a domain's scored bytes."""

from __future__ import annotations

import random

import pytest

from segsllm.bench.selection import cut_utf8, select_scored, share_cap


def _doc(rng: random.Random, n_bytes: int) -> str:
    lines, size = [], 0
    while size < n_bytes:
        line = " ".join("x" * rng.randint(1, 9) for _ in range(rng.randint(3, 15))) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines)


def _split(sizes: list[int], seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"doc{i}", _doc(rng, n)) for i, n in enumerate(sizes)]


def _shares(scored) -> list[float]:
    total = sum(d.n_bytes for d in scored)
    return [d.n_bytes / total for d in scored]


def test_one_huge_document_cannot_dominate():
    # One 500 KB file among 40 small ones (the pydoc topics.py case).
    docs = _split([500_000] + [4_000 + 300 * i for i in range(40)])
    scored = select_scored(docs, target_bytes=None)
    assert len(scored) == 41
    assert max(_shares(scored)) <= 1 / 8
    big = next(d for d in scored if d.id == "doc0")
    assert big.truncated and big.n_bytes < 500_000
    assert all(not d.truncated for d in scored if d.id != "doc0")  # the small ones stay whole


def test_target_and_minimum_documents():
    docs = _split([rng_size for rng_size in random.Random(1).choices(range(2_000, 80_000), k=120)])
    scored = select_scored(docs, target_bytes=300_000, min_docs=20)
    total = sum(d.n_bytes for d in scored)
    assert len(scored) >= 20
    assert 0.98 * 300_000 <= total <= 1.05 * 300_000
    assert max(_shares(scored)) <= 1 / 8
    # Every scored text is a prefix of its document, cut after a line end.
    text = dict(docs)
    for d in scored:
        assert text[d.id].startswith(d.text) and d.text.endswith("\n")
        assert d.full_bytes == len(text[d.id].encode())


def test_min_docs_wins_over_a_small_target():
    docs = _split([50_000] * 60)
    scored = select_scored(docs, target_bytes=100_000, min_docs=20)
    assert len(scored) == 20  # 20 documents of ~5 KB rather than 2 of 50 KB
    assert max(_shares(scored)) <= 1 / 8


def test_a_small_split_gives_all_it_has():
    docs = _split([3_000] * 12 + [0])
    docs[-1] = ("empty", "")
    scored = select_scored(docs, target_bytes=300_000, min_docs=20)
    assert [d.id for d in scored] == [f"doc{i}" for i in range(12)]  # empty one skipped, order kept


def test_too_few_documents_get_equal_weights():
    docs = _split([1_000, 5_000, 20_000])
    scored = select_scored(docs, target_bytes=None)
    sizes = [d.n_bytes for d in scored]
    shortest = min(d.full_bytes for d in scored)
    assert max(sizes) <= shortest and min(sizes) > 0.9 * shortest  # all cut to about the shortest


def test_deterministic_and_independent_of_stored_order():
    docs = _split(random.Random(2).choices(range(1_000, 30_000), k=80))
    a = select_scored(docs, 200_000)
    shuffled = list(docs)
    random.Random(3).shuffle(shuffled)
    b = select_scored(shuffled, 200_000)
    assert {(d.id, d.text) for d in a} == {(d.id, d.text) for d in b}
    assert a == select_scored(docs, 200_000)
    assert {d.id for d in select_scored(docs, 200_000, seed=1)} != {d.id for d in a}


def test_share_cap_known_answers():
    assert share_cap([10] * 8, 1 / 8) == float("inf")  # equal documents need no cap
    # Nine docs: eight of 10 bytes and one of 1000: c = (80 + c) / 8 -> c = 80 / 7.
    assert share_cap([10] * 8 + [1000], 1 / 8) == pytest.approx(80 / 7)
    assert share_cap([10, 1000], 1 / 8) == 0.0  # two documents cannot each be <= 1/8


def test_cut_never_splits_a_character():
    assert cut_utf8("ab\ncd", 4) == "ab\n"
    assert cut_utf8("ééé", 3) == "é"
    with pytest.raises(ValueError):
        select_scored([("a", "x")], target_bytes=0)
