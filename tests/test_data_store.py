"""Store: split assignment, on-disk format, manifests, atomic writes and the reading API."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pytest

from segsllm.data import store
from segsllm.data.store import Document, RawDoc
from segsllm.errors import DataError


class ListSource:
    """A source from an in-memory list of (id, bytes | str)."""

    def __init__(
        self, name: str, docs: list[tuple[str, bytes | str]], fail_after: int | None = None
    ):
        self.name, self.docs, self.fail_after = name, docs, fail_after
        self.total = len(docs)

    def records(self) -> Iterator[RawDoc]:
        for i, (doc_id, data) in enumerate(self.docs):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("source broke mid-way")
            yield RawDoc(doc_id, data)

    def info(self) -> dict[str, Any]:
        return {"source": "test:list", "version": "1", "sha256": "abc", "fallback_used": False}


TRICKY = {
    "crlf": "line one\r\nline two\r\n",
    "tabs": "\tindented\t\tcols\n",
    "unicode": "naïve café — 你好，世界。🙂 \u2028 sep\u0085 nel\n",
    "lone_cr": "a\rb\rc",
    "json_like": '{"id": "x", "text": "y"}\n',
}


def _docs(n: int = 40) -> list[tuple[str, bytes | str]]:
    docs: list[tuple[str, bytes | str]] = [
        (f"doc{i}", f"document {i}\n".encode()) for i in range(n)
    ]
    docs += [(k, v.encode("utf-8")) for k, v in TRICKY.items()]
    return docs


def _all(data_dir, name) -> dict[str, str]:
    return {d.id: d.text for s in store.SPLITS for d in store.iter_documents(data_dir, name, s)}


# --------------------------------------------------------------------------- splits


def test_split_is_deterministic_and_depends_only_on_id():
    ids = [f"file_{i}.py" for i in range(200)]
    first = [store.split_of(i, 0.1, 0.1) for i in ids]
    assert first == [store.split_of(i, 0.1, 0.1) for i in ids]
    # The documented rule: sha256(id) as a number in [0, 1).
    u = int.from_bytes(hashlib.sha256(b"file_0.py").digest()[:8], "big") / 2**64
    assert store.split_point("file_0.py") == u


def test_split_fractions_are_respected():
    n = 20000
    counts = dict.fromkeys(store.SPLITS, 0)
    for i in range(n):
        counts[store.split_of(f"id-{i}", 0.1, 0.2)] += 1
    assert abs(counts["validation"] / n - 0.1) < 0.01
    assert abs(counts["test"] / n - 0.2) < 0.01
    assert all(store.split_of(f"id-{i}", 0.0, 0.0) == "train" for i in range(100))


def test_growing_the_fraction_only_moves_train_documents():
    ids = [f"d{i}" for i in range(2000)]
    small = {i: store.split_of(i, 0.05, 0.05) for i in ids}
    large = {i: store.split_of(i, 0.05, 0.10) for i in ids}
    assert all(large[i] == "test" for i in ids if small[i] == "test")


@pytest.mark.parametrize("vf,tf", [(-0.1, 0.1), (1.0, 0.0), (0.6, 0.5)])
def test_bad_fractions_are_a_data_error(vf, tf):
    with pytest.raises(DataError, match="fraction"):
        store.split_of("x", vf, tf)


# --------------------------------------------------------------------------- writing + manifest


def test_write_corpus_layout_and_manifest(tmp_path):
    docs = _docs()
    m = store.write_corpus(tmp_path, ListSource("demo", docs), 0.1, 0.1)
    folder = tmp_path / "demo"
    assert sorted(p.name for p in folder.iterdir()) == [
        "duplicates.json",
        "manifest.json",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert json.loads((folder / "manifest.json").read_text()) == m
    for key in (*store.IDENTITY_KEYS, "skipped_binary", "replaced_invalid_utf8", "segsllm_version"):
        assert m.get(key) is not None, key  # what identifies the corpus (a tokenizer's lineage) is all there
    assert (m["name"], m["source"], m["version"], m["sha256"]) == ("demo", "test:list", "1", "abc")
    assert m["fallback_used"] is False and m["kind"] == "corpus"
    assert m["fractions"] == {"validation": 0.1, "test": 0.1}
    assert sum(m["documents"].values()) == m["total_documents"] == len(docs)
    for split in store.SPLITS:
        texts = [d.text for d in store.iter_documents(tmp_path, "demo", split)]
        assert m["documents"][split] == len(texts)
        assert m["bytes"][split] == sum(len(t.encode("utf-8")) for t in texts)
        path = folder / f"{split}.jsonl"
        assert (
            m["files"][f"{split}.jsonl"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        )
        # One JSON object per line, whatever the text holds.
        lines = path.read_bytes().split(b"\n")
        assert lines[-1] == b"" and len(lines) - 1 == m["documents"][split]
    # Every document lands in the split its id hashes to.
    for split in store.SPLITS:
        for d in store.iter_documents(tmp_path, "demo", split):
            assert store.split_of(d.id, 0.1, 0.1) == split


def test_texts_are_kept_exactly(tmp_path):
    long_line = "x" * (10 * 1024 * 1024)  # a 10 MB single line
    docs = [(k, v.encode("utf-8")) for k, v in TRICKY.items()] + [("long", long_line.encode())]
    store.write_corpus(tmp_path, ListSource("t", docs))
    got = _all(tmp_path, "t")
    assert got == {**TRICKY, "long": long_line}


def test_binary_skipped_and_invalid_utf8_replaced_and_counted(tmp_path):
    docs = [
        ("ok", b"fine\n"),
        ("bin", b"\x89PNG\r\n\x1a\n\x00\x00\x00IHDR"),
        ("bad", b"caf\xe9 and \xff\xfe end\n"),
        ("already", "keeps \ufffd as is\n".encode()),
        ("empty", b""),
    ]
    m = store.write_corpus(tmp_path, ListSource("mixed", docs))
    got = _all(tmp_path, "mixed")
    assert set(got) == {"ok", "bad", "already"}
    assert got["bad"] == "caf\ufffd and \ufffd\ufffd end\n"
    assert got["already"] == "keeps \ufffd as is\n"
    assert m["skipped_binary"] == 1 and m["skipped_empty"] == 1
    assert m["replaced_invalid_utf8"] == 1 and m["replacement_chars"] == 3


def test_empty_corpus_is_an_error_and_leaves_nothing(tmp_path):
    with pytest.raises(DataError, match="empty"):
        store.write_corpus(tmp_path, ListSource("none", [("a", b"\x00\x01"), ("b", b"")]))
    assert list(tmp_path.iterdir()) == []


def test_duplicate_ids_are_an_error(tmp_path):
    with pytest.raises(DataError, match="duplicate"):
        store.write_corpus(tmp_path, ListSource("dup", [("a", b"1"), ("a", b"2")]))


def test_crash_mid_build_keeps_the_old_corpus_and_no_half_corpus(tmp_path):
    store.write_corpus(tmp_path, ListSource("c", _docs(5)))
    before = store.load_manifest(tmp_path, "c")
    with pytest.raises(RuntimeError):
        store.write_corpus(tmp_path, ListSource("c", _docs(50), fail_after=20))
    assert store.load_manifest(tmp_path, "c") == before
    assert [p.name for p in tmp_path.iterdir()] == ["c"]  # no temp folder left
    with pytest.raises(RuntimeError):
        store.write_corpus(tmp_path, ListSource("fresh", _docs(50), fail_after=20))
    assert not store.is_prepared(tmp_path, "fresh") and store.list_corpora(tmp_path) == ["c"]


def test_prepare_is_a_noop_unless_forced(tmp_path):
    calls = []

    def make():
        calls.append(1)
        return ListSource("p", _docs(5))

    r1 = store.prepare(tmp_path, "p", make)
    r2 = store.prepare(tmp_path, "p", make)
    assert (r1.status, r2.status, len(calls)) == ("prepared", "already prepared", 1)
    assert r2.manifest == r1.manifest
    r3 = store.prepare(tmp_path, "p", make, force=True)
    assert r3.status == "prepared" and len(calls) == 2


def test_prepare_refuses_other_fractions_without_force(tmp_path):
    store.prepare(tmp_path, "p", lambda: ListSource("p", _docs(5)))
    with pytest.raises(DataError, match="--force"):
        store.prepare(tmp_path, "p", lambda: ListSource("p", _docs(5)), validation_fraction=0.2)


# --------------------------------------------------------------------------- reading


def test_reading_api(tmp_path):
    store.write_corpus(tmp_path, ListSource("r", _docs(60)), 0.0, 0.0)
    docs = list(store.iter_documents(tmp_path, "r", "train"))
    assert all(isinstance(d, Document) for d in docs) and len(docs) == 65
    assert [d.id for d in store.iter_documents(tmp_path, "r", "train", max_docs=3)] == [
        d.id for d in docs[:3]
    ]
    assert list(store.iter_documents(tmp_path, "r", "validation")) == []
    assert store.list_corpora(tmp_path) == ["r"]
    assert store.list_corpora(tmp_path / "nowhere") == []
    (tmp_path / ".tmp-x-123").mkdir()
    (tmp_path / "half").mkdir()  # no manifest: not prepared
    assert store.list_corpora(tmp_path) == ["r"]


def test_not_prepared_error_says_how(tmp_path):
    with pytest.raises(DataError, match=r"segsllm data prepare --corpus code"):
        next(store.iter_documents(tmp_path, "code", "train"))
    with pytest.raises(DataError, match=r"--from PATH --name mine"):
        store.load_manifest(tmp_path, "mine")


def test_unknown_split_is_an_error(tmp_path):
    store.write_corpus(tmp_path, ListSource("r", _docs(3)))
    with pytest.raises(DataError, match="split"):
        next(store.iter_documents(tmp_path, "r", "dev"))


def test_truncation_cuts_at_a_line_end_and_never_mid_character():
    text = "ab\ncd\nef"
    assert store.truncate_utf8(text, 100) == text
    assert store.truncate_utf8(text, 7) == "ab\ncd\n"
    assert store.truncate_utf8("ééé", 3) == "é"


def test_balanced_mix_is_balanced_interleaved_and_deterministic(tmp_path):
    store.write_corpus(tmp_path, ListSource("a", [(f"a{i}", (f"{i:04d}" + "a" * 96).encode()) for i in range(200)]), 0, 0)
    b_docs = [(f"b{i}", (f"{i:04d}" + "b" * 996).encode()) for i in range(200)]
    store.write_corpus(tmp_path, ListSource("b", b_docs), 0, 0)
    mix = list(store.balanced_mix(tmp_path, ["a", "b"], 5000, seed=1))
    assert mix == list(store.balanced_mix(tmp_path, ["a", "b"], 5000, seed=1))
    assert [n for n, _ in mix[:4]] == ["a", "b", "a", "b"]
    total = {n: sum(len(t) for m, t in mix if m == n) for n in "ab"}
    assert total["b"] == 5000 and 2500 <= total["a"] <= 5000
    # Spread over the split, not its first documents only.
    picked = [int(t[:4]) for n, t in mix if n == "b"]
    assert len(picked) == 5 and max(picked) > 40
