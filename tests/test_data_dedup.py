"""Duplicates never straddle splits: exact duplicates collapse, near-duplicate families split together."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from segsllm.data import dedup, store
from segsllm.errors import DataError


class ListSource:
    """A source from an in-memory list of (id, bytes)."""

    def __init__(self, name: str, docs: list[tuple[str, bytes]]) -> None:
        self.name, self.docs, self.total = name, docs, len(docs)

    def records(self) -> Iterator[store.RawDoc]:
        for doc_id, data in self.docs:
            yield store.RawDoc(doc_id, data)

    def info(self) -> dict[str, Any]:
        return {"source": "test:list", "version": "1", "sha256": "abc", "fallback_used": False}


VF, TF = 0.3, 0.3  # large fractions so ids easily scatter over all three splits


def _ids_in_different_splits(prefix: str, n: int) -> list[str]:
    """``n`` ids whose own hashes put them in at least two different splits."""
    ids = [f"{prefix}{i}" for i in range(n)]
    assert len({store.split_of(i, VF, TF) for i in ids}) >= 2
    return ids


def _words(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(n)]


def _unrelated(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"other/{i}.txt", (" ".join(_words(rng, 300)) + "\n").encode()) for i in range(n)]


def _splits_of(data_dir, name) -> dict[str, str]:
    return {d.id: s for s in store.SPLITS for d in store.iter_documents(data_dir, name, s)}


def test_content_key_ignores_newline_style_only():
    assert dedup.content_key("a\r\nb\rc\n") == dedup.content_key("a\nb\nc\n")
    assert dedup.content_key("a\nb") != dedup.content_key("a\nb ")


def test_same_document_under_two_ids_is_collapsed_into_one_split(tmp_path):
    # Two ids whose own hashes disagree on the split; one copy has CRLF line ends.
    a, b = next(
        (f"pkgA/table{i}.csv", f"pkgB/table{i}.csv")
        for i in range(1000)
        if store.split_of(f"pkgA/table{i}.csv", VF, TF) != store.split_of(f"pkgB/table{i}.csv", VF, TF)
    )
    table = "".join(f"{i},{i * 7 % 13},{i * 0.5}\n" for i in range(200))
    docs = [(b, table.replace("\n", "\r\n").encode()), (a, table.encode()), *_unrelated(20)]
    m = store.write_corpus(tmp_path, ListSource("d", docs), VF, TF)
    where = _splits_of(tmp_path, "d")
    assert a in where and b not in where  # the smaller id is kept, the other collapsed
    assert where[a] == store.split_of(a, VF, TF)
    assert m["dedup"]["collapsed"] == 1 and m["total_documents"] == len(docs) - 1
    dup = json.loads((tmp_path / "d" / store.DUPLICATES).read_text())
    assert dup["collapsed"] == {b: a}


def _siblings(ids: list[str]) -> list[tuple[str, bytes]]:
    """A 256-line template and one sibling per id, each with ~5 % of the lines changed."""
    rng = random.Random(1)
    template = [f"    {w} = {rng.randint(0, 999)}  # {' '.join(_words(rng, 4))}" for w in _words(rng, 256)]
    docs = []
    for k, doc_id in enumerate(ids):
        lines = list(template)
        for j in rng.sample(range(len(lines)), 12):
            lines[j] = f"    sibling{k}_{j} = {rng.randint(0, 999)}"
        docs.append((doc_id, ("\n".join(lines) + "\n").encode()))
    return docs


def test_near_duplicate_siblings_land_in_one_split(tmp_path):
    ids = _ids_in_different_splits("encodings/cp", 8)
    docs = _siblings(ids)
    docs += _unrelated(30)
    m = store.write_corpus(tmp_path, ListSource("n", docs), VF, TF)
    where = _splits_of(tmp_path, "n")
    assert len({where[i] for i in ids}) == 1  # all siblings in one split
    assert where[ids[0]] == store.split_of(min(ids), VF, TF)  # the family key decides
    others = [d for d, _ in _unrelated(30)]
    assert all(where[d] == store.split_of(d, VF, TF) for d in others)  # unrelated: own id
    assert (m["dedup"]["families"], m["dedup"]["grouped"], m["dedup"]["collapsed"]) == (1, 8, 0)
    families = json.loads((tmp_path / "n" / store.DUPLICATES).read_text())["families"]
    assert families == [{"split": where[ids[0]], "ids": sorted(ids)}]


def test_near_duplicate_grouping_can_be_turned_off(tmp_path):
    ids = _ids_in_different_splits("encodings/cp", 8)
    docs = [*_siblings(ids), ("zz/copy", _siblings(ids)[0][1])]  # plus one exact copy
    m = store.write_corpus(tmp_path, ListSource("off", docs), VF, TF,
                           dedup=dedup.DedupConfig(near_duplicates=False))
    where = _splits_of(tmp_path, "off")
    assert all(where[i] == store.split_of(i, VF, TF) for i in ids)  # each by its own id
    assert "zz/copy" not in where  # exact duplicates are still collapsed
    assert (m["dedup"]["collapsed"], m["dedup"]["families"], m["dedup"]["near_rule"]) == (1, 0, "off")


def test_unrelated_documents_of_one_domain_are_not_grouped():
    # Same vocabulary, shared boilerplate lines, different content: no family.
    rng = random.Random(2)
    shingle, minhash = dedup.ShingleHasher(), dedup.MinHasher()
    header = "import os\nimport sys\n\n"
    texts = [header + " ".join(_words(rng, 400)) for _ in range(40)]
    sigs = [minhash(shingle(t)) for t in texts]
    labels = dedup.families(sigs)
    assert labels == list(range(40))


def test_plan_does_not_depend_on_document_order():
    rng = random.Random(3)
    base = " ".join(_words(rng, 300))
    texts = {"z": base, "y": base + " tail words here", "x": base, "w": " ".join(_words(rng, 300)), "v": ""}
    shingle, minhash = dedup.ShingleHasher(), dedup.MinHasher()

    def run(order: list[str]) -> tuple:
        keys = [dedup.content_key(texts[i]) for i in order]
        sigs = [minhash(s) if (s := shingle(texts[i])).size else None for i in order]
        p = dedup.plan(order, keys, sigs)
        return p.collapsed, dict(zip(order, p.family_key, strict=True)), p.families

    first = run(list(texts))
    assert first == run(sorted(texts))
    collapsed, key, families = first
    assert collapsed == {"z": "x"}
    assert key["y"] == key["x"] == key["z"] == "x" and key["w"] == "w" and key["v"] == "v"
    assert families == [["x", "y"]]


def test_minhash_estimates_jaccard():
    shingle, minhash = dedup.ShingleHasher(1), dedup.MinHasher(num_perm=512)
    a = " ".join(f"w{i}" for i in range(0, 3000))
    b = " ".join(f"w{i}" for i in range(1000, 4000))  # Jaccard 2000 / 4000 = 0.5
    est = float(np.mean(minhash(shingle(a)) == minhash(shingle(b))))
    assert abs(est - 0.5) < 0.08


def test_prepare_refuses_a_corpus_from_before_deduplication(tmp_path):
    store.write_corpus(tmp_path, ListSource("old", _unrelated(5)))
    path = tmp_path / "old" / store.MANIFEST
    m = json.loads(path.read_text())
    m["format_version"] = 1
    path.write_text(json.dumps(m))
    with pytest.raises(DataError, match=r"older segsllm.*with --force"):
        store.prepare(tmp_path, "old", lambda: ListSource("old", _unrelated(5)))
    res = store.prepare(tmp_path, "old", lambda: ListSource("old", _unrelated(5)), force=True)
    assert res.status == "prepared" and res.manifest["format_version"] == store.FORMAT_VERSION
