"""User corpora from local files, folders, globs and `datasets` datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segsllm.data import store, user
from segsllm.errors import DataError


def _texts(data_dir, name) -> dict[str, str]:
    return {d.id: d.text for s in store.SPLITS for d in store.iter_documents(data_dir, name, s)}


@pytest.fixture
def files(tmp_path) -> Path:
    root = tmp_path / "mydata"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes(b"Windows\r\nline\r\n\tand a tab\n")
    (root / "sub" / "b.md").write_bytes("# Título\n\nüñíçødé 🙂\n".encode())
    (root / "sub" / "c.py").write_bytes(b"def f():\n\treturn 1\n")
    (root / "table.csv").write_bytes(b"a,b\r\n1,2\r\n")
    (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    (root / "broken.txt").write_bytes("über ".encode() + b"\xff\n")  # UTF-8 with one bad byte
    (root / "empty.txt").write_bytes(b"")
    (root / ".hidden.txt").write_bytes(b"secret")
    (root / ".git" / "config").write_bytes(b"[core]")
    lines = [
        json.dumps({"text": "first\r\nrecord", "meta": 1}),
        "",
        json.dumps({"text": "second\trecord ✓", "meta": 2}, ensure_ascii=False),
    ]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_folder_recursion_binary_invalid_utf8_crlf(tmp_path, files):
    res = user.prepare_files(tmp_path / "data", "mine", str(files))
    m = res.manifest
    texts = _texts(tmp_path / "data", "mine")
    assert texts == {
        "a.txt": "Windows\r\nline\r\n\tand a tab\n",
        "sub/b.md": "# Título\n\nüñíçødé 🙂\n",
        "sub/c.py": "def f():\n\treturn 1\n",
        "table.csv": "a,b\r\n1,2\r\n",
        "latin1.txt": "café\n",  # the documented legacy fallback, not "caf\ufffd"
        "broken.txt": "über \ufffd\n",  # UTF-8 with a corrupt byte stays UTF-8
        "records.jsonl:1": "first\r\nrecord",
        "records.jsonl:3": "second\trecord ✓",
    }
    assert m["skipped_binary"] == 1 and m["skipped_empty"] == 1
    assert m["replaced_invalid_utf8"] == 1 and m["replacement_chars"] == 1
    assert m["source"] == f"files:{files}" and len(m["sha256"]) == 64
    assert m["source_files"] == 9  # hidden files and folders are not walked
    assert m["named_files"] == {
        "binary": {"count": 1, "first": ["image.png"]},
        "empty": {"count": 1, "first": ["empty.txt"]},
        "decoded_cp1252": {"count": 1, "first": ["latin1.txt"]},
        "replaced_invalid_utf8": {"count": 1, "first": ["broken.txt"]},
    }


def test_skipped_files_are_named_first_few_plus_count(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "ok.txt").write_text("fine\n")
    for i in range(8):
        (folder / f"blob{i}.bin").write_bytes(b"\x00" * 4)
    m = user.prepare_files(tmp_path / "d", "many", str(folder)).manifest
    entry = m["named_files"]["binary"]
    assert entry == {"count": 8, "first": [f"blob{i}.bin" for i in range(user.NAMED)]}
    assert user.describe_notes(m["named_files"]) == [
        "skipped 8 binary file(s): blob0.bin, blob1.bin, blob2.bin, blob3.bin, blob4.bin and 3 more"
    ]


@pytest.mark.parametrize("how", ["folder", "glob"])
def test_dangling_symlinks_are_skipped_and_named(tmp_path, how):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha\n")
    (folder / "gone.txt").symlink_to(tmp_path / "nowhere.txt")
    pattern = str(folder) if how == "folder" else str(folder / "*.txt")
    m = user.prepare_files(tmp_path / "d", "links", pattern).manifest
    assert _texts(tmp_path / "d", "links") == {"a.txt": "alpha\n"}
    assert m["named_files"]["dangling_symlink"] == {"count": 1, "first": ["gone.txt"]}


@pytest.mark.parametrize(
    ("data", "encoding", "text"),
    [
        (b"na\xefve \x93quoted\x94\n", "auto", "naïve “quoted”\n"),  # Windows-1252
        ("naïve\n".encode(), "auto", "naïve\n"),
        (b"caf\xe9\n", "utf-8", "caf\ufffd\n"),  # asked for: replace
        (b"caf\xe9\n", "latin-1", "café\n"),
        ("été".encode("utf-16"), "utf-16", "été"),
    ],
)
def test_encodings(tmp_path, data, encoding, text):
    f = tmp_path / "doc.txt"
    f.write_bytes(data)
    res = user.prepare_files(tmp_path / "d", "enc", str(f), encoding=encoding)
    assert _texts(tmp_path / "d", "enc") == {"doc.txt": text}
    assert res.manifest["encoding"] == encoding


def test_strict_encoding_refuses_latin1_and_unknown_codecs_are_errors(tmp_path):
    f = tmp_path / "doc.txt"
    f.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"doc\.txt: not valid UTF-8 \(byte 3\)"):
        user.prepare_files(tmp_path / "d", "s", str(f), encoding="strict")
    with pytest.raises(DataError, match="unknown --encoding 'klingon'"):
        user.prepare_files(tmp_path / "d", "s", str(f), encoding="klingon")
    assert not store.is_prepared(tmp_path / "d", "s")


def test_glob_and_single_file(tmp_path, files):
    user.prepare_files(tmp_path / "d", "md", str(files / "**" / "*.md"))
    assert set(_texts(tmp_path / "d", "md")) == {"sub/b.md"}
    user.prepare_files(tmp_path / "d", "one", str(files / "a.txt"))
    assert _texts(tmp_path / "d", "one") == {"a.txt": "Windows\r\nline\r\n\tand a tab\n"}


def test_jsonl_text_field_and_errors(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text(json.dumps({"body": "hello"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"x\.jsonl:1.*'text'.*--text-field"):
        user.prepare_files(tmp_path / "d", "x", str(f))
    user.prepare_files(tmp_path / "d", "x", str(f), text_field="body")
    assert _texts(tmp_path / "d", "x") == {"x.jsonl:1": "hello"}
    g = tmp_path / "bad.jsonl"
    g.write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        user.prepare_files(tmp_path / "d", "bad", str(g))
    assert not store.is_prepared(tmp_path / "d", "bad")


def test_a_10mb_single_line_is_fine(tmp_path):
    f = tmp_path / "long.txt"
    text = ("word " * 2_000_000)[:-1]  # 10 MB, no newline
    f.write_text(text, encoding="utf-8")
    user.prepare_files(tmp_path / "d", "long", str(f))
    assert _texts(tmp_path / "d", "long") == {"long.txt": text}


def test_empty_corpus_is_an_error(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\x00\x01\x02")
    (folder / "b.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        user.prepare_files(tmp_path / "d", "bin", str(folder))
    assert store.list_corpora(tmp_path / "d") == []


@pytest.mark.parametrize("pattern", ["nope/missing.txt", "nope/*.txt"])
def test_missing_paths_are_errors(tmp_path, pattern):
    with pytest.raises(DataError, match=r"no such file|no files match"):
        user.prepare_files(tmp_path / "d", "x", str(tmp_path / pattern))


@pytest.mark.parametrize("name", ["prose", "all", "../up", "", "a b"])
def test_bad_names(tmp_path, files, name):
    with pytest.raises(DataError, match="name"):
        user.prepare_files(tmp_path / "d", name, str(files))


def test_rerun_is_a_noop_and_another_source_needs_force(tmp_path, files):
    r1 = user.prepare_files(tmp_path / "d", "mine", str(files))
    r2 = user.prepare_files(tmp_path / "d", "mine", str(files))
    assert (r1.status, r2.status) == ("prepared", "already prepared")
    other = str(files / "a.txt")
    with pytest.raises(DataError, match="--force"):
        user.prepare_files(tmp_path / "d", "mine", other)
    r3 = user.prepare_files(tmp_path / "d", "mine", other, force=True)
    assert r3.status == "prepared" and r3.manifest["total_documents"] == 1


# --------------------------------------------------------------------------- datasets


def test_hf_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(
        {"text": ["one\r\n", "two\t2", None, "три"], "label": [0, 1, 2, 3]}
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    m = user.prepare_hf(tmp_path / "d", "hf", str(tmp_path / "saved")).manifest
    assert _texts(tmp_path / "d", "hf") == {"0": "one\r\n", "1": "two\t2", "3": "три"}
    assert m["skipped_empty"] == 1 and m["source"].startswith("hf:")

    dd = datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([3])})
    dd.save_to_disk(str(tmp_path / "dd"))
    user.prepare_hf(tmp_path / "d", "hfdd", str(tmp_path / "dd"))
    assert set(_texts(tmp_path / "d", "hfdd")) == {"train/0", "train/1", "test/0"}
    user.prepare_hf(tmp_path / "d", "hftest", str(tmp_path / "dd"), split="test")
    assert _texts(tmp_path / "d", "hftest") == {"0": "три"}


def test_hf_dataset_missing_column_lists_columns(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DataError, match=r"no column 'text' \(columns: body\)"):
        user.prepare_hf(tmp_path / "d", "hf", str(tmp_path / "saved"))


def test_hf_load_dataset_from_a_local_json_folder(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "jsonfolder"
    folder.mkdir()
    rows = [{"content": f"row {i}\n"} for i in range(5)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    user.prepare_hf(tmp_path / "d", "local", str(folder), split="train", text_field="content")
    assert sorted(_texts(tmp_path / "d", "local").values()) == [f"row {i}\n" for i in range(5)]
